"""One check cycle per MonitoredCluster: gather → decide → act, against the ports.

The service keeps a small memory per cluster (its tickets as Postgres last returned them, writes not yet stored,
and what the Ticket resources last showed), so a healthy steady cycle costs one Postgres round trip, a bounded
number of Prometheus queries, and no Kubernetes write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from operator_k8s.domain import conditions as cond
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.invariants import Finding, evaluate, invariant_names, invariant_spec
from operator_k8s.domain.observations import QueryResult, Snapshot, StorePod, select_pods
from operator_k8s.domain.projections import projection_differs, ticket_labels, ticket_name, ticket_status
from operator_k8s.domain.queries import builtin_query, custom_query
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.status import StoreCounts, conditions_from_wire, status_body, status_patch
from operator_k8s.domain.tickets import (
    EFFECT_REASON,
    EffectKind,
    Policy,
    Ticket,
    TicketKey,
    TicketState,
    Transition,
    apply_human_intent,
    retire,
    transition,
)
from operator_k8s.domain.vocabulary import Invariant, Reason
from operator_k8s.ports import (
    ClusterRef,
    MetricsSource,
    Projection,
    TicketEvent,
    TicketMirror,
    TicketStore,
    TicketStoreUnavailable,
    TicketWrite,
)

log = logging.getLogger("operator_k8s.service")

WARNING_EFFECTS = {EffectKind.OPENED, EffectKind.REOPENED, EffectKind.ESCALATED}


@dataclass(frozen=True)
class ServiceSettings:
    reopen_window: timedelta = timedelta(minutes=10)
    ticket_retention: timedelta = timedelta(hours=1)


@dataclass
class ClusterMemory:
    """What the operator remembers about one cluster between cycles (small and flat)."""

    tickets: list[Ticket] | None = None
    outbox: list[TicketWrite] = field(default_factory=list)
    projected: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CycleStats:
    """Counters of what a cycle cost, for the operator's metrics and the benchmark."""

    queries: int = 0
    postgres_round_trips: int = 0
    kubernetes_writes: int = 0
    transitions: int = 0
    errors: list[str] = field(default_factory=list)
    """Kinds of dependency failures met (``prometheus_unreachable``, ``query_failed``, ``postgres_unavailable``)."""


