"""One check cycle per MonitoredCluster: gather → decide → act, against the ports.

Postgres is the arbiter: every ticket write is a compare-and-set on the version it was decided from, and a write
that loses re-reads and re-decides. What the service keeps per cluster (its tickets as Postgres last returned them,
what the Ticket resources and the status last showed) is a cache: ``drop_caches`` may be called at any moment and
changes no outcome. Writes decided while Postgres is away wait in a bounded outbox (``domain.outbox``). Per cluster,
the cycle and human edits are serialised by a lock. A cycle survives anything it meets: dependency failures degrade
to conditions, and any other error is counted and shown on the cluster; the next interval runs again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from operator_k8s.domain import conditions as cond
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.invariants import Finding, evaluate, invariant_names, invariant_spec
from operator_k8s.domain.observations import QueryResult, Snapshot, StorePod, scope_result, select_pods
from operator_k8s.domain.outbox import Outbox
from operator_k8s.domain.projections import (
    ObservedEdit,
    ObservedTicket,
    observed_edit,
    plan_tickets,
    ticket_body,
    ticket_name,
    ticket_spec,
)
from operator_k8s.domain.queries import cycle_queries
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.status import (
    FOREIGN_STATUS_KEYS,
    StoreCounts,
    conditions_from_wire,
    merge_patch,
    status_body,
    status_patch,
)
from operator_k8s.domain.tickets import (
    EFFECT_REASON,
    EffectKind,
    HumanEdit,
    Policy,
    Ticket,
    TicketKey,
    TicketState,
    Transition,
    apply_human_intent,
    retire,
    transition,
)
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Reason
from operator_k8s.ports import (
    ClusterRef,
    KubernetesConflict,
    KubernetesNotFound,
    KubernetesRejected,
    KubernetesUnavailable,
    MetricsSource,
    SyncResult,
    TicketEvent,
    TicketMirror,
    TicketResource,
    TicketStore,
    TicketStoreUnavailable,
)

log = logging.getLogger("operator_k8s.service")
T = TypeVar("T")

WARNING_EFFECTS = {EffectKind.OPENED, EffectKind.REOPENED, EffectKind.ESCALATED}
DECISION_ATTEMPTS = 3
"""How often one cycle re-decides after losing a compare-and-set race before leaving it to the next cycle."""


@dataclass(frozen=True)
class ServiceSettings:
    reopen_window: timedelta = timedelta(minutes=10)
    ticket_retention: timedelta = timedelta(hours=1)
    postgres_timeout: float = 5.0
    """Longest wait for one Postgres round trip; a cycle waits at most min(this, its interval)."""
    after_commit: Callable[[], None] = lambda: None
    """Called after Postgres applied a cycle's transitions and before Kubernetes shows them: the crash-test failpoint
    (the composition root may make it kill the process), a no-op otherwise."""


@dataclass
class ClusterMemory:
    """What the operator keeps about one cluster between cycles (small and flat).

    ``tickets`` is a cache of what Postgres holds; ``outbox`` holds writes Postgres has not confirmed yet (decided
    while it was unreachable). What Kubernetes shows is never remembered: each cycle observes it.
    """

    tickets: list[Ticket] | None = None
    outbox: Outbox = field(default_factory=Outbox)


@dataclass
class CycleStats:
    """Counters of what a cycle cost and met, for the operator's metrics and the benchmark."""

    queries: int = 0
    postgres_round_trips: int = 0
    kubernetes_writes: int = 0
    ticket_writes: int = 0
    """Of ``kubernetes_writes``, those to Ticket resources (create, patch, delete)."""
    transitions: int = 0
    conflicts: int = 0
    ignored_series: int = 0
    status_written: bool = False
    errors: list[str] = field(default_factory=list)
    """Kinds of failures met (``prometheus_unreachable``, ``prometheus_error``, ``postgres_unavailable``,
    ``postgres_rejected``, ``kubernetes_unavailable``, ``kubernetes_rejected``, ``cycle_failed``)."""


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
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def memory(self, uid: str) -> ClusterMemory:
        return self.memories.setdefault(uid, ClusterMemory())

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def drop_caches(self, uid: str | None = None) -> None:
        """Forget what is cached about one cluster (or all); the next cycle re-reads Postgres. Queued writes stay."""
        for key, memory in self.memories.items():
            if uid is None or key == uid:
                memory.tickets = None

    def forget(self, uid: str) -> None:
        """A cluster left the watch (deleted, or its finalizer stripped): drop what was kept about it. Writes still
        queued for it are dropped too; the orphan sweep resolves its tickets from Postgres."""
        self.memories.pop(uid, None)
        self._locks.pop(uid, None)

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
        observed_status: dict[str, Any],
        now: datetime,
        *,
        deadline: float | None = None,
        tickets_shown: Sequence[ObservedTicket] = (),
        resource_version: str | None = None,
    ) -> CycleStats:
        """Run one cycle and write the cluster's status as a diff from the observed one. Never raises (but may be
        cancelled).

        ``tickets_shown``: the Ticket resources the watch sees in the cluster's namespace; ``resource_version``: the
        cluster's, as observed with ``observed_status``. A cycle still running after ``deadline`` seconds is
        cancelled and says so on the cluster (Healthy Unknown, CheckFailed): a hung dependency shows where the SRE
        looks, not only in the operator's log and metrics.
        """
        stats = CycleStats()
        with self._in_flight_cycle():
            async with self._lock(ref.uid):
                memory = self.memory(ref.uid)
                try:
                    cycle = self._cycle(ref, raw_spec, pods, observed_status, memory, now, stats, tickets_shown)
                    desired = await _within_deadline(deadline, cycle)
                except _DeadlineExceeded:
                    stats.errors.append("cycle_timeout")
                    log.error(
                        "Check of MonitoredCluster timed out",
                        extra={"cluster": ref.name, "namespace": ref.namespace, "deadline_s": deadline},
                    )
                    message = f"The check did not finish within its deadline of {deadline:g}s and was cancelled"
                    desired = _failed_status(observed_status, ref, message, now)
                except Exception as error:  # a check must survive anything it meets; the next interval runs again
                    stats.errors.append("cycle_failed")
                    log.exception(
                        "Failed to check MonitoredCluster", extra={"cluster": ref.name, "namespace": ref.namespace}
                    )
                    desired = _failed_status(observed_status, ref, f"{type(error).__name__}: {error}", now)
                try:
                    await self._write_status(ref, observed_status, resource_version, desired, now, stats)
                except Exception:  # the status of anything the API server holds must never stop the checks
                    stats.errors.append("cycle_failed")
                    log.exception(
                        "Failed to write MonitoredCluster status",
                        extra={"cluster": ref.name, "namespace": ref.namespace},
                    )
        return stats

    async def _cycle(
        self,
        ref: ClusterRef,
        raw_spec: dict[str, Any],
        pods: Sequence[StorePod],
        previous_status: dict[str, Any],
        memory: ClusterMemory,
        now: datetime,
        stats: CycleStats,
        tickets_shown: Sequence[ObservedTicket],
    ) -> dict[str, Any]:
        previous = conditions_from_wire(previous_status.get("conditions"))
        try:
            spec = MonitoredClusterSpec.model_validate(raw_spec)
        except ValidationError as error:
            message = _validation_message(error)
            log.warning(
                "Rejected MonitoredCluster spec",
                extra={"cluster": ref.name, "namespace": ref.namespace, "error": message},
            )
            conditions = cond.health_unknown_conditions(previous, Reason.INVALID_SPEC, message, ref.generation, now)
            return status_body(conditions, ref.generation, None, None, now)
        deadline = min(self.settings.postgres_timeout, spec.interval_seconds)
        pd_pods = tuple(sorted(p.name for p in select_pods(pods, spec.pd.selector.match_labels))) if spec.pd else ()
        pods = select_pods(pods, spec.stores.selector.match_labels)
        store_error = None
        tickets = memory.tickets
        if tickets is None:
            tickets, store_error = await self._load(ref, memory, now, stats, deadline)

        tracked = _tracked_stores(tickets or [])
        owned = frozenset(pod.name for pod in pods).union(*tracked.values()) - {CLUSTER_STORE}
        results = await self._query(spec, ref.namespace, owned, pd_pods, stats)
        findings = evaluate(spec, Snapshot(pods=tuple(pods), results=results, tracked_stores=tracked))
        counts = StoreCounts.of(pods, spec.stores.expected)

        if tickets is None:
            conditions = cond.ticket_store_down_conditions(
                previous, findings, store_error or "", ref.generation, now, stats.ignored_series
            )
            return status_body(conditions, ref.generation, counts, None, now)

        shown = [t for t in tickets_shown if t.namespace == ref.namespace]
        edits = _human_edits(tickets, shown)
        applied, tickets, stored_error = await self._decide_and_store(
            ref, spec, memory, tickets, findings, now, stats, deadline, edits
        )
        if stored_error is not None:
            store_error = stored_error
        else:
            if applied:
                self.settings.after_commit()
            # Shown only once Postgres holds it: a Ticket's spec edit stays visible (and is re-read after a crash)
            # until its intent is stored.
            await self._project(ref, tickets, shown, now, stats)
        await self._post_events(ref, applied, stats)

        outcome = cond.CycleOutcome(
            invariant_names(spec), findings, tickets, store_error, ignored_series=stats.ignored_series
        )
        conditions = cond.conditions_for(outcome, previous, ref.generation, now)
        open_count = sum(1 for t in tickets if t.state.active)
        stats.transitions = sum(1 for t in applied if t.effects)
        log.debug(
            "Checked MonitoredCluster",
            extra={
                "cluster": ref.name,
                "namespace": ref.namespace,
                "findings": len(findings),
                "queries": stats.queries,
                "transitions": stats.transitions,
            },
        )
        return status_body(conditions, ref.generation, counts, open_count, now)

    async def _load(
        self, ref: ClusterRef, memory: ClusterMemory, now: datetime, stats: CycleStats, deadline: float
    ) -> tuple[list[Ticket] | None, str | None]:
        """Read the cluster's tickets (first cycle, a dropped cache, or after an outage, flushing queued writes):
        the tickets, or the reason Postgres could not be read."""
        try:
            return (await self._sync(ref, memory, stats, now, deadline)).tickets, None
        except TicketStoreUnavailable as error:
            stats.errors.append("postgres_unavailable")
            log.warning(
                "Could not load Tickets", extra={"cluster": ref.name, "namespace": ref.namespace, "error": str(error)}
            )
            return None, str(error)

    async def _sync(
        self, ref: ClusterRef, memory: ClusterMemory, stats: CycleStats, now: datetime, deadline: float
    ) -> SyncResult:
        """Send the queued writes (maybe none) and take what Postgres holds as the new cache."""
        writes = memory.outbox.to_writes()
        stats.postgres_round_trips += 1
        result = await self.store.sync(ref.uid, writes, self._horizon(now), deadline=deadline)
        memory.outbox = Outbox()
        memory.tickets = result.tickets
        if result.rejected:
            stats.errors += ["postgres_rejected"] * len(result.rejected)
            log.warning(
                "Postgres rejected Ticket writes; dropped them",
                extra={"cluster": ref.name, "namespace": ref.namespace, "rejected": list(result.rejected)},
            )
        stats.conflicts += len(result.conflicts)
        return result

    async def _query(
        self, spec: MonitoredClusterSpec, namespace: str, owned: frozenset[str], pd_pods: tuple[str, ...],
        stats: CycleStats,
    ) -> dict[str, QueryResult]:  # fmt: skip
        """Every query of the cycle (``cycle_queries``), concurrently; the count never grows with stores.

        Only this cluster's series are kept (``scope_result``); the others are counted in ``stats.ignored_series``.
        A store-scoped query with no store to ask about is not sent (its findings are simply empty).
        """
        queries = cycle_queries(spec, namespace, tuple(sorted(owned)), pd_pods)
        timeout = parse_duration(spec.prometheus.timeout)
        outcomes = await asyncio.gather(
            *(
                self.metrics.query(
                    spec.prometheus.url,
                    query.promql,
                    store_label=spec.prometheus.store_label,
                    namespace_label=spec.prometheus.namespace_label,
                    timeout=timeout,
                    auth=spec.prometheus.auth,
                )
                for query in queries.values()
            )
        )
        stats.queries += len(queries)
        stats.errors += [f"prometheus_{o.failure.value}" for o in outcomes if o.failure is not None]
        results = {}
        for (name, query), outcome in zip(queries.items(), outcomes, strict=True):
            results[name], ignored = scope_result(
                outcome, namespace, owned, per_store=query.per_store, namespace_scoped=query.namespace_scoped
            )
            stats.ignored_series += ignored
        return results

    async def _decide_and_store(
        self,
        ref: ClusterRef,
        spec: MonitoredClusterSpec,
        memory: ClusterMemory,
        tickets: list[Ticket],
        findings: Sequence[Finding],
        now: datetime,
        stats: CycleStats,
        deadline: float,
        edits: Sequence[ObservedEdit] = (),
    ) -> tuple[list[Transition], list[Ticket], str | None]:
        """Decide, write with compare-and-set, and re-decide from what Postgres holds if a write lost a race.

        ``edits``: human edits observed on the Tickets, folded in first (a hold set now counts in this decision).

        Returns the transitions Postgres applied, the tickets after them, and the reason Postgres could not be
        reached, if so (the writes then wait in the outbox and the tickets show them, so the next cycles decide on
        top of them). Works on its own list: the cache (``memory.tickets``) is only written, so dropping it at
        any await changes nothing here.
        """
        applied: list[Transition] = []
        for _ in range(DECISION_ATTEMPTS):
            folded = _fold_edits(tickets, edits)
            tickets = _apply_locally(tickets, folded)
            transitions = folded + self._decide(ref, spec, findings, tickets, now)
            queued_before = len(memory.outbox)
            memory.outbox = memory.outbox.add(transitions, now)
            writes = memory.outbox.writes
            tickets = memory.tickets = _apply_locally(tickets, transitions)
            try:
                result = await self._sync(ref, memory, stats, now, deadline)
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
                return applied, tickets, str(error)
            lost = {id(writes[i].after) for i in result.conflicts if i < len(writes)}
            applied += [t for t in transitions if id(t.after) not in lost]
            tickets = result.tickets
            if not result.conflicts:
                return applied, tickets, None
            log.info(
                "Lost a Ticket write race; re-deciding from Postgres",
                extra={"cluster": ref.name, "namespace": ref.namespace, "conflicts": len(result.conflicts),
                       "queued_before": queued_before},
            )  # fmt: skip
        return applied, tickets, None

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

    async def _project(
        self, ref: ClusterRef, tickets: Sequence[Ticket], shown: Sequence[ObservedTicket], now: datetime,
        stats: CycleStats,
    ) -> None:  # fmt: skip
        """Write exactly the diff between the Tickets Postgres wants shown (open, and resolved within retention) and
        the ones observed. A write that conflicts (the Ticket changed since the watch saw it) or is refused is
        counted and left to the next cycle, which observes again; nothing here is remembered."""
        desired = [
            ticket_body(ticket)
            for ticket in tickets
            if ticket.id is not None
            and ticket.state is not TicketState.PENDING
            and (ticket.resolved_at is None or now - ticket.resolved_at <= self.settings.ticket_retention)
        ]
        plan = plan_tickets(ref.uid, desired, shown)
        try:
            for body in plan.creates:
                await self._kube_write(self.mirror.create(body), stats)
            for item in plan.patches:
                patched = self.mirror.patch(ref.namespace, item.name, item.resource_version, item.patch)
                if await self._kube_write(patched, stats) is _NOT_FOUND:
                    # The watch lags behind a deletion (or the CRD was re-created): build it again.
                    body = next(b for b in desired if b["metadata"]["name"] == item.name)
                    await self._kube_write(self.mirror.create(body), stats)
            for name in plan.deletes:
                await self._kube_write(self.mirror.delete(ref.namespace, name), stats)
        except _MirrorFailed:
            return

    async def _kube_write(self, call: Coroutine[Any, Any, None], stats: CycleStats) -> object:
        """Await one Kubernetes write and count it; an outage stops this cycle's projection, a conflict or refusal is
        counted and skipped (the next cycle observes again and retries)."""
        stats.kubernetes_writes += 1
        stats.ticket_writes += 1
        try:
            await call
        except KubernetesConflict:
            stats.conflicts += 1
        except KubernetesNotFound:
            return _NOT_FOUND
        except KubernetesRejected as error:
            stats.errors.append("kubernetes_rejected")
            log.warning("Kubernetes refused a Ticket write", extra={"error": str(error)})
        except KubernetesUnavailable as error:
            stats.errors.append("kubernetes_unavailable")
            raise _MirrorFailed from error
        return None

    async def _post_events(self, ref: ClusterRef, transitions: Sequence[Transition], stats: CycleStats) -> None:
        events = _events(transitions)
        if not events:
            return
        for event in events:
            log.info(event.message, extra={"cluster": ref.name, "namespace": ref.namespace, "reason": event.reason})
        try:
            await self.mirror.events(ref, events)
            stats.kubernetes_writes += len(events)
        except (KubernetesUnavailable, KubernetesRejected):
            stats.errors.append("kubernetes_unavailable")  # Events are best effort; the history is in Postgres

    async def _write_status(
        self,
        ref: ClusterRef,
        observed: dict[str, Any],
        resource_version: str | None,
        desired: dict[str, Any],
        now: datetime,
        stats: CycleStats,
    ) -> None:
        """Write the diff from the observed status, if any (or the heartbeat is due), locked on the resourceVersion
        it was computed from; on a conflict, read the status again and write the new diff once. A refused status is
        replaced by a minimal one that says why, so the refusal shows on the cluster instead of silently
        repeating."""
        patch = status_patch(observed, desired, now)
        if patch is None:
            return
        try:
            try:
                await self.mirror.write_status(ref, patch, resource_version)
            except KubernetesConflict:
                stats.conflicts += 1
                current = await self.mirror.read_status(ref)
                if current is None:
                    return
                observed, resource_version = current
                patch = status_patch(observed, desired, now)
                if patch is None:
                    return
                stats.kubernetes_writes += 1
                await self.mirror.write_status(ref, patch, resource_version)
            stats.status_written = True
            stats.kubernetes_writes += 1
        except (KubernetesUnavailable, KubernetesConflict) as error:
            stats.errors.append("kubernetes_unavailable")
            log.warning(
                "Could not write MonitoredCluster status",
                extra={"cluster": ref.name, "namespace": ref.namespace, "error": str(error)},
            )
        except KubernetesRejected as error:
            stats.errors.append("kubernetes_rejected")
            log.error(
                "API server refused MonitoredCluster status",
                extra={"cluster": ref.name, "namespace": ref.namespace, "error": str(error)},
            )
            fallback = _failed_status(observed, ref, f"The API server refused the status: {error}", now, only=True)
            try:
                await self.mirror.write_status(ref, merge_patch(observed, fallback, keep=FOREIGN_STATUS_KEYS), None)
                stats.kubernetes_writes += 1
            except (KubernetesUnavailable, KubernetesRejected, KubernetesConflict):
                pass

    async def _cached(self, ref: ClusterRef, memory: ClusterMemory, stats: CycleStats, now: datetime) -> list[Ticket]:
        """The cluster's tickets: the cache, else read from Postgres (TicketStoreUnavailable if it does not answer)."""
        if memory.tickets is not None:
            return memory.tickets
        return (await self._sync(ref, memory, stats, now, self.settings.postgres_timeout)).tickets

    def _horizon(self, now: datetime) -> datetime:
        return now - max(self.settings.reopen_window, self.settings.ticket_retention)

    # -- other entry points ----------------------------------------------------------------------------------------

    async def cluster_deleted(self, ref: ClusterRef, now: datetime) -> int:
        """Resolve every unresolved ticket of a deleted cluster with reason ClusterDeleted; return how many.

        Raises TicketStoreUnavailable if Postgres does not answer (the orphan sweep retries later)."""
        async with self._lock(ref.uid):
            memory = self.memory(ref.uid)
            resolved = 0
            stats = CycleStats()
            for _ in range(DECISION_ATTEMPTS):
                tickets = await self._cached(ref, memory, stats, now)
                changed = [t for t in (retire(t, now, Reason.CLUSTER_DELETED) for t in tickets) if t.changed]
                if not changed:
                    break
                memory.outbox = memory.outbox.add(changed, now)
                writes = memory.outbox.writes
                result = await self._sync(ref, memory, stats, now, self.settings.postgres_timeout)
                lost = {id(writes[i].after) for i in result.conflicts if i < len(writes)}
                resolved += sum(1 for t in changed if t.after is not None and id(t.after) not in lost)
                if not result.conflicts:
                    break
            self.memories.pop(ref.uid, None)
            self._locks.pop(ref.uid, None)
            return resolved

    async def human_intent(
        self,
        cluster_uid: str,
        resource: TicketResource,
        old_spec: Mapping[str, Any] | None,
        new_spec: Mapping[str, Any],
        *,
        actor: str,
        now: datetime,
    ) -> bool:
        """Fold a human's edit of a Ticket resource's spec into Postgres (compare-and-set, re-read on a lost race).

        ``old_spec`` None means kopf had not seen the resource before (just created, or edited before it was
        handled): the edit is then what differs from the intent Postgres holds. False if Postgres has no such ticket
        for the cluster, or ``resource`` is not where the operator shows it (its namespace and name). Raises
        TicketStoreUnavailable if Postgres does not answer."""
        async with self._lock(cluster_uid):
            memory = self.memory(cluster_uid)
            ref = ClusterRef(cluster_uid, "", "", 0)
            stats = CycleStats()
            for _ in range(DECISION_ATTEMPTS):
                tickets = await self._cached(ref, memory, stats, now)
                ticket = next((t for t in tickets if t.id == resource.ticket_id), None)
                if ticket is None or (ticket.namespace, ticket_name(ticket)) != (resource.namespace, resource.name):
                    return False
                edit = HumanEdit.between(ticket_spec(ticket) if old_spec is None else old_spec, new_spec)
                result = apply_human_intent(ticket, edit, actor=actor)
                if not result.changed:
                    return True
                memory.outbox = memory.outbox.add([result], now)
                memory.tickets = _apply_locally(tickets, [result])
                synced = await self._sync(ref, memory, stats, now, self.settings.postgres_timeout)
                if not synced.conflicts:
                    return True
            # Never report an edit as applied when it was not: the handler retries it later.
            raise TicketStoreUnavailable(
                f"lost {DECISION_ATTEMPTS} write races in a row for ticket {resource.ticket_id}"
            )

    async def sweep_orphans(self, candidates: dict[str, str], existing: set[str], now: datetime) -> int:
        """Resolve the tickets of the ``candidates`` (clusters with unresolved tickets: uid → namespace) that are not
        ``existing`` (the uids of every MonitoredCluster the API server lists); return how many were resolved."""
        resolved = 0
        for uid, namespace in candidates.items():
            if uid in existing:
                continue
            count = await self.cluster_deleted(ClusterRef(uid, "", namespace, 0), now)
            log.info(
                "Resolved Tickets of a MonitoredCluster that no longer exists",
                extra={"cluster_uid": uid, "namespace": namespace, "resolved": count},
            )
            resolved += count
        return resolved

    async def close(self, grace: float = 20.0) -> None:
        """Let the cycles in flight finish (up to ``grace`` seconds), then close the Postgres pool."""
        if not await self.drain(grace):
            log.warning("Closed with MonitoredCluster checks still running", extra={"in_flight": self._in_flight})
        await self.store.close()
        log.info("Closed the ticket store")


