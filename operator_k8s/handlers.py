"""kopf registrations only: translate kopf's kwargs into service calls and back. No decisions here."""

from __future__ import annotations

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
from operator_k8s.domain.vocabulary import CLUSTER_PLURAL, GROUP, MANAGER, TICKET_PLURAL, VERSION
from operator_k8s.ports import ClusterRef
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
    interval so that a restart with 1,000 clusters does not fire them all at once.
    """

    def __init__(self, jitter: float = 1.0) -> None:
        self._due: dict[str, float] = {}
        self._jitter = jitter

    def __len__(self) -> int:
        return len(self._due)

    def due(self, uid: str, interval: float, now: float) -> Tick | None:
        due = self._due.get(uid)
        if due is None:
            due = self._due[uid] = now + random.uniform(0, interval * self._jitter)  # noqa: S311 - spreading load
        if now < due:
            return None
        lag = now - due
        skipped = int(lag // interval) if interval > 0 else 0
        self._due[uid] = due + (skipped + 1) * interval if interval > 0 else now
        return Tick(lag=lag, skipped=skipped)

    def forget(self, uid: str) -> None:
        self._due.pop(uid, None)


def _interval(spec: Any) -> float:
    try:
        return parse_duration(str(spec.get("interval", "30s")))
    except ValueError:
        return 0.0  # an invalid spec is checked at once, so its InvalidSpec condition shows


def _candidate_pods(index: kopf.Index[tuple[str, str, str], Any], namespace: str, spec: Any) -> list[Any]:
    """The pods carrying the selector's first label; the service checks the rest of the selector."""
    match_labels = ((spec.get("stores") or {}).get("selector") or {}).get("matchLabels") or {}
    if not isinstance(match_labels, dict) or not match_labels:
        return []
    key, value = min(match_labels.items())
    return list(index.get((namespace, str(key), str(value)), []))


def _ref(meta: Any, namespace: str) -> ClusterRef:
    return ClusterRef(
        uid=meta["uid"], name=meta["name"], namespace=namespace, generation=int(meta.get("generation", 0))
    )


def _human_actor(meta: Any) -> str:
    """Who last changed a Ticket's spec, as far as managedFields tells (the field manager's name)."""
    for entry in reversed(meta.get("managedFields") or []):
        manager = entry.get("manager", "")
        if manager and manager != MANAGER and "f:spec" in (entry.get("fieldsV1") or {}):
            return f"kubernetes:{manager}"
    return "kubernetes:unknown"


def register(
    registry: kopf.OperatorRegistry, monitor: Monitor, telemetry: Telemetry, *, tick_seconds: float, jitter: float = 1.0
) -> None:
    """Register every handler of the operator in ``registry``, bound to ``monitor``."""
    schedule = Schedule(jitter)

    @kopf.index("", "v1", "pods", id="store_pods", registry=registry)
    def store_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[tuple[str, str, str], Any]:
        """Pods by (namespace, label, value): a cycle reads only the pods that share a selector label."""
        pod = store_pod(body)
        return {(namespace or "", key, value): pod for key, value in pod.labels}

    @kopf.timer(GROUP, VERSION, CLUSTER_PLURAL, id="check", interval=tick_seconds, registry=registry)
    async def check(
        spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, namespace: str | None, patch: kopf.Patch, **kwargs: Any
    ) -> None:
        tick = schedule.due(meta["uid"], _interval(spec), time.monotonic())
        telemetry.scheduled.set(len(schedule))
        if tick is None:
            return
        telemetry.record_tick(tick.lag, tick.skipped)
        ref = _ref(meta, namespace or "")
        candidates = _candidate_pods(kwargs["store_pods"], ref.namespace, spec)
        started = time.monotonic()
        try:
            new_status, stats = await monitor.check_cluster(
                ref, dict(spec), candidates, dict(status), datetime.now(UTC)
            )
        except Exception as error:
            telemetry.record_failure(type(error).__name__)
            raise
        telemetry.record_cycle(ref, time.monotonic() - started, stats.errors, new_status is not None, time.time())
        if new_status is not None:
            patch.status.update(new_status)

    @kopf.on.delete(GROUP, VERSION, CLUSTER_PLURAL, id="cluster_deleted", registry=registry)
    async def deleted(meta: kopf.Meta, namespace: str | None, **_: Any) -> None:
        schedule.forget(meta["uid"])
        ref = _ref(meta, namespace or "")
        telemetry.forget(ref)
        resolved = await monitor.cluster_deleted(ref, datetime.now(UTC))
        log.info("Resolved Tickets of deleted MonitoredCluster", extra={"cluster": meta["name"], "resolved": resolved})

    @kopf.on.field(GROUP, VERSION, TICKET_PLURAL, field="spec", id="human_intent", registry=registry)
    async def human_intent(spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any) -> None:
        owners = meta.get("ownerReferences") or []
        ticket_id = status.get("ticketId")
        if not owners or ticket_id is None:
            return
        known = await monitor.human_intent(
            owners[0]["uid"],
            int(ticket_id),
            hold=bool(spec.get("hold", False)),
            acknowledged=bool(spec.get("acknowledged", False)),
            actor=_human_actor(meta),
            now=datetime.now(UTC),
        )
        if not known:
            raise kopf.TemporaryError("Ticket not yet known to the operator", delay=5)

    @kopf.on.event(GROUP, VERSION, TICKET_PLURAL, id="ticket_event", registry=registry)
    def ticket_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        owners = meta.get("ownerReferences") or []
        if event.get("type") == "DELETED" and owners:
            monitor.forget_projection(owners[0]["uid"], meta["name"])

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await monitor.close()
