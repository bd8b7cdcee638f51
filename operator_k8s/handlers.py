"""kopf registrations only: translate kopf's kwargs into service calls and back. No decisions here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from operator_k8s.adapters.kube import observed_ticket, store_pod
from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.ledger import ClusterRef, TicketResource
from operator_k8s.domain.projections import ObservedTicket, normal_intent, ticket_id_of
from operator_k8s.domain.schedule import next_slot, started
from operator_k8s.domain.vocabulary import (
    CLUSTER_PLURAL,
    GROUP,
    MAINTAINED_CLUSTERS_INDEX,
    MAINTENANCE_SOURCES_INDEX,
    MAINTENANCE_WINDOWS_INDEX,
    MANAGER,
    TICKET_PLURAL,
    TIDB_CLUSTERS_INDEX,
    VERSION,
)
from operator_k8s.ports import TicketStoreUnavailable
from operator_k8s.service import Monitor

log = logging.getLogger("operator_k8s.handlers")


WAKE_SECONDS = 30.0
"""The longest a cluster's loop sleeps between slots: it beats for the liveness probe at least this often (its
staleness limit is ten times longer), and nothing else wakes it without a reason."""


class Schedule:
    """Each cluster's next slot (``domain.schedule``'s grid, on the wall clock) and a way to wake its loop early.

    Only a cache: dropped (a resume, a shard lost), every due time is computed again from the grid, so no check is
    re-pended and the first runs stay spread. An edit of the spec (a new generation) is due at once, so it never
    waits out the old interval; the grid goes on from there.
    """

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._generation: dict[str, int] = {}
        self._wakes: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, uid: object) -> bool:
        return uid in self._due

    def due(self, uid: str, interval: float, now: float, generation: int = 0) -> float:
        """When the cluster's next check is due (``now`` or earlier: due now)."""
        if self._generation.get(uid, generation) != generation:
            self._due[uid] = now
        self._generation[uid] = generation
        if uid not in self._due:
            self._due[uid] = next_slot(uid, interval, now)
        return self._due[uid]

    def ran(self, uid: str, interval: float, now: float) -> None:
        """A check started at ``now``: the next is the grid's next slot."""
        self._due[uid] = next_slot(uid, interval, now + EPSILON_SECONDS)

    def edited(self, uid: str, generation: int) -> None:
        """The watch saw the cluster's spec at ``generation``: a new one wakes its loop, due at once."""
        if uid in self._generation and self._generation[uid] != generation:
            self.wake(uid)

    def wake(self, uid: str) -> None:
        if uid in self._wakes:
            self._wakes[uid].set()

    def wake_all(self) -> None:
        """Every loop looks again now (a shard taken: its clusters are this replica's to check)."""
        for event in self._wakes.values():
            event.set()

    async def sleep(self, uid: str, seconds: float, stopped: kopf.DaemonStopped) -> None:
        """Sleep up to ``seconds``, less if the loop is woken or kopf stops it (a deletion, a pause, the exit)."""
        wake = self._wakes.setdefault(uid, asyncio.Event())
        if seconds > 0 and not wake.is_set():
            waits = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait(seconds))}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        wake.clear()

    def forget(self, uid: str) -> None:
        self._due.pop(uid, None)
        self._generation.pop(uid, None)

    def retire(self, uid: str) -> None:
        """The cluster's loop ended (deleted, or kopf stopped it): nothing of it is kept."""
        self.forget(uid)
        self._wakes.pop(uid, None)

    def reset(self) -> None:
        """Forget every due time (a replica resuming after a pause): each is computed again from the grid, and the
        pause is not counted as lateness or skipped intervals."""
        self._due.clear()
        self._generation.clear()


EPSILON_SECONDS = 1e-3
"""A check that started on its slot is not due again on that same slot."""


PEERING_SETTLE_SECONDS = 5.0
"""How long a replica kopf resumed waits before it checks: longer than a peer's keep-alive takes to reach it through
the peering watch, so two replicas started together never both check (the one that learns of a higher-priority peer
pauses before its settle period ends)."""


