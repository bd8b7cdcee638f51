"""One incident per fault: which ticket a cluster-level PD ticket is linked to, and what its receivers are told."""

from __future__ import annotations

from typing import Any

import pytest

from operator_k8s.domain.incidents import cause_of, incident_links
from operator_k8s.domain.notices import INCIDENT_WAIT, awaits_cause, notice_of_ticket, plan_deliveries, worth_sending
from operator_k8s.domain.projections import ticket_status
from operator_k8s.domain.tickets import Ticket, TicketKey, TicketState
from tests.unit.builders import T0, ticket


def store_ticket(invariant: str, store: str, ticket_id: int, state: TicketState = TicketState.OPEN) -> Ticket:
    return ticket(state, key=TicketKey("uid-1", invariant, store), id=ticket_id)


def pd_ticket(counted: dict[str, list[str]] | None, cause: int | None = None, ticket_id: int = 50) -> Ticket:
    return ticket(TicketState.OPEN, key=TicketKey("uid-1", "pdStores", "cluster"), id=ticket_id,
                  counted_stores=counted, cause_id=cause)  # fmt: skip


DISK_1 = store_ticket("diskUsage", "tikv-1", 11)
READY_2 = store_ticket("storesReady", "tikv-2", 12)
LATENCY_2 = store_ticket("latency", "tikv-2", 9)


@pytest.mark.parametrize(
    ("counted", "others", "cause"),
    [
        ({"tikv-1": ["low_space"]}, [DISK_1], 11),  # PD's low space under the store's diskUsage ticket
        ({"tikv-2": ["disconnected"]}, [READY_2], 12),  # PD's disconnected count under storesReady
        ({"tikv-2": ["disconnected"]}, [READY_2, LATENCY_2], 9),  # two explain it: the oldest is the cause
        ({"tikv-2": ["slow"]}, [LATENCY_2], 9),
        ({"tikv-1": ["low_space"]}, [READY_2], None),  # another store's ticket explains nothing
        ({"tikv-1": ["low_space"]}, [store_ticket("latency", "tikv-1", 11)], None),  # nor another invariant
        ({"tikv-1": ["low_space"], "tikv-2": ["down"]}, [DISK_1], None),  # one store unexplained: not linked
        ({"tikv-1": ["low_space"], "tikv-2": ["down"]}, [DISK_1, READY_2], 11),
        ({"tikv-1": ["low_space"]}, [store_ticket("diskUsage", "tikv-1", 11, TicketState.RESOLVED)], None),
        ({}, [DISK_1], None),  # PD named no store (an older PD, no answer): unknown stays unknown
        (None, [DISK_1], None),
    ],
)
def test_a_pd_count_is_linked_to_the_ticket_that_explains_every_store_it_counts(
    counted: dict[str, list[str]] | None, others: list[Ticket], cause: int | None
) -> None:
    pd = pd_ticket(counted)
    assert cause_of(pd, [pd, *others]) == cause


@pytest.mark.parametrize(
    ("pd", "others", "links"),
    [
        (pd_ticket({"tikv-1": ["low_space"]}), [DISK_1], {50: 11}),
        (pd_ticket({"tikv-1": ["low_space"]}, cause=11), [DISK_1], {}),  # already linked: nothing to write
        (pd_ticket({"tikv-1": ["low_space"]}, cause=11), [], {}),  # its cause resolved first: the link stays
        (pd_ticket({"tikv-1": ["low_space"]}, cause=7), [DISK_1], {50: 11}),  # another ticket explains it now
        (pd_ticket(None), [DISK_1], {}),
    ],
)
def test_links_are_written_only_when_they_change(pd: Ticket, others: list[Ticket], links: dict[int, Any]) -> None:
    assert incident_links([pd, *others]) == links


@pytest.mark.parametrize(
    ("kind", "told_firing", "cause", "sent"),
    [
        ("opened", False, 11, False),  # explained: told with its cause
        ("diagnosed", False, 11, False),
        ("resolved", False, 11, False),  # nobody heard it open
        ("resolved", True, 11, True),  # its receiver heard it fire before the link: its end is news
        ("opened", False, None, True),
    ],
)
def test_a_linked_tickets_notices_are_not_sent_on_their_own(
    kind: str, told_firing: bool, cause: int | None, sent: bool
) -> None:
    reason = worth_sending(kind, deferred=False, ticket_active=True, told_firing=told_firing, cause_id=cause)
    assert (reason is None) is sent
    if not sent:
        assert reason is not None and "explained by ticket 11" in reason


def test_pds_cluster_openings_wait_for_their_cause_and_store_tickets_do_not() -> None:
    pd_notice = notice_of_ticket(pd_ticket(None))
    assert awaits_cause(pd_notice)
    assert not awaits_cause(notice_of_ticket(DISK_1))
    (held,) = plan_deliveries(["hook"], covered=None, disabled=frozenset(), now=T0, not_before=T0 + INCIDENT_WAIT)
    assert held.due_at == T0 + INCIDENT_WAIT and held.state == "pending"
    (now,) = plan_deliveries(["hook"], covered=None, disabled=frozenset(), now=T0)
    assert now.due_at == T0


def test_the_ticket_shows_its_cause_and_the_stores_pd_counts() -> None:
    status = ticket_status(pd_ticket({"tikv-2": ["disconnected"], "tikv-1": ["low_space"]}, cause=11))
    assert status["causeTicketId"] == 11
    assert status["countedStores"] == "tikv-1 low_space, tikv-2 disconnected"
    assert "causeTicketId" not in ticket_status(DISK_1)
