"""Ticket writes waiting for Postgres: compare-and-set writes, folded per ticket, with a bounded history.

Postgres is the arbiter. Each write names the row version it was decided from (``before``) and applies only if
the row still has it; a write that loses the race is dropped and its ticket re-decided from what Postgres holds.
While Postgres is unreachable the cycle keeps deciding; its writes wait here, one per ticket (the latest state on
top of the version last read) with the transitions that led there. The history is bounded per cluster: past
``MAX_QUEUED_EVENTS`` the oldest transitions are dropped, counted, and recorded as one ``HistoryTruncated`` event
when the writes finally land. The latest state of every ticket is always kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from operator_k8s.domain.tickets import Effect, EffectKind, Ticket, Transition

MAX_QUEUED_EVENTS = 200


@dataclass(frozen=True)
class TicketWrite:
    """One ticket's write: ``before`` is the row as last read (None: a new ticket, which must not exist yet),
    ``after`` the row to store (None: delete a pending ticket), ``history`` the events to append with it."""

    before: Ticket | None
    after: Ticket | None
    history: tuple[tuple[datetime, Effect], ...] = ()

    @property
    def expected_version(self) -> int | None:
        """The version the write was decided from; None for a ticket Postgres has never stored."""
        if self.before is None or self.before.id is None:
            return None
        return self.before.version


@dataclass(frozen=True)
class Outbox:
    """The writes not yet confirmed by Postgres, in decision order; ``dropped`` counts history lost to the bound."""

    writes: tuple[TicketWrite, ...] = ()
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.writes)

    def add(self, transitions: Sequence[Transition], now: datetime) -> Outbox:
        """Queue the transitions, folding each into the queued write of the same ticket (``after`` is ``before``)."""
        writes = list(self.writes)
        for item in transitions:
            history = tuple((now, effect) for effect in item.effects)
            index = next((i for i, w in enumerate(writes) if item.before is not None and w.after is item.before), None)
            if index is None:
                writes.append(TicketWrite(item.before, item.after, history))
                continue
            queued = writes[index]
            if queued.before is None and item.after is None:
                del writes[index]  # never stored and gone again (a pending ticket cancelled): nothing to write
            else:
                writes[index] = TicketWrite(queued.before, item.after, queued.history + history)
        return _bounded(Outbox(tuple(writes), self.dropped))

    def to_writes(self) -> list[TicketWrite]:
        """The writes to send; a truncated history says so in the first write's events."""
        writes = list(self.writes)
        if self.dropped and writes:
            first = writes[0]
            ticket = first.after or first.before
            assert ticket is not None
            at = first.history[0][0] if first.history else ticket.last_seen
            note = Effect(
                EffectKind.TRUNCATED,
                ticket.state,
                ticket.state,
                f"{self.dropped} transitions decided while Postgres was unreachable were not recorded"
                f" (at most {MAX_QUEUED_EVENTS} are kept per cluster)",
            )
            writes[0] = replace(first, history=((at, note), *first.history))
        return writes


def _bounded(outbox: Outbox) -> Outbox:
    excess = sum(len(w.history) for w in outbox.writes) - MAX_QUEUED_EVENTS
    if excess <= 0:
        return outbox
    moments = sorted(at for w in outbox.writes for at, _ in w.history)
    cutoff = moments[excess - 1]
    ties = excess - sum(1 for at in moments if at < cutoff)  # how many of the entries at the cutoff go too
    writes = []
    for write in outbox.writes:
        kept = []
        for at, effect in write.history:
            if at < cutoff or (at == cutoff and ties > 0):
                ties -= at == cutoff
            else:
                kept.append((at, effect))
        writes.append(replace(write, history=tuple(kept)))
    return Outbox(tuple(writes), outbox.dropped + excess)
