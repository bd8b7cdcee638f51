"""Condition computation: statuses from findings and tickets; lastTransitionTime kept unless status flips."""

from __future__ import annotations

import pytest

from operator_k8s.domain.conditions import (
    Condition,
    CycleOutcome,
    Status,
    conditions_for,
    health_unknown_conditions,
    merge_conditions,
    ticket_store_down_conditions,
)
from operator_k8s.domain.invariants import Finding, Verdict
from operator_k8s.domain.tickets import TicketKey, TicketState
from operator_k8s.domain.vocabulary import Reason, Severity
from tests.unit.builders import at, ticket


def lat(store: str, verdict: Verdict, reason: Reason | None = None) -> Finding:
    return Finding("latency", store, verdict, Severity.WARNING, f"{store} {verdict}", unknown_reason=reason)


def by_type(conditions: list[Condition]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conditions}


def latency_ticket(state: TicketState, store: str = "tikv-0", **fields):  # type: ignore[no-untyped-def]
    return ticket(state, key=TicketKey("uid-1", "latency", store), **fields)


@pytest.mark.parametrize(
    ("findings", "tickets", "latency", "healthy"),
    [
        ([lat("tikv-0", Verdict.HOLDS)], [], ("True", Reason.HOLDS), ("True", Reason.ALL_INVARIANTS_HOLD)),
        (
            [lat("tikv-0", Verdict.VIOLATED)],
            [latency_ticket(TicketState.OPEN)],
            ("False", Reason.VIOLATED),
            ("False", Reason.INVARIANTS_VIOLATED),
        ),
        (
            [lat("tikv-0", Verdict.VIOLATED)],
            [latency_ticket(TicketState.PENDING)],
            ("True", Reason.VIOLATION_PENDING),
            ("True", Reason.ALL_INVARIANTS_HOLD),
        ),
        (
            [lat("tikv-0", Verdict.UNKNOWN, Reason.NO_SERIES)],
            [],
            ("Unknown", Reason.NO_DATA),
            ("Unknown", Reason.INVARIANTS_UNKNOWN),
        ),
        (
            [lat("tikv-0", Verdict.UNKNOWN, Reason.NO_SERIES)],
            [latency_ticket(TicketState.OPEN)],
            ("False", Reason.VIOLATED),
            ("False", Reason.INVARIANTS_VIOLATED),
        ),
        (
            [lat("tikv-0", Verdict.HOLDS)],
            [latency_ticket(TicketState.OPEN, hold=True)],
            ("False", Reason.HELD_OPEN),
            ("False", Reason.INVARIANTS_VIOLATED),
        ),
        (
            [lat("tikv-0", Verdict.HOLDS)],
            [latency_ticket(TicketState.RESOLVED)],
            ("True", Reason.HOLDS),
            ("True", Reason.ALL_INVARIANTS_HOLD),
        ),
    ],
    ids=["holds", "open-ticket", "pending", "no-data", "unknown-keeps-open", "held", "resolved-clears"],
)
def test_invariant_and_healthy(findings, tickets, latency, healthy) -> None:  # type: ignore[no-untyped-def]
    result = by_type(conditions_for(CycleOutcome(["latency"], findings, tickets), [], 3, at(0)))
    assert result["LatencyWithinBudget"] == latency
    assert result["Healthy"] == healthy


@pytest.mark.parametrize(
    ("findings", "want"),
    [
        ([lat("tikv-0", Verdict.HOLDS)], ("True", Reason.METRICS_OK)),
        ([lat("tikv-0", Verdict.UNKNOWN, Reason.NO_SERIES)], ("False", Reason.NO_SERIES)),
        (
            [
                lat("tikv-0", Verdict.UNKNOWN, Reason.NO_SERIES),
                lat("tikv-1", Verdict.UNKNOWN, Reason.PROMETHEUS_UNREACHABLE),
            ],
            ("False", Reason.PROMETHEUS_UNREACHABLE),
        ),
    ],
)
def test_metrics_available(findings: list[Finding], want: tuple[str, str]) -> None:
    assert by_type(conditions_for(CycleOutcome(["latency"], findings, []), [], 1, at(0)))["MetricsAvailable"] == want


def test_ticket_store_condition() -> None:
    result = by_type(conditions_for(CycleOutcome([], [], [], "Postgres unreachable"), [], 1, at(0)))
    assert result["TicketStoreAvailable"] == ("False", Reason.TICKET_STORE_UNREACHABLE)


def test_custom_invariant_gets_its_own_condition_type() -> None:
    custom = Finding("write-stall", "cluster", Verdict.HOLDS, Severity.WARNING, "ok")
    assert "CustomWriteStall" in by_type(conditions_for(CycleOutcome(["write-stall"], [custom], []), [], 1, at(0)))


def test_transition_time_kept_unless_status_flips() -> None:
    first = conditions_for(CycleOutcome(["latency"], [lat("tikv-0", Verdict.HOLDS)], []), [], 1, at(0))
    same = conditions_for(CycleOutcome(["latency"], [lat("tikv-0", Verdict.HOLDS)], []), first, 2, at(10))
    flipped = conditions_for(
        CycleOutcome(["latency"], [lat("tikv-0", Verdict.VIOLATED)], [latency_ticket(TicketState.OPEN)]),
        same,
        2,
        at(20),
    )
    latency = {c.type: c for c in same}["LatencyWithinBudget"]
    assert latency.last_transition_time == at(0)
    assert latency.observed_generation == 2
    assert {c.type: c for c in flipped}["LatencyWithinBudget"].last_transition_time == at(20)


def test_merge_drops_conditions_no_longer_computed() -> None:
    old = [Condition("Gone", "True", "R", "m", 1, at(0))]
    assert merge_conditions(old, [("Kept", "True", "R", "m")], 1, at(1)) == [
        Condition("Kept", "True", "R", "m", 1, at(1))
    ]


def test_invalid_spec_keeps_other_conditions() -> None:
    before = conditions_for(CycleOutcome(["latency"], [lat("tikv-0", Verdict.HOLDS)], []), [], 1, at(0))
    after = by_type(health_unknown_conditions(before, Reason.INVALID_SPEC, "spec.interval: bad", 2, at(5)))
    assert after["Healthy"] == ("Unknown", Reason.INVALID_SPEC)
    assert after["LatencyWithinBudget"] == ("True", Reason.HOLDS)


def test_ticket_store_down_never_clears_a_violation() -> None:
    violated = conditions_for(
        CycleOutcome(["latency"], [lat("tikv-0", Verdict.VIOLATED)], [latency_ticket(TicketState.OPEN)]), [], 1, at(0)
    )
    after = by_type(ticket_store_down_conditions(violated, [lat("tikv-0", Verdict.HOLDS)], "down", 1, at(5)))
    assert after["LatencyWithinBudget"] == ("False", Reason.VIOLATED)
    assert after["TicketStoreAvailable"] == ("False", Reason.TICKET_STORE_UNREACHABLE)


def test_a_condition_type_is_set_once_even_if_computed_twice() -> None:
    computed: list[tuple[str, Status, str, str]] = [("A", "True", "R", "first"), ("A", "False", "R", "second")]
    assert [(c.type, c.message) for c in merge_conditions([], computed, 1, at(0))] == [("A", "first")]