class Heartbeats:
    """When each cluster's check timer last ran: the liveness probe's evidence that the check loop still runs, and
    whether this replica may check at all.

    Dependencies being down never makes a timer stale (cycles degrade and return); a timer that stopped for good, or
    a loop that no longer schedules, does. Under peering a paused replica's timers all stop on purpose, so there only
    a partial stop (some timers running, others not) counts as wedged. An entry is only a cache of the watch: it is
    pruned on the cluster's DELETED event, and all are dropped when the replica resumes after a pause (its peer may
    have deleted clusters meanwhile, whose timers will never run here again); live timers re-enter on their next
    tick.
    """

    def __init__(self, stale_after: float, *, peering: bool, settle: float = PEERING_SETTLE_SECONDS) -> None:
        self._last: dict[str, float] = {}
        self._stale_after = stale_after
        self._peering = peering
        self._settle = settle
        self._resumed_at: float | None = None
        self.wake_all: Callable[[], None] = lambda: None
        """Wakes every cluster's loop now (set by ``register``): shards were taken, their clusters are due here."""
        self.on_resume: list[Callable[[], None]] = []
        """Called when kopf resumes this replica: what was kept from before the pause is stale by then."""
        self.active = not peering
        """Whether kopf runs this replica: always without peering; under peering, from kopf's first decision (it
        starts paused until it has seen the peering object)."""

    def beat(self, uid: str, now: float) -> None:
        self._last[uid] = now

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)

    def paused(self) -> None:
        self.active = False
        self._resumed_at = None

    def resumed(self, now: float) -> None:
        self.active = True
        self._resumed_at = now
        self._last.clear()
        for hook in self.on_resume:
            hook()

    def may_check(self, now: float) -> bool:
        """Whether a due cycle runs: the replica is active, and under peering has been for the settle period."""
        if not self._peering:
            return True
        return self.active and self._resumed_at is not None and now - self._resumed_at >= self._settle

    def running(self, now: float) -> int:
        """How many clusters' timers ran recently: all of them on an active replica, none on a paused one."""
        if not self.active:
            return 0
        return sum(1 for last in self._last.values() if now - last <= self._stale_after)

    def stale(self, now: float) -> list[str]:
        """The clusters whose timers stopped (empty when the loop is healthy)."""
        stale = [uid for uid, last in self._last.items() if now - last > self._stale_after]
        if self._peering and (not self.active or len(stale) == len(self._last)):
            return []
        return stale


def _interval(spec: Any, tick_seconds: float) -> float:
    """The cluster's interval, at least the operator's tick (the shortest interval it runs: a floor on the load a
    cluster can cause). An invalid spec is checked every tick, so its InvalidSpec condition shows soon."""
    try:
        return max(parse_duration(str(spec.get("interval", "30s"))), tick_seconds)
    except ValueError:
        return tick_seconds


STATUS_WRITE_ROOM = 30.0
"""Seconds a cancelled cycle has to write its CheckFailed status (the Kubernetes client's own timeouts are shorter)."""


def cycle_deadline(spec: Any) -> float:
    """How long one cycle may run before it is cancelled: twice the Prometheus timeout (a query may wait its turn
    for a query thread, then run) plus a minute for Postgres and Kubernetes, whose calls have their own deadlines.
    Bounded, so a timer can never hang."""
    try:
        timeout = parse_duration(str((spec.get("prometheus") or {}).get("timeout", "5s")))
    except ValueError:
        timeout = 5.0
    return 2 * min(timeout, 60.0) + 60.0


