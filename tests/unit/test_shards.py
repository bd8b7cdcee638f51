"""Shards: the assignment every replica computes alike, fair and moving little, and what a replica does to each
shard's Lease. Pure: no Lease is written here."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from pydantic import ValidationError

from operator_k8s.domain.shards import (
    LeaseView,
    Move,
    assignment,
    live_members,
    plan,
    replica_identity,
    shard_of,
)
from operator_k8s.settings import Settings
from operator_k8s.sharding import ShardCoordinator
from tests.unit.fakes import FakeLeases

SHARDS = 32


def test_a_cluster_always_lands_on_the_same_shard_and_clusters_spread() -> None:
    uids = [f"uid-{i}" for i in range(3200)]
    assert [shard_of(u, SHARDS) for u in uids] == [shard_of(u, SHARDS) for u in uids]
    per_shard = Counter(shard_of(u, SHARDS) for u in uids)
    assert len(per_shard) == SHARDS
    assert max(per_shard.values()) < 2 * 100, per_shard  # 100 a shard on average


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 5, 7, 32, 40])
def test_every_shard_has_one_owner_and_no_replica_more_than_its_share(replicas: int) -> None:
    members = [f"replica-{i}" for i in range(replicas)]
    owners = assignment(SHARDS, members)
    assert sorted(owners) == list(range(SHARDS))
    load = Counter(owners.values())
    assert max(load.values()) <= math.ceil(SHARDS / replicas)
    assert len(load) == min(replicas, SHARDS), "every replica gets work while there are shards enough"


def test_the_assignment_does_not_depend_on_who_computes_it_or_in_what_order() -> None:
    assert assignment(SHARDS, ["c", "a", "b"]) == assignment(SHARDS, ["a", "b", "c", "a"])


@pytest.mark.parametrize("before", [1, 2, 3, 4, 7])
def test_adding_a_replica_moves_about_one_share_of_the_shards(before: int) -> None:
    members = [f"replica-{i}" for i in range(before)]
    old = assignment(SHARDS, members)
    new = assignment(SHARDS, [*members, "newcomer"])
    moved = sum(old[s] != new[s] for s in range(SHARDS))
    share = SHARDS / (before + 1)
    assert moved >= sum(owner == "newcomer" for owner in new.values()) >= math.floor(share)
    assert moved <= 1.5 * share + 2, f"{moved} of {SHARDS} moved for a share of {share:.1f}"


def test_removing_a_replica_moves_only_its_shards_when_the_others_have_room() -> None:
    members = [f"replica-{i}" for i in range(4)]
    old = assignment(SHARDS, members)
    new = assignment(SHARDS, members[:-1])
    moved = {s for s in range(SHARDS) if old[s] != new[s]}
    orphaned = {s for s in range(SHARDS) if old[s] == "replica-3"}
    assert orphaned <= moved
    assert len(moved) <= len(orphaned) + SHARDS // 4


def held(holder: str, fresh_for: float = 10) -> LeaseView:
    return LeaseView(holder=holder, fresh_for=fresh_for)


ME, PEER = "replica-a", "replica-b"


def mine_alone(shard: int) -> bool:
    return assignment(4, [ME, PEER])[shard] == ME


@pytest.mark.parametrize(
    ("lease", "ours", "expected"),
    [
        (None, True, Move.ACQUIRE),  # never created
        (held(""), True, Move.ACQUIRE),  # released by its last holder
        (held(PEER, fresh_for=0), True, Move.ACQUIRE),  # its holder stopped renewing: expired
        (held(PEER, fresh_for=3), True, None),  # fresh in a peer's hands: it lets go when it sees us
        (held(ME), True, Move.RENEW),
        (held(ME), False, Move.RELEASE),  # ours no longer: hand it over at once
        (held(PEER), False, None),
        (None, False, None),
        (held(PEER, fresh_for=0), False, None),  # expired, but the peer it belongs to takes it
    ],
)
def test_what_a_replica_does_to_a_shards_lease(lease: LeaseView | None, ours: bool, expected: Move | None) -> None:
    shard = next(s for s in range(4) if mine_alone(s) == ours)
    moves = plan(ME, 4, {shard: lease} if lease is not None else {}, [ME, PEER])
    assert moves.get(shard) == expected


def test_alone_a_replica_takes_every_shard() -> None:
    assert plan(ME, 4, {}, []) == dict.fromkeys(range(4), Move.ACQUIRE)


def test_a_member_is_live_while_its_lease_is_fresh() -> None:
    members = {"a": held("a"), "b": held("b", fresh_for=-1), "c": held("")}
    assert live_members(members) == {"a"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def coordinator(
    leases: FakeLeases,
    identity: str,
    clock: Clock,
    taken: list[set[int]] | None = None,
    lost: list[set[int]] | None = None,
) -> ShardCoordinator:
    return ShardCoordinator(
        leases, identity, installation="ok8s", shards=SHARDS, lease_seconds=10, renew_seconds=2, clock=clock,
        on_taken=(taken.append if taken is not None else lambda shards: None),
        on_lost=(lost.append if lost is not None else lambda shards: None),
    )  # fmt: skip


async def periods(clock: Clock, replicas: list[ShardCoordinator], count: int) -> None:
    for _ in range(count):
        for replica in replicas:
            await replica.step()
        clock.now += 2


async def test_two_replicas_converge_on_halves_and_every_cluster_has_exactly_one_checker() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = coordinator(leases, "a", clock), coordinator(leases, "b", clock)
    await periods(clock, [a], 2)
    assert a.held() == list(range(SHARDS)), "alone, it takes everything"
    await periods(clock, [a, b], 3)
    assert sorted([len(a.held()), len(b.held())]) == [SHARDS // 2, SHARDS // 2]
    uids = [f"uid-{i}" for i in range(500)]
    assert all(a.owns(uid) != b.owns(uid) for uid in uids), "one checker per cluster"
    assert set(leases.holders().values()) == {"a", "b"}


async def test_a_replica_that_hands_shards_to_a_newcomer_says_which_at_once() -> None:
    """Its clusters' loops are woken by it, so they let go of those clusters now rather than at their next slot."""
    leases, clock, lost = FakeLeases(), Clock(), []
    a, b = coordinator(leases, "a", clock, lost=lost), coordinator(leases, "b", clock)
    await periods(clock, [a], 2)
    assert lost == []
    await periods(clock, [a, b], 3)
    assert set().union(*lost) == set(b.held()), "every shard handed over, and only those"


