"""The per-cluster schedule behind the base-period timer."""

from __future__ import annotations

import time

import kopf
import pytest

from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.domain.observations import StorePod
from operator_k8s.handlers import Heartbeats, Schedule, Tick, _candidate_pods, cycle_deadline, register
from operator_k8s.service import Monitor
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore


@pytest.mark.parametrize("interval", [2.0, 5.0])
def test_an_interval_up_to_the_tick_runs_every_drifting_tick_and_misses_nothing(interval: float) -> None:
    """kopf's timer waits ``tick`` after each handler ends, so its ticks drift by the handlers' run time."""
    schedule = Schedule(jitter=0, tick=5)
    ticks = [schedule.due("a", interval, n * 5.2) for n in range(200)]
    assert all(t is not None and t.skipped == 0 for t in ticks)
    assert max(t.lag for t in ticks if t is not None) < 0.3


def test_an_interval_off_the_tick_is_never_late_by_the_ticks_granularity() -> None:
    schedule = Schedule(jitter=0, tick=5)
    ticks = [t for n in range(100) if (t := schedule.due("a", 7, n * 5.0)) is not None]
    assert len(ticks) == 495 // 7 + 1  # one run per 7 s due time, at the first tick at or after it
    assert {(t.lag, t.skipped) for t in ticks} == {(0.0, 0)}


def test_first_run_is_spread_within_one_interval() -> None:
    schedule = Schedule()
    firsts = []
    for uid in range(200):
        now = 0.0
        while schedule.due(str(uid), 30, now) is None:
            now += 0.5
        firsts.append(now)
    assert max(firsts) <= 30.5
    assert min(firsts) < 5, "first runs are spread, not all at once"
    assert max(firsts) > 25


def test_due_every_interval_and_not_between() -> None:
    schedule = Schedule(jitter=0)
    assert schedule.due("a", 10, 0) == Tick(lag=0, skipped=0)
    assert schedule.due("a", 10, 5) is None
    assert schedule.due("a", 10, 10.5) == Tick(lag=0.5, skipped=0)
    assert schedule.due("a", 10, 19) is None
    assert schedule.due("a", 10, 20) == Tick(lag=0, skipped=0)


def test_late_tick_counts_skipped_intervals_and_keeps_the_cadence() -> None:
    schedule = Schedule(jitter=0)
    schedule.due("a", 10, 0)
    assert schedule.due("a", 10, 35) == Tick(lag=25, skipped=2)
    assert schedule.due("a", 10, 39) is None
    assert schedule.due("a", 10, 40) == Tick(lag=0, skipped=0)


def test_forget_and_len() -> None:
    schedule = Schedule()
    schedule.due("a", 10, 0)
    schedule.due("b", 10, 0)
    schedule.forget("a")
    assert len(schedule) == 1


def test_candidate_pods_come_from_one_label_of_each_selector() -> None:
    a, b, x, pd = (StorePod(name, "Running", True) for name in ("a", "b", "x", "pd-0"))
    index = {("ns", "app", "tikv"): [a, b], ("ns", "zone", "z1"): [a], ("other", "app", "tikv"): [x],
             ("ns", "component", "pd"): [pd]}  # fmt: skip
    spec = {"stores": {"selector": {"matchLabels": {"zone": "z1", "app": "tikv"}}}}
    assert _candidate_pods(index, "ns", spec) == [a, b], "the first label by name, then the service filters"  # type: ignore[arg-type]
    with_pd = {**spec, "pd": {"selector": {"matchLabels": {"component": "pd"}}}}
    assert _candidate_pods(index, "ns", with_pd) == [a, b, pd]  # type: ignore[arg-type]
    assert _candidate_pods(index, "ns", {"stores": {}}) == []  # type: ignore[arg-type]
    assert _candidate_pods(index, "ns", {"stores": {"selector": {"matchLabels": {"app": "pd"}}}}) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peering", "last_beats", "now", "stale"),
    [
        (False, {"a": 0.0, "b": 0.0}, 299.0, []),
        (False, {"a": 0.0, "b": 290.0}, 301.0, ["a"]),  # one timer stopped: wedged
        (False, {"a": 0.0, "b": 0.0}, 301.0, ["a", "b"]),  # every timer stopped, standalone: wedged
        (True, {"a": 0.0, "b": 0.0}, 301.0, []),  # every timer stopped under peering: paused, not wedged
        (True, {"a": 0.0, "b": 290.0}, 301.0, ["a"]),
        (False, {}, 1e9, []),  # no cluster, nothing to run
    ],
)
def test_liveness_fails_only_when_timers_stop(
    peering: bool, last_beats: dict[str, float], now: float, stale: list[str]
) -> None:
    heartbeats = Heartbeats(300, peering=peering)
    heartbeats.resumed(0)  # kopf's first decision (under peering): this replica runs
    for uid, at in last_beats.items():
        heartbeats.beat(uid, at)
    assert heartbeats.stale(now) == stale


