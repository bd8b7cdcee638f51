"""The service's cycle against small in-memory fakes of the ports: no mocks on string paths, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample, StorePod
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.ports import ClusterRef, Projection, TicketEvent, TicketStoreUnavailable, TicketWrite
from operator_k8s.service import Monitor
from tests.unit.builders import at

REF = ClusterRef(uid="uid-1", name="tikv", namespace="ns", generation=1)
SPEC: dict[str, Any] = {
    "interval": "1s",
    "stores": {"selector": {"matchLabels": {"app": "tikv"}}, "expected": 2},
    "prometheus": {"url": "http://prometheus:9090"},
    "invariants": {"latency": {"thresholdMs": 100}, "diskUsage": {"enabled": False}},
}


class FakeStore:
    """Postgres as a list of rows; ``down`` makes every call fail like an unreachable server."""

    def __init__(self) -> None:
        self.rows: list[Ticket] = []
        self.calls: list[Sequence[TicketWrite]] = []
        self.down = False
        self.next_id = 1

    async def sync(self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime) -> list[Ticket]:
        if self.down:
            raise TicketStoreUnavailable("Postgres unreachable: ConnectionRefusedError")
        self.calls.append(list(writes))
        for write in writes:
            ticket = write.after or write.before
            assert ticket is not None
            existing = next(
                (
                    i
                    for i, r in enumerate(self.rows)
                    if (r.id == ticket.id and ticket.id is not None)
                    or (ticket.id is None and r.key == ticket.key and r.state is not TicketState.RESOLVED)
                ),
                None,
            )
            if write.after is None:
                if existing is not None:
                    del self.rows[existing]
                continue
            row = write.after
            if existing is None:
                row = replace(row, id=self.next_id)
                self.next_id += 1
                self.rows.append(row)
            else:
                self.rows[existing] = replace(row, id=self.rows[existing].id)
        return [
            r for r in self.rows if r.state is not TicketState.RESOLVED or (r.resolved_at and r.resolved_at >= horizon)
        ]

    async def close(self) -> None:
        pass


class FakeMetrics:
    def __init__(self) -> None:
        self.latency: dict[str, float] = {"tikv-0": 5.0, "tikv-1": 5.0}
        self.failure: QueryFailure | None = None
        self.queries: list[str] = []

    async def query(self, url: str, promql: str, *, store_label: str, timeout: float) -> QueryResult:
        self.queries.append(promql)
        if self.failure:
            return QueryResult.failed(promql, self.failure, "connection refused")
        return QueryResult(promql, tuple(Sample(store, value) for store, value in self.latency.items()))


class FakeMirror:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.posted: list[TicketEvent] = []

    async def upsert(self, owner: ClusterRef, projection: Projection) -> None:
        self.writes += 1
        self.resources[projection.name] = projection.status

    async def delete(self, namespace: str, name: str) -> None:
        self.writes += 1
        self.resources.pop(name, None)

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None:
        self.posted += events


TIKV = (("app", "tikv"),)
PODS = [StorePod("tikv-0", "Running", True, TIKV), StorePod("tikv-1", "Running", True, TIKV)]


@pytest.fixture
def parts() -> tuple[Monitor, FakeStore, FakeMetrics, FakeMirror]:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    return Monitor(store=store, metrics=metrics, mirror=mirror), store, metrics, mirror


async def cycle(
    monitor: Monitor, seconds: float, status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None
):  # type: ignore[no-untyped-def]
    return await monitor.check_cluster(REF, spec or SPEC, PODS, status or {}, at(seconds))


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


async def test_healthy_steady_state_costs_one_round_trip_and_no_kubernetes_write(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, _, mirror = parts
    status, _ = await cycle(monitor, 0)
    assert status is not None and conditions(status)["Healthy"] == "True"
    before = len(store.calls)
    patch, stats = await cycle(monitor, 1, status)
    assert patch is None, "nothing changed: no status write"
    assert (stats.postgres_round_trips, stats.queries, stats.kubernetes_writes) == (1, 1, 0)
    assert len(store.calls) == before + 1
    assert mirror.writes == 0


async def test_violation_opens_one_ticket_and_resolves_after_heal(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, metrics, mirror = parts
    status, _ = await cycle(monitor, 0)
    metrics.latency["tikv-1"] = 900.0
    for second in (1, 2, 3):
        status = (await cycle(monitor, second, status))[0] or status
    assert [(r.key.store, r.state) for r in store.rows] == [("tikv-1", TicketState.OPEN)]
    assert conditions(status)["LatencyWithinBudget"] == "False"
    assert list(mirror.resources) == ["tikv-latency-tikv-1-1"]
    assert [e.reason for e in mirror.posted] == ["TicketOpened"]
    metrics.latency["tikv-1"] = 5.0
    status = (await cycle(monitor, 4, status))[0] or status
    assert store.rows[0].state is TicketState.RESOLVED
    assert conditions(status)["LatencyWithinBudget"] == "True"
    assert mirror.resources["tikv-latency-tikv-1-1"]["state"] == "resolved"
    assert [e.reason for e in mirror.posted] == ["TicketOpened", "TicketResolved"]


async def test_prometheus_down_resolves_nothing(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    status, _ = await cycle(monitor, 0)
    metrics.failure = QueryFailure.UNREACHABLE
    for second in (1, 2, 3):
        status = (await cycle(monitor, second, status))[0] or status
    assert store.rows[0].state is TicketState.OPEN
    assert conditions(status)["MetricsAvailable"] == "False"
    assert conditions(status)["LatencyWithinBudget"] == "False"


async def test_postgres_down_queues_transitions_and_loses_none(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, metrics, _ = parts
    status, _ = await cycle(monitor, 0)
    store.down = True
    metrics.latency["tikv-1"] = 900.0
    status = (await cycle(monitor, 1, status))[0] or status
    assert conditions(status)["TicketStoreAvailable"] == "False"
    metrics.latency["tikv-1"] = 5.0
    status = (await cycle(monitor, 2, status))[0] or status
    assert store.rows == []
    store.down = False
    status = (await cycle(monitor, 3, status))[0] or status
    assert [(r.key.store, r.state) for r in store.rows] == [("tikv-1", TicketState.RESOLVED)]
    assert conditions(status)["TicketStoreAvailable"] == "True"


async def test_postgres_down_from_the_start_keeps_conditions(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, _, _ = parts
    store.down = True
    status, _ = await cycle(monitor, 0)
    assert status is not None
    assert conditions(status)["TicketStoreAvailable"] == "False"
    assert "LatencyWithinBudget" not in conditions(status), "no invariant condition is invented without tickets"


async def test_invalid_spec_becomes_a_condition(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, _, _, _ = parts
    status, _ = await cycle(monitor, 0, spec={**SPEC, "interval": "never"})
    assert status is not None
    healthy = next(c for c in status["conditions"] if c["type"] == "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("Unknown", "InvalidSpec")
    assert "spec.interval" in healthy["message"]


async def test_restart_keeps_the_grace_countdown(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, metrics, mirror = parts
    spec = {**SPEC, "invariants": {"latency": {"thresholdMs": 100, "for": "10s"}, "diskUsage": {"enabled": False}}}
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0, spec=spec)
    assert store.rows[0].state is TicketState.PENDING
    restarted = Monitor(store=store, metrics=metrics, mirror=mirror)
    await restarted.check_cluster(REF, spec, PODS, {}, at(9))
    assert store.rows[0].state is TicketState.PENDING
    await restarted.check_cluster(REF, spec, PODS, {}, at(10))
    assert [r.state for r in store.rows] == [TicketState.OPEN]


async def test_cluster_deleted_resolves_open_tickets(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    assert await monitor.cluster_deleted(REF, at(5)) == 1
    assert store.rows[0].state is TicketState.RESOLVED
    assert store.calls[-1][0].effects[0].reason == "ClusterDeleted"


async def test_human_hold_keeps_ticket_open(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    ticket_id = store.rows[0].id
    assert ticket_id is not None
    assert await monitor.human_intent(
        "uid-1", ticket_id, hold=True, acknowledged=True, actor="kubernetes:kubectl", now=at(1)
    )
    metrics.latency["tikv-1"] = 5.0
    await cycle(monitor, 2)
    assert (store.rows[0].state, store.rows[0].hold) == (TicketState.ACKNOWLEDGED, True)


async def test_queries_per_cycle_do_not_grow_with_stores(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, _, _, _ = parts
    many = [StorePod(f"tikv-{i}", "Running", True, TIKV) for i in range(50)]
    _, stats = await monitor.check_cluster(REF, SPEC, many, {}, at(0))
    assert stats.queries == 1


async def test_only_pods_matching_the_selector_are_stores(parts) -> None:  # type: ignore[no-untyped-def]
    monitor, store, _, _ = parts
    neighbours = [StorePod(f"other-{i}", "Pending", False, (("app", "other"),)) for i in range(5)]
    status, _ = await monitor.check_cluster(REF, SPEC, [*PODS, *neighbours], {}, at(0))
    assert status is not None
    assert status["stores"] == {"observed": 2, "ready": 2, "expected": 2, "summary": "2/2 ready"}
    assert store.rows == [], "a neighbour's pods never open tickets here"
