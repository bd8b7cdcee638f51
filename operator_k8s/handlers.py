"""kopf registrations only: translate kopf's kwargs into service calls and back. No decisions here."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from operator_k8s.adapters.kube import store_pod
from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.projections import ticket_id_of
from operator_k8s.domain.vocabulary import CLUSTER_KIND, CLUSTER_PLURAL, GROUP, MANAGER, TICKET_PLURAL, VERSION
from operator_k8s.ports import ClusterRef, TicketResource, TicketStoreUnavailable
from operator_k8s.service import Monitor

log = logging.getLogger("operator_k8s.handlers")


@dataclass(frozen=True)
class Tick:
    """A due cycle: how late it starts, and how many whole intervals were skipped before it."""

    lag: float
    skipped: int


class Schedule:
    """Per-cluster due times for a timer that ticks at a fixed base period (kopf fixes a timer's interval).

    A tick that is not due returns at once and writes nothing; the first run of each cluster is spread over one
    interval so that a restart with 1,000 clusters does not fire them all at once. An interval shorter than the tick
    runs once per tick: that is the fastest the timer can go, not a missed interval, so it is not counted as one.
    """

    def __init__(self, jitter: float = 1.0, tick: float = 0.0) -> None:
        self._due: dict[str, float] = {}
        self._jitter = jitter
        self._tick = tick

    def __len__(self) -> int:
        return len(self._due)

    def due(self, uid: str, interval: float, now: float) -> Tick | None:
        every_tick = interval <= self._tick
        interval = max(interval, self._tick)
        due = self._due.get(uid)
        if due is None:
            due = self._due[uid] = now + random.uniform(0, interval * self._jitter)  # noqa: S311 - spreading load
        if now < due:
            return None
        lag = now - due
        late = max(0.0, lag - self._tick)  # within one tick of its due time is as early as a tick can start it
        if every_tick:
            # kopf's ticks drift (each waits for the handler): anchored to the tick, the cluster runs every tick.
            self._due[uid] = now + interval
            return Tick(lag=late, skipped=0)
        skipped = int(lag // interval)
        self._due[uid] = due + (skipped + 1) * interval
        return Tick(lag=late, skipped=skipped)

    def forget(self, uid: str) -> None:
        self._due.pop(uid, None)


class Heartbeats:
    """When each cluster's check timer last ran: the liveness probe's evidence that the check loop still runs.

    Dependencies being down never makes a timer stale (cycles degrade and return); a timer that stopped for good, or
    a loop that no longer schedules, does. Under peering a paused replica's timers all stop on purpose, so there only
    a partial stop (some timers running, others not) counts as wedged.
    """

    def __init__(self, stale_after: float, *, peering: bool) -> None:
        self._last: dict[str, float] = {}
        self._stale_after = stale_after
        self._peering = peering

    def beat(self, uid: str, now: float) -> None:
        self._last[uid] = now

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)

    def running(self, now: float) -> int:
        """How many clusters' timers ran recently: all of them on an active replica, none on a paused one."""
        return sum(1 for last in self._last.values() if now - last <= self._stale_after)

    def stale(self, now: float) -> list[str]:
        """The clusters whose timers stopped (empty when the loop is healthy)."""
        stale = [uid for uid, last in self._last.items() if now - last > self._stale_after]
        if self._peering and len(stale) == len(self._last):
            return []
        return stale


def _interval(spec: Any) -> float:
    try:
        return parse_duration(str(spec.get("interval", "30s")))
    except ValueError:
        return 0.0  # an invalid spec is checked every tick, so its InvalidSpec condition shows soon


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


def _ref(meta: Any, namespace: str) -> ClusterRef:
    return ClusterRef(
        uid=meta["uid"], name=meta["name"], namespace=namespace, generation=int(meta.get("generation", 0))
    )


def _shown_ticket(meta: Any, status: dict[str, Any], namespace: str) -> tuple[str, TicketResource] | None:
    """The owning MonitoredCluster's uid and the ticket a Ticket resource shows: from its status, or from its name
    when a human edits it before the status (the operator's second request) lands. None if no cluster controls it."""
    owner = next(
        (o for o in meta.get("ownerReferences") or [] if o.get("controller") and o.get("kind") == CLUSTER_KIND), None
    )
    ticket_id = status.get("ticketId")
    if ticket_id is None:
        ticket_id = ticket_id_of(str(meta["name"]))
    if owner is None or ticket_id is None:
        return None
    return str(owner["uid"]), TicketResource(namespace, str(meta["name"]), int(ticket_id))


def _human_actor(meta: Any) -> str:
    """Who last changed a Ticket's spec, as far as managedFields tells (the field manager's name)."""
    for entry in reversed(meta.get("managedFields") or []):
        manager = entry.get("manager", "")
        if manager and manager != MANAGER and "f:spec" in (entry.get("fieldsV1") or {}):
            return f"kubernetes:{manager}"
    return "kubernetes:unknown"


async def _run_cycle(
    monitor: Monitor,
    telemetry: Telemetry,
    ref: ClusterRef,
    spec: dict[str, Any],
    pods: list[Any],
    status: dict[str, Any],
) -> None:
    """One cycle under its deadline, recorded in the operator's metrics.

    The monitor cancels the cycle's work at the deadline and writes why; the outer bound (the status write's room
    on top) is the last resort that keeps the timer alive whatever hangs."""
    started = time.monotonic()
    deadline = cycle_deadline(spec)
    try:
        async with asyncio.timeout(deadline + STATUS_WRITE_ROOM):
            stats = await monitor.check_cluster(ref, spec, pods, status, datetime.now(UTC), deadline=deadline)
    except TimeoutError:
        telemetry.record_failure("cycle_abandoned")
        log.error(
            "Check of MonitoredCluster and its status write timed out",
            extra={"cluster": ref.name, "namespace": ref.namespace},
        )
        return
    telemetry.record_cycle(ref, time.monotonic() - started, stats, time.time())


def register(
    registry: kopf.OperatorRegistry,
    monitor: Monitor,
    telemetry: Telemetry,
    *,
    tick_seconds: float,
    jitter: float = 1.0,
    peering: bool = False,
) -> Heartbeats:
    """Register every handler of the operator in ``registry``, bound to ``monitor``; return the timers' heartbeats
    (which the liveness probe reads)."""
    schedule = Schedule(jitter, tick_seconds)
    heartbeats = Heartbeats(max(300.0, 20 * tick_seconds), peering=peering)
    # Counted when scraped: no work per timer tick, and right on a paused replica whose timers no longer run.
    telemetry.scheduled.set_function(lambda: heartbeats.running(time.monotonic()))

    @kopf.index("", "v1", "pods", id="store_pods", registry=registry)
    def store_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[tuple[str, str, str], Any]:
        """Pods by (namespace, label, value): a cycle reads only the pods that share a selector label."""
        pod = store_pod(body)
        return {(namespace or "", key, value): pod for key, value in pod.labels}

    @kopf.timer(GROUP, VERSION, CLUSTER_PLURAL, id="check", interval=tick_seconds, registry=registry)
    async def check(
        spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, namespace: str | None, **kwargs: Any
    ) -> None:
        """Never raises and never returns a patch: the cycle writes status itself, so kopf has nothing to retry and
        the timer cannot die of an outage."""
        now = time.monotonic()
        heartbeats.beat(meta["uid"], now)
        tick = schedule.due(meta["uid"], _interval(spec), now)
        if tick is None:
            return
        telemetry.record_tick(tick.lag, tick.skipped)
        ref = _ref(meta, namespace or "")
        candidates = _candidate_pods(kwargs["store_pods"], ref.namespace, spec)
        await _run_cycle(monitor, telemetry, ref, dict(spec), candidates, dict(status))

    @kopf.on.delete(GROUP, VERSION, CLUSTER_PLURAL, id="cluster_deleted", registry=registry)
    async def deleted(meta: kopf.Meta, namespace: str | None, **_: Any) -> None:
        schedule.forget(meta["uid"])
        heartbeats.forget(meta["uid"])
        ref = _ref(meta, namespace or "")
        telemetry.forget(ref)
        try:
            resolved = await monitor.cluster_deleted(ref, datetime.now(UTC))
        except TicketStoreUnavailable:
            # Release the finalizer anyway: the orphan sweep resolves its tickets once Postgres answers.
            log.warning("Deleted MonitoredCluster while Postgres was unreachable", extra={"cluster": meta["name"]})
            return
        log.info("Resolved Tickets of deleted MonitoredCluster", extra={"cluster": meta["name"], "resolved": resolved})

    @kopf.on.field(GROUP, VERSION, TICKET_PLURAL, field="spec", id="human_intent", registry=registry)
    async def human_intent(
        old: Any, new: Any, status: kopf.Status, meta: kopf.Meta, namespace: str | None, **_: Any
    ) -> None:
        shown = _shown_ticket(meta, dict(status), namespace or "")
        if shown is None:
            return  # not a Ticket the operator made
        cluster_uid, resource = shown
        try:
            known = await monitor.human_intent(
                cluster_uid, resource, old, new or {}, actor=_human_actor(meta), now=datetime.now(UTC)
            )
        except TicketStoreUnavailable as error:
            raise kopf.TemporaryError(f"Postgres unreachable; will retry: {error}", delay=5) from None
        if not known:
            log.warning(
                "Ignored an edit of a Ticket Postgres does not show there",
                extra={"ticket": resource.name, "namespace": resource.namespace, "ticket_id": resource.ticket_id,
                       "cluster_uid": cluster_uid},
            )  # fmt: skip

    @kopf.on.event(GROUP, VERSION, TICKET_PLURAL, id="ticket_event", registry=registry)
    def ticket_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        owners = meta.get("ownerReferences") or []
        if event.get("type") == "DELETED" and owners:
            monitor.forget_projection(owners[0]["uid"], meta["name"])

    @kopf.on.probe(id="check_loop", registry=registry)
    def check_loop(**_: Any) -> dict[str, Any]:
        """Liveness: fails only when cluster timers stopped running (wedged), never because a dependency is down."""
        stale = heartbeats.stale(time.monotonic())
        if stale:
            raise kopf.PermanentError(f"The checks of {len(stale)} MonitoredClusters stopped running")
        return {"clusters": len(schedule)}

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await monitor.close()

    return heartbeats
