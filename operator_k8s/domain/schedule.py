"""When each cluster's check is due, decided here without I/O: a grid of slots on the wall clock per cluster.

A cluster's checks fall on the slots ``phase + k * interval`` (seconds since the epoch), its phase drawn from its
uid. Any replica, before or after a restart or a shard's hand-over, computes the same next slot from the uid, the
interval and the clock, so due times need no storage to survive any of those, and nothing is re-pended: the first
run after a restart is the cluster's next slot, and the clusters' first runs are spread over one interval because
their phases are. An edited spec (a new generation) is due at once, so an edit never waits out the old interval;
the grid goes on from there.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

MIN_INTERVAL = 0.1
"""The shortest interval the grid honours (an invalid spec's interval counts as this: its condition shows soon)."""


EPSILON = 1e-9
"""A slot computed again from itself is the same slot (floating point would sometimes push it one interval on)."""


def phase(uid: str, interval: float) -> float:
    """Where in each interval the cluster's slots fall: uniform over [0, interval) across uids, stable for one."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 * interval


def next_slot(uid: str, interval: float, after: float) -> float:
    """The cluster's first slot at or after ``after``."""
    interval = max(interval, MIN_INTERVAL)
    offset = phase(uid, interval)
    return offset + math.ceil((after - offset) / interval - EPSILON) * interval


@dataclass(frozen=True)
class Start:
    """A due check: how late it starts after its slot, and how many whole slots it missed before that one."""

    lag: float
    skipped: int


def started(due: float, interval: float, now: float) -> Start:
    """What starting at ``now`` a check due at ``due`` counts as (a start before its slot is no lag)."""
    late = max(0.0, now - due)
    return Start(lag=late, skipped=int(late // max(interval, MIN_INTERVAL)))
