"""Postgres as production runs it: a server that refuses writes as read-only (what a client meets during a
switchover, or when the DSN reaches a standby) for half a minute, while tickets open and people hold and
acknowledge them. Nothing is dropped, the clusters say what is happening, and every intent lands afterwards."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import asyncpg
import pytest

from devstack.world.stack import Stack
from tests.e2e.support import (
    INTERVAL,
    RECOVERY_TIMEOUT,
    Scene,
    SharedOperator,
    condition_is,
    patch_ticket,
    wait_healthy,
)
from tests.stackutil import (
    OPEN_STATES,
    condition,
    eventually,
    metric_value,
    report,
    scrape_metrics,
    shown_tickets,
    store_fault,
    tickets_in_db,
)

pytestmark = pytest.mark.stack
READ_ONLY_SECONDS = 30.0
STORES = ("tikv-0", "tikv-1")
DROPPED = r'operator_k8s_check_errors_total\{kind="postgres_rejected"\}'
"""Writes Postgres refused for good and the operator dropped."""


def switch_read_only(stack: Stack, read_only: bool) -> None:
    """What a switchover looks like from the operator: its sessions end, and the server its reconnections reach
    refuses every write (``default_transaction_read_only``, SQLSTATE 25006) until the new primary takes over. The
    switch's own session writes whatever the database's default, so it can always switch back."""
    database = stack.postgres_dsn.rsplit("/", 1)[1].split("?")[0]
    setting = "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"

    async def switch() -> None:
        admin = await asyncpg.connect(stack.postgres_dsn, server_settings={"default_transaction_read_only": "off"})
        try:
            await admin.execute(f"ALTER DATABASE {database} {setting}")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await admin.close()

    asyncio.run(switch())


@pytest.mark.level("high")
def test_a_read_only_postgres_drops_no_write_and_every_intent_lands_afterwards(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    operator = shared.running()
    namespace = scene.namespace("readonly")
    scene.stores(namespace, "tikv")
    scene.cluster(namespace, "tikv", invariants={"diskUsage": {"for": "0s", "clearFor": "2s"}})
    wait_healthy(stack, namespace, "tikv")

    def ticket_of(store: str) -> dict[str, Any] | None:
        return next((t for t in shown_tickets(stack, namespace) if t["status"]["store"] == store), None)

    def row_of(store: str) -> dict[str, Any] | None:
        return next((r for r in tickets_in_db(stack, namespace, "diskUsage") if r["store"] == store), None)

    for store in STORES:
        store_fault(stack, namespace, "tikv", store, "disk", {"percent": 97})
    held, acked = (eventually(partial(ticket_of, s), what=f"{s}'s Ticket")["metadata"]["name"] for s in STORES[:2])
    dropped_before = metric_value(scrape_metrics(operator), DROPPED)

    switch_read_only(stack, True)
    read_only_at = time.time()
    try:
        # People act while Postgres refuses writes: a hold, an acknowledgement; a store heals (its ticket would
        # auto-resolve but is held), another store fills up (a new ticket that cannot be stored yet).
        patch_ticket(stack, namespace, held, {"hold": True})
        patch_ticket(stack, namespace, acked, {"acknowledged": True})
        store_fault(stack, namespace, "tikv", "tikv-0", "disk", heal=True)
        store_fault(stack, namespace, "tikv", "tikv-2", "disk", {"percent": 97})
        eventually(
            partial(condition_is, stack, namespace, "tikv", "TicketStoreAvailable", "False"),
            what="TicketStoreAvailable=False while Postgres is read-only", timeout=RECOVERY_TIMEOUT, interval=0.2,
        )  # fmt: skip
        marked_after = time.time() - read_only_at
        eventually(
            lambda: "read-only" in (condition(stack, namespace, "tikv", "TicketStoreAvailable") or {}).get("message", ""),
            what="TicketStoreAvailable saying Postgres is read-only", timeout=RECOVERY_TIMEOUT,
        )  # fmt: skip
        # What was observed is shown, stored or not: tikv-2's disk is full although its ticket is not in Postgres.
        eventually(
            lambda: "tikv-2" in (condition(stack, namespace, "tikv", "DiskSpaceAvailable") or {}).get("message", ""),
            what="DiskSpaceAvailable naming tikv-2 during the outage", timeout=RECOVERY_TIMEOUT,
        )  # fmt: skip
        assert row_of("tikv-2") is None, "a read-only Postgres stored a new ticket"
        assert (row_of("tikv-0") or {}).get("hold") is False, "a read-only Postgres stored the hold"
        time.sleep(max(0.0, READ_ONLY_SECONDS - (time.time() - read_only_at)))  # the outage's length is the scenario
    finally:
        switch_read_only(stack, False)
    writable_at = time.time()

    eventually(
        partial(condition_is, stack, namespace, "tikv", "TicketStoreAvailable", "True"),
        what="TicketStoreAvailable=True once Postgres takes writes", timeout=RECOVERY_TIMEOUT, interval=0.2,
    )  # fmt: skip
    back_after = time.time() - writable_at
    eventually(lambda: (row_of("tikv-0") or {}).get("hold"), what="the hold made during the outage, stored")
    eventually(lambda: (row_of("tikv-1") or {}).get("acknowledged"), what="the acknowledgement, stored")
    eventually(lambda: (row_of("tikv-2") or {}).get("state") in OPEN_STATES, what="tikv-2's ticket, stored", timeout=30)
    assert (row_of("tikv-0") or {}).get("state") in OPEN_STATES, (
        "held through the outage: its healed store's ticket stays open"
    )
    assert (ticket_of("tikv-0") or {}).get("spec", {}).get("hold") is True
    dropped = metric_value(scrape_metrics(operator), DROPPED)
    assert dropped == dropped_before, f"{dropped - dropped_before:g} writes dropped as rejected"
    report(
        "read-only Postgres",
        read_only_s=round(time.time() - read_only_at - back_after, 1),
        unavailable_shown_after_s=round(marked_after, 1),
        interval_s=INTERVAL,
        available_again_after_s=round(back_after, 1),
        writes_dropped=dropped - dropped_before,
    )
    assert marked_after <= 2 * INTERVAL + 2, f"TicketStoreAvailable=False {marked_after:.1f}s after the switch"
