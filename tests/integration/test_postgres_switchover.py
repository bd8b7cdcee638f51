"""A real primary and streaming standby (Debian's PostgreSQL, ``pg_basebackup -R``, ``pg_ctl promote``), switched
over while check cycles run, tickets open and a human acknowledges one: the operator's DSN names both hosts with
``target_session_attrs=read-write``, as a client of Patroni or CloudNativePG does. Nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import asyncpg
import pytest

from devstack.world.postgres import PostgresPair
from operator_k8s.adapters.ticket_store import PostgresTicketStore
from operator_k8s.domain.tickets import Ticket
from operator_k8s.ports import TicketStoreUnavailable
from operator_k8s.service import Monitor
from tests.unit.builders import at, shown
from tests.unit.cycles import PODS, REF, SPEC
from tests.unit.fakes import FakeMetrics, FakeMirror

pytestmark = pytest.mark.stack
EVERY_TRANSITION_ONCE = [
    ("tikv-1", "Pending", "operator"),
    ("tikv-1", "Opened", "operator"),
    ("tikv-0", "Pending", "operator"),
    ("tikv-0", "Opened", "operator"),
    ("tikv-1", "Acknowledged", "kubernetes:kubectl-patch"),
]


async def events(dsn: str) -> list[tuple[str, str, str]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT t.store, e.kind, e.actor FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id ORDER BY e.id"
        )
        return [(row["store"], row["kind"], row["actor"]) for row in rows]
    finally:
        await connection.close()


async def acknowledge(monitor: Monitor, ticket: Ticket, now: datetime) -> Ticket | None:
    return await monitor.human_intent(
        REF.uid,
        shown(ticket),
        {"acknowledged": False},
        {"acknowledged": True},
        actor="kubernetes:kubectl-patch",
        now=now,
    )


async def test_a_switchover_during_open_tickets_and_an_edit_loses_no_transition_and_no_edit(
    pair: PostgresPair,
) -> None:
    store = PostgresTicketStore(pair.dsn(), probe_every=0.2)
    metrics = FakeMetrics()
    monitor = Monitor(store=store, metrics=metrics, mirror=FakeMirror())
    try:
        metrics.latency["tikv-1"] = 900.0
        await monitor.check_cluster(REF, SPEC, PODS, {}, at(0))
        [opened] = (await store.sync(REF.uid, [], at(0), deadline=5)).tickets
        old_primary = pair.primary.port

        pair.primary.shut_down_fast()  # the switchover begins: no primary until the standby is promoted
        metrics.latency["tikv-0"] = 900.0  # a new violation meanwhile
        stats = await monitor.check_cluster(REF, SPEC, PODS, {}, at(1))
        errors = list(stats.errors)
        with pytest.raises(TicketStoreUnavailable):  # a human acknowledges meanwhile: the edit stays on the Ticket
            await acknowledge(monitor, opened, at(1))
        promoting = asyncio.create_task(asyncio.to_thread(pair.promote))
        edit_stored, second = None, 2
        while (not promoting.done() or edit_stored is None) and second < 300:  # cycles go on; the edit is folded again
            errors += (await monitor.check_cluster(REF, SPEC, PODS, {}, at(second))).errors
            if edit_stored is None:
                with contextlib.suppress(TicketStoreUnavailable):
                    edit_stored = await acknowledge(monitor, opened, at(second))
            second += 1
            await asyncio.sleep(0.2)  # the interval between two cycles
        await promoting
        assert edit_stored is not None and edit_stored.acknowledged, "the edit made during the switchover landed"

        assert pair.primary.port != old_primary and pair.standby.port == old_primary, "the roles swapped"
        assert "postgres_unavailable" in errors, "the switchover was met by the cycles, not slept through"
        assert "postgres_rejected" not in errors, "no write was dropped"
        history = await events(pair.dsn())
        assert sorted(history) == sorted(EVERY_TRANSITION_ONCE), history
        rows: list[Ticket] = (await store.sync(REF.uid, [], at(second), deadline=5)).tickets
        assert sorted((t.key.store, t.state.value, t.acknowledged) for t in rows) == [
            ("tikv-0", "open", False),
            ("tikv-1", "acknowledged", True),
        ]
        print(f"\n[measured] switchover: {errors.count('postgres_unavailable')} cycles met it, {second - 1} ran")
    finally:
        await store.close()
