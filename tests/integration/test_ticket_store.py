"""The Postgres ticket store against a real Postgres: migrations, dedup under concurrency, one round trip per cycle."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from devstack.world.stack import Stack
from operator_k8s.adapters.ticket_store import PROBE_SECONDS, PostgresTicketStore, connect, migrate, migrations
from operator_k8s.domain.outbox import TicketWrite
from operator_k8s.domain.tickets import Effect, EffectKind, Ticket, TicketKey, TicketState
from operator_k8s.ports import TicketStoreUnavailable
from operator_k8s.service import Monitor
from tests.stackutil import create_database, eventually_async
from tests.unit.builders import at, shown, ticket
from tests.unit.cycles import PODS, REF, SPEC
from tests.unit.fakes import FakeMetrics, FakeMirror

pytestmark = pytest.mark.stack
_databases = itertools.count()


@pytest.fixture(params=["postgres", "pgbouncer"])
async def database(stack: Stack, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database per test; its DSN, direct or through PgBouncer in transaction pooling (every test
    here holds for both)."""
    return await create_database(stack, f"tickets_{next(_databases)}", pooled=request.param == "pgbouncer")


async def test_migrates_an_empty_database(database: str) -> None:
    connection = await connect(database)
    try:
        assert await migrate(connection) == [m.version for m in migrations()]
        assert await migrate(connection) == [], "migrations are applied once"
        tables = {
            r["tablename"]
            for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"tickets", "ticket_events", "schema_migrations"} <= tables
    finally:
        await connection.close()


async def test_migrates_from_the_previous_schema_keeping_data(database: str) -> None:
    connection = await connect(database)
    try:
        assert await migrate(connection, target=1) == [1]
        await connection.execute(
            "INSERT INTO tickets (cluster_uid, namespace, cluster_name, invariant, store, state, severity, message,"
            " occurrences, first_seen, last_seen) VALUES ('uid-1', 'ns', 'tikv', 'latency', 'tikv-0', 'open', 'warning',"
            " 'old row', 3, now(), now())"
        )
        assert await migrate(connection) == [m.version for m in migrations() if m.version > 1]
    finally:
        await connection.close()
    store = PostgresTicketStore(database)
    try:
        rows = (await store.sync("uid-1", [], at(0), deadline=5)).tickets
        assert [(r.message, r.occurrences, r.state, r.version) for r in rows] == [("old row", 3, TicketState.OPEN, 1)]
    finally:
        await store.close()


async def test_two_concurrent_writers_never_duplicate_an_open_ticket(database: str) -> None:
    first, second = PostgresTicketStore(database), PostgresTicketStore(database)
    try:
        await first.start()
        for store_name in (f"tikv-{i}" for i in range(20)):
            new = ticket(TicketState.OPEN, key=TicketKey("uid-1", "latency", store_name), id=None)
            writes = [TicketWrite(None, new)]
            await asyncio.gather(
                first.sync("uid-1", writes, at(0), deadline=5), second.sync("uid-1", writes, at(0), deadline=5)
            )
        counts = await fetch(
            database, "SELECT store, count(*) AS n FROM tickets WHERE state <> 'resolved' GROUP BY store"
        )
        assert len(counts) == 20
        assert {r["n"] for r in counts} == {1}
    finally:
        await first.close()
        await second.close()


