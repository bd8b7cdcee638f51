"""The dispatcher: routes the notices the check cycles queued in Postgres, and delivers them, each receiver in a
loop of its own, so a dead or slow receiver slows neither a check cycle nor another receiver.

Webhooks are edge-triggered: one signed POST per (ticket, transition), retried under the same ``webhook-id``.
Alertmanager is level-triggered, as its client contract wants: every ``resend`` interval (and at once when a
transition is due) one POST per Alertmanager carries every open ticket's alert, the resolutions and severity
changes of the last five minutes, and the watchdog. A transition's delivery to Alertmanager counts as made when a
POST that carried it was accepted. All of it is read from Postgres, so a restart, a crash or another replica loses
nothing: at worst an alert is sent once more, which Alertmanager deduplicates.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from operator_k8s.domain.notices import (
    INCIDENT_WAIT,
    NO_ROUTE,
    RESOLVED_RESEND,
    AlertLinks,
    ClaimedDelivery,
    Notice,
    PlannedDelivery,
    QueuedNotice,
    RetryPolicy,
    SendOutcome,
    Settled,
    awaits_cause,
    firing_alert,
    notice_of_ticket,
    plan_deliveries,
    plan_silences,
    released,
    resolved_alerts,
    settle,
    still_firing,
    ticket_key,
    watchdog_alert,
    webhook_payload,
    worth_sending,
)
from operator_k8s.domain.projections import resource_name, ticket_name
from operator_k8s.domain.receivers import AlertmanagerTarget, NotificationsConfig, Receiver, receivers_for
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.ports import DeliveryQueue, ReceiverClient

log = logging.getLogger("operator_k8s.notifier")

Covering = Callable[[Notice, datetime], tuple[str, datetime, datetime] | None]
"""Which maintenance window covers a notice's ticket at a time, until when and since when (None: none)."""

POLL_SECONDS = 1.0
"""How often the queue is read when nothing woke the dispatcher (a cycle that queued a notice wakes it at once)."""
LEASE_MARGIN = timedelta(seconds=15)
"""A claim's lease beyond the send's own deadline: a lease never runs out while its send may still be going."""
ENDS_AFTER_RESENDS = 4
"""An alert's ``endsAt`` is this many resend intervals ahead (Prometheus uses four times its resend delay)."""
WINDOWS_RECHECK_SECONDS = 10.0
"""How often deferred deliveries are checked against the windows as they are now (one deleted or shortened)."""
SILENCES_PER_ROUND = 10
"""Silences created and expired per Alertmanager round at most (the rest in the next rounds): a round stays within
its lease."""
PRUNE_SECONDS = 60.0
"""How often finished deliveries past retention are deleted and the queue-depth gauge is refreshed."""


def _alertmanager_lease(target: AlertmanagerTarget) -> timedelta:
    """A round's lease: room for one POST per Alertmanager and two more requests (silences, a transition sent
    alone), each within its timeout; a round that would outlast it leaves what it did not settle to its lease."""
    return timedelta(seconds=target.timeout_seconds * (len(target.urls) + 2)) + LEASE_MARGIN


def _until(covered: tuple[str, datetime, datetime] | None) -> datetime | None:
    return covered[1] if covered is not None else None


def _name(queued: QueuedNotice) -> str:
    notice = queued.notice
    return resource_name(notice.cluster, notice.invariant, notice.store, queued.ticket_id)


