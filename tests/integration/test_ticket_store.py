"""The Postgres ticket store against a real Postgres: migrations, dedup under concurrency, one round trip per cycle."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import asyncpg
import pytest

from devstack.stack import Stack
from operator_k8s.adapters.ticket_store import PostgresTicketStore, migrate, migrations
from operator_k8s.domain.tickets import TicketKey, TicketState
from operator_k8s.ports import TicketWrite
from operator_k8s.service import Monitor
from tests.unit.builders import at, ticket
from tests.unit.test_service import PODS, REF, SPEC, FakeMetrics, FakeMirror

pytestmark = pytest.mark.stack
_databases = itertools.count()


@pytest.fixture
async def database(stack: Stack) -> str:
    """A fresh, empty database per test; its DSN."""
    name = f"tickets_{next(_databases)}"
    admin = await asyncpg.connect(stack.postgres_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return stack.postgres_dsn.rsplit("/", 1)[0] + "/" + name


async def test_migrates_an_empty_database(database: str) -> None:
    connection = await asyncpg.connect(database)
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
    connection = await asyncpg.connect(database)
    try:
        assert await migrate(connection, target=1) == [1]
        await connection.execute(
            "INSERT INTO tickets (cluster_uid, namespace, cluster_name, invariant, store, state, severity, message,"
            " occurrences, first_seen, last_seen) VALUES ('uid-1', 'ns', 'tikv', 'latency', 'tikv-0', 'open', 'warning',"
            " 'old row', 3, now(), now())"
        )
        assert await migrate(connection) == [2]
    finally:
        await connection.close()
    store = PostgresTicketStore(database)
    try:
        rows = await store.sync("uid-1", [], at(0))
        assert [(r.message, r.occurrences, r.state) for r in rows] == [("old row", 3, TicketState.OPEN)]
    finally:
        await store.close()


async def test_two_concurrent_writers_never_duplicate_an_open_ticket(database: str) -> None:
    first, second = PostgresTicketStore(database), PostgresTicketStore(database)
    try:
        await first.start()
        for store_name in (f"tikv-{i}" for i in range(20)):
            new = ticket(TicketState.OPEN, key=TicketKey("uid-1", "latency", store_name), id=None)
            writes = [TicketWrite(None, new, (), at(0))]
            await asyncio.gather(first.sync("uid-1", writes, at(0)), second.sync("uid-1", writes, at(0)))
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
    connection = await asyncpg.connect(database)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


def _statements(log: Path, start: int) -> list[str]:
    text = log.read_text(errors="replace")[start:]
    return re.findall(r"LOG:  (?:statement|execute [^:]*): (.*)", text)


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
            _, stats = await monitor.check_cluster(REF, SPEC, PODS, {}, at(second))
            await asyncio.sleep(0.3)  # let the server write its log
            statements = _statements(log, offset)
            assert len(statements) == 1, statements
            assert "sync_cluster" in statements[0]
            assert stats.postgres_round_trips == 1
        rows = await store.sync(REF.uid, [], at(0))
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
        ticket_id = next(t.id for t in await store.sync(REF.uid, [], at(0)))
        assert ticket_id is not None
        await monitor.human_intent(
            REF.uid, ticket_id, hold=False, acknowledged=True, actor="kubernetes:kubectl-patch", now=at(1)
        )
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
        results = await asyncio.gather(*(store.sync(f"uid-{i}", [], at(0)) for i in range(20)))
        assert results == [[]] * 20
        sql = (
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        count = (await fetch(database, sql))[0]["n"]
        assert count <= 2, f"{count} connections for a pool of 2"
    finally:
        await store.close()