@pytest.mark.parametrize(("now", "running"), [(10, 2), (305, 1), (400, 0)])
def test_running_counts_the_timers_that_ran_recently_so_a_paused_replica_counts_none(now: float, running: int) -> None:
    heartbeats = Heartbeats(300, peering=True)
    heartbeats.resumed(0)
    heartbeats.beat("a", 0)
    heartbeats.beat("b", 10)
    assert heartbeats.running(now) == running


def test_a_deleted_cluster_never_looks_wedged() -> None:
    heartbeats = Heartbeats(300, peering=False)
    heartbeats.beat("gone", 0)
    heartbeats.forget("gone")
    assert heartbeats.stale(1000) == []


@pytest.mark.parametrize(
    ("spec", "deadline"),
    [
        ({}, 70.0),
        ({"prometheus": {"timeout": "60s"}}, 180.0),
        ({"prometheus": {"timeout": "1ms"}}, 60.002),
        ({"prometheus": {"timeout": "nonsense"}}, 70.0),
    ],
)
def test_every_cycle_has_a_bounded_deadline(spec: dict[str, object], deadline: float) -> None:
    assert cycle_deadline(spec) == pytest.approx(deadline)


def test_scheduled_clusters_is_counted_from_the_heartbeats_when_scraped() -> None:
    telemetry = Telemetry()
    monitor = Monitor(store=FakeStore(), metrics=FakeMetrics(), mirror=FakeMirror())
    heartbeats = register(kopf.OperatorRegistry(), monitor, telemetry, tick_seconds=5, peering=True)
    assert telemetry.registry.get_sample_value("operator_k8s_scheduled_clusters") == 0
    heartbeats.resumed(time.monotonic())
    heartbeats.beat("a", time.monotonic())
    assert telemetry.registry.get_sample_value("operator_k8s_scheduled_clusters") == 1


def test_a_hand_over_never_restarts_the_new_active_replica() -> None:
    """dfbc121: the map kept clusters its peer deleted while this replica was paused, and liveness failed ~60 s
    after it resumed. kopf's resume decision drops them; live timers re-enter on their next tick."""
    heartbeats = Heartbeats(300, peering=True)
    for uid in ("kept", "deleted-by-peer"):
        heartbeats.beat(uid, 0)
    heartbeats.paused()
    assert heartbeats.running(10) == 0 and heartbeats.stale(1000) == [], "a paused replica is never wedged"
    heartbeats.resumed(1000)
    for now in range(1000, 1400, 5):
        heartbeats.beat("kept", now)
        assert heartbeats.stale(now) == []
    assert heartbeats.running(1400) == 1


def test_scheduled_and_active_read_zero_on_a_standby_at_once() -> None:
    telemetry = Telemetry()
    monitor = Monitor(store=FakeStore(), metrics=FakeMetrics(), mirror=FakeMirror())
    heartbeats = register(kopf.OperatorRegistry(), monitor, telemetry, tick_seconds=5, peering=True)
    assert telemetry.registry.get_sample_value("operator_k8s_active") == 0, "paused until kopf's first decision"
    heartbeats.resumed(time.monotonic() - 60)
    heartbeats.beat("a", time.monotonic())
    assert telemetry.registry.get_sample_value("operator_k8s_active") == 1
    heartbeats.paused()
    assert telemetry.registry.get_sample_value("operator_k8s_scheduled_clusters") == 0
    assert telemetry.registry.get_sample_value("operator_k8s_active") == 0


def test_an_interval_edited_from_2s_to_1h_and_back_runs_every_2s_again_within_one_tick() -> None:
    """dfbc121 kept the 1 h due time after the edit back. A new generation is due at once."""
    schedule = Schedule(jitter=0, tick=1)
    runs = [now for now in range(0, 10) if schedule.due("a", 2, now, generation=1)]
    assert runs == [0, 2, 4, 6, 8]
    assert schedule.due("a", 3600, 10, generation=2) is not None, "the 1h edit takes effect at once"
    assert schedule.due("a", 3600, 12, generation=2) is None
    runs = [now for now in range(13, 23) if schedule.due("a", 2, now, generation=3)]
    assert runs == [13, 15, 17, 19, 21]


def test_a_corrected_invalid_spec_is_checked_at_once() -> None:
    schedule = Schedule(jitter=0, tick=5)
    assert schedule.due("a", 3600, 0, generation=1)  # an invalid selector, valid interval: reported, then 1h
    assert schedule.due("a", 3600, 5, generation=1) is None
    assert schedule.due("a", 3600, 10, generation=2) is not None


def test_a_resumed_replica_checks_only_after_the_settle_period() -> None:
    """Two replicas started together: the one that learns of a higher-priority peer within the settle period pauses
    before it ever checks, so they never check side by side."""
    heartbeats = Heartbeats(300, peering=True, settle=5)
    assert not heartbeats.may_check(0), "under peering a replica starts paused"
    heartbeats.resumed(10)
    assert not heartbeats.may_check(14.9)
    heartbeats.paused()  # the peer's keep-alive arrived
    assert not heartbeats.may_check(20)
    heartbeats.resumed(30)
    assert heartbeats.may_check(35)
    assert Heartbeats(300, peering=False).may_check(0), "standalone checks at once"
