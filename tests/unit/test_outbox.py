"""The outbox of writes waiting for Postgres: folded per ticket, bounded history, nothing for tickets never stored."""

from __future__ import annotations

from dataclasses import replace

from operator_k8s.domain.outbox import MAX_QUEUED_EVENTS, Outbox
from operator_k8s.domain.tickets import Effect, EffectKind, TicketState, Transition
from tests.unit.builders import at, ticket

STORED = ticket(TicketState.OPEN, version=3)


def effect(kind: EffectKind) -> Effect:
    return Effect(kind, TicketState.OPEN, TicketState.OPEN, kind.value)


def test_transitions_of_one_ticket_fold_into_one_write_on_the_version_last_read() -> None:
    held = replace(STORED, hold=True)
    resolved = replace(held, state=TicketState.RESOLVED)
    outbox = Outbox().add([Transition(STORED, held, (effect(EffectKind.HELD),))], at(1))
    outbox = outbox.add([Transition(held, resolved, (effect(EffectKind.RESOLVED),))], at(2))
    [write] = outbox.to_writes()
    assert (write.before, write.after, write.expected_version) == (STORED, resolved, 3)
    assert [(when, e.kind) for when, e in write.history] == [(at(1), EffectKind.HELD), (at(2), EffectKind.RESOLVED)]


def test_a_ticket_never_stored_and_gone_again_leaves_nothing() -> None:
    pending = ticket(TicketState.PENDING, id=None, version=0)
    outbox = Outbox().add([Transition(None, pending, (effect(EffectKind.PENDING),))], at(1))
    assert outbox.to_writes()[0].expected_version is None, "a new ticket: it must not exist yet"
    outbox = outbox.add([Transition(pending, None, (effect(EffectKind.CANCELLED),))], at(2))
    assert outbox.to_writes() == []


def test_history_is_bounded_and_says_how_much_it_dropped() -> None:
    outbox, current = Outbox(), STORED
    for second in range(MAX_QUEUED_EVENTS + 50):
        after = replace(current, occurrences=current.occurrences + 1)
        outbox = outbox.add([Transition(current, after, (effect(EffectKind.RECURRED),))], at(second))
        current = after
    [write] = outbox.to_writes()
    assert outbox.dropped == 50
    assert write.after == current, "the latest state is always kept"
    assert len(write.history) == MAX_QUEUED_EVENTS + 1
    _, first = write.history[0]
    assert first.kind is EffectKind.TRUNCATED and "50 transitions" in first.reason
    assert [when for when, _ in write.history[1:]] == [at(s) for s in range(50, MAX_QUEUED_EVENTS + 50)]
