"""In-memory fakes of the service's ports, as strict as the real ones: compare-and-set on row versions, status
writes the API server may refuse, Prometheus series labelled by namespace and store. One place for every test."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from operator_k8s.adapters.kube import observed_ticket
from operator_k8s.domain.ledger import ClusterRef, CycleStats, SyncResult, TicketEvent
from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample, StorePod
from operator_k8s.domain.projections import ObservedTicket
from operator_k8s.domain.specs import PrometheusAuthSpec
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.domain.vocabulary import MANAGER
from operator_k8s.ports import (
    KubernetesConflict,
    KubernetesNotFound,
    KubernetesRejected,
    KubernetesUnavailable,
    LeaseRecord,
    TicketStoreUnavailable,
    TicketWrite,
)
from operator_k8s.service import Monitor

INT4_MAX = 2**31 - 1


class FakeStore:
    """Postgres as a list of versioned rows; every write is a compare-and-set, as in ``sync_cluster_cas``."""

    def __init__(self) -> None:
        self.evidence: dict[int, tuple[dict[str, Any], list[dict[str, str]], str, str | None]] = {}
        """Per ticket id: its latest evidence, findings, summary and diagnosis."""
        self.rows: list[Ticket] = []
        self.calls: list[list[TicketWrite]] = []
        self.history: list[tuple[int, str, str]] = []
        """(ticket id, effect kind, reason) of every event appended."""
        self.down = False
        self.next_id = 1

    async def store_evidence(
        self, ticket_id: int, evidence: dict[str, Any], findings: Sequence[dict[str, str]], summary: str,
        diagnosis: str | None, *, deadline: float,
    ) -> None:  # fmt: skip
        if self.down:
            raise TicketStoreUnavailable("Postgres unreachable (fake)")
        self.evidence[ticket_id] = (evidence, list(findings), summary, diagnosis)

    async def store_incidents(
        self, counted: Mapping[int, dict[str, list[str]]], links: Mapping[int, int | None], *, deadline: float
    ) -> None:
        if self.down:
            raise TicketStoreUnavailable("Postgres unreachable (fake)")
        for index, row in enumerate(self.rows):
            changes: dict[str, Any] = {}
            if row.id in counted:
                changes["counted_stores"] = counted[row.id]
            if row.id in links:
                changes["cause_id"] = links[row.id]
            self.rows[index] = replace(row, **changes)

    def _unresolved(self, ticket: Ticket) -> Ticket | None:
        return next((r for r in self.rows if r.key == ticket.key and r.state is not TicketState.RESOLVED), None)

    def _apply(self, write: TicketWrite) -> bool | str:
        """One write; False when it loses the compare-and-set, the reason when Postgres would refuse it."""
        ticket = write.after or write.before
        assert ticket is not None
        if write.after is not None and write.after.occurrences > INT4_MAX:
            return f"{ticket.key.invariant}/{ticket.key.store}: integer out of range (22003)"
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
                if self.rows[index].state is not TicketState.PENDING:
                    return False  # as sync_cluster_cas: only a pending ticket is ever deleted
                del self.rows[index]
                return True
            other = self._unresolved(write.after)
            if write.after.state is not TicketState.RESOLVED and other is not None and other.id != ticket.id:
                return False
            kept = self.rows[index]  # as sync_cluster_cas: the incident columns are not the write's
            row = replace(write.after, id=ticket.id, version=expected + 1, cause_id=kept.cause_id,
                          counted_stores=kept.counted_stores)  # fmt: skip
            self.rows[index] = row
        self.history += [(row.id or 0, effect.kind.value, effect.reason) for _, effect in write.history]
        return True

    async def sync(
        self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime, *, deadline: float
    ) -> SyncResult:
        if self.down:
            raise TicketStoreUnavailable("Postgres unreachable: ConnectionRefusedError")
        self.calls.append(list(writes))
        outcomes = [self._apply(write) for write in writes]
        conflicts = frozenset(i for i, outcome in enumerate(outcomes) if outcome is False)
        rejected = tuple(outcome for outcome in outcomes if isinstance(outcome, str))
        tickets = [
            self._with_evidence(r)
            for r in self.rows
            if r.key.cluster_uid == cluster_uid
            and (r.state is not TicketState.RESOLVED or (r.resolved_at and r.resolved_at >= horizon))
        ]
        return SyncResult(tickets=tickets, conflicts=conflicts, rejected=rejected)

    def _with_evidence(self, row: Ticket) -> Ticket:
        """A row as the real read returns it: with one line of its evidence and of its diagnosis."""
        if row.id not in self.evidence:
            return row
        _, _, summary, diagnosis = self.evidence[row.id]
        return replace(row, evidence_summary=summary, diagnosis=diagnosis)

    async def cluster_uids(self, namespaces: Sequence[str] | None) -> dict[str, str]:
        return {r.key.cluster_uid: r.namespace for r in self.rows if r.state is not TicketState.RESOLVED}

    async def close(self) -> None:
        pass


class FakeMetrics:
    """Latency per store (in ``namespace``), and zero for every other query (no errors, no stalls); ``extra`` adds
    latency series as a shared Prometheus would return them."""

    def __init__(self) -> None:
        self.latency: dict[str, float] = {"tikv-0": 5.0, "tikv-1": 5.0}
        self.namespace = "ns"
        self.extra: list[Sample] = []
        self.evidence: dict[str, list[Sample]] = {}
        """Answers to evidence queries, by a text their PromQL contains."""
        self.cluster: dict[str, float] = {}
        """Cluster-wide answers (no store label), by a text their PromQL contains."""
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
        keep: tuple[str, ...] = (),
    ) -> QueryResult:
        self.queries.append(promql)
        self.auths.append(auth)
        if self.failure:
            return QueryResult.failed(promql, self.failure, "connection refused")
        if store_label != "pod":  # an evidence query (grouped by type or PD's store id): what the test set, or nothing
            found = [samples for marker, samples in self.evidence.items() if marker in promql]
            return QueryResult(promql, tuple(found[0]) if found else ())
        for marker, value in self.cluster.items():  # a cluster-wide value (PD's counts)
            if marker in promql:
                return QueryResult(promql, (Sample(None, value, self.namespace),))
        if "tikv_grpc_msg_duration_seconds" not in promql:  # error counters, stalls: all quiet
            return QueryResult(promql, tuple(Sample(store, 0.0, self.namespace) for store in self.latency))
        own = tuple(Sample(store, value, self.namespace) for store, value in self.latency.items())
        return QueryResult(promql, own + tuple(self.extra))


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies ``application/merge-patch+json``: null removes a key, objects merge,
    everything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


class FakeMirror:
    """The API server's side of Ticket resources and the cluster status, as strict as the real one: objects with
    resourceVersions, merge patches that remove keys only when told (null), a patch on a stale resourceVersion or a
    create of an existing name refused as a conflict, a patch of a missing object as not found.

    ``refuse_status`` makes the API server refuse status writes whose conditions repeat a type (as it does),
    ``refuse_tickets`` refuses every Ticket write (as an admission policy may), ``down`` makes every call fail like
    an unreachable server. ``observed()`` is what the operator's watch sees of the Tickets.
    """

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.cluster_status: dict[str, Any] = {}
        self.cluster_version = 1
        self.statuses: list[dict[str, Any]] = []
        """Every status patch the API server accepted, in order."""
        self.writes = 0
        """Ticket writes that reached the API server (create, patch, delete), accepted or not."""
        self.posted: list[TicketEvent] = []
        self.down = False
        self.refuse_status = False
        self.refuse_tickets = False
        self._version = 100

    def _check(self) -> None:
        if self.down:
            raise KubernetesUnavailable("API server unreachable: ClientConnectorError")

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _ticket_write(self) -> None:
        self._check()
        self.writes += 1
        if self.refuse_tickets:
            raise KubernetesRejected("422 Unprocessable Entity: denied by an admission policy")

    async def create(self, body: dict[str, Any]) -> None:
        self._ticket_write()
        name = body["metadata"]["name"]
        if name in self.objects:
            raise KubernetesConflict(f"Ticket {name} already exists")
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = self._next_version()
        stored["metadata"]["managedFields"] = [{"manager": MANAGER, "fieldsV1": {"f:spec": {}}, "time": "1"}]
        self.objects[name] = stored

    async def patch(self, namespace: str, name: str, resource_version: str, patch: dict[str, Any]) -> None:
        self._ticket_write()
        current = self.objects.get(name)
        if current is None:
            raise KubernetesNotFound(f"Ticket {name} does not exist")
        if current["metadata"]["resourceVersion"] != resource_version:
            raise KubernetesConflict(f"Ticket {name} changed since it was observed")
        self._patch_object(name, patch, MANAGER)

    def _patch_object(self, name: str, patch: dict[str, Any], manager: str) -> None:
        updated = apply_merge_patch(self.objects[name], patch)
        updated["metadata"]["resourceVersion"] = self._next_version()
        if "spec" in patch:
            updated["metadata"]["managedFields"] = [{"manager": manager, "fieldsV1": {"f:spec": {}}, "time": "1"}]
        self.objects[name] = updated

    def human_patch(self, name: str, patch: dict[str, Any], manager: str = "kubectl-patch") -> None:
        """Someone else's merge patch (no resourceVersion: last writer wins), as ``kubectl patch`` sends it."""
        self._patch_object(name, patch, manager)

    async def delete(self, namespace: str, name: str) -> None:
        self._ticket_write()
        self.objects.pop(name, None)

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None:
        self._check()
        self.posted += events

    async def write_status(self, ref: ClusterRef, patch: dict[str, Any], resource_version: str | None) -> None:
        self._check()
        if resource_version is not None and resource_version != str(self.cluster_version):
            raise KubernetesConflict("MonitoredCluster changed since it was observed")
        status = apply_merge_patch(self.cluster_status, patch)
        types = [c["type"] for c in status.get("conditions", [])]
        if self.refuse_status and len(types) > 1:
            raise KubernetesRejected("422 Unprocessable Entity: status.conditions: Duplicate value")
        self.cluster_status = status
        self.cluster_version += 1
        self.statuses.append(patch)

    async def read_status(self, ref: ClusterRef) -> tuple[dict[str, Any], str] | None:
        self._check()
        return copy.deepcopy(self.cluster_status), str(self.cluster_version)

    def observed(self) -> list[ObservedTicket]:
        """The Tickets as the operator's watch sees them."""
        return [observed_ticket(copy.deepcopy(body)) for body in self.objects.values()]

    @property
    def status(self) -> dict[str, Any]:
        """The MonitoredCluster's status as the API server holds it."""
        return copy.deepcopy(self.cluster_status)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        """Each Ticket's status, by name."""
        return {name: body.get("status", {}) for name, body in self.objects.items()}

    @property
    def specs(self) -> dict[str, dict[str, Any]]:
        return {name: body.get("spec", {}) for name, body in self.objects.items()}