async def test_a_replica_that_stops_renewing_loses_its_shards_within_the_lease_and_a_period() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = coordinator(leases, "a", clock), coordinator(leases, "b", clock)
    await periods(clock, [a, b], 4)
    killed_at, orphaned = clock.now, set(b.held())
    while not orphaned <= set(a.held()):  # b is SIGKILLed: it never writes again
        await periods(clock, [a], 1)
        assert clock.now - killed_at <= 10 + 2 * 2, "taken over within the lease duration and a period"
    assert a.held() == list(range(SHARDS))


async def test_a_graceful_shutdown_hands_over_at_the_next_period() -> None:
    leases, clock = FakeLeases(), Clock()
    taken: list[set[int]] = []
    a, b = coordinator(leases, "a", clock, taken), coordinator(leases, "b", clock)
    await periods(clock, [a, b], 4)
    released = set(b.held())
    await b.release_all()
    assert b.held() == []
    taken.clear()
    await periods(clock, [a], 1)
    assert set().union(*taken) == released, "taken at once, not after the lease"


async def test_a_replica_cut_off_from_the_api_server_stops_checking_before_its_lease_can_expire() -> None:
    leases, clock = FakeLeases(), Clock()
    a = coordinator(leases, "a", clock)
    await periods(clock, [a], 1)
    leases.down = True
    with pytest.raises(ConnectionError):
        await a.step()
    clock.now += 10 - 2  # the lease (10 s) less one renew period since the last write
    assert a.held() == [], "it lets go before anyone else could take the shards"


def test_a_renew_period_no_shorter_than_the_lease_is_refused_at_start() -> None:
    """valid_until = write + lease - renew: with renew >= lease a replica never owns a shard, and says nothing."""
    with pytest.raises(ValidationError):
        Settings(
            database_dsn="postgresql://u@h/d",
            sharding="leases",
            lease_namespace="ops",
            shard_lease_seconds=3,
            shard_renew_seconds=5,
        )


def test_a_replica_name_the_api_server_refuses_is_refused_at_start_and_the_default_is_one_it_takes() -> None:
    with pytest.raises(ValidationError):
        Settings(database_dsn="postgresql://u@h/d", sharding="leases", lease_namespace="ops", identity="Replica_A")
    assert replica_identity("Build_Host.Example", 42) == "build-host-example-42"
    assert replica_identity("___", 7) == "replica-7"


async def test_an_api_server_outage_longer_than_the_lease_moves_no_shard_between_live_replicas() -> None:
    """Both replicas live through a 30 s API server outage. The one whose last LIST came after the other's last
    renewal sees every Lease of the other unchanged for longer than its duration, takes the other's shards at the
    first period back (the other's renewals get 409s), and gives them back a period later: two hand-overs, two cache
    drops and skewed schedules for nothing."""
    leases, clock = FakeLeases(), Clock()
    taken: list[set[int]] = []
    a, b = coordinator(leases, "a", clock, taken), coordinator(leases, "b", clock, taken)
    await periods(clock, [a, b], 4)
    await a.step()  # a's last LIST before the outage comes after b's last renewal
    before, held_by_b = leases.holders(), set(b.held())
    taken.clear()
    clock.now += 30  # the API server away: nothing listed or written
    for _ in range(3):
        await a.step()
        await b.step()
        clock.now += 2
    assert leases.holders() == before
    assert set(b.held()) == held_by_b
    assert taken == []
