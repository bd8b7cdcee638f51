"""The ledger: per cluster, the lock, the cache of the tickets Postgres holds, the outbox of writes it has not
confirmed, and the one compare-and-set loop every writer goes through.

Decide → write (each write a compare-and-set on the version it was decided from) → on a lost race re-read →
re-decide: the check cycle, a cluster's deletion and a human's edit all call ``Ledger.decide`` with a pure plan
(tickets in, transitions out), so the protocol is written once. The cache may be dropped at any await: the loop
works on its own list and only writes the cache. Writes decided while Postgres is away wait in the outbox
(``domain.outbox``) and land with the next round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from operator_k8s.domain.ledger import ClusterRef, CycleStats, SyncResult, apply_locally
from operator_k8s.domain.notices import with_notices
from operator_k8s.domain.outbox import Outbox
from operator_k8s.domain.tickets import Ticket, Transition
from operator_k8s.ports import TicketStore, TicketStoreUnavailable

log = logging.getLogger("operator_k8s.ledger")

DECISION_ATTEMPTS = 3
"""How often one decision re-decides after losing a compare-and-set race before leaving it to the next one."""

RETIRED_FOR = 600.0
"""Seconds a deleted cluster's tombstone is kept: longer than any check can wait for its lock (its deadline)."""

Plan = Callable[[list[Ticket]], list[Transition]]
"""A pure decision: the cluster's tickets as Postgres holds them in, the transitions to write out."""


@dataclass
class ClusterMemory:
    """What is kept about one cluster between calls: ``tickets`` a cache of Postgres (None: read it again),
    ``outbox`` the writes Postgres has not confirmed yet."""

    tickets: list[Ticket] | None = None
    outbox: Outbox = field(default_factory=Outbox)


@dataclass(frozen=True)
class Decision:
    """What a decision did: the transitions Postgres applied, the tickets after them (queued writes included), why
    Postgres could not be reached (the writes then wait in the outbox), and whether it settled (False: it lost
    every race, and the next decision tries again)."""

    applied: list[Transition]
    tickets: list[Ticket]
    error: str | None = None
    settled: bool = True


class Ledger:
    def __init__(self, store: TicketStore, horizon: Callable[[datetime], datetime]) -> None:
        self.store = store
        self._horizon = horizon
        self.memories: dict[str, ClusterMemory] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: dict[str, float] = {}
        """Clusters deleted (uid → when, monotonic): a check already waiting for the lock writes nothing for them."""

    def memory(self, uid: str) -> ClusterMemory:
        return self.memories.setdefault(uid, ClusterMemory())

    def lock(self, uid: str) -> asyncio.Lock:
        """The cluster's lock: one writer at a time per cluster in this process (Postgres arbitrates between
        processes)."""
        return self._locks.setdefault(uid, asyncio.Lock())

    def drop_caches(self, uid: str | None = None) -> None:
        """Forget the cached tickets of one cluster (or all); the next call re-reads Postgres. Queued writes stay."""
        for key, memory in self.memories.items():
            if uid is None or key == uid:
                memory.tickets = None

    def retire(self, uid: str, now: float) -> None:
        """Drop everything kept about a cluster that is deleted or left the watch (queued writes too: the orphan
        sweep resolves its tickets from Postgres), and remember for a while that it is gone, so that a check already
        waiting for its lock does nothing (it would reopen what the deletion resolved). The lock itself is kept by
        whoever waits on it. Tombstones older than ``RETIRED_FOR`` are pruned here, so they never pile up."""
        self.memories.pop(uid, None)
        self._locks.pop(uid, None)
        self._retired[uid] = now
        for old in [u for u, at in self._retired.items() if now - at > RETIRED_FOR]:
            del self._retired[old]

    def retired(self, uid: str) -> bool:
        return uid in self._retired

    def cached_tickets(self) -> Iterator[Ticket]:
        for memory in list(self.memories.values()):
            yield from memory.tickets or []

    async def read(self, ref: ClusterRef, stats: CycleStats, now: datetime, deadline: float) -> list[Ticket]:
        """The cluster's tickets: the cache, else Postgres (flushing queued writes). TicketStoreUnavailable if it
        does not answer."""
        cached = self.memory(ref.uid).tickets
        if cached is not None:
            return cached
        return await self._sync(ref, stats, now, deadline)

    async def decide(self, ref: ClusterRef, plan: Plan, stats: CycleStats, now: datetime, deadline: float) -> Decision:
        """Plan, write with compare-and-set, and re-plan from what Postgres holds after a lost race; always one round
        trip at least (so the cache follows other writers). Call under ``lock(ref.uid)``."""
        memory = self.memory(ref.uid)
        applied: list[Transition] = []
        try:
            tickets = await self.read(ref, stats, now, deadline)
        except TicketStoreUnavailable as error:
            stats.errors.append("postgres_unavailable")
            return Decision(applied, [], str(error))
        for _ in range(DECISION_ATTEMPTS):
            transitions = [with_notices(t, now) for t in plan(tickets)]
            memory.outbox = memory.outbox.add(transitions, now)
            writes = memory.outbox.writes
            tickets = memory.tickets = apply_locally(tickets, transitions)
            try:
                result = await self._sync_result(ref, stats, now, deadline)
            except TicketStoreUnavailable as error:
                stats.errors.append("postgres_unavailable")
                log.warning(
                    "Could not store Ticket transitions",
                    extra={"cluster": ref.name, "namespace": ref.namespace, "queued": len(memory.outbox),
                           "error": str(error)},
                )  # fmt: skip
                return Decision(applied, tickets, str(error))
            lost = {id(writes[i].after) for i in result.conflicts if i < len(writes)}
            applied += [t for t in transitions if id(t.after) not in lost]
            tickets = result.tickets
            if not result.conflicts:
                return Decision(applied, tickets)
            log.info(
                "Lost a Ticket write race; re-deciding from Postgres",
                extra={"cluster": ref.name, "namespace": ref.namespace, "conflicts": len(result.conflicts)},
            )
        return Decision(applied, tickets, settled=False)

    async def _sync(self, ref: ClusterRef, stats: CycleStats, now: datetime, deadline: float) -> list[Ticket]:
        return (await self._sync_result(ref, stats, now, deadline)).tickets

    async def _sync_result(self, ref: ClusterRef, stats: CycleStats, now: datetime, deadline: float) -> SyncResult:
        """Send the queued writes (maybe none) and take what Postgres holds as the new cache."""
        memory = self.memory(ref.uid)
        writes = memory.outbox.to_writes()
        stats.postgres_round_trips += 1
        result = await self.store.sync(ref.uid, writes, self._horizon(now), deadline=deadline)
        memory.outbox = Outbox()
        memory.tickets = result.tickets
        if result.rejected:
            stats.errors += ["postgres_rejected"] * len(result.rejected)
            log.warning(
                "Postgres rejected Ticket writes; dropped them",
                extra={"cluster": ref.name, "namespace": ref.namespace, "rejected": list(result.rejected)},
            )
        stats.conflicts += len(result.conflicts)
        return result
