"""Scale-out: clusters hashed onto virtual shards, each shard held through one Kubernetes Lease.

Kubernetes arbitrates (a Lease is written with its resourceVersion, so of two writers one wins); this module only
decides what a replica *wants*: which shards are its fair share of the live replicas, and so which Leases to take,
renew or let go. Every replica computes the same assignment from the same member set, so they converge without
talking; while views differ for a moment, a shard is at worst held by nobody for a renew period or checked twice in
an interval, which Postgres' compare-and-set makes harmless.

The assignment is rendezvous hashing with bounded loads: each shard goes to the replica that ranks it highest,
unless that replica already has its fair share (``ceil(shards / replicas)``). Adding a replica moves about
``1/replicas`` of the shards, and no replica holds more than its share.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def _rank(*parts: str) -> int:
    """A stable hash (not Python's ``hash``, which changes per process)."""
    return int.from_bytes(hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest(), "big")


def replica_identity(hostname: str, pid: int) -> str:
    """A default name for a replica in its Lease names (lower-case DNS label characters only: a host name may hold
    capitals or underscores, which the API server refuses in a name)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", hostname.lower()).strip("-")[:50] or "replica"
    return f"{cleaned}-{pid}"


def shard_of(cluster_uid: str, shards: int) -> int:
    """The shard a MonitoredCluster belongs to, by its uid: the same in every replica and across restarts."""
    return _rank("cluster", cluster_uid) % shards


def assignment(shards: int, members: Iterable[str]) -> dict[int, str]:
    """Which live replica each shard belongs to. Deterministic in the set of members (order does not matter)."""
    replicas = sorted(set(members))
    if not replicas:
        return {}
    share = math.ceil(shards / len(replicas))
    load = dict.fromkeys(replicas, 0)
    owners: dict[int, str] = {}
    for shard in range(shards):
        preference = sorted(replicas, key=lambda replica: (-_rank("shard", str(shard), replica), replica))
        owner = next(replica for replica in preference if load[replica] < share)
        owners[shard] = owner
        load[owner] += 1
    return owners


@dataclass(frozen=True)
class LeaseView:
    """A Lease as one replica sees it. ``fresh_for`` is how long it still counts as held from this replica's point
    of view: the Lease's duration from when this replica last *saw it change* (client-go's rule), so a clock skew
    between replicas never shortens or stretches someone else's lease."""

    holder: str
    fresh_for: float

    @property
    def free(self) -> bool:
        return not self.holder or self.fresh_for <= 0


class Move(enum.StrEnum):
    ACQUIRE = "acquire"
    RENEW = "renew"
    RELEASE = "release"


def plan(identity: str, shards: int, leases: Mapping[int, LeaseView], members: Iterable[str]) -> dict[int, Move]:
    """What this replica does to each shard's Lease this period.

    - Its own shards: renew those it holds, acquire those that are free (never created, released, or expired).
    - Shards it holds that now belong to another live replica: release them, so the new owner takes them at its
      next period instead of waiting out the lease.
    - A shard held by someone else whose lease is fresh is left alone, even if it is ours by the assignment: its
      holder releases it when it sees the same members.
    """
    owners = assignment(shards, {*members, identity})
    moves: dict[int, Move] = {}
    for shard in range(shards):
        lease = leases.get(shard)
        mine = lease is not None and lease.holder == identity
        if owners[shard] == identity:
            if mine:
                moves[shard] = Move.RENEW
            elif lease is None or lease.free:
                moves[shard] = Move.ACQUIRE
        elif mine:
            moves[shard] = Move.RELEASE
    return moves


def live_members(member_leases: Mapping[str, LeaseView]) -> set[str]:
    """Replicas whose membership Lease is fresh."""
    return {lease.holder for lease in member_leases.values() if not lease.free}