async def fetch(database: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """Rows from the test's database through a connection of its own."""
    connection = await connect(database)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


def _statements(log: Path, start: int) -> list[str]:
    """The statements Postgres logged from ``start``, but PgBouncer's own: handing a server session to a client, it
    sets the client's encoding there (``SET client_encoding``), which is not the operator's statement."""
    text = log.read_text(errors="replace")[start:]
    found = re.findall(r"LOG:  (?:statement|execute [^:]*): (.*)", text)
    return [statement for statement in found if not statement.startswith("SET client_encoding=")]


async def _statements_until_marker(database: str, log: Path, offset: int, marker: str) -> list[str]:
    """The statements logged from ``offset`` until a marker statement sent now: Postgres logs in the order it
    executes, so everything before the marker is what ran before it (no guess at how long logging takes)."""
    connection = await connect(database)
    try:
        await connection.execute(f"SELECT '{marker}'")
    finally:
        await connection.close()

    async def logged() -> list[str] | None:
        statements = _statements(log, offset)
        return statements if any(marker in s for s in statements) else None

    found = await eventually_async(logged, timeout=10, what=f"the marker {marker!r} logged")
    return found[: next(i for i, s in enumerate(found) if marker in s)]


async def test_one_postgres_round_trip_per_cycle(stack: Stack, database: str) -> None:
    """Counted by Postgres itself (log_statement=all on this database), not by our own counters."""
    admin = await asyncpg.connect(stack.postgres_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {database.rsplit('/', 1)[1]} SET log_statement = 'all'")
    finally:
        await admin.close()
    store = PostgresTicketStore(database)
    metrics = FakeMetrics()
    monitor = Monitor(store=store, metrics=metrics, mirror=FakeMirror())
    log = stack.process("postgres").log_path
    try:
        await monitor.check_cluster(REF, SPEC, PODS, {}, at(0))  # first cycle loads, then writes
        metrics.latency = {"tikv-0": 900.0, "tikv-1": 900.0}
        for second, latency in ((1, 900.0), (2, 900.0), (3, 5.0), (4, 5.0)):
            metrics.latency = {"tikv-0": latency, "tikv-1": latency}
            offset = len(log.read_text(errors="replace"))
            stats = await monitor.check_cluster(REF, SPEC, PODS, {}, at(second))
            statements = await _statements_until_marker(database, log, offset, f"cycle {second} done")
            assert len(statements) == 1, statements
            assert "sync_cluster_within" in statements[0]
            assert stats.postgres_round_trips == 1
        rows = (await store.sync(REF.uid, [], at(0), deadline=5)).tickets
        assert sorted((r.key.store, r.state) for r in rows) == [
            ("tikv-0", TicketState.RESOLVED),
            ("tikv-1", TicketState.RESOLVED),
        ]
    finally:
        await store.close()


async def test_history_records_every_transition_with_actor(database: str) -> None:
    store = PostgresTicketStore(database)
    metrics = FakeMetrics()
    monitor = Monitor(store=store, metrics=metrics, mirror=FakeMirror())
    try:
        metrics.latency["tikv-1"] = 900.0
        await monitor.check_cluster(REF, SPEC, PODS, {}, at(0))
        stored = next(iter((await store.sync(REF.uid, [], at(0), deadline=5)).tickets))
        ticket_id = stored.id
        await monitor.human_intent(
            REF.uid, shown(stored), {"acknowledged": False}, {"acknowledged": True}, actor="kubernetes:kubectl-patch",
            now=at(1),
        )  # fmt: skip
        metrics.latency["tikv-1"] = 5.0
        await monitor.check_cluster(REF, SPEC, PODS, {}, at(2))
        sql = "SELECT kind, actor, to_state FROM ticket_events WHERE ticket_id = $1 ORDER BY id"
        events = await fetch(database, sql, ticket_id)
        assert [(e["kind"], e["actor"], e["to_state"]) for e in events] == [
            ("Pending", "operator", "pending"),
            ("Opened", "operator", "open"),
            ("Acknowledged", "kubernetes:kubectl-patch", "acknowledged"),
            ("Resolved", "operator", "resolved"),
        ]
    finally:
        await store.close()


async def test_concurrent_first_calls_share_one_pool(database: str) -> None:
    """Cycles that start together (a restart with many clusters) create one pool, not one each."""
    store = PostgresTicketStore(database, pool_size=2)
    try:
        results = await asyncio.gather(*(store.sync(f"uid-{i}", [], at(0), deadline=5) for i in range(20)))
        assert [r.tickets for r in results] == [[]] * 20
        sql = (
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        count = (await fetch(database, sql))[0]["n"]
        assert count <= 2, f"{count} connections for a pool of 2"
    finally:
        await store.close()


async def test_a_postgres_that_refuses_at_start_up_is_unavailable_with_its_reason(stack: Stack) -> None:
    """A refusal (here a database that does not exist; in a reinstall, a wrong password) must not fail the operator's
    start-up: it is the same TicketStoreUnavailable as an outage, with Postgres's own words."""
    store = PostgresTicketStore(stack.postgres_dsn.rsplit("/", 1)[0] + "/no_such_database")
    try:
        with pytest.raises(TicketStoreUnavailable, match=r"refused the connection: InvalidCatalogNameError \(3D000\)"):
            await store.start()
    finally:
        await store.close()


async def _stored(store: PostgresTicketStore) -> Ticket:
    new = ticket(TicketState.OPEN, id=None)
    opened = (Effect(EffectKind.OPENED, None, TicketState.OPEN, "opened"),)
    result = await store.sync("uid-1", [TicketWrite(None, new, ((at(0), opened[0]),))], at(0), deadline=5)
    return result.tickets[0]


async def test_a_write_from_a_stale_version_is_a_conflict_and_a_retry_is_harmless(database: str) -> None:
    store = PostgresTicketStore(database)
    try:
        row = await _stored(store)
        assert row.version == 1
        held = TicketWrite(row, replace(row, hold=True), ((at(1), Effect(EffectKind.HELD, row.state, row.state, "h")),))
        first = await store.sync("uid-1", [held], at(0), deadline=5)
        assert (first.conflicts, first.tickets[0].version, first.tickets[0].hold) == (frozenset(), 2, True)
        retried = await store.sync("uid-1", [held], at(0), deadline=5)  # the same write again (a lost answer)
        assert retried.conflicts == frozenset({0})
        stale = TicketWrite(row, replace(row, message="decided from version 1"))
        assert (await store.sync("uid-1", [stale], at(0), deadline=5)).conflicts == frozenset({0})
        events = await fetch(database, "SELECT kind FROM ticket_events ORDER BY id")
        assert [e["kind"] for e in events] == ["Opened", "Held"], "nothing appended twice"
    finally:
        await store.close()


async def test_a_write_postgres_refuses_is_reported_and_the_others_land(database: str) -> None:
    store = PostgresTicketStore(database)
    try:
        row = await _stored(store)
        broken = TicketWrite(row, replace(row, occurrences=2**40))  # out of range for the integer column
        other = TicketWrite(None, ticket(TicketState.OPEN, id=None, key=TicketKey("uid-1", "latency", "tikv-9")))
        result = await store.sync("uid-1", [broken, other], at(0), deadline=5)
        assert len(result.rejected) == 1 and "out of range" in result.rejected[0]
        assert sorted(t.key.store for t in result.tickets) == ["tikv-0", "tikv-9"]
    finally:
        await store.close()


async def test_non_finite_values_are_stored_as_text(database: str) -> None:
    store = PostgresTicketStore(database)
    try:
        new = ticket(TicketState.OPEN, id=None, snapshot={"value": float("inf"), "threshold": float("nan")})
        result = await store.sync("uid-1", [TicketWrite(None, new)], at(0), deadline=5)
        assert result.tickets[0].snapshot == {"value": "+Inf", "threshold": "NaN"}
    finally:
        await store.close()


async def test_a_frozen_postgres_fails_fast_after_one_deadline_and_recovers(stack: Stack, database: str) -> None:
    store = PostgresTicketStore(database, probe_every=1.0)
    postgres = stack.process("postgres")
    try:
        await store.start()
        postgres.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(TicketStoreUnavailable, match="within 1s"):
                await store.sync("uid-1", [], at(0), deadline=1)
            first = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(TicketStoreUnavailable):
                await store.sync("uid-2", [], at(0), deadline=1)
            second = time.monotonic() - started
        finally:
            postgres.thaw()
        assert 1 <= first < 1.4 + PROBE_SECONDS, f"the first call waits its deadline and one probe ({first:.2f}s)"
        assert second < 0.5, f"later calls fail at once while Postgres is down ({second:.3f}s)"

        async def probe_allowed() -> bool:
            """The breaker lets one probe through after probe_every: until then a call fails at once."""
            try:
                return (await store.sync("uid-1", [], at(0), deadline=5)).tickets == []
            except TicketStoreUnavailable:
                return False

        assert await eventually_async(probe_allowed, timeout=5, what="the breaker to let a probe through")
        assert store.available
    finally:
        await store.close()


async def test_a_postgres_turned_read_only_keeps_every_write_queued_and_stores_it_once_writable(
    stack: Stack, database: str
) -> None:
    """What a client meets during a switchover: its connections dropped, and the server it reconnects to refusing
    writes as read-only (SQLSTATE 25006). 0003 caught that per row and dropped the write (a human's hold among
    them); now the call fails as an outage in Postgres's own words, nothing is stored half, and the same writes
    land once Postgres takes writes again."""
    name = database.rsplit("/", 1)[1]
    store = PostgresTicketStore(database, probe_every=0.1)
    admin = await asyncpg.connect(stack.postgres_dsn)

    async def switch(read_only: bool) -> None:
        setting = "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"
        await admin.execute(f"ALTER DATABASE {name} {setting}")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )

    try:
        row = await _stored(store)
        held = TicketWrite(row, replace(row, hold=True))
        await switch(read_only=True)
        refusals: list[str] = []

        async def refused_as_read_only() -> bool:
            try:
                result = await store.sync("uid-1", [held], at(1), deadline=5)
            except TicketStoreUnavailable as error:
                refusals.append(str(error))
                return "read-only" in str(error)
            raise AssertionError(f"a read-only Postgres stored or dropped the write: {result}")

        await eventually_async(refused_as_read_only, timeout=10, interval=0.2, what="the read-only refusal")
        assert not store.available, "TicketStoreAvailable goes False: Postgres cannot take writes"
        assert "25006" in refusals[-1] and "retried" in refusals[-1], refusals[-1]
        reader = await connect(database)
        try:
            [stored] = await reader.fetch("SELECT hold, version FROM tickets WHERE id = $1", row.id)
        finally:
            await reader.close()
        assert (stored["hold"], stored["version"]) == (False, row.version), "nothing was stored half"
        await switch(read_only=False)

        async def stored_once_writable() -> list[Ticket] | None:
            try:
                return (await store.sync("uid-1", [held], at(2), deadline=5)).tickets
            except TicketStoreUnavailable:
                return None

        [after] = await eventually_async(stored_once_writable, timeout=10, interval=0.2, what="the write stored")
        assert after.hold and after.version == row.version + 1 and store.available
    finally:
        await admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        await admin.close()
        await store.close()


async def test_a_call_waiting_on_a_lock_fails_alone_and_leaves_nothing_waiting(stack: Stack, database: str) -> None:
    """A lock held elsewhere (a long ALTER, VACUUM FULL, an admin's open transaction): each call that needs it fails
    on its own within its deadline, the breaker stays closed so other clusters keep their store, and no statement
    the operator gave up on stays behind waiting (they piled up to the connection limit before 0005)."""
    store = PostgresTicketStore(database)
    blocker = await connect(database)
    name = database.rsplit("/", 1)[1]
    try:
        row = await _stored(store)
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE", row.id)
        held = TicketWrite(row, replace(row, hold=True))
        for _ in range(3):
            outcomes = await asyncio.gather(
                *(store.sync("uid-1", [held], at(1), deadline=0.5) for _ in range(4)), return_exceptions=True
            )
            assert all(isinstance(o, TicketStoreUnavailable) for o in outcomes), outcomes
            assert any("lock the sync needs" in str(o) for o in outcomes), [str(o) for o in outcomes]
        assert store.available, "calls that wait on a lock open no breaker"
        assert (await store.sync("uid-2", [], at(1), deadline=5)).tickets == [], "another cluster's call goes on"
        admin = await asyncpg.connect(stack.postgres_dsn)

        async def nothing_waiting() -> bool:
            """Each statement ends by its own lock_timeout, inside the deadline its caller gave up at."""
            sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
            return await admin.fetchval(sql, name) == 0

        try:
            await eventually_async(nothing_waiting, timeout=2, interval=0.1, what="no statement left waiting")
        finally:
            await admin.close()
        await transaction.rollback()
    finally:
        await blocker.close()
        await store.close()


async def test_a_new_connection_reads_the_dsn_again(stack: Stack) -> None:
    """The chart mounts the DSN from a Secret: a password (or host) rotated there is used by the next connection
    without a restart. Here the DSN source moves to another database while the store's sessions are ended (a direct
    DSN: behind PgBouncer, ending server sessions ends no client's connection)."""
    database = await create_database(stack, f"tickets_{next(_databases)}")
    current = [database]
    store = PostgresTicketStore(lambda: current[0], probe_every=0.1)
    try:
        assert [
            t.key.store
            for t in (
                await store.sync("uid-1", [TicketWrite(None, ticket(TicketState.OPEN, id=None))], at(0), deadline=5)
            ).tickets
        ] == ["tikv-0"]
        current[0] = await create_database(stack, f"tickets_rotated_{next(_databases)}")
        admin = await asyncpg.connect(stack.postgres_dsn)
        try:
            name = database.rsplit("/", 1)[1]
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        finally:
            await admin.close()

        async def reconnected_to_the_new_dsn() -> bool:
            """The new database holds no ticket: an answer of [] comes from a session on the new DSN."""
            try:
                return (await store.sync("uid-1", [], at(1), deadline=5)).tickets == []
            except TicketStoreUnavailable:
                return False

        await eventually_async(reconnected_to_the_new_dsn, timeout=10, interval=0.2, what="a session on the new DSN")
    finally:
        await store.close()
