"""The values a cycle is about and the pure decisions over a cluster's ticket list.

Everything here is a function of values (the tickets Postgres returned, the findings, what the watch observed, the
time passed in): the shell's ledger calls these inside its compare-and-set loop, and tests call them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from operator_k8s.domain.invariants import Finding, invariant_names, invariant_spec
from operator_k8s.domain.projections import ObservedEdit, ObservedTicket, observed_edit, ticket_name
from operator_k8s.domain.specs import MonitoredClusterSpec
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
from operator_k8s.domain.vocabulary import Reason

WARNING_EFFECTS = {EffectKind.OPENED, EffectKind.REOPENED, EffectKind.ESCALATED}


@dataclass(frozen=True)
class ClusterRef:
    """The MonitoredCluster a cycle is about."""

    uid: str
    name: str
    namespace: str
    generation: int
    labels: tuple[tuple[str, str], ...] = ()
    """Its labels as the check saw them (sorted pairs): a ticket it records keeps them, for notification routes."""


@dataclass(frozen=True)
class TicketResource:
    """A Ticket resource a human edited: where it is, and the ticket it says it shows (its status, or its name)."""

    namespace: str
    name: str
    ticket_id: int


@dataclass(frozen=True)
class SyncResult:
    """What Postgres holds after a sync, and which writes it did not apply.

    ``conflicts``: the positions of writes decided from a version that is no longer current (another writer got
    there first); the caller re-decides from ``tickets``. ``rejected``: writes Postgres refused (the reason, safe to
    show); dropped.
    """

    tickets: list[Ticket]
    conflicts: frozenset[int] = frozenset()
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True)
class TicketEvent:
    """A Kubernetes Event about a ticket transition, reported on the MonitoredCluster."""

    reason: str
    message: str
    warning: bool


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


def tracked_stores(tickets: Sequence[Ticket]) -> dict[str, frozenset[str]]:
    """The stores with an unresolved ticket, per invariant: they are judged even when no pod or series names them."""
    tracked: dict[str, set[str]] = {}
    for ticket in tickets:
        if ticket.state is not TicketState.RESOLVED:
            tracked.setdefault(ticket.key.invariant, set()).add(ticket.key.store)
    return {name: frozenset(stores) for name, stores in tracked.items()}


def current_by_key(tickets: Sequence[Ticket]) -> dict[TicketKey, Ticket]:
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


def apply_locally(tickets: Sequence[Ticket], transitions: Sequence[Transition]) -> list[Ticket]:
    """The ticket list after the transitions, before Postgres confirms them."""
    result = list(tickets)
    for item in transitions:
        if item.before is not None:
            result = [t for t in result if t is not item.before]
        if item.after is not None:
            result.append(item.after)
    return result


def policy_of(spec: MonitoredClusterSpec, invariant: str, reopen_window: timedelta) -> Policy:
    """One invariant's timing."""
    settings = invariant_spec(spec, invariant)
    assert settings is not None
    return Policy(
        onset_grace=timedelta(seconds=settings.for_seconds),
        clear_grace=timedelta(seconds=settings.clear_for_seconds),
        reopen_window=reopen_window,
        interval=timedelta(seconds=spec.interval_seconds),
    )


def decide(
    ref: ClusterRef,
    spec: MonitoredClusterSpec,
    findings: Sequence[Finding],
    tickets: Sequence[Ticket],
    now: datetime,
    reopen_window: timedelta,
) -> list[Transition]:
    """Every ticket transition the findings call for; tickets of invariants no longer in the spec retire."""
    current = current_by_key(tickets)
    policies = {name: policy_of(spec, name, reopen_window) for name in invariant_names(spec)}
    transitions = []
    for finding in findings:
        key = TicketKey(ref.uid, finding.invariant, finding.store)
        result = transition(
            current.get(key), finding, now, policies[finding.invariant],
            key=key, namespace=ref.namespace, cluster_name=ref.name, cluster_labels=dict(ref.labels),
        )  # fmt: skip
        if result.changed:
            transitions.append(result)
    for key, ticket in current.items():
        if key.invariant not in policies and ticket.state is not TicketState.RESOLVED:
            transitions.append(retire(ticket, now, Reason.INVARIANT_REMOVED))
    return transitions


def retire_all(tickets: Sequence[Ticket], now: datetime, reason: str) -> list[Transition]:
    """Every unresolved ticket resolved (pending ones cancelled) with ``reason``: the cluster is gone."""
    return [t for t in (retire(ticket, now, reason) for ticket in tickets) if t.changed]


def human_edits(tickets: Sequence[Ticket], shown: Sequence[ObservedTicket]) -> list[ObservedEdit]:
    """The human edits the observed Tickets show of these tickets (by name: a Ticket is the operator's by its name,
    whatever someone did to its ownerReference)."""
    by_name = {ticket_name(t): t for t in tickets if t.id is not None}
    edits = []
    for observed in shown:
        ticket = by_name.get(observed.name)
        if ticket is not None and (edit := observed_edit(ticket, observed)) is not None:
            edits.append(edit)
    return edits


def fold_edits(tickets: Sequence[Ticket], edits: Sequence[ObservedEdit]) -> list[Transition]:
    """The transitions that fold human edits into the tickets (none for an edit already folded)."""
    by_id = {t.id: t for t in tickets}
    folded = []
    for item in edits:
        ticket = by_id.get(item.ticket_id)
        if ticket is not None:
            result = apply_human_intent(ticket, item.edit, actor=item.actor)
            if result.changed:
                folded.append(result)
    return folded


def shown_ticket(tickets: Sequence[Ticket], resource: TicketResource) -> Ticket | None:
    """The ticket a Ticket resource shows, if Postgres has it and the resource is where the operator shows it."""
    ticket = next((t for t in tickets if t.id == resource.ticket_id), None)
    if ticket is None or (ticket.namespace, ticket_name(ticket)) != (resource.namespace, resource.name):
        return None
    return ticket


def events_for(transitions: Sequence[Transition]) -> list[TicketEvent]:
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
