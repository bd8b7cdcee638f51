"""The ticket store's contract, run on the fake and on Postgres alike: the compare-and-set outcomes the service
relies on (conflicts, insert races, deleting a row that is no longer pending, refused writes) are the same, so a
unit test cannot pass on a fake that Postgres would contradict."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from devstack.world.stack import Stack
from operator_k8s.adapters.ticket_store import PostgresTicketStore
from operator_k8s.domain.outbox import TicketWrite
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.ports import TicketStore
from tests.stackutil import create_database
from tests.unit.builders import KEY, at, ticket
from tests.unit.fakes import INT4_MAX, FakeStore

_databases = itertools.count()


@pytest.fixture(params=["fake", "postgres", "pgbouncer"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TicketStore]:
    if request.param == "fake":
        yield FakeStore()
        return
    stack: Stack = request.getfixturevalue("stack")
    name = f"contract_{next(_databases)}"
    real = PostgresTicketStore(await create_database(stack, name, pooled=request.param == "pgbouncer"))
    try:
        yield real
    finally:
        await real.close()


def new(state: TicketState = TicketState.OPEN, **fields: object) -> Ticket:
    return ticket(state, id=None, version=0, **fields)


async def put(store: TicketStore, *writes: TicketWrite) -> tuple[list[Ticket], frozenset[int], tuple[str, ...]]:
    result = await store.sync(KEY.cluster_uid, list(writes), at(-3600), deadline=5)
    return result.tickets, result.conflicts, result.rejected


async def test_two_inserts_of_one_key_the_second_conflicts(store: TicketStore) -> None:
    rows, conflicts, _ = await put(store, TicketWrite(None, new()), TicketWrite(None, new(message="other")))
    assert conflicts == {1} and [r.message for r in rows] == ["m"]


async def test_a_write_from_a_stale_version_conflicts(store: TicketStore) -> None:
    [row], _, _ = await put(store, TicketWrite(None, new()))
    [row], conflicts, _ = await put(store, TicketWrite(row, replace(row, message="first")))
    assert not conflicts and row.version == 2
    stale = replace(row, version=1)
    rows, conflicts, _ = await put(store, TicketWrite(stale, replace(stale, message="second")))
    assert conflicts == {0} and [r.message for r in rows] == ["first"]


async def test_only_a_pending_ticket_is_ever_deleted(store: TicketStore) -> None:
    [pending], _, _ = await put(store, TicketWrite(None, new(TicketState.PENDING)))
    assert (await put(store, TicketWrite(pending, None)))[0:2] == ([], frozenset())
    [opened], _, _ = await put(store, TicketWrite(None, new()))
    rows, conflicts, _ = await put(store, TicketWrite(opened, None))
    assert conflicts == {0} and [r.id for r in rows] == [opened.id], "an open ticket is never deleted"


async def test_reviving_a_resolved_ticket_while_another_holds_the_key_conflicts(store: TicketStore) -> None:
    [first], _, _ = await put(store, TicketWrite(None, new()))
    [resolved], _, _ = await put(
        store, TicketWrite(first, replace(first, state=TicketState.RESOLVED, resolved_at=at(1)))
    )
    rows, _, _ = await put(store, TicketWrite(None, new(first_seen=at(2))))
    assert len(rows) == 2
    _, conflicts, _ = await put(
        store, TicketWrite(resolved, replace(resolved, state=TicketState.OPEN, resolved_at=None))
    )
    assert conflicts == {0}, "one unresolved ticket per key"


async def test_a_value_postgres_cannot_store_is_rejected_and_the_others_land(store: TicketStore) -> None:
    rows, conflicts, rejected = await put(
        store, TicketWrite(None, new(occurrences=INT4_MAX + 1)), TicketWrite(None, new(key=replace(KEY, store="b")))
    )
    assert not conflicts and len(rejected) == 1 and "out of range" in rejected[0]
    assert [r.key.store for r in rows] == ["b"]