class Monitor:
    def __init__(
        self,
        *,
        store: TicketStore,
        metrics: MetricsSource,
        mirror: TicketMirror,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.mirror = mirror
        self.settings = settings or ServiceSettings()
        self.memories: dict[str, ClusterMemory] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def memory(self, uid: str) -> ClusterMemory:
        return self.memories.setdefault(uid, ClusterMemory())

    # -- the cycle -------------------------------------------------------------------------------------------------

    @contextmanager
    def _in_flight_cycle(self) -> Iterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait for the cycles in flight to finish (graceful shutdown); False if some were still running."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def check_cluster(
        self,
        ref: ClusterRef,
        raw_spec: dict[str, Any],
        pods: Sequence[StorePod],
        previous_status: dict[str, Any],
        now: datetime,
    ) -> tuple[dict[str, Any] | None, CycleStats]:
        """Run one cycle; return the status to write (None: nothing changed) and what the cycle cost."""
        with self._in_flight_cycle():
            stats = CycleStats()
            previous = conditions_from_wire(previous_status.get("conditions"))
            try:
                spec = MonitoredClusterSpec.model_validate(raw_spec)
            except ValidationError as error:
                message = _validation_message(error)
                log.warning(
                    "Rejected MonitoredCluster spec",
                    extra={"cluster": ref.name, "namespace": ref.namespace, "error": message},
                )
                conditions = cond.invalid_spec_conditions(previous, message, ref.generation, now)
                return status_patch(
                    previous_status, status_body(conditions, ref.generation, None, None, now), now
                ), stats
            pods = select_pods(pods, spec.stores.selector.match_labels)
            memory = self.memory(ref.uid)
            store_error = await self._refresh(ref, memory, now, stats) if memory.tickets is None else None

            results = await self._query(spec, ref.namespace, pods, stats)
            tracked = _tracked_stores(memory.tickets or [])
            findings = evaluate(spec, Snapshot(pods=tuple(pods), results=results, tracked_stores=tracked))
            counts = StoreCounts.of(pods, spec.stores.expected)

            if memory.tickets is None:
                conditions = cond.ticket_store_down_conditions(
                    previous, findings, store_error or "", ref.generation, now
                )
                body = status_body(conditions, ref.generation, counts, None, now)
                return status_patch(previous_status, body, now), stats

            transitions = self._decide(ref, spec, findings, memory.tickets, now)
            events = _events(transitions)
            store_error = await self._store(ref, memory, transitions, now, stats)
            await self._mirror(ref, memory, now, stats)
            if events:
                await self.mirror.events(ref, events)
                stats.kubernetes_writes += len(events)
                for event in events:
                    log.info(
                        event.message, extra={"cluster": ref.name, "namespace": ref.namespace, "reason": event.reason}
                    )

            outcome = cond.CycleOutcome(invariant_names(spec), findings, memory.tickets, store_error)
            conditions = cond.conditions_for(outcome, previous, ref.generation, now)
            open_count = sum(1 for t in memory.tickets if t.state.active)
            patch = status_patch(previous_status, status_body(conditions, ref.generation, counts, open_count, now), now)
            stats.transitions = sum(1 for t in transitions if t.effects)
            log.debug(
                "Checked MonitoredCluster",
                extra={
                    "cluster": ref.name,
                    "namespace": ref.namespace,
                    "findings": len(findings),
                    "queries": stats.queries,
                    "transitions": stats.transitions,
                    "status_written": patch is not None,
                },
            )
            return patch, stats

    async def _refresh(self, ref: ClusterRef, memory: ClusterMemory, now: datetime, stats: CycleStats) -> str | None:
        """Load the cluster's tickets (first cycle after start, or after Postgres was unreachable)."""
        try:
            stats.postgres_round_trips += 1
            memory.tickets = await self.store.sync(ref.uid, memory.outbox, self._horizon(now))
            memory.outbox.clear()
            return None
        except TicketStoreUnavailable as error:
            stats.errors.append("postgres_unavailable")
            log.warning(
                "Could not load Tickets", extra={"cluster": ref.name, "namespace": ref.namespace, "error": str(error)}
            )
            return str(error)

    async def _query(
        self, spec: MonitoredClusterSpec, namespace: str, pods: Sequence[StorePod], stats: CycleStats
    ) -> dict[str, QueryResult]:
        """One instant query per enabled metric invariant, concurrently; the count never grows with stores."""
        stores = tuple(sorted(pod.name for pod in pods))
        queries: dict[str, str] = {}
        if spec.invariants.latency.enabled:
            queries[Invariant.LATENCY] = builtin_query(spec, Invariant.LATENCY, namespace, stores)
        if spec.invariants.disk_usage.enabled:
            queries[Invariant.DISK_USAGE] = builtin_query(spec, Invariant.DISK_USAGE, namespace, stores)
        for custom in spec.invariants.custom:
            if custom.enabled:
                queries[custom.name] = custom_query(custom)
        timeout = parse_duration(spec.prometheus.timeout)
        url = spec.prometheus.url
        label = spec.prometheus.store_label
        outcomes = await asyncio.gather(
            *(self.metrics.query(url, q, store_label=label, timeout=timeout) for q in queries.values())
        )
        stats.queries += len(queries)
        stats.errors += [f"prometheus_{o.failure.value}" for o in outcomes if o.failure is not None]
        return dict(zip(queries, outcomes, strict=True))

    def _decide(
        self,
        ref: ClusterRef,
        spec: MonitoredClusterSpec,
        findings: Sequence[Finding],
        tickets: list[Ticket],
        now: datetime,
    ) -> list[Transition]:
        current = _current_by_key(tickets)
        policies = {name: self._policy(spec, name) for name in invariant_names(spec)}
        transitions = []
        for finding in findings:
            key = TicketKey(ref.uid, finding.invariant, finding.store)
            result = transition(
                current.get(key),
                finding,
                now,
                policies[finding.invariant],
                key=key,
                namespace=ref.namespace,
                cluster_name=ref.name,
            )
            if result.changed:
                transitions.append(result)
        for key, ticket in current.items():
            if key.invariant not in policies and ticket.state is not TicketState.RESOLVED:
                transitions.append(retire(ticket, now, Reason.INVARIANT_REMOVED))
        return transitions

    def _policy(self, spec: MonitoredClusterSpec, invariant: str) -> Policy:
        """One invariant's timing, parsed once per cycle rather than once per finding."""
        settings = invariant_spec(spec, invariant)
        assert settings is not None
        return Policy(
            onset_grace=timedelta(seconds=settings.for_seconds),
            clear_grace=timedelta(seconds=settings.clear_for_seconds),
            reopen_window=self.settings.reopen_window,
        )

    async def _store(
        self,
        ref: ClusterRef,
        memory: ClusterMemory,
        transitions: Sequence[Transition],
        now: datetime,
        stats: CycleStats,
    ) -> str | None:
        """Record the transitions in one round trip; if Postgres is down keep them (in order) for the next cycle."""
        assert memory.tickets is not None
        memory.outbox += [TicketWrite(t.before, t.after, t.effects, now) for t in transitions]
        memory.tickets = _apply_locally(memory.tickets, transitions)
        try:
            stats.postgres_round_trips += 1
            memory.tickets = await self.store.sync(ref.uid, memory.outbox, self._horizon(now))
            memory.outbox.clear()
            return None
        except TicketStoreUnavailable as error:
            stats.errors.append("postgres_unavailable")
            log.warning(
                "Could not store Ticket transitions",
                extra={
                    "cluster": ref.name,
                    "namespace": ref.namespace,
                    "queued": len(memory.outbox),
                    "error": str(error),
                },
            )
            return str(error)

    async def _mirror(self, ref: ClusterRef, memory: ClusterMemory, now: datetime, stats: CycleStats) -> None:
        """Create or patch the Ticket resources that changed; delete resolved ones past retention."""
        assert memory.tickets is not None
        desired: dict[str, Projection] = {}
        for ticket in memory.tickets:
            if ticket.id is None or ticket.state is TicketState.PENDING:
                continue
            if ticket.resolved_at is not None and now - ticket.resolved_at > self.settings.ticket_retention:
                continue
            name = ticket_name(ticket)
            desired[name] = Projection(name, ticket_labels(ticket), ticket_status(ticket))
        for name, projection in desired.items():
            if projection_differs(memory.projected.get(name), projection.status):
                await self.mirror.upsert(ref, projection)
                memory.projected[name] = projection.status
                stats.kubernetes_writes += 1
        for name in [n for n in memory.projected if n not in desired]:
            await self.mirror.delete(ref.namespace, name)
            del memory.projected[name]
            stats.kubernetes_writes += 1

    def _horizon(self, now: datetime) -> datetime:
        return now - max(self.settings.reopen_window, self.settings.ticket_retention)

    # -- other entry points ----------------------------------------------------------------------------------------

    async def cluster_deleted(self, ref: ClusterRef, now: datetime) -> int:
        """Resolve every open ticket of a deleted cluster with reason ClusterDeleted; return how many."""
        memory = self.memory(ref.uid)
        if memory.tickets is None:
            memory.tickets = await self.store.sync(ref.uid, memory.outbox, self._horizon(now))
            memory.outbox.clear()
        transitions = [retire(t, now, Reason.CLUSTER_DELETED) for t in memory.tickets]
        changed = [t for t in transitions if t.changed]
        writes = [*memory.outbox, *(TicketWrite(t.before, t.after, t.effects, now) for t in changed)]
        await self.store.sync(ref.uid, writes, self._horizon(now))
        self.memories.pop(ref.uid, None)
        return sum(1 for t in changed if t.after is not None)

    async def human_intent(
        self, cluster_uid: str, ticket_id: int, *, hold: bool, acknowledged: bool, actor: str, now: datetime
    ) -> bool:
        """Fold a human's edit of a Ticket resource into Postgres; False if the ticket is not known (yet)."""
        memory = self.memory(cluster_uid)
        if memory.tickets is None:
            memory.tickets = await self.store.sync(cluster_uid, memory.outbox, self._horizon(now))
            memory.outbox.clear()
        ticket = next((t for t in memory.tickets if t.id == ticket_id), None)
        if ticket is None:
            return False
        result = apply_human_intent(ticket, hold=hold, acknowledged=acknowledged, actor=actor)
        if not result.changed:
            return True
        memory.outbox.append(TicketWrite(result.before, result.after, result.effects, now))
        memory.tickets = _apply_locally(memory.tickets, [result])
        memory.tickets = await self.store.sync(cluster_uid, memory.outbox, self._horizon(now))
        memory.outbox.clear()
        return True

    def forget_projection(self, cluster_uid: str, name: str) -> None:
        """A Ticket resource was deleted: the next cycle recreates it from Postgres if it is still wanted."""
        memory = self.memories.get(cluster_uid)
        if memory is not None:
            memory.projected.pop(name, None)

    async def close(self, grace: float = 20.0) -> None:
        """Let the cycles in flight finish (up to ``grace`` seconds), then close the Postgres pool."""
        if not await self.drain(grace):
            log.warning("Closed with MonitoredCluster checks still running", extra={"in_flight": self._in_flight})
        await self.store.close()
        log.info("Closed the ticket store")


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        parts.append(f"spec.{where}: {item['msg']}")
    return "; ".join(parts)


