"""The pure decisions over a cluster's ticket list that the ledger's compare-and-set loop calls."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from operator_k8s.domain.ledger import (
    ClusterRef,
    TicketResource,
    apply_locally,
    current_by_key,
    decide,
    events_for,
    fold_edits,
    retire_all,
    shown_ticket,
    tracked_stores,
)
from operator_k8s.domain.projections import ObservedEdit, ticket_name
from operator_k8s.domain.tickets import HumanEdit, TicketState
from tests.unit.builders import KEY, at, spec, ticket

REF = ClusterRef(KEY.cluster_uid, "tikv", "ns", 1)


def test_tracked_stores_are_the_unresolved_ones_per_invariant() -> None:
    tickets = [ticket(TicketState.OPEN), ticket(TicketState.PENDING, key=replace(KEY, store="tikv-1"), id=8),
               ticket(TicketState.RESOLVED, key=replace(KEY, store="tikv-2"), id=9)]  # fmt: skip
    assert tracked_stores(tickets) == {"latency": frozenset({"tikv-0", "tikv-1"})}


@pytest.mark.parametrize(
    ("states", "current"),
    [
        ([TicketState.RESOLVED, TicketState.OPEN], 2),  # the unresolved one, whatever the order
        ([TicketState.OPEN, TicketState.RESOLVED], 1),
        ([TicketState.RESOLVED, TicketState.RESOLVED], 2),  # else the most recently resolved
    ],
)
def test_findings_apply_to_the_unresolved_ticket_else_the_latest_resolved(
    states: list[TicketState], current: int
) -> None:
    tickets = [ticket(state, id=n + 1, resolved_at=at(n) if state is TicketState.RESOLVED else None)
               for n, state in enumerate(states)]  # fmt: skip
    assert current_by_key(tickets)[KEY].id == current


def test_an_invariant_removed_from_the_spec_retires_its_tickets() -> None:
    without = spec(invariants={"latency": {"enabled": False}, "diskUsage": {"enabled": False}})
    [retired] = decide(REF, without, [], [ticket(TicketState.OPEN, hold=True)], at(5), timedelta(minutes=10))
    assert retired.after is not None and retired.after.state is TicketState.RESOLVED and not retired.after.hold
    assert [e.kind for e in retired.effects] == ["Released", "Resolved"]


def test_retire_all_cancels_pending_and_resolves_the_rest() -> None:
    pending = ticket(TicketState.PENDING, key=replace(KEY, store="tikv-1"), id=None)
    done = retire_all([ticket(TicketState.OPEN), pending, ticket(TicketState.RESOLVED, id=9)], at(1), "ClusterDeleted")
    assert [(t.before is pending, t.after.state if t.after else None) for t in done] == [
        (False, TicketState.RESOLVED),
        (True, None),
    ]


def test_folding_an_edit_twice_changes_nothing_the_second_time() -> None:
    edit = ObservedEdit(7, HumanEdit(hold=True), "kubernetes:kubectl")
    first = fold_edits([ticket(TicketState.OPEN)], [edit])
    assert len(first) == 1 and first[0].after is not None and first[0].after.hold
    assert fold_edits(apply_locally([ticket(TicketState.OPEN)], first), [edit]) == []


def test_a_resource_shows_a_ticket_only_where_the_operator_shows_it() -> None:
    current = ticket(TicketState.OPEN)
    assert shown_ticket([current], TicketResource("ns", ticket_name(current), 7)) == current
    assert shown_ticket([current], TicketResource("other", ticket_name(current), 7)) is None
    assert shown_ticket([current], TicketResource("ns", "look-alike-7", 7)) is None
    assert shown_ticket([current], TicketResource("ns", ticket_name(current), 8)) is None


def test_events_are_posted_for_what_users_hear_about() -> None:
    edit = ObservedEdit(7, HumanEdit(acknowledged=True, note="on it", note_changed=True), "kubernetes:kubectl")
    [acknowledged] = fold_edits([ticket(TicketState.OPEN)], [edit])
    [event] = events_for([acknowledged])
    assert (event.reason, event.warning) == ("TicketAcknowledged", False)
    assert event.message.startswith("Ticket acknowledged for latency on tikv-0")
