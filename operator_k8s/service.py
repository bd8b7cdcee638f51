"""One check cycle per MonitoredCluster: gather → decide → act, against the ports.

Postgres is the arbiter: every ticket decision goes through the ledger (``operator_k8s.ledger``: the per-cluster
lock, the cache, the compare-and-set loop), for the cycle, a deletion and a human edit alike. What Kubernetes shows
is observed, not remembered: the cluster's status and its Tickets are written as the diff of what Postgres wants
shown against what the watch sees. A cycle survives anything it meets: dependency failures degrade to conditions,
and any other error is counted and shown on the cluster; the next interval runs again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from operator_k8s.domain import conditions as cond
from operator_k8s.domain.diagnosis import (
    EVIDENCE_BYTES,
    block_cache_known,
    bounded,
    counted_to_read,
    diagnose,
    diagnosed,
    evidence_summary,
    oom_killed,
    pod_evidence,
    worth_config_again,
    worth_evidence,
)
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.incidents import incident_links
from operator_k8s.domain.invariants import Finding, evaluate, invariant_names
from operator_k8s.domain.ledger import (
    ClusterRef,
    CycleStats,
    TicketResource,
    apply_locally,
    decide,
    events_for,
    fold_edits,
    human_edits,
    retire_all,
    shown_ticket,
    tracked_stores,
)
from operator_k8s.domain.metric_evidence import (
    COUNTED_PODS,
    EvidenceQuery,
    TicketScope,
    evidence_queries,
    pd_named_stores,
    prometheus_evidence,
    window_start,
)
from operator_k8s.domain.observations import QueryResult, Snapshot, StorePod, scope_result, select_pods
from operator_k8s.domain.projections import ObservedTicket, plan_tickets, ticket_body, ticket_patch, ticket_spec
from operator_k8s.domain.queries import cycle_queries
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.status import (
    FOREIGN_STATUS_KEYS,
    StoreCounts,
    conditions_from_wire,
    merge_patch,
    rebased,
    status_body,
    status_patch,
)
from operator_k8s.domain.tickets import HumanEdit, Ticket, TicketKey, TicketState, Transition, apply_human_intent
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Invariant, Reason
from operator_k8s.ledger import DECISION_ATTEMPTS, Ledger
from operator_k8s.ports import (
    EvidenceSource,
    KubernetesConflict,
    KubernetesNotFound,
    KubernetesRejected,
    KubernetesUnavailable,
    MetricsSource,
    TicketMirror,
    TicketStore,
    TicketStoreUnavailable,
    TikvStatusSource,
)

log = logging.getLogger("operator_k8s.service")
T = TypeVar("T")
EVIDENCE_SECONDS = 5.0
"""The most time one ticket's evidence may take (three API requests and at most seven queries, at once)."""
EVIDENCE_QUERY_SECONDS = 4.0
"""The most time one evidence query may take (its Prometheus's own timeout, if shorter): its answer lands in time."""
EVIDENCE_CALLS = 10
"""API and HTTP calls per ticket at most (issue 18): the pod's three, the queries, PD's store API (two), TiKV's
``/config``, the pods of the stores PD counts (three each)."""
POD_CALLS = 3
PD_API_CALLS = 2
"""PD's store API: the PD pod read for its address, then one GET (``_pd_api``)."""
PD_API_SECONDS = 2.0
"""The most time PD's store API may take, the PD pod's read included (PD answers in milliseconds)."""
TIKV_CONFIG_SECONDS = 2.0
"""The most time TiKV's ``/config`` may take (a status port answers in milliseconds; a hung TiKV never does)."""
TIKV_CONFIG_MIN_SECONDS = 0.2
EVIDENCE_CONCURRENCY = 4
"""Tickets whose evidence is gathered at once (a fault on many stores queues the rest)."""