class Notifier:
    def __init__(
        self,
        config: NotificationsConfig,
        queue: DeliveryQueue,
        client: ReceiverClient,
        *,
        owner: str,
        covering: Covering | None = None,
        policy: RetryPolicy | None = None,
        record: Callable[[str, str, float | None], None] | None = None,
        record_post: Callable[[str, bool], None] | None = None,
        record_pending: Callable[[dict[str, int]], None] | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.client = client
        self.owner = owner
        self.covering = covering or (lambda notice, at: None)
        self.policy = policy or RetryPolicy()
        self.links = AlertLinks(config.prometheus_url, config.runbook_url, config.instance)
        self._record = record or (lambda receiver, result, delay: None)
        self._record_post = record_post or (lambda receiver, ok: None)
        self._record_pending = record_pending or (lambda counts: None)
        self.active = active or (lambda: True)
        """Whether this replica runs the checks: a standby under peering sends nothing (its watches are paused, so
        its view of maintenance windows is stale), and takes over with the checks."""
        self._sent: dict[str, tuple[list[dict[str, Any]], datetime]] = {}
        """Per Alertmanager receiver, the last POST built from Postgres and when: a cache, re-sent only while
        Postgres is unreachable (its loss changes nothing once Postgres answers)."""
        self._windows_checked = -math.inf
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """A cycle committed notices: route and deliver them now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if self._tasks:
            return
        loops = [self._forever("route", self.route_once), self._forever("prune", self._prune, PRUNE_SECONDS)]
        for receiver in self.config.receivers:
            if receiver.alertmanager is not None:
                loops.append(self._alertmanager_loop(receiver))
            else:
                loops.append(self._forever(receiver.name, functools.partial(self.deliver_webhooks, receiver)))
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _forever(self, what: str, step: Callable[[], Any], every: float = POLL_SECONDS) -> None:
        """Run ``step`` again and again; a step that fails (Postgres away) is logged and retried, never fatal."""
        while True:
            busy = False
            try:
                busy = bool(await step()) if self.active() else False
            except Exception as error:
                log.warning(
                    "Notification step failed; retrying",
                    extra={"step": what, "error": f"{type(error).__name__}: {error}"},
                )
                await self.queue.reset()
            if not busy:
                await self._sleep(every)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        else:
            await asyncio.sleep(0.05)  # let the router run first, so deliveries woken with it find their rows
            self._wake.clear()

    # -- routing ----------------------------------------------------------------------------------------------------

    async def route_once(self) -> int:
        now = datetime.now(UTC)
        disabled_now = await self.queue.disabled()
        disabled = frozenset(r.name for r in self.config.receivers if disabled_now.get(r.name) == r.endpoint_digest)

        def plan(queued: QueuedNotice) -> list[PlannedDelivery]:
            notice = queued.notice
            names = receivers_for(
                self.config.routes, namespace=notice.namespace, cluster=notice.cluster,
                invariant=notice.invariant, severity=notice.severity, cluster_labels=notice.cluster_labels,
            )  # fmt: skip
            covered = self.covering(notice, notice.at)
            held = (covered[0], covered[1]) if covered is not None else None
            wait = notice.at + INCIDENT_WAIT if awaits_cause(notice) else None
            return plan_deliveries(names, covered=held, disabled=disabled, now=now, not_before=wait)

        routed = await self.queue.route(plan)
        if routed:
            self._wake.set()
        if time.monotonic() >= self._windows_checked + WINDOWS_RECHECK_SECONDS:
            self._windows_checked = time.monotonic()
            waiting = await self.queue.deferred()
            covered_now = [(i, due, _until(self.covering(q.notice, now))) for i, due, q in waiting]
            moved = released(covered_now, now)
            if moved:
                await self.queue.reschedule(moved)
                log.info(
                    "Released notifications a maintenance window no longer holds", extra={"deliveries": len(moved)}
                )
        return routed

    async def _prune(self) -> bool:
        configured = [r.name for r in self.config.receivers] + [NO_ROUTE]
        removed = await self.queue.prune(timedelta(hours=self.config.retention_hours), configured)
        if removed:
            log.info("Pruned finished notification deliveries", extra={"deliveries": removed})
        self._record_pending(await self.queue.pending())
        return False

    # -- webhooks ---------------------------------------------------------------------------------------------------

    async def deliver_webhooks(self, receiver: Receiver) -> int:
        target = receiver.webhook
        assert target is not None
        lease = timedelta(seconds=target.timeout_seconds) + LEASE_MARGIN
        # One wave per claim: every send of it starts at once, so each ends within the lease.
        claimed = await self.queue.claim(receiver.name, self.owner, lease, limit=target.concurrency)
        limit = asyncio.Semaphore(target.concurrency)

        async def one(item: ClaimedDelivery) -> None:
            async with limit:
                await self._deliver_webhook(receiver, item)

        await asyncio.gather(*(one(item) for item in claimed))
        return len(claimed)

    async def _deliver_webhook(self, receiver: Receiver, item: ClaimedDelivery) -> None:
        target = receiver.webhook
        assert target is not None
        if await self._suppressed(item):
            return
        payload = webhook_payload(
            item.queued.notice, ticket_id=item.queued.ticket_id, ticket_name=_name(item.queued),
            sequence=item.queued.id, idempotency_key=item.queued.idempotency_key, links=self.links,
            explains=item.explains,
        )  # fmt: skip
        outcome = await self.client.webhook(
            target.url, target.key_files, payload["id"], payload, target.timeout_seconds
        )
        await self._settle(receiver, item, outcome)

    async def _suppressed(self, item: ClaimedDelivery) -> bool:
        """A delivery that no longer says anything (deferred by a maintenance window; of a ticket another's cause
        explains) is suppressed, with why."""
        reason = worth_sending(
            item.queued.notice.kind, deferred=item.deferred_by is not None, ticket_active=item.ticket_active,
            told_firing=item.told_firing, cause_id=item.cause_id,
        )  # fmt: skip
        if reason is None:
            return False
        why = f"{reason} ({item.deferred_by})" if item.deferred_by else reason
        await self.queue.settle(item.id, self.owner, Settled("suppressed", why))
        self._record(item.receiver, "suppressed", None)
        return True

    async def _settle(self, receiver: Receiver, item: ClaimedDelivery, outcome: SendOutcome) -> None:
        now = datetime.now(UTC)
        settled = settle(item, outcome, self.policy, now)
        if not await self.queue.settle(item.id, self.owner, settled):
            log.warning(
                "Lost the lease of a notification delivery before settling it; it is sent again",
                extra={"receiver": receiver.name, "delivery": item.id},
            )
            return
        result = {"pending": "retry"}.get(settled.state, settled.state)
        delay = (now - item.queued.notice.at).total_seconds() if settled.state == "delivered" else None
        self._record(receiver.name, result, delay)
        if settled.state != "delivered":
            log.info(
                "Notification not delivered",
                extra={"receiver": receiver.name, "notification": item.queued.idempotency_key,
                       "state": settled.state, "result": settled.result},
            )  # fmt: skip
        if outcome.gone:
            ended = await self.queue.disable(receiver.name, receiver.endpoint_digest, outcome.detail)
            log.warning(
                "Disabled a notification receiver: it answered 410 Gone",
                extra={"receiver": receiver.name, "dropped_pending": ended},
            )

    # -- Alertmanager -----------------------------------------------------------------------------------------------

    async def _alertmanager_loop(self, receiver: Receiver) -> None:
        target = receiver.alertmanager
        assert target is not None
        last_sent = 0.0

        async def step() -> bool:
            nonlocal last_sent
            resend_due = time.monotonic() - last_sent >= target.resend_seconds
            try:
                claimed = await self.queue.claim(receiver.name, self.owner, _alertmanager_lease(target), limit=500)
            except Exception:
                if resend_due:  # Postgres cannot say what is open: what was firing is sent again from memory
                    last_sent = time.monotonic()
                    await self._resend_remembered(receiver)
                raise
            if not claimed and not resend_due:
                return False
            last_sent = time.monotonic()  # a refused POST is tried again at the resend interval, not every poll
            await self.send_alerts(receiver, claimed)
            return False

        await self._forever(receiver.name, step)

    async def alerts_for(
        self, receiver: Receiver, claimed: Sequence[ClaimedDelivery], now: datetime, tickets: Sequence[Ticket]
    ) -> tuple[list[dict[str, Any]], dict[int, int]]:
        """The POST for one Alertmanager: every open ticket routed to it and not in a maintenance window, the
        endings of the last five minutes (and of the claimed deliveries, a window's deferred ones included), and the
        watchdog. Returns the alerts and, per claimed delivery id, the index of its alert."""
        target = receiver.alertmanager
        assert target is not None
        ends_in = timedelta(seconds=target.resend_seconds * ENDS_AFTER_RESENDS)
        alerts: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}

        def add(alert: dict[str, Any]) -> tuple[tuple[str, str], ...]:
            key = tuple(sorted(alert["labels"].items()))
            alerts.setdefault(key, alert)
            return key

        for ending in await self.queue.recent_endings(receiver.name, now - RESOLVED_RESEND):
            for alert in resolved_alerts(ending.notice, ending.ticket_id, _name(ending), self.links):
                add(alert)
        index: dict[int, tuple[tuple[str, str], ...]] = {}
        for item in claimed:
            for alert in resolved_alerts(item.queued.notice, item.queued.ticket_id, _name(item.queued), self.links):
                index[item.id] = add(alert)
        for ticket in tickets:
            assert ticket.id is not None
            notice = notice_of_ticket(ticket)
            queued = QueuedNotice(0, ticket.id, "", notice)
            firing = firing_alert(notice, ticket.id, _name(queued), now, ends_in, self.links)
            key = tuple(sorted(firing["labels"].items()))
            alerts[key] = firing  # a ticket open again supersedes its resolution of the last minutes
            for item in claimed:
                if item.queued.ticket_id == ticket.id and item.id not in index:
                    index[item.id] = key
        if receiver.name in self.config.watchdog:
            add(watchdog_alert(self.config.instance, now, ends_in))
        keys = list(alerts)
        return [alerts[k] for k in keys], {delivery: keys.index(key) for delivery, key in index.items()}

    async def send_alerts(self, receiver: Receiver, claimed: Sequence[ClaimedDelivery]) -> bool:
        """One POST per Alertmanager of the receiver; True if one accepted it. A 400 names invalid alerts, and
        Alertmanager keeps the valid ones of the POST: each claimed delivery's alert is then sent alone, so only the
        deliveries whose alert it refuses are dead."""
        target = receiver.alertmanager
        assert target is not None
        now = datetime.now(UTC)
        ends_by = time.monotonic() + _alertmanager_lease(target).total_seconds() - LEASE_MARGIN.total_seconds()
        live = [item for item in claimed if not await self._suppressed(item)]
        tickets = await self._alerting(receiver, now)
        if target.silence_acknowledged:
            await self._mirror_acknowledgements(receiver, tickets, now)
        alerts, index = await self.alerts_for(receiver, live, now, tickets)
        self._sent[receiver.name] = (alerts, now)
        outcomes = [
            await self.client.alerts(url, alerts, target.timeout_seconds, target.bearer_token_file)
            for url in target.urls
        ]
        accepted = next((o for o in outcomes if o.ok), None)
        self._record_post(receiver.name, accepted is not None)
        invalid = any(o.status == 400 for o in outcomes)  # Alertmanager names invalid alerts and keeps the others
        for item in live:
            if time.monotonic() > ends_by:
                break  # the rest of the lease is too short for another request: their leases run out, they come back
            if accepted is not None:
                outcome = accepted
            elif item.id in index and invalid:
                alone = [alerts[index[item.id]]]
                outcome = await self.client.alerts(target.urls[0], alone, target.timeout_seconds,
                                                   target.bearer_token_file)  # fmt: skip
            elif item.id not in index:
                outcome = SendOutcome(True, "nothing to send: the ticket is neither open nor recently ended")
            else:  # unreachable, or refusing all of it (401, 403, 404: a token or a proxy): tried again later
                outcome = replace(outcomes[0], permanent=False, gone=False)
            await self._settle(receiver, item, outcome)
        if accepted is None:
            log.warning(
                "Alertmanager did not accept the alerts",
                extra={"receiver": receiver.name, "alerts": len(alerts), "error": outcomes[0].detail},
            )
        return accepted is not None

    async def _alerting(self, receiver: Receiver, now: datetime) -> list[Ticket]:
        """The open (or flapping) tickets whose alerts go to ``receiver`` now: routed there, and not opened inside a
        maintenance window that covers them unless Alertmanager already heard them fire."""
        alerting = []
        told = await self.queue.told_firing(receiver.name)
        for ticket in await self.queue.open_tickets():
            if ticket.cause_id is not None:
                continue  # told with the ticket of its cause: one incident, one alert
            notice = notice_of_ticket(ticket)
            names = receivers_for(
                self.config.routes, namespace=notice.namespace, cluster=notice.cluster,
                invariant=notice.invariant, severity=notice.severity, cluster_labels=notice.cluster_labels,
            )  # fmt: skip
            covered = self.covering(notice, now)
            # A ticket that fired before the window started, or whose firing Alertmanager heard (a window's start
            # may be backdated: a TidbCluster NotReady since an outage, then scaled to fix it), keeps firing: no
            # resolution Alertmanager did not have. One that opened inside the window and was never told waits.
            before = covered is not None and ticket.opened_at is not None and ticket.opened_at < covered[2]
            if receiver.name in names and (covered is None or before or ticket.id in told):
                alerting.append(ticket)
        return alerting

    async def _mirror_acknowledgements(self, receiver: Receiver, tickets: Sequence[Ticket], now: datetime) -> None:
        """Make Alertmanager's silences match the acknowledged tickets, before the alerts are sent: a resolution is
        sent after its silence is expired (Alertmanager sends no resolution of a silenced alert)."""
        target = receiver.alertmanager
        assert target is not None
        acknowledged = {
            ticket_key(
                t.namespace, t.id, self.config.instance
            ): f"Acknowledged in Ticket {t.namespace}/{ticket_name(t)}" + (f": {t.note}" if t.note else "")
            for t in tickets
            if t.id is not None and t.state is TicketState.ACKNOWLEDGED
        }
        url, token = target.urls[0], target.bearer_token_file
        existing = await self.client.silences(url, target.timeout_seconds, token)
        if existing is None:
            log.warning("Could not read Alertmanager's silences; acknowledgements are not mirrored this round",
                        extra={"receiver": receiver.name})  # fmt: skip
            return
        plan = plan_silences(acknowledged, existing, now)
        for silence_id in plan.expire[:SILENCES_PER_ROUND]:
            expired = await self.client.expire_silence(url, silence_id, target.timeout_seconds, token)
            if not expired.ok:
                log.warning(
                    "Alertmanager did not expire a silence; a resolution it covers is not notified until it does",
                    extra={"receiver": receiver.name, "silence": silence_id, "error": expired.detail},
                )
        for silence in plan.create[:SILENCES_PER_ROUND]:
            outcome = await self.client.create_silence(url, silence, target.timeout_seconds, token)
            if not outcome.ok:
                log.warning(
                    "Alertmanager refused a silence", extra={"receiver": receiver.name, "error": outcome.detail}
                )

    async def _resend_remembered(self, receiver: Receiver) -> None:
        target = receiver.alertmanager
        assert target is not None
        remembered = self._sent.get(receiver.name)
        if remembered is None:
            return
        now = datetime.now(UTC)
        alerts = still_firing(*remembered, now, timedelta(seconds=target.resend_seconds * ENDS_AFTER_RESENDS))
        for url in target.urls:
            outcome = await self.client.alerts(url, alerts, target.timeout_seconds, target.bearer_token_file)
            self._record_post(receiver.name, outcome.ok)
        log.warning(
            "Re-sent the firing alerts from memory: Postgres is unreachable",
            extra={"receiver": receiver.name, "alerts": len(alerts)},
        )
