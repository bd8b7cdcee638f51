"""One incident per fault, decided here without I/O: a cluster-level PD ticket whose every counted store is
explained by that store's own ticket is linked to it as its cause.

PD counts stores (``pd_cluster_status``); which ones, it says only per store (PD >= v8.5.5), and the evidence of the
PD ticket keeps those names (``counted_stores``: pod -> states). A count is explained when each (store, state) has
an active ticket of an invariant that state follows from: low space from the store's diskUsage ticket; disconnected,
unhealthy or down from its storesReady ticket (or its latency ticket: a hung store answers nothing); slow from its
latency ticket. A count with a store nobody explains, or with no names at all (an older PD, Prometheus not
answering), is not linked: unknown stays unknown. Several explaining tickets: the oldest is the cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from operator_k8s.domain.tickets import Ticket
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Invariant

EXPLAINED_BY: Mapping[str, tuple[str, ...]] = {
    "low_space": (Invariant.DISK_USAGE,),
    "disconnected": (Invariant.STORES_READY, Invariant.LATENCY),
    "unhealth": (Invariant.STORES_READY, Invariant.LATENCY),
    "down": (Invariant.STORES_READY, Invariant.LATENCY),
    "slow": (Invariant.LATENCY,),
}
"""Which store tickets explain a store PD counts in a state (PD's ``store_<state>_count`` types)."""
LINKED_INVARIANTS = frozenset({Invariant.PD_STORES})


def cause_of(ticket: Ticket, tickets: Sequence[Ticket]) -> int | None:
    """The id of the ticket whose cause explains ``ticket`` (None: nothing explains all of it)."""
    counted = ticket.counted_stores or {}
    if ticket.key.invariant not in LINKED_INVARIANTS or ticket.key.store != CLUSTER_STORE or not counted:
        return None
    active = [t for t in tickets if t.state.active and t.id is not None and t.key.cluster_uid == ticket.key.cluster_uid]
    causes: set[int] = set()
    for store, states in counted.items():
        for state in states:
            wanted = EXPLAINED_BY.get(state, ())
            found = sorted(t.id for t in active if t.key.store == store and t.key.invariant in wanted and t.id)
            if not found:
                return None
            causes.add(found[0])
    return min(causes) if causes else None


def incident_links(tickets: Sequence[Ticket]) -> dict[int, int | None]:
    """The links to write: each active linkable ticket whose cause is now another ticket than the one it names. A
    link once made stays while nothing else explains the ticket (its cause resolving first, as it usually does, must
    not make its resolution a page of its own: nobody was told it opened)."""
    changed: dict[int, int | None] = {}
    for ticket in tickets:
        if ticket.id is None or not ticket.state.active or ticket.key.invariant not in LINKED_INVARIANTS:
            continue
        cause = cause_of(ticket, tickets)
        if cause is not None and cause != ticket.cause_id:
            changed[ticket.id] = cause
    return changed
