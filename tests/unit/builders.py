"""Small builders of domain values for table-driven tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from operator_k8s.domain.invariants import Finding, Verdict
from operator_k8s.domain.ledger import TicketResource
from operator_k8s.domain.observations import QueryResult, Sample, Snapshot, StorePod
from operator_k8s.domain.projections import ticket_name
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.tickets import Policy, Ticket, TicketKey, TicketState
from operator_k8s.domain.vocabulary import Severity

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
KEY = TicketKey("uid-1", "latency", "tikv-0")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**overrides: Any) -> MonitoredClusterSpec:
    body: dict[str, Any] = {
        "stores": {"selector": {"matchLabels": {"app": "tikv"}}, "expected": 3},
        "prometheus": {"url": "http://prometheus:9090"},
    }
    body.update(overrides)
    return MonitoredClusterSpec.model_validate(body)


def pods(*states: str) -> tuple[StorePod, ...]:
    """``"ready"``, ``"notready"`` or ``"pending"`` per store tikv-0, tikv-1, …"""
    phase = {"ready": "Running", "notready": "Running", "pending": "Pending"}
    return tuple(StorePod(f"tikv-{i}", phase[s], s == "ready") for i, s in enumerate(states))


def result(query: str = "q", **values: float) -> QueryResult:
    return QueryResult(query=query, samples=tuple(Sample(store, value) for store, value in values.items()))


def snapshot(
    pod_states: tuple[StorePod, ...],
    results: dict[str, QueryResult] | None = None,
    tracked: dict[str, frozenset[str]] | None = None,
) -> Snapshot:
    return Snapshot(pods=pod_states, results=results or {}, tracked_stores=tracked or {})


def finding(
    verdict: Verdict, severity: Severity = Severity.WARNING, store: str = "tikv-0", value: float = 1.0
) -> Finding:
    return Finding("latency", store, verdict, severity, f"{verdict} message", value, 0.5, "q")


def policy(onset: float = 0, clear: float = 0, reopen: float = 600) -> Policy:
    return Policy(timedelta(seconds=onset), timedelta(seconds=clear), timedelta(seconds=reopen))


def ticket(state: TicketState, **fields: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": KEY,
        "namespace": "ns",
        "cluster_name": "tikv",
        "state": state,
        "severity": Severity.WARNING,
        "message": "m",
        "first_seen": T0,
        "last_seen": T0,
        "occurrences": 0 if state is TicketState.PENDING else 1,
        "violating_since": T0 if state is TicketState.PENDING else None,
        "opened_at": None if state is TicketState.PENDING else T0,
        "id": 7,
    }
    values.update(fields)
    return Ticket(**values)


def shown(ticket: Ticket) -> TicketResource:
    """Where the operator shows ``ticket``: the resource a human edits."""
    assert ticket.id is not None
    return TicketResource(ticket.namespace, ticket_name(ticket), ticket.id)
