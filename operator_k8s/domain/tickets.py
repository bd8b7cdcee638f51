"""The ticket state machine: a ticket and a finding in, the next ticket and its effects out.

States (each with the facts that define it):

- ``pending``: violated now, ``for`` grace not yet elapsed since ``violating_since``; persisted so a restart keeps
  the countdown. Never shown to humans as a ticket; cancelled (deleted) if the invariant holds before it opens.
- ``open``: violated for at least ``for``; counts ``occurrences`` of violation episodes.
- ``acknowledged``: open, and a human said they have seen it (``spec.acknowledged``).
- ``diagnosed``: reserved for the diagnosis stage; behaves as acknowledged.
- ``resolved``: the invariant held for ``clearFor`` and nobody holds the ticket. A violation within the reopen window
  revives it (a flap, ``occurrences`` + 1); a later one opens a new ticket.

UNKNOWN findings change nothing but the clear countdown, which they reset: missing data never resolves a ticket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from operator_k8s.domain.invariants import Finding, Verdict
from operator_k8s.domain.vocabulary import Reason, Severity

if TYPE_CHECKING:
    from operator_k8s.domain.notices import Notice


class TicketState(StrEnum):
    PENDING = "pending"
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    DIAGNOSED = "diagnosed"
    RESOLVED = "resolved"

    @property
    def active(self) -> bool:
        """Open in the broad sense: a human-visible ticket that is not resolved."""
        return self in (TicketState.OPEN, TicketState.ACKNOWLEDGED, TicketState.DIAGNOSED)


@dataclass(frozen=True)
class TicketKey:
    """The dedup key: at most one unresolved ticket per key."""

    cluster_uid: str
    invariant: str
    store: str


@dataclass(frozen=True)
class Ticket:
    key: TicketKey
    namespace: str
    cluster_name: str
    state: TicketState
    severity: Severity
    message: str
    first_seen: datetime
    last_seen: datetime
    occurrences: int = 0
    violating_since: datetime | None = None
    clearing_since: datetime | None = None
    opened_at: datetime | None = None
    resolved_at: datetime | None = None
    hold: bool = False
    acknowledged: bool = False
    note: str | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    version: int = 0
    """The row's version in Postgres (0: not stored yet). Every write names the version it was decided from and
    applies only if the row still has it (compare-and-set)."""
    flapping: bool = False
    flap_changes: tuple[datetime, ...] = ()
    """When the invariant last changed state (violated ↔ holding), newest last, at most ``FLAP_CHECKS``."""
    last_notification: str | None = None
    """Who was last told of it and how that went (read from the delivery queue; never written with the ticket)."""
    evidence_summary: str | None = None
    diagnosis: str | None = None
    """One line of its evidence and of its probable cause (read from ``ticket_evidence``; never written with it)."""
    cluster_labels: dict[str, str] = field(default_factory=dict)
    """Its MonitoredCluster's labels when the ticket was first recorded, kept for its life: what notification routes
    select it by (``domain.receivers``), so every notice of one ticket is routed alike."""
    cause_id: int | None = None
    """The ticket whose cause explains this one (``domain.incidents``): one incident, told once."""
    counted_stores: dict[str, list[str]] | None = None
    """For a cluster-level PD ticket: the stores PD counts and their states, from its evidence (pod -> states)."""


FLAP_CHECKS = 21
"""Flap detection looks at the last 21 checks (20 possible state changes), as Nagios does."""


@dataclass(frozen=True)
class Policy:
    """Timing of one invariant's lifecycle, and its flap detection: the percent of state changes over the last
    ``FLAP_CHECKS`` checks (newer ones weigh more) starts flapping at ``flap_start`` and stops below ``flap_stop``
    (Nagios's default start; four changes in twenty checks flap, at most one in twenty is quiet)."""

    onset_grace: timedelta
    clear_grace: timedelta
    reopen_window: timedelta
    interval: timedelta = timedelta(seconds=30)
    flap_start: float = 20.0
    flap_stop: float = 10.0


class EffectKind(StrEnum):
    PENDING = "Pending"
    CANCELLED = "Cancelled"
    OPENED = "Opened"
    REOPENED = "Reopened"
    RECURRED = "Recurred"
    ESCALATED = "Escalated"
    RESOLVED = "Resolved"
    ACKNOWLEDGED = "Acknowledged"
    HELD = "Held"
    RELEASED = "Released"
    NOTED = "Noted"
    DIAGNOSED = "Diagnosed"
    FLAPPING_STARTED = "FlappingStarted"
    FLAPPING_STOPPED = "FlappingStopped"
    TRUNCATED = "HistoryTruncated"


EFFECT_REASON = {
    EffectKind.OPENED: Reason.TICKET_OPENED,
    EffectKind.REOPENED: Reason.TICKET_REOPENED,
    EffectKind.ESCALATED: Reason.TICKET_ESCALATED,
    EffectKind.RESOLVED: Reason.TICKET_RESOLVED,
    EffectKind.ACKNOWLEDGED: Reason.TICKET_ACKNOWLEDGED,
}
"""Effects that users hear about as Kubernetes Events; the others are only history."""


@dataclass(frozen=True)
class Effect:
    kind: EffectKind
    from_state: TicketState | None
    to_state: TicketState | None
    reason: str
    actor: str = "operator"
    notice: Notice | None = field(default=None, compare=False)
    """What the people on call are told of it (``domain.notices``), stored in the same transaction; derived from the
    transition itself, so it takes no part in comparing effects."""


@dataclass(frozen=True)
class Transition:
    """What one decision did: the ticket after it (None: deleted) and what happened on the way."""

    before: Ticket | None
    after: Ticket | None
    effects: tuple[Effect, ...] = ()

    @property
    def changed(self) -> bool:
        return self.before != self.after


def json_number(value: float | None) -> float | str | None:
    """A number JSON can carry: non-finite values (a PromQL division by zero gives +Inf) are kept as the text
    Prometheus uses for them, so they are stored and shown as such rather than poisoning a JSON document."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def snapshot_of(finding: Finding, now: datetime) -> dict[str, Any]:
    """The evidence stored with a ticket at open and at each escalation."""
    return {
        "value": json_number(finding.value),
        "threshold": json_number(finding.threshold),
        "query": finding.query,
        "store": finding.store,
        "message": finding.message,
        "at": now.isoformat(),
    }


def new_ticket(
    key: TicketKey, namespace: str, cluster_name: str, finding: Finding, now: datetime,
    cluster_labels: Mapping[str, str] | None = None,
) -> Ticket:  # fmt: skip
    return Ticket(
        key=key,
        namespace=namespace,
        cluster_name=cluster_name,
        cluster_labels=dict(cluster_labels or {}),
        state=TicketState.PENDING,
        severity=finding.severity,
        message=finding.message,
        first_seen=now,
        last_seen=now,
        violating_since=now,
    )


def transition(
    ticket: Ticket | None,
    finding: Finding,
    now: datetime,
    policy: Policy,
    *,
    key: TicketKey,
    namespace: str,
    cluster_name: str,
    cluster_labels: Mapping[str, str] | None = None,
) -> Transition:
    """Decide the next state of the ticket for ``key`` given this cycle's finding, and whether it flaps.
    ``cluster_labels`` are the cluster's labels now: a ticket recorded by this decision keeps them."""
    resolved_flapping = ticket is not None and ticket.flapping and ticket.state is TicketState.RESOLVED
    if ticket is not None and resolved_flapping and not _reopenable(ticket, now, policy):
        # Past its reopen window it is judged no more (a new violation opens a new ticket): it stops here.
        return _stop_flapping(ticket, ticket, "resolved and past its reopen window")
    decided = _lifecycle(
        ticket, finding, now, policy, key=key, namespace=namespace, cluster_name=cluster_name,
        cluster_labels=cluster_labels,
    )  # fmt: skip
    return _with_flapping(decided, now, policy)


def _stop_flapping(before: Ticket, after: Ticket, why: str, effects: tuple[Effect, ...] = ()) -> Transition:
    """``after`` stops flapping whatever its recent changes say: it is judged no more."""
    stopped = replace(after, flapping=False)
    stop = Effect(EffectKind.FLAPPING_STOPPED, after.state, after.state, f"flapping stopped: {why}")
    return Transition(before, stopped, (*effects, stop))


def violating(ticket: Ticket) -> bool:
    """Whether the ticket last saw its invariant violated (pending, open and not clearing, or resolved with a new
    violation counting down)."""
    if ticket.state is TicketState.PENDING:
        return True
    if ticket.state is TicketState.RESOLVED:
        return ticket.violating_since is not None
    return ticket.clearing_since is None


def flap_percent(changes: tuple[datetime, ...], now: datetime, interval: timedelta) -> float:
    """Nagios's percent state change over the last ``FLAP_CHECKS`` checks: each change weighs from 0.8 (the oldest
    check) to 1.2 (the newest), over the 20 changes those checks could hold."""
    span = FLAP_CHECKS - 1
    total = 0.0
    for at in changes:
        age = int((now - at) / interval) if interval > timedelta(0) else 0
        if 0 <= age < span:
            total += 0.8 + 0.4 * (span - 1 - age) / (span - 1)
    return 100.0 * total / span


def _with_flapping(decided: Transition, now: datetime, policy: Policy) -> Transition:
    """Record a state change of the invariant, and start or stop flapping when its percent crosses a threshold
    (one effect each, instead of a pair of notices per flap)."""
    before, after = decided.before, decided.after
    if after is None:
        return decided
    changed = violating(after) != (violating(before) if before is not None else False)
    changes = (*after.flap_changes, now)[-FLAP_CHECKS:] if changed else after.flap_changes
    percent = flap_percent(changes, now, policy.interval)
    flapping = percent >= policy.flap_start or (after.flapping and percent >= policy.flap_stop)
    if changes == after.flap_changes and flapping == after.flapping:
        return decided
    updated = replace(after, flap_changes=changes, flapping=flapping)
    effects = decided.effects
    if flapping != after.flapping:
        kind = EffectKind.FLAPPING_STARTED if flapping else EffectKind.FLAPPING_STOPPED
        word = "started" if flapping else "stopped"
        reason = f"flapping {word}: {percent:.0f}% state changes over the last {FLAP_CHECKS} checks"
        effects = (*effects, Effect(kind, after.state, after.state, reason))
    return Transition(before, updated, effects)


def _lifecycle(
    ticket: Ticket | None,
    finding: Finding,
    now: datetime,
    policy: Policy,
    *,
    key: TicketKey,
    namespace: str,
    cluster_name: str,
    cluster_labels: Mapping[str, str] | None = None,
) -> Transition:
    if ticket is None or (ticket.state is TicketState.RESOLVED and not _reopenable(ticket, now, policy)):
        if finding.verdict is not Verdict.VIOLATED:
            return Transition(ticket, ticket)
        pending = new_ticket(key, namespace, cluster_name, finding, now, cluster_labels)
        return _maybe_open(
            None,
            pending,
            finding,
            now,
            policy,
            (Effect(EffectKind.PENDING, None, TicketState.PENDING, finding.message),),
        )
    if ticket.state is TicketState.PENDING or ticket.state is TicketState.RESOLVED:
        return _waiting(ticket, finding, now, policy)
    return _active(ticket, finding, now, policy)


def _reopenable(ticket: Ticket, now: datetime, policy: Policy) -> bool:
    return ticket.resolved_at is not None and now - ticket.resolved_at <= policy.reopen_window


def _waiting(ticket: Ticket, finding: Finding, now: datetime, policy: Policy) -> Transition:
    """A pending ticket, or a recently resolved one that a recurrence may revive."""
    if finding.verdict is Verdict.UNKNOWN:
        return Transition(ticket, ticket)
    if finding.verdict is not Verdict.VIOLATED:
        if ticket.violating_since is None:
            return Transition(ticket, ticket)
        if ticket.state is TicketState.PENDING:
            return Transition(ticket, None, (Effect(EffectKind.CANCELLED, TicketState.PENDING, None, finding.message),))
        return Transition(ticket, replace(ticket, violating_since=None))
    started = ticket.violating_since or now
    waiting = replace(ticket, violating_since=started, message=finding.message, severity=finding.severity)
    return _maybe_open(ticket, waiting, finding, now, policy, ())


def _maybe_open(
    before: Ticket | None,
    ticket: Ticket,
    finding: Finding,
    now: datetime,
    policy: Policy,
    effects: tuple[Effect, ...],
) -> Transition:
    assert ticket.violating_since is not None
    if now - ticket.violating_since < policy.onset_grace:
        return Transition(before, ticket, effects)
    revived = ticket.state is TicketState.RESOLVED
    kind = EffectKind.REOPENED if revived else EffectKind.OPENED
    opened = replace(
        ticket,
        state=TicketState.ACKNOWLEDGED if revived and ticket.acknowledged else TicketState.OPEN,
        occurrences=ticket.occurrences + 1,
        opened_at=ticket.opened_at or now,
        resolved_at=None,
        clearing_since=None,
        last_seen=now,
        snapshot=snapshot_of(finding, now),
    )
    return Transition(before, opened, (*effects, Effect(kind, ticket.state, opened.state, finding.message)))


def _active(ticket: Ticket, finding: Finding, now: datetime, policy: Policy) -> Transition:
    """An open, acknowledged or diagnosed ticket."""
    match finding.verdict:
        case Verdict.UNKNOWN:
            return Transition(ticket, replace(ticket, clearing_since=None))
        case Verdict.MARGINAL:
            return Transition(ticket, replace(ticket, clearing_since=None, last_seen=now))
        case Verdict.VIOLATED:
            return _still_violated(ticket, finding, now)
        case Verdict.HOLDS:
            clearing_since = ticket.clearing_since or now
            if now - clearing_since < policy.clear_grace or ticket.hold:
                return Transition(ticket, replace(ticket, clearing_since=clearing_since))
            resolved = replace(
                ticket, state=TicketState.RESOLVED, resolved_at=now, clearing_since=None, violating_since=None
            )
            reason = f"{finding.message} for {policy.clear_grace.total_seconds():g}s"
            return Transition(
                ticket, resolved, (Effect(EffectKind.RESOLVED, ticket.state, TicketState.RESOLVED, reason),)
            )


def _still_violated(ticket: Ticket, finding: Finding, now: datetime) -> Transition:
    effects: list[Effect] = []
    after = replace(ticket, last_seen=now, message=finding.message)
    if ticket.clearing_since is not None:
        # The invariant held briefly but not for clearFor: a new episode of the same ticket.
        after = replace(after, occurrences=ticket.occurrences + 1, clearing_since=None)
        effects.append(Effect(EffectKind.RECURRED, ticket.state, ticket.state, finding.message))
    if finding.severity.rank > ticket.severity.rank:
        after = replace(after, severity=finding.severity, snapshot=snapshot_of(finding, now))
        reason = f"Severity raised from {ticket.severity} to {finding.severity}: {finding.message}"
        effects.append(Effect(EffectKind.ESCALATED, ticket.state, ticket.state, reason))
    return Transition(ticket, after, tuple(effects))


@dataclass(frozen=True)
class HumanEdit:
    """What a human changed on a Ticket resource's spec: only the fields they changed (None: left alone)."""

    hold: bool | None = None
    acknowledged: bool | None = None
    note: str | None = None
    note_changed: bool = False

    @classmethod
    def between(cls, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> HumanEdit:
        """The edit that turned spec ``old`` into ``new``: only the fields that differ."""
        before, after = dict(old or {}), dict(new or {})

        def changed(name: str) -> bool:
            return before.get(name) != after.get(name)

        note = after.get("note")
        return cls(
            hold=bool(after.get("hold", False)) if changed("hold") else None,
            acknowledged=bool(after.get("acknowledged", False)) if changed("acknowledged") else None,
            note=str(note) if changed("note") and note is not None else None,
            note_changed=changed("note"),
        )


def apply_human_intent(ticket: Ticket, edit: HumanEdit, *, actor: str) -> Transition:
    """Fold a human's edit into the ticket; each field changes only if the human changed it, so acknowledging never
    touches a hold and releasing never touches an acknowledgement."""
    effects: list[Effect] = []
    after = ticket
    if edit.hold is not None and edit.hold != ticket.hold:
        after = replace(after, hold=edit.hold)
        kind = EffectKind.HELD if edit.hold else EffectKind.RELEASED
        effects.append(Effect(kind, ticket.state, ticket.state, f"hold set to {edit.hold}", actor))
    if edit.acknowledged is not None and edit.acknowledged != ticket.acknowledged:
        after = replace(after, acknowledged=edit.acknowledged)
        if edit.acknowledged and ticket.state in (TicketState.OPEN, TicketState.DIAGNOSED):
            # A probable cause found is not a human taking the ticket: acknowledging a diagnosed one still does.
            after = replace(after, state=TicketState.ACKNOWLEDGED)
            effects.append(Effect(EffectKind.ACKNOWLEDGED, ticket.state, after.state, "acknowledged", actor))
        elif not edit.acknowledged and ticket.state is TicketState.ACKNOWLEDGED:
            after = replace(after, state=TicketState.DIAGNOSED if ticket.diagnosis else TicketState.OPEN)
            effects.append(
                Effect(EffectKind.ACKNOWLEDGED, ticket.state, after.state, "acknowledgement withdrawn", actor)
            )
    if edit.note_changed and edit.note != ticket.note:
        after = replace(after, note=edit.note)
        effects.append(Effect(EffectKind.NOTED, ticket.state, ticket.state, "note changed", actor))
    return Transition(ticket, after, tuple(effects))


def retire(ticket: Ticket, now: datetime, reason: str) -> Transition:
    """Its cluster, invariant or store is gone: an unresolved ticket resolves with ``reason`` (a hold on it released
    and recorded as such), a pending one vanishes, and a flapping one stops flapping (it is judged no more), so its
    receivers hear that it stopped, resolved."""
    if ticket.state is TicketState.RESOLVED:
        return _stop_flapping(ticket, ticket, reason) if ticket.flapping else Transition(ticket, ticket)
    if ticket.state is TicketState.PENDING:
        return Transition(ticket, None, (Effect(EffectKind.CANCELLED, ticket.state, None, reason),))
    resolved = replace(
        ticket, state=TicketState.RESOLVED, resolved_at=now, clearing_since=None, violating_since=None, hold=False
    )
    effects = [Effect(EffectKind.RESOLVED, ticket.state, TicketState.RESOLVED, reason)]
    if ticket.hold:
        # What was held is gone: the release is recorded, so history, Ticket spec and state agree.
        effects.insert(0, Effect(EffectKind.RELEASED, ticket.state, ticket.state, f"hold released: {reason}"))
    if ticket.flapping:
        return _stop_flapping(ticket, resolved, reason, tuple(effects))
    return Transition(ticket, resolved, tuple(effects))
