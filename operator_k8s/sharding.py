"""The shell around ``domain.shards``: every renew period one LIST of our Leases, this replica's membership Lease
renewed, and each shard's Lease acquired, renewed or released as the plan says.

What this replica holds is kept in memory only as "valid until" times, from its own successful writes: a replica that
cannot renew (API server away, partitioned) stops checking the shard's clusters a renew period before its lease can
expire for the others, so two replicas never both believe they hold a shard past the lease (and if clocks or a slow
write make it happen for a moment, Postgres' compare-and-set makes the double check harmless).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from operator_k8s.domain.shards import LeaseView, Move, live_members, plan, shard_of
from operator_k8s.ports import LeaseRecord, Leases

log = logging.getLogger("operator_k8s")


class ShardCoordinator:
    def __init__(
        self,
        leases: Leases,
        identity: str,
        *,
        installation: str,
        shards: int,
        lease_seconds: int,
        renew_seconds: float,
        on_taken: Callable[[set[int]], None] = lambda shards: None,
        on_lost: Callable[[set[int]], None] = lambda shards: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.identity = identity
        self.installation = installation
        self.shards = shards
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_taken = on_taken
        self.on_lost = on_lost
        """Called with the shards this replica released or found written by another: their clusters let go now."""
        self.clock = clock
        self._valid_until: dict[int, float] = {}
        self._seen: dict[str, tuple[str, float]] = {}
        """Per Lease name: the resourceVersion last seen and when it was first seen (client-go's observed time)."""
        self._records: dict[str, LeaseRecord] = {}
        self._listed_at: float | None = None
        self.stepped = asyncio.Event()
        """Set after the first period that reached the API server (tests and readiness wait on it)."""

    def shard_name(self, shard: int) -> str:
        return f"{self.installation}-shard-{shard:02d}"

    @property
    def member_name(self) -> str:
        return f"{self.installation}-member-{self.identity}"

    def shard_of(self, cluster_uid: str) -> int:
        return shard_of(cluster_uid, self.shards)

    def owns(self, cluster_uid: str) -> bool:
        """Whether this replica checks the cluster now."""
        return self._valid_until.get(self.shard_of(cluster_uid), 0.0) > self.clock()

    def held(self) -> list[int]:
        now = self.clock()
        return sorted(shard for shard, until in self._valid_until.items() if until > now)

    async def run(self) -> None:
        """Forever, one period per ``renew_seconds``; an error costs that period, never the loop."""
        while True:
            started = self.clock()
            try:
                await self.step()
            except Exception as error:  # the API server away: keep what is still valid, try again next period
                log.warning("Could not renew the shard Leases", extra={"error": f"{type(error).__name__}: {error}"})
            await asyncio.sleep(max(0.0, self.renew_seconds - (self.clock() - started)))

    async def step(self) -> None:
        records = {record.name: record for record in await self.leases.list()}
        now = self.clock()
        # Blind for more than two periods (the API server away): what changed meanwhile, and when, is unknown, so
        # every Lease counts as seen now; a peer that lived through the same outage is not taken for dead.
        blind = self._listed_at is not None and now - self._listed_at > 2 * self.renew_seconds
        self._records, self._listed_at = records, now
        for name, record in records.items():
            if blind or self._seen.get(name, ("", 0.0))[0] != record.version:
                self._seen[name] = (record.version, now)
        members = {
            name: self._view(record, now)
            for name, record in records.items()
            if name.startswith(f"{self.installation}-member-")
        }
        await self._write(self.member_name, self.identity, acquired=self.member_name not in records)
        shard_views = {
            shard: self._view(records[self.shard_name(shard)], now)
            for shard in range(self.shards)
            if self.shard_name(shard) in records
        }
        moves = plan(self.identity, self.shards, shard_views, live_members(members))
        taken: set[int] = set()
        lost: set[int] = set()
        for shard, move in sorted(moves.items()):
            name = self.shard_name(shard)
            if move is Move.RELEASE:
                if await self._write(name, "", acquired=False):
                    self._valid_until.pop(shard, None)
                    lost.add(shard)
                    log.info("Released shard Lease", extra={"lease": name, "shard": shard})
                continue
            written_at = self.clock()
            if await self._write(name, self.identity, acquired=move is Move.ACQUIRE):
                self._valid_until[shard] = written_at + self.lease_seconds - self.renew_seconds
                if move is Move.ACQUIRE:
                    taken.add(shard)
            elif move is Move.RENEW:
                self._valid_until.pop(shard, None)  # someone else wrote it: it is no longer ours
                lost.add(shard)
        if taken:
            log.info("Took shard Leases", extra={"shards": sorted(taken), "identity": self.identity})
            self.on_taken(taken)
        if lost:
            self.on_lost(lost)
        self.stepped.set()

    async def release_all(self) -> None:
        """On graceful shutdown: hand every shard over at once (holder cleared) and leave the member set, so the
        others take over at their next period rather than after the lease."""
        self._records = {record.name: record for record in await self.leases.list()}  # today's versions
        for shard in self.held():
            record = self._records.get(self.shard_name(shard))
            if record is not None:
                await self.leases.write(replace(record, holder="", duration_seconds=1), acquired=False)
        self._valid_until.clear()
        member = self._records.get(self.member_name)
        if member is not None:
            await self.leases.delete(member)

    def _view(self, record: LeaseRecord, now: float) -> LeaseView:
        _, seen_at = self._seen[record.name]
        return LeaseView(holder=record.holder, fresh_for=seen_at + record.duration_seconds - now)

    async def _write(self, name: str, holder: str, *, acquired: bool) -> bool:
        current = self._records.get(name)
        transitions = (current.transitions if current else 0) + (1 if acquired and current else 0)
        record = LeaseRecord(
            name=name,
            holder=holder,
            duration_seconds=self.lease_seconds,
            version=current.version if current else "",
            transitions=transitions,
            acquired_at=current.acquired_at if current else "",
        )
        return await self.leases.write(record, acquired=acquired)