class _DeadlineExceeded(Exception):
    """A cycle ran past its deadline and was cancelled."""


async def _within_deadline(deadline: float | None, cycle: Coroutine[Any, Any, T]) -> T:
    """``cycle`` cancelled at the deadline (``_DeadlineExceeded``); a TimeoutError the cycle met inside is an
    ordinary failure."""
    scope = asyncio.timeout(deadline)
    try:
        async with scope:
            return await cycle
    except TimeoutError:
        if scope.expired():
            raise _DeadlineExceeded from None
        raise


_NOT_FOUND = object()


class _MirrorFailed(Exception):
    """The API server stopped answering mid-mirror: the rest waits for the next cycle."""


def _failed_status(
    previous: dict[str, Any], ref: ClusterRef, message: str, now: datetime, *, only: bool = False
) -> dict[str, Any]:
    """The status of a cycle that failed: Healthy Unknown (CheckFailed) with the reason, the rest as it was (or,
    with ``only``, nothing else: for a status the API server refused, whose other conditions may be the cause)."""
    before = conditions_from_wire(previous.get("conditions"))
    conditions = cond.health_unknown_conditions(
        [] if only else before, Reason.CHECK_FAILED, message[:2000], ref.generation, now
    )
    return status_body(conditions, ref.generation, None, None, now)


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        parts.append(f"spec.{where}: {item['msg']}")
    return "; ".join(parts)


def _human_edits(tickets: Sequence[Ticket] | None, shown: Sequence[ObservedTicket]) -> list[ObservedEdit]:
    """The human edits the observed Tickets show of this cluster's tickets (by name: a Ticket is the operator's by
    its name, whatever someone did to its ownerReference)."""
    by_name = {ticket_name(t): t for t in tickets or [] if t.id is not None}
    edits = []
    for observed in shown:
        ticket = by_name.get(observed.name)
        if ticket is not None and (edit := observed_edit(ticket, observed)) is not None:
            edits.append(edit)
    return edits


def _fold_edits(tickets: Sequence[Ticket], edits: Sequence[ObservedEdit]) -> list[Transition]:
    """The transitions that fold observed human edits into the tickets (none for an edit already folded)."""
    by_id = {t.id: t for t in tickets}
    folded = []
    for item in edits:
        ticket = by_id.get(item.ticket_id)
        if ticket is not None:
            result = apply_human_intent(ticket, item.edit, actor=item.actor)
            if result.changed:
                folded.append(result)
    return folded


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
    """Kubernetes Events for the transitions users hear about (see ``EFFECT_REASON``)."""
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
