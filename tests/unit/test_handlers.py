"""Each cluster's loop: its slots, what wakes it, the heartbeats the liveness probe reads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import kopf
import pytest

from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.domain.observations import StorePod
from operator_k8s.domain.schedule import next_slot
from operator_k8s.handlers import (
    ClusterLoops,
    Heartbeats,
    IndexSummary,
    Schedule,
    _candidate_pods,
    cycle_deadline,
    register,
)
from operator_k8s.service import Monitor
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore


def test_the_first_due_time_is_the_cluster_s_next_slot_alike_before_and_after_a_restart() -> None:
    before, after = Schedule(), Schedule()
    assert before.due("a", 30, 1_000.0) == after.due("a", 30, 1_000.0) == next_slot("a", 30, 1_000.0)
    firsts = [Schedule().due(f"uid-{i}", 30, 1_000.0) - 1_000.0 for i in range(200)]
    assert min(firsts) < 5 and max(firsts) > 25, "first runs are spread over one interval, not all at once"
    assert all(0 <= f < 30 for f in firsts)


def test_due_every_interval_on_the_grid_and_not_between() -> None:
    schedule = Schedule()
    due = schedule.due("a", 10, 0.0)
    schedule.ran("a", 10, due + 0.2)
    assert schedule.due("a", 10, due + 5) == pytest.approx(due + 10)
    schedule.ran("a", 10, due + 35)  # a start 2.5 intervals late: the grid's next slot, not 10 s from now
    assert schedule.due("a", 10, due + 35) == pytest.approx(due + 40)


def test_an_interval_edited_from_2s_to_1h_and_back_is_due_at_once_each_time() -> None:
    """dfbc121 kept the 1 h due time after the edit back. A new generation is due at once."""
    schedule = Schedule()
    first = schedule.due("a", 2, 0.0, generation=1)
    schedule.ran("a", 2, first)
    assert schedule.due("a", 3600, 1.0, generation=2) == 1.0, "the 1 h edit takes effect at once"
    schedule.ran("a", 3600, 1.0)
    assert schedule.due("a", 3600, 5.0, generation=2) == pytest.approx(next_slot("a", 3600, 1.001))
    assert schedule.due("a", 2, 9.0, generation=3) == 9.0
    schedule.ran("a", 2, 9.0)
    assert schedule.due("a", 2, 9.5, generation=3) - 9.0 <= 2.0


def test_forget_and_len() -> None:
    schedule = Schedule()
    schedule.due("a", 10, 0)
    schedule.due("b", 10, 0)
    schedule.forget("a")
    assert len(schedule) == 1 and "b" in schedule and "a" not in schedule


class Stopper:
    """kopf's stop flag as a daemon sees it: falsy until set, and an awaitable wait with a timeout."""

    def __init__(self) -> None:
        self.flag = asyncio.Event()

    def __bool__(self) -> bool:
        return self.flag.is_set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flag.wait(), timeout)


async def test_a_sleeping_loop_wakes_for_an_edit_a_shard_taken_or_a_stop_and_otherwise_sleeps_its_time() -> None:
    schedule, stopper = Schedule(), Stopper()
    schedule.due("a", 60, 0.0, generation=1)
    loop = asyncio.get_running_loop()

    async def slept(wake: Callable[[], None] | None, seconds: float = 30.0) -> float:
        started = loop.time()
        sleeping = asyncio.ensure_future(schedule.sleep("a", seconds, stopper))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        if wake is not None:
            wake()
        await sleeping
        return loop.time() - started

    assert await slept(lambda: schedule.edited("a", 2)) < 1, "a new generation wakes it"
    assert await slept(lambda: schedule.edited("a", 1), 0.3) >= 0.25, "an event of the same generation does not"
    assert await slept(schedule.wake_all) < 1, "a shard taken wakes it"
    assert await slept(None, 0.3) == pytest.approx(0.3, abs=0.2), "otherwise it sleeps its time"
    assert await slept(stopper.flag.set) < 1, "kopf stopping it ends the sleep"


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


class ExplodingSpec(dict[str, Any]):
    """A spec whose reads raise the first ``failures`` times, then stop the loop (the stopper is set)."""

    def __init__(self, stopper: Stopper, failures: int) -> None:
        super().__init__()
        self.stopper, self.failures, self.reads = stopper, failures, 0

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        if self.reads <= self.failures:
            raise RuntimeError("a bug met by one pass")
        self.stopper.flag.set()
        return "1h"


async def test_a_pass_of_the_loop_that_raises_is_counted_and_the_loop_goes_on() -> None:
    telemetry, stopper = Telemetry(), Stopper()
    monitor = Monitor(store=FakeStore(), metrics=FakeMetrics(), mirror=FakeMirror())
    loops = ClusterLoops(monitor, telemetry, Schedule(), Heartbeats(300, peering=False), lambda uid: True, 0.01,
                         IndexSummary())  # fmt: skip
    spec = ExplodingSpec(stopper, failures=2)
    meta = {"uid": "u", "name": "c", "generation": 1}
    kwargs = {"store_pods": {}, "tickets_shown": {}}
    await asyncio.wait_for(loops.run(stopper, spec, {}, meta, "ns", kwargs), 5)  # type: ignore[arg-type]
    assert spec.reads == 3, "it ran again after each failure, until kopf stopped it"
    failed = telemetry.registry.get_sample_value("operator_k8s_check_errors_total", {"kind": "cycle_failed"})
    assert failed == 2
