"""What the people on call are told: a notice per ticket transition that someone must hear about, and how each
receiver is told (an Alertmanager alert, a signed webhook's JSON), decided here without I/O.

A notice is decided with its transition and stored in the same Postgres transaction (the ``notices`` table, the
delivery queue, apart from the in-memory outbox of ticket writes), so a crash between the commit and the send loses
nothing: the dispatcher delivers it later, at least once, under an idempotency key that never changes. Where it goes
is decided when it is routed (``routing``), and Alertmanager is also told the state of every open ticket again and
again (its contract is level-triggered: an alert that is not re-sent ends at its ``endsAt``).
"""

from __future__ import annotations

import random
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from operator_k8s.domain.incidents import LINKED_INVARIANTS
from operator_k8s.domain.tickets import Effect, EffectKind, Ticket, TicketState, Transition, json_number
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Severity

PAYLOAD_VERSION = "1"
"""The webhook payload's version: a field is only ever added within a version; anything else is a new version."""

NOTICE_KINDS = {
    EffectKind.OPENED: "opened",
    EffectKind.REOPENED: "reopened",
    EffectKind.ESCALATED: "escalated",
    EffectKind.RESOLVED: "resolved",
    EffectKind.ACKNOWLEDGED: "acknowledged",
    EffectKind.DIAGNOSED: "diagnosed",
    EffectKind.FLAPPING_STARTED: "flapping_started",
    EffectKind.FLAPPING_STOPPED: "flapping_stopped",
}
"""The transitions someone is told about; the others (pending, a recurrence within an open ticket, a note) are
history only."""

FLAP_QUIETED = frozenset({EffectKind.OPENED, EffectKind.REOPENED, EffectKind.RESOLVED, EffectKind.DIAGNOSED})
"""While a ticket flaps, its openings, resolutions and the diagnosis of each reopening are history only: "flapping
started" and "flapping stopped" (with the state it stopped in) are what its receivers hear, instead of a pair (and a
diagnosis) per flap."""
FIRING_KINDS = frozenset({"opened", "reopened", "escalated", "flapping_started"})
WATCHDOG = "OperatorK8sWatchdog"
ALERT_NAME = "OperatorK8sTicket"
OPEN_ENDED = datetime(9999, 12, 31, tzinfo=UTC)
"""The end of a maintenance window nobody scheduled (the store's operator reports an upgrade): it ends when the
report does, which the dispatcher checks every few seconds (``released``)."""
RESOLVED_RESEND = timedelta(minutes=5)
"""How long a resolved alert is sent again (Alertmanager may have missed the first send)."""


@dataclass(frozen=True)
class Notice:
    """One transition as the receivers hear of it; ``previous_severity`` is set on an escalation (Alertmanager
    resolves the alert of the old label set)."""

    kind: str
    status: str
    at: datetime
    namespace: str
    cluster: str
    invariant: str
    store: str
    severity: Severity
    summary: str
    occurrences: int
    opened_at: datetime | None
    value: float | str | None = None
    threshold: float | str | None = None
    query: str | None = None
    previous_severity: Severity | None = None
    actor: str = "operator"
    cluster_labels: dict[str, str] = field(default_factory=dict)
    """The labels its ticket was recorded with: what ``clusterSelector`` routes match (a notice queued before they
    were kept has none, and only routes without a selector match it)."""

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["at"] = self.at.isoformat()
        body["opened_at"] = self.opened_at.isoformat() if self.opened_at else None
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Notice:
        fields = dict(body)
        fields["at"] = datetime.fromisoformat(fields["at"])
        fields["opened_at"] = datetime.fromisoformat(fields["opened_at"]) if fields.get("opened_at") else None
        fields["severity"] = Severity(fields["severity"])
        previous = fields.get("previous_severity")
        fields["previous_severity"] = Severity(previous) if previous else None
        fields["cluster_labels"] = dict(fields.get("cluster_labels") or {})
        return cls(**fields)