def _candidate_pods(index: kopf.Index[tuple[str, str, str], Any], namespace: str, spec: Any) -> list[Any]:
    """The pods carrying the first label of the store selector (and of the PD selector, if any); the service checks
    the rest of each selector."""
    found: dict[str, Any] = {}
    for part in ("stores", "pd"):
        match_labels = ((spec.get(part) or {}).get("selector") or {}).get("matchLabels") or {}
        if isinstance(match_labels, dict) and match_labels:
            key, value = min(match_labels.items())
            found.update((pod.name, pod) for pod in index.get((namespace, str(key), str(value)), []))
    return list(found.values())


INDEXES = (
    "store_pods", "tickets_shown", MAINTENANCE_WINDOWS_INDEX, MAINTAINED_CLUSTERS_INDEX, MAINTENANCE_SOURCES_INDEX,
    TIDB_CLUSTERS_INDEX,
)  # fmt: skip
"""The ids of the operator's kopf indexes (registered in ``register`` and in ``maintenance_handlers``)."""


class PerObjectIndexing(logging.Filter):
    """kopf logs ``Indexer 'store_pods' succeeded.`` as an INFO line for every object it indexes once its logger is
    at DEBUG (``OPERATOR_K8S_LOG_LEVEL=DEBUG``, ``kopf run --verbose``): at start-up, one INFO line per pod of the
    whole cluster, which buries what the operator says. On the ``kopf.objects`` logger this filter makes those lines
    DEBUG records (kept where DEBUG is on, dropped elsewhere); ``index_summaries`` says the same at INFO once per
    index."""

    _SUCCEEDED = frozenset(f"Indexer {index!r} succeeded." for index in INDEXES)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.getMessage() not in self._SUCCEEDED:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


PER_OBJECT_INDEXING = PerObjectIndexing()
"""One instance, so that registering the handlers again (tests build several registries) adds it only once."""


