"""The slot grid: stable per cluster, spread across clusters, the same before and after a restart."""

from __future__ import annotations

import statistics

import pytest

from operator_k8s.domain.schedule import Start, next_slot, phase, started


def test_a_cluster_s_phase_is_stable_and_inside_its_interval() -> None:
    assert phase("uid-a", 30) == phase("uid-a", 30)
    assert all(0 <= phase(f"uid-{i}", 30) < 30 for i in range(1_000))


def test_phases_spread_the_clusters_over_one_interval() -> None:
    phases = sorted(phase(f"uid-{i}", 30) for i in range(3_000))
    buckets = [sum(1 for p in phases if k * 3 <= p < (k + 1) * 3) for k in range(10)]
    assert min(buckets) > 240 and max(buckets) < 360, buckets  # 300 each, give or take sampling
    assert statistics.median(phases) == pytest.approx(15, abs=1.5)


@pytest.mark.parametrize(
    ("after", "expected_steps"),
    [(0.0, 0), (1.0, 1), (29.999, 1), (30.0, 1), (61.0, 3)],
)
def test_the_next_slot_is_the_first_grid_point_at_or_after_the_time(after: float, expected_steps: int) -> None:
    offset = phase("c", 30)
    slot = next_slot("c", 30, offset + after)
    assert slot == pytest.approx(offset + 30 * expected_steps)
    assert slot >= offset + after


def test_every_replica_and_every_restart_computes_the_same_slots() -> None:
    clock = 1_765_000_000.0
    before_restart = [next_slot("c", 10, clock + t) for t in range(0, 100, 7)]
    after_restart = [next_slot("c", 10, clock + t) for t in range(0, 100, 7)]
    assert before_restart == after_restart
    steps = [(slot - phase("c", 10)) / 10 for slot in before_restart]
    assert all(step == pytest.approx(round(step)) for step in steps), "every slot on the cluster's grid"


def test_a_new_interval_moves_the_grid_and_stays_on_it() -> None:
    first = next_slot("c", 10, 1_000.0)
    second = next_slot("c", 60, first)
    assert second >= first
    assert next_slot("c", 60, second) == second


def test_a_zero_interval_is_bounded_below() -> None:
    assert next_slot("c", 0, 5.0) - 5.0 < 0.1 + 1e-9


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        (100.0, 100.0, Start(lag=0.0, skipped=0)),
        (100.0, 99.0, Start(lag=0.0, skipped=0)),
        (100.0, 100.4, Start(lag=pytest.approx(0.4), skipped=0)),  # type: ignore[arg-type]
        (100.0, 125.0, Start(lag=25.0, skipped=2)),
    ],
)
def test_a_start_counts_its_lateness_from_the_slot_not_from_a_tick(due: float, now: float, expected: Start) -> None:
    assert started(due, 10, now) == expected
