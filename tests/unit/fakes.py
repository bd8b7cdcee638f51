"""In-memory fakes of the service's ports, as strict as the real ones: compare-and-set on row versions, status
writes the API server may refuse, Prometheus series labelled by namespace and store. One place for every test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample
from operator_k8s.domain.specs import PrometheusAuthSpec
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.ports import (
    ClusterRef,
    KubernetesRejected,
    KubernetesUnavailable,
    Projection,
    SyncResult,
    TicketEvent,
    TicketStoreUnavailable,
    TicketWrite,
)


class FakeStore:
    """Postgres as a list of versioned rows; every write is a compare-and-set, as in ``sync_cluster_cas``."""

    def __init__(self) -> None:
        self.rows: list[Ticket] = []
        self.calls: list[list[TicketWrite]] = []
        self.history: list[tuple[int, str, str]] = []
        """(ticket id, effect kind, reason) of every event appended."""
        self.down = False
        self.next_id = 1

    def _unresolved(self, ticket: Ticket) -> Ticket | None:
        return next((r for r in self.rows if r.key == ticket.key and r.state is not TicketState.RESOLVED), None)

    def _apply(self, write: TicketWrite) -> bool:
        """One write; False when it loses the compare-and-set."""
        ticket = write.after or write.before
        assert ticket is not None
        expected = write.expected_version
        if expected is None:
            if write.after is None:
                return True
            if self._unresolved(write.after) is not None:
                return False
            row = replace(write.after, id=self.next_id, version=1)
            self.next_id += 1
            self.rows.append(row)
        else:
            index = next((i for i, r in enumerate(self.rows) if r.id == ticket.id and r.version == expected), None)
            if index is None:
                return False
            if write.after is None:
                del self.rows[index]
                return True
            other = self._unresolved(write.after)
            if write.after.state is not TicketState.RESOLVED and other is not None and other.id != ticket.id:
                return False
            row = replace(write.after, id=ticket.id, version=expected + 1)
            self.rows[index] = row
        self.history += [(row.id or 0, effect.kind.value, effect.reason) for _, effect in write.history]
        return True

    async def sync(
        self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime, *, deadline: float
    ) -> SyncResult:
        if self.down:
            raise TicketStoreUnavailable("Postgres unreachable: ConnectionRefusedError")
        self.calls.append(list(writes))
        conflicts = frozenset(i for i, write in enumerate(writes) if not self._apply(write))
        tickets = [
            r
            for r in self.rows
            if r.key.cluster_uid == cluster_uid
            and (r.state is not TicketState.RESOLVED or (r.resolved_at and r.resolved_at >= horizon))
        ]
        return SyncResult(tickets=tickets, conflicts=conflicts)

    async def cluster_uids(self, namespaces: Sequence[str] | None) -> dict[str, str]:
        return {r.key.cluster_uid: r.namespace for r in self.rows if r.state is not TicketState.RESOLVED}

    async def close(self) -> None:
        pass


class FakeMetrics:
    """Latency per store (namespace ``ns``), and zero for every other query (no errors, no stalls); ``extra`` adds
    latency series as a shared Prometheus would return them."""

    def __init__(self) -> None:
        self.latency: dict[str, float] = {"tikv-0": 5.0, "tikv-1": 5.0}
        self.extra: list[Sample] = []
        self.failure: QueryFailure | None = None
        self.queries: list[str] = []
        self.auths: list[PrometheusAuthSpec | None] = []

    async def query(
        self,
        url: str,
        promql: str,
        *,
        store_label: str,
        namespace_label: str,
        timeout: float,
        auth: PrometheusAuthSpec | None = None,
    ) -> QueryResult:
        self.queries.append(promql)
        self.auths.append(auth)
        if self.failure:
            return QueryResult.failed(promql, self.failure, "connection refused")
        if "tikv_grpc_msg_duration_seconds" not in promql:  # error counters, stalls: all quiet
            return QueryResult(promql, tuple(Sample(store, 0.0, "ns") for store in self.latency))
        own = tuple(Sample(store, value, "ns") for store, value in self.latency.items())
        return QueryResult(promql, own + tuple(self.extra))


class FakeMirror:
    """Ticket resources and the cluster status; ``refuse_status`` makes the API server refuse status writes whose
    conditions repeat a type (as it does), ``refuse_tickets`` refuses every Ticket write (as an admission policy
    may), ``down`` makes every call fail like an unreachable server."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.writes = 0
        self.posted: list[TicketEvent] = []
        self.down = False
        self.refuse_status = False
        self.refuse_tickets = False

    def _check(self) -> None:
        if self.down:
            raise KubernetesUnavailable("API server unreachable: ClientConnectorError")

    async def upsert(self, owner: ClusterRef, projection: Projection, *, labels_changed: bool) -> None:
        self._check()
        if self.refuse_tickets:
            raise KubernetesRejected("422 Unprocessable Entity: denied by an admission policy")
        self.writes += 1
        self.resources[projection.name] = projection.status
        self.specs.setdefault(projection.name, projection.spec)

    async def delete(self, namespace: str, name: str) -> None:
        self._check()
        self.writes += 1
        self.resources.pop(name, None)
        self.specs.pop(name, None)

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None:
        self._check()
        self.posted += events

    async def write_status(self, ref: ClusterRef, status: dict[str, Any]) -> None:
        self._check()
        types = [c["type"] for c in status.get("conditions", [])]
        if self.refuse_status and len(types) > 1:
            raise KubernetesRejected("422 Unprocessable Entity: status.conditions: Duplicate value")
        self.statuses.append(status)

    @property
    def status(self) -> dict[str, Any]:
        return self.statuses[-1] if self.statuses else {}