def notice_of(before: Ticket | None, after: Ticket, effect: Effect, at: datetime) -> Notice | None:
    """The notice of one effect of a transition, or None when nobody is told of it."""
    kind = NOTICE_KINDS.get(effect.kind)
    if kind is None:
        return None
    if kind == "acknowledged" and effect.to_state is not TicketState.ACKNOWLEDGED:
        kind = "unacknowledged"
    return replace(
        notice_of_ticket(after),
        kind=kind,
        status="resolved" if after.state is TicketState.RESOLVED else "firing",
        at=at,
        summary=effect.reason,
        previous_severity=before.severity if kind == "escalated" and before is not None else None,
        actor=effect.actor,
    )


def with_notices(item: Transition, at: datetime) -> Transition:
    """The transition with a notice on each effect someone must hear about (stored with the effect, in the same
    transaction)."""
    if item.after is None or not item.effects:
        return item
    quiet = item.after.flapping or any(e.kind is EffectKind.FLAPPING_STOPPED for e in item.effects)
    effects = tuple(
        e if quiet and e.kind in FLAP_QUIETED else replace(e, notice=notice_of(item.before, item.after, e, at))
        for e in item.effects
    )
    return replace(item, effects=effects)


# -- Alertmanager ------------------------------------------------------------------------------------------------

_LABEL_VALUE = re.compile(r"[\x00-\x1f]")


def alert_labels(
    *, namespace: str, cluster: str, invariant: str, store: str, severity: Severity, ticket_id: int, instance: str = ""
) -> dict[str, str]:
    """What identifies the alert of a ticket (Alertmanager fingerprints the label set): never a value, a count or a
    time, or every change would be a new alert. ``ticket`` is the stable key receivers group and deduplicate on."""
    return {
        "alertname": ALERT_NAME,
        "namespace": namespace,
        "cluster": cluster,
        "invariant": invariant,
        "store": store,
        "severity": severity.value,
        "ticket": ticket_key(namespace, ticket_id, instance),
    }


def ticket_key(namespace: str, ticket_id: int, instance: str = "") -> str:
    """The ticket's stable key across its lifetime (reopened included): PagerDuty's ``dedup_key``, OnCall's group.
    ``instance`` names the installation, so two installations posting to one integration never share a key."""
    return f"{instance + '/' if instance else ''}{namespace}/ticket-{ticket_id}"


def message_id(idempotency_key: str, instance: str = "") -> str:
    """The webhook's ``webhook-id``: the queue's key of (ticket, transition), with the installation's name."""
    return f"{instance}:{idempotency_key}" if instance else idempotency_key


def graph_url(prometheus_url: str, query: str | None, start: datetime | None) -> str | None:
    """A link to the query's graph in Prometheus (its ``/graph`` page), over the ticket's window."""
    if not prometheus_url or not query:
        return None
    params = {"g0.expr": query, "g0.tab": "0"}
    if start is not None:
        params["g0.range_input"] = "1h"
    return f"{prometheus_url.rstrip('/')}/graph?{urllib.parse.urlencode(params)}"


def _annotations(notice: Notice, ticket_name: str, runbook: str) -> dict[str, str]:
    annotations = {
        "summary": notice.summary,
        "description": f"{notice.invariant} of {notice.namespace}/{notice.cluster}, store {notice.store}:"
        f" {notice.summary}",
        "value": "" if notice.value is None else str(notice.value),
        "threshold": "" if notice.threshold is None else str(notice.threshold),
        "occurrences": str(notice.occurrences),
        "ticket": f"kubectl -n {notice.namespace} get ticket {ticket_name} -o yaml",
    }
    if runbook:
        annotations["runbook_url"] = f"{runbook.rstrip('/')}/{notice.invariant}"
    return {k: _LABEL_VALUE.sub(" ", v) for k, v in annotations.items() if v}


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AlertLinks:
    """Where the people reading an alert are sent: Prometheus as they reach it (often not the in-cluster URL) and
    the runbooks (``<runbook>/<invariant>``); and the installation's name, in every key."""

    prometheus_url: str = ""
    runbook_url: str = ""
    instance: str = ""