def _tracked_stores(tickets: Sequence[Ticket]) -> dict[str, frozenset[str]]:
    tracked: dict[str, set[str]] = {}
    for ticket in tickets:
        if ticket.state is not TicketState.RESOLVED:
            tracked.setdefault(ticket.key.invariant, set()).add(ticket.key.store)
    return {name: frozenset(stores) for name, stores in tracked.items()}


def _current_by_key(tickets: Sequence[Ticket]) -> dict[TicketKey, Ticket]:
    """The ticket each key's findings apply to: its unresolved one, else its most recently resolved one."""
    current: dict[TicketKey, Ticket] = {}
    for ticket in tickets:
        other = current.get(ticket.key)
        if other is None or _precedes(other, ticket):
            current[ticket.key] = ticket
    return current


def _precedes(a: Ticket, b: Ticket) -> bool:
    if (a.state is TicketState.RESOLVED) != (b.state is TicketState.RESOLVED):
        return a.state is TicketState.RESOLVED
    return (a.resolved_at or a.first_seen) < (b.resolved_at or b.first_seen)


def _apply_locally(tickets: list[Ticket], transitions: Sequence[Transition]) -> list[Ticket]:
    """The ticket list after the transitions, before Postgres confirms them."""
    result = list(tickets)
    for item in transitions:
        if item.before is not None:
            result = [t for t in result if t is not item.before]
        if item.after is not None:
            result.append(item.after)
    return result


def _events(transitions: Sequence[Transition]) -> list[TicketEvent]:
    events = []
    for item in transitions:
        ticket = item.after or item.before
        assert ticket is not None
        for effect in item.effects:
            reason = EFFECT_REASON.get(effect.kind)
            if reason is None:
                continue
            message = f"Ticket {effect.kind.lower()} for {ticket.key.invariant} on {ticket.key.store}: {effect.reason}"
            events.append(TicketEvent(reason=reason, message=message[:1024], warning=effect.kind in WARNING_EFFECTS))
    return events