async def observed_cycle(
    monitor: Monitor,
    ref: ClusterRef,
    spec: dict[str, Any],
    pods: Sequence[StorePod],
    now: datetime,
    status: dict[str, Any] | None = None,
) -> CycleStats:
    """One cycle against a FakeMirror as kopf runs it: the cluster's status (or ``status``, in its place) and the
    Tickets as the watch observes them."""
    mirror = monitor.mirror
    assert isinstance(mirror, FakeMirror)
    observed = mirror.status if status is None else status
    return await monitor.check_cluster(
        ref, spec, pods, observed, now, tickets_shown=mirror.observed(), resource_version=str(mirror.cluster_version)
    )


class FakeLeases:
    """Leases with the API server's compare-and-set: a write carrying an old resourceVersion is refused."""

    def __init__(self) -> None:
        self.leases: dict[str, LeaseRecord] = {}
        self._versions = itertools.count(1)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    async def list(self) -> list[LeaseRecord]:
        self._check()
        return list(self.leases.values())

    async def write(self, lease: LeaseRecord, *, acquired: bool) -> bool:
        self._check()
        current = self.leases.get(lease.name)
        if (current.version if current else "") != lease.version:
            return False
        self.leases[lease.name] = replace(lease, version=str(next(self._versions)))
        return True

    async def delete(self, lease: LeaseRecord) -> None:
        self._check()
        self.leases.pop(lease.name, None)

    def holders(self) -> dict[int, str]:
        return {int(r.name.rsplit("-", 1)[1]): r.holder for r in self.leases.values() if "-shard-" in r.name}