def firing_alert(
    notice: Notice, ticket_id: int, ticket_name: str, now: datetime, ends_in: timedelta, links: AlertLinks
) -> dict[str, Any]:
    """The alert of an open ticket: ``startsAt`` its opening (stable on every send), ``endsAt`` a few resend
    intervals ahead, so a live operator's alert never times out and a dead one's ends on its own."""
    labels = alert_labels(
        namespace=notice.namespace, cluster=notice.cluster, invariant=notice.invariant, store=notice.store,
        severity=notice.severity, ticket_id=ticket_id, instance=links.instance,
    )  # fmt: skip
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": _annotations(notice, ticket_name, links.runbook_url),
        "startsAt": _stamp(notice.opened_at or notice.at),
        "endsAt": _stamp(now + ends_in),
    }
    generator = graph_url(links.prometheus_url, notice.query, notice.opened_at)
    if generator:
        alert["generatorURL"] = generator
    return alert


def resolved_alerts(notice: Notice, ticket_id: int, ticket_name: str, links: AlertLinks) -> list[dict[str, Any]]:
    """The alerts a notice ends: a resolution ends the ticket's alert, an escalation the alert of the old severity
    (the new one fires in the same POST)."""
    if notice.kind == "resolved" or (notice.kind == "flapping_stopped" and notice.status == "resolved"):
        ended = notice
    elif notice.kind == "escalated" and notice.previous_severity is not None:
        ended = replace(notice, severity=notice.previous_severity)
    else:
        return []
    alert = firing_alert(ended, ticket_id, ticket_name, notice.at, timedelta(0), links)
    alert["endsAt"] = _stamp(max(notice.at, ended.opened_at or notice.at))
    return [alert]


def watchdog_alert(instance: str, now: datetime, ends_in: timedelta) -> dict[str, Any]:
    """The dead man's switch: always firing while the operator runs; it ends ``ends_in`` after the last send, which
    a dead man's switch receiver (or an inhibition) turns into "the operator is gone". Its labels name the
    installation, never a process: a restart or another replica sends the same alert, so only absence ends it."""
    return {
        "labels": {"alertname": WATCHDOG, "severity": "none", "operator": instance or "operator-k8s"},
        "annotations": {
            "summary": "operator-k8s is running and can reach Alertmanager",
            "description": f"Always firing; it ends {ends_in.total_seconds():g}s after operator-k8s last sent it",
        },
        "startsAt": _stamp(now),
        "endsAt": _stamp(now + ends_in),
    }


# -- Signed webhooks ---------------------------------------------------------------------------------------------


