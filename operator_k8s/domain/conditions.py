"""Status conditions from findings and tickets, with ``metav1.Condition`` semantics.

``lastTransitionTime`` changes only when a condition's status flips; ``observedGeneration`` is always the
generation the cycle judged. The whole list is returned, because kopf writes status as a JSON merge patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from operator_k8s.domain.invariants import Finding, Verdict
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.domain.vocabulary import (
    BUILTIN_CONDITION,
    CLUSTER_STORE,
    ConditionType,
    Invariant,
    Reason,
    custom_condition_type,
)

Status = Literal["True", "False", "Unknown"]
MAX_LISTED = 5


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str
    observed_generation: int
    last_transition_time: datetime


def condition_type_for(invariant: str) -> str:
    """The condition type that reports one invariant."""
    try:
        return BUILTIN_CONDITION[Invariant(invariant)]
    except ValueError:
        return custom_condition_type(invariant)


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _invariant_condition(
    invariant: str, findings: Sequence[Finding], tickets: Sequence[Ticket]
) -> tuple[Status, str, str]:
    """False while a ticket is open; Unknown when there is no data and no open ticket; True otherwise."""
    open_tickets = sorted((t for t in tickets if t.state.active), key=lambda t: t.key.store)
    if open_tickets:
        held = [t.key.store for t in open_tickets if t.hold and _holds_now(t.key.store, findings)]
        stores = [t.key.store for t in open_tickets]
        if held and len(held) == len(open_tickets):
            return "False", Reason.HELD_OPEN, f"Held open by a human although it holds again: {_listing(held)}"
        reason = Reason.STORES_NOT_READY if invariant == Invariant.STORES_READY else Reason.VIOLATED
        detail = next((f.message for f in findings if f.verdict is Verdict.VIOLATED), open_tickets[0].message)
        return "False", reason, f"Open tickets for {_listing(stores)}: {detail}"
    unknown = [f.store for f in findings if f.verdict is Verdict.UNKNOWN]
    if invariant == Invariant.STORES_READY and unknown == [CLUSTER_STORE] == [f.store for f in findings]:
        return "Unknown", Reason.NO_STORES_SELECTED, findings[0].message
    if unknown and len(unknown) == len(findings):
        return "Unknown", Reason.NO_DATA, f"No data for {_listing(unknown)}"
    pending = [t.key.store for t in tickets if t.state is TicketState.PENDING]
    if pending:
        return "True", Reason.VIOLATION_PENDING, f"Violated within its onset grace period: {_listing(sorted(pending))}"
    if invariant == Invariant.STORES_READY:
        return (
            "True",
            Reason.ALL_STORES_READY,
            f"All {len([f for f in findings if f.store != 'cluster'])} store pods are Running and Ready",
        )
    if not findings:  # absence is never health: no store is selected, so nothing was judged
        return "Unknown", Reason.NO_STORES_SELECTED, "No store pod is selected: nothing to judge"
    known = len(findings) - len(unknown)
    return "True", Reason.HOLDS, f"Holds for {known} of {len(findings)} stores"


def _holds_now(store: str, findings: Sequence[Finding]) -> bool:
    return any(f.store == store and f.verdict is Verdict.HOLDS for f in findings)


def _metrics_condition(findings: Sequence[Finding], ignored_series: int = 0) -> tuple[Status, str, str]:
    ignored = (
        f"; ignored {ignored_series} series about other namespaces or stores than this cluster's"
        if ignored_series
        else ""
    )
    unknown = [f for f in findings if f.unknown_reason is not None]
    if not unknown:
        return "True", Reason.METRICS_OK, "Every metric query returned data" + ignored
    reasons = {f.unknown_reason for f in unknown}
    for reason in (Reason.PROMETHEUS_UNREACHABLE, Reason.QUERY_FAILED, Reason.NO_SERIES):
        if reason in reasons:
            first = next(f for f in unknown if f.unknown_reason == reason)
            labels = sorted({f"{f.invariant}/{f.store}" for f in unknown})
            return "False", reason, f"{first.message} (no data for {_listing(labels)}){ignored}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class CycleOutcome:
    """What a cycle knows for the conditions: its findings, the tickets after it, and whether Postgres answered."""

    invariants: Sequence[str]
    findings: Sequence[Finding]
    tickets: Sequence[Ticket]
    ticket_store_error: str | None = None
    ignored_series: int = 0


def conditions_for(
    outcome: CycleOutcome, previous: Iterable[Condition], generation: int, now: datetime
) -> list[Condition]:
    """The full conditions list for a checked cluster."""
    computed: list[tuple[str, Status, str, str]] = []
    for invariant in outcome.invariants:
        findings = [f for f in outcome.findings if f.invariant == invariant]
        tickets = [t for t in outcome.tickets if t.key.invariant == invariant]
        computed.append((condition_type_for(invariant), *_invariant_condition(invariant, findings, tickets)))
    computed.append((ConditionType.METRICS_AVAILABLE, *_metrics_condition(outcome.findings, outcome.ignored_series)))
    if outcome.ticket_store_error is None:
        computed.append((ConditionType.TICKET_STORE_AVAILABLE, "True", Reason.TICKET_STORE_OK, "Postgres answered"))
    else:
        computed.append(
            (ConditionType.TICKET_STORE_AVAILABLE, "False", Reason.TICKET_STORE_UNREACHABLE, outcome.ticket_store_error)
        )
    statuses = [status for _, status, _, _ in computed[: len(outcome.invariants)]]
    violated = [ctype for ctype, status, _, _ in computed[: len(outcome.invariants)] if status == "False"]
    if violated:
        healthy: tuple[Status, str, str] = ("False", Reason.INVARIANTS_VIOLATED, f"Violated: {_listing(violated)}")
    elif "Unknown" in statuses:
        healthy = ("Unknown", Reason.INVARIANTS_UNKNOWN, "Some invariants cannot be judged for lack of data")
    else:
        healthy = ("True", Reason.ALL_INVARIANTS_HOLD, f"All {len(statuses)} invariants hold")
    computed.insert(0, (ConditionType.HEALTHY, *healthy))
    return merge_conditions(previous, computed, generation, now)


def ticket_store_down_conditions(
    previous: Iterable[Condition],
    findings: Sequence[Finding],
    error: str,
    generation: int,
    now: datetime,
    ignored_series: int = 0,
) -> list[Condition]:
    """Postgres never answered, so tickets are unknown: invariant conditions stay as last written, never cleared."""
    own = (ConditionType.METRICS_AVAILABLE, ConditionType.TICKET_STORE_AVAILABLE)
    previous = list(previous)
    computed: list[tuple[str, Status, str, str]] = [
        (c.type, c.status, c.reason, c.message) for c in previous if c.type not in own
    ]
    computed.append((ConditionType.METRICS_AVAILABLE, *_metrics_condition(findings, ignored_series)))
    computed.append((ConditionType.TICKET_STORE_AVAILABLE, "False", Reason.TICKET_STORE_UNREACHABLE, error))
    return merge_conditions(previous, computed, generation, now)


def health_unknown_conditions(
    previous: Iterable[Condition], reason: Reason, message: str, generation: int, now: datetime
) -> list[Condition]:
    """Nothing new is known this cycle (an InvalidSpec, a CheckFailed): Healthy is Unknown with the reason; the other
    conditions stay as they were. The next interval checks again."""
    kept = [c for c in previous if c.type != ConditionType.HEALTHY]
    computed: list[tuple[str, Status, str, str]] = [(ConditionType.HEALTHY, "Unknown", reason, message)]
    computed += [(c.type, c.status, c.reason, c.message) for c in kept]
    return merge_conditions(previous, computed, generation, now)


def merge_conditions(
    previous: Iterable[Condition], computed: Sequence[tuple[str, Status, str, str]], generation: int, now: datetime
) -> list[Condition]:
    """Set each computed condition, keeping ``lastTransitionTime`` unless its status flipped; drop the rest. A type
    is set once (the first wins): the API server refuses a list with a duplicate type."""
    before = {c.type: c for c in previous}
    result = []
    seen: set[str] = set()
    for ctype, status, reason, message in computed:
        if ctype in seen:
            continue
        seen.add(ctype)
        old = before.get(ctype)
        if old is not None and old.status == status:
            result.append(replace(old, reason=reason, message=message, observed_generation=generation))
        else:
            result.append(Condition(ctype, status, reason, message, generation, now))
    return result