def index_summaries(
    store_pods: Mapping[tuple[str, str, str], Iterable[Any]], tickets_shown: Mapping[str, Iterable[Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """One log line per index, as (message, fields): how many objects each holds and in how many namespaces.

    A pod sits in the pod index once per label, so pods are counted by (namespace, name)."""
    pods = {(namespace, pod.name) for (namespace, _, _), found in store_pods.items() for pod in found}
    tickets = {namespace: sum(1 for _ in found) for namespace, found in tickets_shown.items()}
    return [
        ("Indexed Pods", {"index": "store_pods", "pods": len(pods), "namespaces": len({ns for ns, _ in pods})}),
        (
            "Indexed Tickets",
            {
                "index": "tickets_shown",
                "tickets": sum(tickets.values()),
                "namespaces": sum(1 for n in tickets.values() if n),
            },
        ),
    ]


class IndexSummary:
    """Logs ``index_summaries`` once, from the first handler that is not an indexer: kopf runs none before every
    index is fully listed, so by then they are complete. (With no MonitoredCluster there is no such handler, and no
    summary: nothing reads the indexes either.) Made, it lowers kopf's per-object indexing lines to DEBUG."""

    def __init__(self) -> None:
        self.logged = False
        logging.getLogger("kopf.objects").addFilter(PER_OBJECT_INDEXING)

    def log_once(
        self, store_pods: Mapping[tuple[str, str, str], Iterable[Any]], tickets_shown: Mapping[str, Iterable[Any]]
    ) -> None:
        if not self.logged:
            self.logged = True
            for message, fields in index_summaries(store_pods, tickets_shown):
                log.info(message, extra=fields)


def _still_ours(
    owns: Callable[[str], bool], ref: ClusterRef, schedule: Schedule, telemetry: Telemetry, monitor: Monitor
) -> bool:
    """Whether this replica checks the cluster now. One it checked until now is let go of at once: its series
    leave this replica's metrics (the new holder exports them), its tickets leave the caches, and its due time is
    forgotten, so a shard that comes back is spread again and its absence is not counted as skipped intervals."""
    if owns(ref.uid):
        return True
    if ref.uid in schedule:
        schedule.forget(ref.uid)
        telemetry.forget(ref)
        monitor.drop_caches(ref.uid)
    return False


def _ref(meta: Any, namespace: str) -> ClusterRef:
    labels = meta.get("labels") or {}
    return ClusterRef(
        uid=meta["uid"], name=meta["name"], namespace=namespace, generation=int(meta.get("generation", 0)),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
    )  # fmt: skip


async def _run_cycle(
    monitor: Monitor,
    telemetry: Telemetry,
    ref: ClusterRef,
    spec: dict[str, Any],
    pods: list[Any],
    observed: kopf.Body,
    tickets_shown: list[ObservedTicket],
) -> None:
    """One cycle under its deadline, recorded in the operator's metrics.

    The monitor cancels the cycle's work at the deadline and writes why; the outer bound (the status write's room
    on top) is the last resort that keeps the timer alive whatever hangs, and whatever else escapes is counted."""
    started = time.monotonic()
    deadline = cycle_deadline(spec)
    status = observed.get("status")
    try:
        async with asyncio.timeout(deadline + STATUS_WRITE_ROOM):
            stats = await monitor.check_cluster(
                ref,
                spec,
                pods,
                dict(status) if isinstance(status, Mapping) else {},
                datetime.now(UTC),
                deadline=deadline,
                tickets_shown=tickets_shown,
                resource_version=observed.get("metadata", {}).get("resourceVersion"),
            )
    except TimeoutError:
        telemetry.record_failure("cycle_abandoned")
        log.error(
            "Check of MonitoredCluster and its status write timed out",
            extra={"cluster": ref.name, "namespace": ref.namespace},
        )
        return
    except Exception:  # the last resort: a timer that raises is retried by kopf for ever, uncounted
        telemetry.record_failure("cycle_failed")
        log.exception("Check of MonitoredCluster failed", extra={"cluster": ref.name, "namespace": ref.namespace})
        return
    telemetry.record_cycle(ref, time.monotonic() - started, stats, time.time())


async def fold_ticket_edit(monitor: Monitor, observed: ObservedTicket) -> None:
    """Fold the human edit a Ticket shows (spec ≠ the intent the operator last showed there) into Postgres."""
    owner = observed.cluster_uid
    ticket_id = observed.status.get("ticketId")
    if not isinstance(ticket_id, int):
        ticket_id = ticket_id_of(observed.name)
    if owner is None or ticket_id is None:
        return  # not a Ticket the operator made
    shown = observed.shown_intent
    if normal_intent(observed.spec) == shown or (shown is None and observed.spec_actor == f"kubernetes:{MANAGER}"):
        return  # no edit; or no record of what was shown and the operator wrote the spec last (the cycle corrects it)
    resource = TicketResource(observed.namespace, observed.name, ticket_id)
    try:
        stored = await monitor.human_intent(
            owner, resource, shown, normal_intent(observed.spec), actor=observed.spec_actor,
            now=datetime.now(UTC),
        )  # fmt: skip
    except TicketStoreUnavailable as error:
        log.warning(
            "Could not store an edit of a Ticket yet; the next check retries it",
            extra={"ticket": observed.name, "namespace": observed.namespace, "error": str(error)},
        )
        return
    if stored is not None:
        await monitor.show_intent(observed, stored)
    else:
        log.warning(
            "Ignored an edit of a Ticket Postgres does not show there",
            extra={"ticket": observed.name, "namespace": observed.namespace, "ticket_id": ticket_id,
                   "cluster_uid": owner},
        )  # fmt: skip


async def _resolve_deleted(monitor: Monitor, ref: ClusterRef) -> None:
    try:
        resolved = await monitor.cluster_deleted(ref, datetime.now(UTC))
    except TicketStoreUnavailable:
        # Release the finalizer anyway: the orphan sweep resolves its tickets once Postgres answers.
        log.warning("Deleted MonitoredCluster while Postgres was unreachable", extra={"cluster": ref.name})
        return
    log.info("Resolved Tickets of deleted MonitoredCluster", extra={"cluster": ref.name, "resolved": resolved})


class ClusterLoops:
    """The loop of each cluster's checks: it sleeps until the cluster's next slot (woken at once by an edit of its
    spec or a shard taken), then runs the cycle. No call per cluster per tick: a loop wakes for its slot, or at
    most every ``WAKE_SECONDS`` to beat for the liveness probe. kopf keeps ``spec``, ``body`` and ``meta`` current
    while a loop sleeps. A loop never raises and never returns a patch: the cycle writes status itself, so it cannot
    die of an outage."""

    def __init__(
        self, monitor: Monitor, telemetry: Telemetry, schedule: Schedule, heartbeats: Heartbeats,
        owns: Callable[[str], bool], tick_seconds: float, summary: IndexSummary,
    ) -> None:  # fmt: skip
        self.monitor, self.telemetry, self.schedule, self.heartbeats = monitor, telemetry, schedule, heartbeats
        self.owns, self.tick_seconds, self.summary = owns, tick_seconds, summary

    async def run(
        self, stopped: kopf.DaemonStopped, spec: kopf.Spec, body: kopf.Body, meta: kopf.Meta, namespace: str,
        kwargs: dict[str, Any],
    ) -> None:  # fmt: skip
        uid = meta["uid"]
        try:
            while not stopped:
                self.summary.log_once(kwargs["store_pods"], kwargs["tickets_shown"])
                try:
                    sleep = await self._check_when_due(spec, body, meta, namespace, kwargs)
                except Exception:  # the last resort: the loop outlives anything one pass meets, and says so
                    self.telemetry.record_failure("cycle_failed")
                    log.exception("Check loop of MonitoredCluster failed", extra={"cluster": meta.get("name")})
                    sleep = self.tick_seconds
                await self.schedule.sleep(uid, sleep, stopped)
        finally:
            self.schedule.retire(uid)

    async def _check_when_due(
        self, spec: kopf.Spec, body: kopf.Body, meta: kopf.Meta, namespace: str, kwargs: dict[str, Any]
    ) -> float:
        """Run the cluster's check if it is due; return how long to sleep until it is (at most ``WAKE_SECONDS``)."""
        now, wall = time.monotonic(), time.time()
        self.heartbeats.beat(meta["uid"], now)
        ref = _ref(meta, namespace)
        # A replica that just resumed waits out the settle period (a peer may yet pause it); under sharding, a
        # cluster whose shard another replica holds is that replica's to check (and to show).
        if not self.heartbeats.may_check(now):
            return min(WAKE_SECONDS, self.tick_seconds)
        if not _still_ours(self.owns, ref, self.schedule, self.telemetry, self.monitor):
            return WAKE_SECONDS
        interval = _interval(spec, self.tick_seconds)
        due = self.schedule.due(ref.uid, interval, wall, ref.generation)
        if wall < due:
            return min(WAKE_SECONDS, due - wall)
        start = started(due, interval, wall)
        self.schedule.ran(ref.uid, interval, wall)
        self.telemetry.record_tick(start.lag, start.skipped)
        candidates = _candidate_pods(kwargs["store_pods"], ref.namespace, spec)
        shown = list(kwargs["tickets_shown"].get(ref.namespace, []))
        await _run_cycle(self.monitor, self.telemetry, ref, dict(spec), candidates, body, shown)
        return 0.0


def register(
    registry: kopf.OperatorRegistry,
    monitor: Monitor,
    telemetry: Telemetry,
    *,
    tick_seconds: float,
    peering: bool = False,
    owns: Callable[[str], bool] = lambda cluster_uid: True,
) -> Heartbeats:
    """Register every handler of the operator in ``registry``, bound to ``monitor``; return the timers' heartbeats
    (which the liveness probe reads). ``owns``: whether this replica checks a cluster now (sharding: its shard's
    Lease is held here); every timer still beats, so liveness does not depend on which shards a replica holds."""
    schedule = Schedule()
    heartbeats = Heartbeats(max(300.0, 20 * tick_seconds), peering=peering)
    # Counted when scraped: no work per timer tick, and right on a paused replica whose timers no longer run.
    telemetry.scheduled.set_function(lambda: heartbeats.running(time.monotonic()))
    telemetry.active.set_function(lambda: float(heartbeats.may_check(time.monotonic())))
    heartbeats.on_resume += [schedule.reset, monitor.drop_caches]  # the peer may have changed anything meanwhile
    heartbeats.wake_all = schedule.wake_all
    summary = IndexSummary()

    @kopf.index("", "v1", "pods", id="store_pods", registry=registry)
    async def store_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[tuple[str, str, str], Any]:
        """Pods by (namespace, label, value): a cycle reads only the pods that share a selector label."""
        pod = store_pod(body)
        return {(namespace or "", key, value): pod for key, value in pod.labels}

    @kopf.index(GROUP, VERSION, TICKET_PLURAL, id="tickets_shown", registry=registry)
    async def tickets_shown(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, ObservedTicket]:
        """Ticket resources by namespace, as the watch sees them: what a cycle diffs Postgres against."""
        return {namespace or "": observed_ticket(body)}

    loops = ClusterLoops(monitor, telemetry, schedule, heartbeats, owns, tick_seconds, summary)

    @kopf.daemon(GROUP, VERSION, CLUSTER_PLURAL, id="check", registry=registry)
    async def check(
        stopped: kopf.DaemonStopped, spec: kopf.Spec, body: kopf.Body, meta: kopf.Meta, namespace: str | None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        """One loop per cluster (``ClusterLoops.run``); kopf stops it when the cluster goes, the replica pauses or
        the operator exits."""
        await loops.run(stopped, spec, body, meta, namespace or "", kwargs)

    def forget(ref: ClusterRef) -> None:
        schedule.forget(ref.uid)
        heartbeats.forget(ref.uid)
        telemetry.forget(ref)

    @kopf.on.delete(GROUP, VERSION, CLUSTER_PLURAL, id="cluster_deleted", registry=registry)
    async def deleted(meta: kopf.Meta, namespace: str | None, **_: Any) -> None:
        """Resolves the cluster's tickets under its lock (a check in flight finishes first), then retires it in the
        ledger, so a check that was still waiting writes nothing."""
        ref = _ref(meta, namespace or "")
        forget(ref)
        await _resolve_deleted(monitor, ref)

    @kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL, id="cluster_gone", registry=registry)
    async def cluster_gone(event: kopf.RawEvent, meta: kopf.Meta, namespace: str | None, **_: Any) -> None:
        """The watch's DELETED event prunes what was kept about the cluster, also when its finalizer was stripped
        and the delete handler never ran (the orphan sweep then resolves its tickets)."""
        if event.get("type") == "DELETED":
            forget(_ref(meta, namespace or ""))
            monitor.forget(meta["uid"])
        else:
            schedule.edited(meta["uid"], int(meta.get("generation", 0)))

    @kopf.on.event(GROUP, VERSION, TICKET_PLURAL, id="ticket_edited", registry=registry)
    async def ticket_edited(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A human's edit of a Ticket's spec is folded into Postgres at once (the cycle would also find it within
        an interval). Only an event handler: kopf keeps no diff-base annotation on Tickets, so showing a change
        costs one write."""
        if event.get("type") != "DELETED":
            await fold_ticket_edit(monitor, observed_ticket(body))

    @kopf.on.probe(id="check_loop", registry=registry)
    async def check_loop(**_: Any) -> dict[str, Any]:
        """Liveness: fails only when cluster timers stopped running (wedged), never because a dependency is down."""
        stale = heartbeats.stale(time.monotonic())
        if stale:
            raise kopf.PermanentError(f"The checks of {len(stale)} MonitoredClusters stopped running")
        return {"clusters": len(schedule), "active": heartbeats.active}

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await monitor.close()

    return heartbeats