@dataclass(frozen=True)
class ServiceSettings:
    reopen_window: timedelta = timedelta(minutes=10)
    ticket_retention: timedelta = timedelta(hours=1)
    postgres_timeout: float = 5.0
    """Longest wait for one Postgres round trip; a cycle waits at most min(this, its interval)."""
    after_commit: Callable[[], None] = lambda: None
    """Called after Postgres applied a cycle's transitions and before Kubernetes shows them: the crash-test failpoint
    (the composition root may make it kill the process), a no-op otherwise."""
    checked_by: Callable[[str], dict[str, Any] | None] = lambda cluster_uid: None
    """Who checks a cluster, shown on its status as ``checkedBy`` (sharding: this replica and the cluster's shard);
    None shows nothing (one process checks them all)."""


class Monitor:
    def __init__(
        self,
        *,
        store: TicketStore,
        metrics: MetricsSource,
        mirror: TicketMirror,
        settings: ServiceSettings | None = None,
        evidence: EvidenceSource | None = None,
        tikv: TikvStatusSource | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.mirror = mirror
        self.settings = settings or ServiceSettings()
        self.ledger = Ledger(store, self._horizon)
        self.evidence = evidence
        self.tikv = tikv
        self._gathering: dict[tuple[TicketKey, int], asyncio.Task[None]] = {}
        self._gather_slots = asyncio.Semaphore(EVIDENCE_CONCURRENCY)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def drop_caches(self, uid: str | None = None) -> None:
        """Forget what is cached about one cluster (or all); the next cycle re-reads Postgres. Queued writes stay."""
        self.ledger.drop_caches(uid)

    def forget(self, uid: str) -> None:
        """A cluster left the watch (deleted, or its finalizer stripped): drop what was kept about it, and let no
        check still in flight write for it."""
        self.ledger.retire(uid, time.monotonic())

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
            async with self.ledger.lock(ref.uid):
                if self.ledger.retired(ref.uid):
                    return stats  # deleted while this check waited for the lock: nothing of it is shown any more
                try:
                    cycle = self._cycle(ref, raw_spec, pods, observed_status, now, stats, tickets_shown)
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
                holder = self.settings.checked_by(ref.uid)
                if holder is not None:
                    desired["checkedBy"] = holder
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
        store_error = None
        tickets: list[Ticket] | None = None
        try:
            tickets = await self.ledger.read(ref, stats, now, deadline)
        except TicketStoreUnavailable as error:
            stats.errors.append("postgres_unavailable")
            log.warning(
                "Could not load Tickets", extra={"cluster": ref.name, "namespace": ref.namespace, "error": str(error)}
            )
            store_error = str(error)

        gathered = await gather(self.metrics, spec, ref.namespace, pods, tracked_stores(tickets or []))
        stats.queries += gathered.queries
        stats.errors += gathered.errors
        stats.ignored_series += gathered.ignored_series
        findings = gathered.findings
        counts = StoreCounts.of(gathered.stores, spec.stores.expected)

        if tickets is None:
            conditions = cond.ticket_store_down_conditions(
                previous, findings, store_error or "", ref.generation, now, stats.ignored_series
            )
            return status_body(conditions, ref.generation, counts, None, now)

        shown = [t for t in tickets_shown if t.namespace == ref.namespace]
        edits = human_edits(tickets, shown)
        reopen = self.settings.reopen_window

        def plan(current: list[Ticket]) -> list[Transition]:
            """Human edits first (a hold set now counts in this decision), then what the findings call for."""
            folded = fold_edits(current, edits)
            return folded + decide(ref, spec, findings, apply_locally(current, folded), now, reopen)

        decision = await self.ledger.decide(ref, plan, stats, now, deadline)
        applied, tickets = decision.applied, decision.tickets
        if decision.error is not None:
            store_error = decision.error
        else:
            if applied:
                self.settings.after_commit()
            # Shown only once Postgres holds it: a Ticket's spec edit stays visible (and is re-read after a crash)
            # until its intent is stored; a decision that lost every race shows nothing this cycle, or it would
            # write back the intent the edit was meant to change.
            if decision.settled:
                await self._project(ref, tickets, shown, now, stats)
            self._gather_evidence(
                ref, spec, pods, [t.after for t in applied if worth_evidence(t) and t.after is not None]
            )
            self._gather_evidence(
                ref,
                spec,
                pods,
                [t.after for t in applied if worth_config_again(t) and t.after is not None],
                follow_up=True,
            )
            links = incident_links(tickets)
            if links:
                await self._store_incidents(ref, {}, links)
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
        events = events_for(transitions)
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
                desired = rebased(desired, observed)
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

    # -- evidence and diagnosis ----------------------------------------------------------------------------------

    def _gather_evidence(
        self,
        ref: ClusterRef,
        spec: MonitoredClusterSpec,
        pods: Sequence[StorePod],
        tickets: Sequence[Ticket],
        *,
        follow_up: bool = False,
    ) -> None:
        """Gather evidence for tickets that opened or escalated, in tasks of their own: a cycle never waits for it.
        A ``follow_up`` is gathered again once the store is back (``worth_config_again``)."""
        if self.evidence is None:
            return
        stores = tuple(sorted(p.name for p in select_pods(pods, spec.stores.selector.match_labels)))
        pd_pods = tuple(sorted(p.name for p in select_pods(pods, spec.pd.selector.match_labels))) if spec.pd else ()
        watched = tuple(spec.invariants.latency.request_types)
        for ticket in tickets:
            key = (ticket.key, ticket.occurrences * 10 + ticket.severity.rank + (5 if follow_up else 0))
            if key not in self._gathering:
                others = tuple(s for s in stores if s != ticket.key.store)
                scope = TicketScope(ticket.key.invariant, ticket.key.store, others, pd_pods, watched)
                task = asyncio.create_task(self._evidence_of(ref, spec, scope, ticket, follow_up=follow_up))
                self._gathering[key] = task
                task.add_done_callback(functools.partial(self._gathered, key))

    async def evidence_gathered(self) -> None:
        """Wait for the evidence being gathered now (a shutdown lets it land)."""
        while self._gathering:
            await asyncio.gather(*self._gathering.values(), return_exceptions=True)

    def _gathered(self, key: tuple[TicketKey, int], task: asyncio.Task[None]) -> None:
        """A gathering ended: forget it, and log what it raised (a task's exception is otherwise never seen; the
        ticket keeps what it had, and a later opening or escalation gathers again)."""
        self._gathering.pop(key, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error(
                "Could not gather the evidence of a Ticket",
                extra={
                    "invariant": key[0].invariant,
                    "store": key[0].store,
                    "error": f"{type(error).__name__}: {error}",
                },
            )

    async def _store_incidents(
        self, ref: ClusterRef, counted: dict[int, dict[str, list[str]]], links: dict[int, int | None]
    ) -> None:
        """Keep which tickets one cause explains; a Postgres that does not answer leaves it to the next cycle."""
        try:
            await self.store.store_incidents(counted, links, deadline=self.settings.postgres_timeout)
        except TicketStoreUnavailable as error:
            log.warning(
                "Could not link Tickets to their cause",
                extra={"cluster": ref.name, "namespace": ref.namespace, "error": str(error)},
            )
            return
        for ticket_id, cause in links.items():
            log.info(
                "Linked a Ticket to the Ticket of its cause" if cause else "Unlinked a Ticket from a cause",
                extra={"cluster": ref.name, "namespace": ref.namespace, "ticket": ticket_id, "cause": cause},
            )

    async def _pod_evidence(self, namespace: str, store: str, seconds: float = EVIDENCE_SECONDS) -> dict[str, Any]:
        assert self.evidence is not None
        if store == CLUSTER_STORE:
            return {"unreachable": []}
        try:
            async with asyncio.timeout(seconds):
                return await self.evidence.pod_evidence(namespace, store, timeout=seconds / 3)
        except TimeoutError:
            return pod_evidence(None, [], None, unreachable=[f"the API server: no answer within {seconds:g}s"])

    async def _counted_evidence(
        self,
        namespace: str,
        spec: MonitoredClusterSpec,
        scope: TicketScope,
        evidence: dict[str, Any],
        started: float,
        calls: int,
    ) -> dict[str, Any]:
        """The pods of the stores a cluster-level pdStores ticket's PD answer names (``counted_to_read``: at most
        two, three API requests each, as many as the ticket's calls allow), at once, within what is left of
        ``EVIDENCE_SECONDS``."""
        affordable = max(0, (EVIDENCE_CALLS - calls) // POD_CALLS)
        pods = counted_to_read(evidence, spec.invariants.pd_stores.states, scope.others)[:affordable]
        left = EVIDENCE_SECONDS - (time.monotonic() - started)
        if not pods or left <= 0:
            return {}
        views = await asyncio.gather(*(self._pod_evidence(namespace, pod, left) for pod in pods))
        return {pod: bounded(view, EVIDENCE_BYTES // (2 * COUNTED_PODS)) for pod, view in zip(pods, views, strict=True)}

    async def _metric_evidence(
        self, spec: MonitoredClusterSpec, queries: Sequence[EvidenceQuery]
    ) -> dict[str, QueryResult]:
        """The evidence queries at once, each within its Prometheus's timeout and ``EVIDENCE_QUERY_SECONDS``."""
        timeout = min(parse_duration(spec.prometheus.timeout), EVIDENCE_QUERY_SECONDS)
        answers = await asyncio.gather(
            *(
                self.metrics.query(
                    spec.prometheus.url, q.promql, store_label=q.group, namespace_label="", timeout=timeout,
                    auth=spec.prometheus.auth, keep=q.keep,
                )
                for q in queries
            )
        )  # fmt: skip
        return {q.name: answer for q, answer in zip(queries, answers, strict=True)}

    async def _pd_api(self, namespace: str, scope: TicketScope, calls: int) -> tuple[dict[str, Any], int] | None:
        """PD's store API, from one PD pod (its IP and the port it declares for ``/metrics``), if the ticket's calls
        allow two more: what PD says of each of the cluster's stores, and the calls spent. None when the cluster has
        no PD to ask."""
        if self.tikv is None or self.evidence is None or not scope.pd_pods:
            return None
        if calls + PD_API_CALLS > EVIDENCE_CALLS:
            return {"readable": False, "why": f"not read: the ticket's {EVIDENCE_CALLS} calls are spent"}, 0
        return await self._pd_api_read(namespace, scope), PD_API_CALLS

    async def _pd_api_read(self, namespace: str, scope: TicketScope) -> dict[str, Any]:
        assert self.tikv is not None
        assert self.evidence is not None
        started, pd_pod = time.monotonic(), scope.pd_pods[0]
        stores = tuple(s for s in (scope.store, *scope.others) if s != CLUSTER_STORE)
        try:
            async with asyncio.timeout(PD_API_SECONDS):
                address = await self.evidence.pod_address(namespace, pd_pod, "client", timeout=PD_API_SECONDS / 2)
                if address is None:
                    return {"readable": False, "why": f"PD pod {pd_pod} not read, or it has no IP or client port"}
                left = PD_API_SECONDS - (time.monotonic() - started)
                first = None if scope.store == CLUSTER_STORE else scope.store
                return await self.tikv.pd_stores(address, stores, first, timeout=left)
        except TimeoutError:
            return {"readable": False, "why": f"PD pod {pd_pod}: no answer within {PD_API_SECONDS:g}s"}

    async def _tikv_config(self, evidence: dict[str, Any], calls: int, started: float) -> None:
        """TiKV's own config, for a store killed for its memory: one more call if the ticket's ten are not spent,
        within what is left of ``EVIDENCE_SECONDS``. What could not be read is said."""
        address = (evidence.get("pod") or {}).get("statusAddress")
        left = EVIDENCE_SECONDS - (time.monotonic() - started)
        if self.tikv is None or not oom_killed(evidence):
            return
        if calls >= EVIDENCE_CALLS:
            config: dict[str, Any] = {
                "readable": False,
                "why": f"not read: the ticket's {EVIDENCE_CALLS} calls are spent",
            }
        elif address is None:
            config = {"readable": False, "why": "the pod has no IP or declares no status port"}
        elif left < TIKV_CONFIG_MIN_SECONDS:
            config = {"readable": False, "why": f"not read: the {EVIDENCE_SECONDS:g}s budget is spent"}
        else:
            config = await self.tikv.tikv_config(address, timeout=min(left, TIKV_CONFIG_SECONDS))
        evidence["tikvConfig"] = config
        if not config.get("readable"):
            evidence["unreachable"] = [*evidence.get("unreachable", []), f"TiKV's /config: {config.get('why')}"]

    async def _evidence_of(
        self,
        ref: ClusterRef,
        spec: MonitoredClusterSpec,
        scope: TicketScope,
        opened: Ticket,
        *,
        follow_up: bool = False,
    ) -> None:
        """The ticket's evidence within ``EVIDENCE_SECONDS`` (the pod's from the API server and Prometheus's, at
        once), kept with the ticket, and the ticket diagnosed when a rule finds a probable cause in it. Failures are
        logged: the ticket stays as it was, never worse."""
        assert self.evidence is not None
        store = opened.key.store
        queries = evidence_queries(spec, ref.namespace, scope)
        async with self._gather_slots:
            started = time.monotonic()
            calls = (0 if store == CLUSTER_STORE else POD_CALLS) + len(queries)
            pod_part, results, pd_api = await asyncio.gather(
                self._pod_evidence(ref.namespace, store), self._metric_evidence(spec, queries),
                self._pd_api(ref.namespace, scope, calls),
            )  # fmt: skip
            if pd_api is not None:
                api, spent = pd_api
                pod_part["pdApi"], calls = api, calls + spent
                if not api.get("readable"):
                    pod_part["unreachable"] = [*pod_part.get("unreachable", []), f"PD's store API: {api.get('why')}"]
            if store != CLUSTER_STORE:
                await self._tikv_config(pod_part, calls, started)
            now = datetime.now(UTC)
            threshold = spec.invariants.disk_usage.threshold_percent if spec.invariants.disk_usage.enabled else None
            pod_part["prometheus"] = prometheus_evidence(
                queries, results, scope=scope, threshold_percent=threshold, prometheus_url=spec.prometheus.url,
                start=window_start(opened.opened_at, opened.first_seen, now), end=now,
            )  # fmt: skip
            if opened.key.invariant == Invariant.PD_STORES and store == CLUSTER_STORE:
                counted = await self._counted_evidence(ref.namespace, spec, scope, pod_part, started, calls)
                if counted:
                    pod_part["counted"] = counted
            pod_part["gatheredSeconds"] = round(time.monotonic() - started, 3)
            evidence = bounded(pod_part)
        findings = diagnose(store, evidence)
        if follow_up and not block_cache_known(findings, evidence):
            return  # the store is back, but its config tells nothing more: the evidence of its opening stays
        try:
            async with self.ledger.lock(ref.uid):
                now, stats = datetime.now(UTC), CycleStats()
                tickets = await self.ledger.read(ref, stats, now, self.settings.postgres_timeout)
                current = next((t for t in tickets if t.key == opened.key and t.state.active), None)
                if follow_up:  # the store is back: the ticket may have resolved, its explanation still counts
                    current = next((t for t in tickets if t.id == opened.id), None)
                if current is None or current.id is None:
                    return  # resolved meanwhile: its evidence would explain nothing now
                await self.store.store_evidence(
                    current.id, evidence, [f.to_json() for f in findings], evidence_summary(evidence),
                    findings[0].summary if findings else None, deadline=self.settings.postgres_timeout,
                )  # fmt: skip
                if opened.key.invariant == Invariant.PD_STORES:
                    counted = pd_named_stores(evidence, spec.invariants.pd_stores.states)
                    named = [replace(t, counted_stores=counted) if t.id == current.id else t for t in tickets]
                    await self._store_incidents(ref, {current.id: counted}, incident_links(named))
                if findings:

                    def plan(now_held: list[Ticket]) -> list[Transition]:
                        decided = [diagnosed(t, findings) for t in now_held if t.id == current.id]
                        return [t for t in decided if t.changed]

                    await self.ledger.decide(ref, plan, stats, now, self.settings.postgres_timeout)
        except TicketStoreUnavailable as error:
            log.warning(
                "Could not store the evidence of a Ticket",
                extra={"cluster": ref.name, "namespace": ref.namespace, "store": store, "error": str(error)},
            )
        log.info(
            "Gathered the evidence of a Ticket",
            extra={"cluster": ref.name, "namespace": ref.namespace, "store": store,
                   "invariant": opened.key.invariant, "seconds": evidence.get("gatheredSeconds"),
                   "diagnosis": findings[0].summary if findings else "unknown"},
        )  # fmt: skip

    def _horizon(self, now: datetime) -> datetime:
        return now - max(self.settings.reopen_window, self.settings.ticket_retention)

    # -- other entry points ----------------------------------------------------------------------------------------

    async def cluster_deleted(self, ref: ClusterRef, now: datetime) -> int:
        """Resolve every unresolved ticket of a deleted cluster with reason ClusterDeleted; return how many.

        Raises TicketStoreUnavailable if Postgres does not answer (the orphan sweep retries later)."""
        async with self.ledger.lock(ref.uid):
            stats = CycleStats()
            decision = await self.ledger.decide(
                ref, lambda current: retire_all(current, now, Reason.CLUSTER_DELETED), stats, now,
                self.settings.postgres_timeout,
            )  # fmt: skip
            self.ledger.retire(ref.uid, time.monotonic())
        if decision.error is not None:
            raise TicketStoreUnavailable(decision.error)
        return sum(1 for t in decision.applied if t.after is not None and t.after.state is TicketState.RESOLVED)

    async def human_intent(
        self,
        cluster_uid: str,
        resource: TicketResource,
        old_spec: Mapping[str, Any] | None,
        new_spec: Mapping[str, Any],
        *,
        actor: str,
        now: datetime,
    ) -> Ticket | None:
        """Fold a human's edit of a Ticket resource's spec into Postgres, through the ledger; return the ticket as
        Postgres now holds it.

        ``old_spec`` is the intent the operator last showed on the resource (None: unknown, and then the edit is
        what differs from the intent Postgres holds). None if Postgres has no such ticket for the cluster, or
        ``resource`` is not where the operator shows it (its namespace and name). Raises TicketStoreUnavailable if
        Postgres does not answer, or the edit lost every race (the caller retries it; the cycle finds it too)."""
        ref = ClusterRef(cluster_uid, "", "", 0)

        def plan(current: list[Ticket]) -> list[Transition]:
            ticket = shown_ticket(current, resource)
            if ticket is None:
                return []
            edit = HumanEdit.between(ticket_spec(ticket) if old_spec is None else old_spec, new_spec)
            result = apply_human_intent(ticket, edit, actor=actor)
            return [result] if result.changed else []

        async with self.ledger.lock(cluster_uid):
            decision = await self.ledger.decide(ref, plan, CycleStats(), now, self.settings.postgres_timeout)
        if decision.error is not None:
            raise TicketStoreUnavailable(decision.error)
        if not decision.settled:
            raise TicketStoreUnavailable(
                f"lost {DECISION_ATTEMPTS} write races in a row for ticket {resource.ticket_id}"
            )
        return shown_ticket(decision.tickets, resource)

    async def show_intent(self, observed: ObservedTicket, ticket: Ticket) -> None:
        """Show on a Ticket at once what its edit did, as Postgres holds it: the shown-intent annotation, and the
        state, labels and status the edit changed (an acknowledgement), in one write locked on the resourceVersion
        the edit was read from. Until the annotation follows, a second edit that undoes the first would equal it and
        be lost; a conflict means the Ticket changed again, and its own event (or the next cycle) takes it from
        there."""
        patch = ticket_patch(observed, ticket_body(ticket))
        if not patch:
            return
        try:
            await self.mirror.patch(observed.namespace, observed.name, observed.resource_version, patch)
        except (KubernetesConflict, KubernetesNotFound, KubernetesRejected, KubernetesUnavailable) as error:
            log.info(
                "Ticket changed before its edit could be shown as stored; the next check shows it",
                extra={"ticket": observed.name, "namespace": observed.namespace, "error": str(error)},
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
        try:
            await asyncio.wait_for(self.evidence_gathered(), EVIDENCE_SECONDS)
        except TimeoutError:
            log.warning("Closed with Ticket evidence still being gathered", extra={"tickets": len(self._gathering)})
        await self.store.close()
        log.info("Closed the ticket store")


@dataclass(frozen=True)
class Gathered:
    """What one cycle learned from Kubernetes and Prometheus, judged: the cluster's selected store pods, the
    findings, and what the queries cost and met."""

    stores: tuple[StorePod, ...]
    findings: list[Finding]
    queries: int
    ignored_series: int
    errors: list[str]


async def gather(
    metrics: MetricsSource,
    spec: MonitoredClusterSpec,
    namespace: str,
    candidates: Sequence[StorePod],
    tracked: dict[str, frozenset[str]],
) -> Gathered:
    """Gather and judge: the pods the selectors pick, every query of the cycle (``cycle_queries``) concurrently,
    only this cluster's series kept (``scope_result``; the others counted), and the invariants evaluated.

    ``tracked``: the stores with an unresolved ticket, per invariant (judged even without a pod). The service's
    cycle and the referee both call this, so the referee judges the real pipeline, not a copy of it. A store-scoped
    query with no store to ask about is not sent (its findings are simply empty); the count never grows with stores.
    """
    pd_pods = tuple(sorted(p.name for p in select_pods(candidates, spec.pd.selector.match_labels))) if spec.pd else ()
    stores = select_pods(candidates, spec.stores.selector.match_labels)
    owned = frozenset(pod.name for pod in stores).union(*tracked.values()) - {CLUSTER_STORE}
    queries = cycle_queries(spec, namespace, tuple(sorted(owned)), pd_pods)
    timeout = parse_duration(spec.prometheus.timeout)
    outcomes = await asyncio.gather(
        *(
            metrics.query(
                spec.prometheus.url, query.promql, store_label=spec.prometheus.store_label,
                namespace_label=spec.prometheus.namespace_label, timeout=timeout, auth=spec.prometheus.auth,
            )
            for query in queries.values()
        )
    )  # fmt: skip
    results: dict[str, QueryResult] = {}
    ignored = 0
    for (name, query), outcome in zip(queries.items(), outcomes, strict=True):
        results[name], dropped = scope_result(
            outcome, namespace, owned, per_store=query.per_store, namespace_scoped=query.namespace_scoped
        )
        ignored += dropped
    findings = evaluate(spec, Snapshot(pods=stores, results=results, tracked_stores=tracked))
    errors = [f"prometheus_{o.failure.value}" for o in outcomes if o.failure is not None]
    return Gathered(stores, findings, len(queries), ignored, errors)


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
    body = status_body(conditions, ref.generation, None, None, now)
    if not only:
        body.update({key: previous[key] for key in ("stores", "openTickets") if key in previous})
    return body


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        parts.append(f"spec.{where}: {item['msg']}")
    return "; ".join(parts)