def webhook_payload(
    notice: Notice, *, ticket_id: int, ticket_name: str, sequence: int, idempotency_key: str, links: AlertLinks,
    explains: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:  # fmt: skip
    """The webhook's JSON (version ``PAYLOAD_VERSION``), shaped for one-line templates: ``group_id``/``dedup_key``
    group and deduplicate by ticket, ``status`` firing|resolved auto-resolves, ``sequence`` orders the transitions
    of one ticket (a later sequence supersedes)."""
    key = ticket_key(notice.namespace, ticket_id, links.instance)
    return {
        "version": PAYLOAD_VERSION,
        "type": f"ticket.{notice.kind}",
        "id": message_id(idempotency_key, links.instance),
        "group_id": key,
        "dedup_key": key,
        "status": notice.status,
        "transition": notice.kind,
        "sequence": sequence,
        "at": _stamp(notice.at),
        "title": f"[{notice.severity.value.upper()}] {notice.namespace}/{notice.cluster} {notice.invariant}"
        f" ({notice.store}): {notice.kind}",
        "ticket": {
            "id": ticket_id,
            "name": ticket_name,
            "namespace": notice.namespace,
            "cluster": notice.cluster,
            "invariant": notice.invariant,
            "store": notice.store,
            "severity": notice.severity.value,
            "previous_severity": notice.previous_severity.value if notice.previous_severity else None,
            "summary": notice.summary,
            "value": json_number(notice.value) if isinstance(notice.value, float) else notice.value,
            "threshold": json_number(notice.threshold) if isinstance(notice.threshold, float) else notice.threshold,
            "occurrences": notice.occurrences,
            "opened_at": _stamp(notice.opened_at) if notice.opened_at else None,
            "actor": notice.actor,
        },
        "incident": {"explains": [dict(item) for item in explains]},
        "links": {
            "graph": graph_url(links.prometheus_url, notice.query, notice.opened_at),
            "runbook": f"{links.runbook_url.rstrip('/')}/{notice.invariant}" if links.runbook_url else None,
            "ticket": f"kubectl -n {notice.namespace} get ticket {ticket_name} -o yaml",
        },
    }


# -- Retries -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in age: past either, the delivery is dead and
    says why, so a dead receiver never grows the queue without bound."""

    first: timedelta = timedelta(seconds=2)
    cap: timedelta = timedelta(minutes=1)
    """A receiver back from an outage hears everything within a minute (and the jitter spreads the retries)."""
    attempts: int = 500
    max_age: timedelta = timedelta(hours=6)


def next_attempt(
    policy: RetryPolicy, attempts: int, created: datetime, now: datetime, *, at_least: timedelta = timedelta(0),
    rand: random.Random | None = None,
) -> datetime | None:  # fmt: skip
    """When to try again after ``attempts`` failed tries (None: give up). ``at_least`` is the receiver's own ask
    (429 ``Retry-After``); the jitter spreads the retries of many deliveries after an outage."""
    if attempts >= policy.attempts or now - created >= policy.max_age:
        return None
    ceiling = min(policy.cap, policy.first * (2 ** min(attempts, 30)))
    spread: float = (rand or random).uniform(0.5, 1.0)
    wait: timedelta = max(ceiling * spread, at_least)
    return now + wait


INCIDENT_WAIT = timedelta(seconds=8)
"""How long the opening of a cluster-level PD ticket waits before it is sent: its evidence (at most 5 s) names the
stores PD counts, and a ticket another ticket's cause explains is told with that ticket, not on its own."""


def awaits_cause(notice: Notice) -> bool:
    """Whether a notice waits ``INCIDENT_WAIT`` for its ticket's cause to be known (PD's cluster-level counts)."""
    return notice.invariant in LINKED_INVARIANTS and notice.store == CLUSTER_STORE and notice.kind in FIRING_KINDS


def worth_sending(
    kind: str, *, deferred: bool, ticket_active: bool, told_firing: bool, cause_id: int | None = None
) -> str | None:
    """Whether a delivery still says something (None: send it), else why not. A ticket another ticket's cause
    explains is told with that ticket (one incident, one page): its own notices are not sent, unless its receiver
    already heard it fire (then its ending is news). A delivery that waited for a maintenance window to end: a
    ticket that resolved inside the window was never announced, so neither its opening nor its resolution is news
    to anyone."""
    if cause_id is not None and not told_firing:
        return f"explained by ticket {cause_id}: one incident, told with its cause"
    if not deferred:
        return None
    if kind in FIRING_KINDS and not ticket_active:
        return "resolved during a maintenance window: nobody was told it opened"
    if kind == "resolved" and not told_firing:
        return "opened and resolved within a maintenance window"
    if kind in ("acknowledged", "unacknowledged", "flapping_stopped") and not told_firing:
        return "nobody was told of the ticket outside its maintenance window"
    return None


def parse_retry_after(value: str | None, now: datetime) -> timedelta:
    """A 429's ``Retry-After``: seconds or an HTTP date; anything unreadable asks for nothing extra."""
    if not value:
        return timedelta(0)
    text = value.strip()
    if text.isdigit():
        return timedelta(seconds=min(int(text), 3600))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return timedelta(0)
    return max(timedelta(0), min(when - now, timedelta(hours=1)))


# -- The delivery queue ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedNotice:
    """A notice as the queue holds it: ``idempotency_key`` names (ticket, transition) and never changes."""

    id: int
    ticket_id: int
    idempotency_key: str
    notice: Notice


NO_ROUTE = "(no route)"
"""The receiver named in the history of a notice that no route matched."""


@dataclass(frozen=True)
class PlannedDelivery:
    receiver: str
    state: str
    due_at: datetime
    deferred_by: str | None = None
    result: str | None = None


def plan_deliveries(
    receivers: Sequence[str], *, covered: tuple[str, datetime] | None, disabled: frozenset[str], now: datetime,
    not_before: datetime | None = None,
) -> list[PlannedDelivery]:  # fmt: skip
    """One delivery per receiver the notice is routed to: due now (or at ``not_before``: a notice waiting for its
    cause, ``awaits_cause``), or when the maintenance window that covers it ends (it is then checked again:
    ``worth_sending``); dead at once for a receiver a 410 disabled. A notice no route matches says so in its
    history."""
    due = max(now, not_before) if not_before is not None else now
    if not receivers:
        return [PlannedDelivery(NO_ROUTE, "suppressed", now, result="no route matched: nobody was told")]
    planned = []
    for receiver in receivers:
        if receiver in disabled:
            planned.append(PlannedDelivery(receiver, "dead", now, result="receiver disabled: it answered 410 Gone"))
        elif covered is not None:
            window, until = covered
            reason = (
                f"deferred: maintenance by {window} until it ends" if until >= OPEN_ENDED
                else f"deferred: maintenance window {window} until {_stamp(until)}"
            )  # fmt: skip
            planned.append(PlannedDelivery(receiver, "pending", max(until, now), window, reason))
        else:
            planned.append(PlannedDelivery(receiver, "pending", due))
    return planned


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process holds a lease on: ``attempts`` counts this one; ``ticket_active`` and
    ``told_firing`` (a firing notice of the ticket reached this receiver) decide whether a deferred one still
    matters."""

    id: int
    receiver: str
    attempts: int
    created_at: datetime
    deferred_by: str | None
    queued: QueuedNotice
    ticket_active: bool
    told_firing: bool
    cause_id: int | None = None
    """The ticket whose cause explains this delivery's ticket (its notices are not sent on their own)."""
    explains: tuple[dict[str, Any], ...] = ()
    """The active tickets this delivery's ticket is the cause of: told in its payload, as one incident."""


@dataclass(frozen=True)
class SendOutcome:
    """What a receiver answered: ``gone`` (410: stop sending there), ``permanent`` (it can never accept this one),
    ``retry_after`` (429's ask)."""

    ok: bool
    detail: str
    gone: bool = False
    permanent: bool = False
    retry_after: timedelta = timedelta(0)
    status: int = 0
    """The HTTP status (0: no answer)."""


@dataclass(frozen=True)
class Settled:
    state: str
    result: str
    due_at: datetime | None = None


def settle(claimed: ClaimedDelivery, outcome: SendOutcome, policy: RetryPolicy, now: datetime) -> Settled:
    """A delivery's next state after an attempt: delivered, retried later, or dead with the reason."""
    if outcome.ok:
        return Settled("delivered", outcome.detail)
    if outcome.gone:
        return Settled("dead", f"{outcome.detail}: receiver disabled until its URL changes")
    if outcome.permanent:
        return Settled("dead", f"{outcome.detail}: the receiver refuses it, so it is not sent again")
    due = next_attempt(policy, claimed.attempts, claimed.created_at, now, at_least=outcome.retry_after)
    if due is None:
        age = (now - claimed.created_at).total_seconds()
        return Settled("dead", f"gave up after {claimed.attempts} attempts over {age:.0f}s: {outcome.detail}")
    return Settled("pending", f"attempt {claimed.attempts} failed: {outcome.detail}", due)


def notice_of_ticket(ticket: Ticket) -> Notice:
    """An open ticket as the notice Alertmanager is sent again and again."""
    snapshot = ticket.snapshot
    return Notice(
        kind="opened",
        status="firing",
        at=ticket.opened_at or ticket.first_seen,
        namespace=ticket.namespace,
        cluster=ticket.cluster_name,
        invariant=ticket.key.invariant,
        store=ticket.key.store,
        severity=ticket.severity,
        summary=ticket.message,
        occurrences=ticket.occurrences,
        opened_at=ticket.opened_at,
        value=snapshot.get("value"),
        threshold=snapshot.get("threshold"),
        query=snapshot.get("query"),
        cluster_labels=dict(ticket.cluster_labels),
    )


# -- Acknowledgements as Alertmanager silences --------------------------------------------------------------------

SILENCE_AUTHOR = "operator-k8s"
SILENCE_LIFETIME = timedelta(hours=24)
"""A mirrored silence lasts a day and is renewed at half of that: if the operator goes away for good, its silences
end on their own."""


@dataclass(frozen=True)
class SilencePlan:
    create: tuple[dict[str, Any], ...]
    expire: tuple[str, ...]


def plan_silences(acknowledged: Mapping[str, str], existing: Sequence[Mapping[str, Any]], now: datetime) -> SilencePlan:
    """The silences to create and expire so that Alertmanager mutes exactly the alerts of acknowledged open tickets
    (``acknowledged``: ticket key → comment), judged from the silences it shows now (ours: created by
    ``SILENCE_AUTHOR``, active, matching one ticket). A silence close to its end is replaced."""
    ours: dict[str, list[Mapping[str, Any]]] = {}
    for silence in existing:
        if silence.get("createdBy") != SILENCE_AUTHOR or silence.get("status", {}).get("state") != "active":
            continue
        keys = [
            m.get("value") for m in silence.get("matchers", []) if m.get("name") == "ticket" and m.get("isEqual", True)
        ]
        if len(keys) == 1 and isinstance(keys[0], str):
            ours.setdefault(keys[0], []).append(silence)
    expire = [str(s["id"]) for key, found in ours.items() if key not in acknowledged for s in found]
    create = []
    for key, comment in sorted(acknowledged.items()):
        lasting = [s for s in ours.get(key, []) if _ends(s) - now > SILENCE_LIFETIME / 2]
        if not lasting:
            create.append({
                "matchers": [{"name": "ticket", "value": key, "isRegex": False, "isEqual": True}],
                "startsAt": _stamp(now),
                "endsAt": _stamp(now + SILENCE_LIFETIME),
                "createdBy": SILENCE_AUTHOR,
                "comment": comment[:1000],
            })  # fmt: skip
            expire += [str(s["id"]) for s in ours.get(key, [])]
    return SilencePlan(tuple(create), tuple(expire))


def _ends(silence: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(silence.get("endsAt", "1970-01-01T00:00:00Z")).replace("Z", "+00:00"))


def still_firing(
    alerts: Sequence[dict[str, Any]], sent_at: datetime, now: datetime, ends_in: timedelta
) -> list[dict[str, Any]]:
    """The alerts of a POST that were firing when it was sent (their ``endsAt`` ahead of it), with ``endsAt`` moved
    ahead again: what is re-sent while Postgres cannot say what is open now, so Alertmanager does not take silence
    for a resolution. Resolutions are not repeated from memory."""
    return [{**alert, "endsAt": _stamp(now + ends_in)} for alert in alerts if _parse_stamp(alert["endsAt"]) > sent_at]


def _parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def released(deferred: Sequence[tuple[int, datetime, datetime | None]], now: datetime) -> list[tuple[int, datetime]]:
    """Deferred deliveries whose window ends sooner than they wait now: (id, due, the end of the window covering it
    now or None) in; (id, new due) out. A window deleted or shortened releases them at its new end, never later."""
    return [(i, max(now, until) if until else now) for i, due, until in deferred if until is None or until < due]
