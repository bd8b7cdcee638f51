"""The delivery queue in Postgres (migration 0006): routing notices to receivers, claiming due deliveries with a
lease, settling them, and the reads Alertmanager's re-sends and ``operator-k8s tickets show`` need.

A claim is a lease (``claimed_until``), taken with ``FOR UPDATE SKIP LOCKED``: two replicas never send one delivery
at once, and a process killed mid-send leaves a lease that simply runs out, so the delivery is sent again under the
same idempotency key (at least once). The lease outlives the send's own deadline. No session state is used, so the
queue works behind PgBouncer in transaction pooling.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from operator_k8s.adapters.ticket_store import connect, ticket_from_row
from operator_k8s.domain.notices import (
    FIRING_KINDS,
    ClaimedDelivery,
    Notice,
    PlannedDelivery,
    QueuedNotice,
    Settled,
)
from operator_k8s.domain.tickets import Ticket

RoutePlan = Callable[[QueuedNotice], list[PlannedDelivery]]
REMOVED_GRACE = timedelta(minutes=10)
"""How long the pending deliveries of a receiver missing from the configuration wait before they end: a rollout's
old and new replicas may hold different configurations meanwhile."""


def _queued(row: Any) -> QueuedNotice:
    body = row["body"]
    return QueuedNotice(
        id=row["notice_id"],
        ticket_id=row["ticket_id"],
        idempotency_key=row["idempotency_key"],
        notice=Notice.from_json(json.loads(body) if isinstance(body, str) else body),
    )


class PostgresDeliveryQueue:
    """The queue over a small pool of its own: a dead receiver's retries never take a connection a check needs."""

    def __init__(self, dsn: Callable[[], str], *, pool_size: int = 2) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def _connect(self, *_: Any, **options: Any) -> asyncpg.Connection:
        return await connect(self._dsn(), **options)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                connect=self._connect, min_size=0, max_size=self._pool_size, timeout=5, command_timeout=10
            )
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One query's rows on a pooled connection."""
        pool = await self._get_pool()
        async with pool.acquire() as connection:
            return list(await connection.fetch(sql, *args))

    async def reset(self) -> None:
        """Drop the pool after a failure (a switchover, a restart): the next call connects anew."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def route(self, plan: RoutePlan, *, limit: int = 200) -> int:
        """Route up to ``limit`` unrouted notices (oldest first) to their receivers; return how many. Rows another
        replica is routing are skipped, not waited for."""
        pool = await self._get_pool()
        async with pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                "SELECT id AS notice_id, ticket_id, idempotency_key, body FROM notices WHERE routed_at IS NULL"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            for row in rows:
                for item in plan(_queued(row)):
                    await connection.execute(
                        "INSERT INTO deliveries (notice_id, receiver, state, created_at, due_at, deferred_by, result,"
                        " finished_at) VALUES ($1, $2, $3, now(), $4, $5, $6,"
                        " CASE WHEN $3 = 'pending' THEN NULL ELSE now() END) ON CONFLICT DO NOTHING",
                        row["notice_id"], item.receiver, item.state, item.due_at, item.deferred_by, item.result,
                    )  # fmt: skip
            if rows:
                await connection.execute(
                    "UPDATE notices SET routed_at = now() WHERE id = ANY($1::bigint[])", [r["notice_id"] for r in rows]
                )
        return len(rows)

    async def deferred(self, *, limit: int = 500) -> list[tuple[int, datetime, QueuedNotice]]:
        """Deliveries waiting for a maintenance window to end: (delivery id, when it is due, its notice)."""
        rows = await self._fetch(
            "SELECT d.id, d.due_at, n.id AS notice_id, n.ticket_id, n.idempotency_key, n.body FROM deliveries d"
            " JOIN notices n ON n.id = d.notice_id WHERE d.state = 'pending' AND d.deferred_by IS NOT NULL"
            " AND d.due_at > now() ORDER BY d.id LIMIT $1",
            limit,
        )
        return [(row["id"], row["due_at"], _queued(row)) for row in rows]

    async def reschedule(self, due: Sequence[tuple[int, datetime]]) -> None:
        """Move deferred deliveries to a new due time (their window was shortened or deleted)."""
        pool = await self._get_pool()
        async with pool.acquire() as connection:
            await connection.executemany(
                "UPDATE deliveries SET due_at = $2 WHERE id = $1 AND state = 'pending'", list(due)
            )

    async def claim(self, receiver: str, owner: str, lease: timedelta, *, limit: int) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries of ``receiver``: per ticket only the oldest pending one, so a
        receiver hears a ticket's transitions in order. ``attempts`` is counted at the claim, so a delivery that
        kills its sender still reaches its bound."""
        rows = await self._fetch(
            """
            WITH due AS (
                SELECT d.id FROM deliveries d JOIN notices n ON n.id = d.notice_id
                 WHERE d.receiver = $1 AND d.state = 'pending' AND d.due_at <= now()
                   AND (d.claimed_until IS NULL OR d.claimed_until < now())
                   AND NOT EXISTS (
                       SELECT 1 FROM deliveries e JOIN notices m ON m.id = e.notice_id
                        WHERE e.receiver = d.receiver AND e.state = 'pending' AND m.ticket_id = n.ticket_id
                          AND m.id < n.id)
                   AND NOT EXISTS (  -- an earlier notice another replica is still routing
                       SELECT 1 FROM notices u WHERE u.ticket_id = n.ticket_id AND u.id < n.id
                          AND u.routed_at IS NULL)
                 ORDER BY d.due_at, d.id LIMIT $4
                   FOR UPDATE OF d SKIP LOCKED)
            UPDATE deliveries d SET claimed_by = $2, claimed_until = now() + $3, attempts = d.attempts + 1
              FROM due, notices n, tickets t
             WHERE d.id = due.id AND n.id = d.notice_id AND t.id = n.ticket_id
            RETURNING d.id, d.receiver, d.attempts, d.created_at, d.deferred_by, n.id AS notice_id, n.ticket_id,
                      n.idempotency_key, n.body, t.state <> 'resolved' AND t.state <> 'pending' AS ticket_active,
                      EXISTS (SELECT 1 FROM deliveries f JOIN notices o ON o.id = f.notice_id
                               WHERE f.receiver = d.receiver AND f.state = 'delivered' AND o.ticket_id = n.ticket_id
                                 AND o.kind = ANY($5::text[])) AS told_firing,
                      t.cause_id,
                      (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', x.id, 'invariant', x.invariant,
                                                                    'store', x.store, 'message', left(x.message, 512),
                                                                    'countedStores', x.counted_stores) ORDER BY x.id),
                                       '[]'::jsonb)
                         FROM tickets x WHERE x.cause_id = t.id AND x.state <> 'resolved') AS explains
            """,
            receiver, owner, lease, limit, sorted(FIRING_KINDS),
        )  # fmt: skip
        return [
            ClaimedDelivery(
                id=row["id"],
                receiver=row["receiver"],
                attempts=row["attempts"],
                created_at=row["created_at"],
                deferred_by=row["deferred_by"],
                queued=_queued(row),
                ticket_active=row["ticket_active"],
                told_firing=row["told_firing"],
                cause_id=row["cause_id"],
                explains=tuple(json.loads(row["explains"]) if isinstance(row["explains"], str) else row["explains"]),
            )
            for row in rows
        ]

    async def settle(self, delivery_id: int, owner: str, settled: Settled) -> bool:
        """Record an attempt's outcome; False if the lease was lost meanwhile (another replica took it over)."""
        pool = await self._get_pool()
        async with pool.acquire() as connection:
            status = await connection.execute(
                "UPDATE deliveries SET state = $3, result = $4, due_at = COALESCE($5, due_at), claimed_by = NULL,"
                " claimed_until = NULL, finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END"
                " WHERE id = $1 AND claimed_by = $2",
                delivery_id, owner, settled.state, settled.result[:1000], settled.due_at,
            )  # fmt: skip
        return bool(status.endswith(" 1"))

    async def disabled(self) -> dict[str, str]:
        """Receivers disabled by a 410: name → the endpoint digest it was disabled for."""
        rows = await self._fetch("SELECT receiver, url_digest FROM disabled_receivers")
        return {row["receiver"]: row["url_digest"] for row in rows}

    async def disable(self, receiver: str, digest: str, reason: str) -> int:
        """Disable a receiver's endpoint (it answered 410 Gone) and end its pending deliveries; return how many."""
        pool = await self._get_pool()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "INSERT INTO disabled_receivers (receiver, url_digest, disabled_at, reason) VALUES ($1, $2, now(), $3)"
                " ON CONFLICT DO NOTHING",
                receiver, digest, reason,
            )  # fmt: skip
            status = await connection.execute(
                "UPDATE deliveries SET state = 'dead', result = $2, finished_at = now(), claimed_by = NULL,"
                " claimed_until = NULL WHERE receiver = $1 AND state = 'pending'",
                receiver, f"receiver disabled: {reason}",
            )  # fmt: skip
        return int(status.rsplit(" ", 1)[-1])

    async def open_tickets(self) -> list[Ticket]:
        """Every open ticket, and every flapping one (it fires until it stops flapping): Alertmanager is told each
        one again every resend interval."""
        rows = await self._fetch(
            "SELECT * FROM tickets WHERE (state <> 'resolved' AND state <> 'pending' AND opened_at IS NOT NULL)"
            " OR flapping"
        )
        return [ticket_from_row(dict(row)) for row in rows]

    async def told_firing(self, receiver: str) -> set[int]:
        """The unresolved tickets whose firing (an opening, reopening, escalation or flapping) reached ``receiver``:
        Alertmanager knows them, so they keep firing through any window (no resolution it did not have)."""
        rows = await self._fetch(
            "SELECT DISTINCT n.ticket_id FROM notices n JOIN deliveries d ON d.notice_id = n.id"
            " JOIN tickets t ON t.id = n.ticket_id WHERE d.receiver = $1 AND d.state = 'delivered'"
            " AND n.kind = ANY($2::text[]) AND t.state <> 'resolved'",
            receiver, sorted(FIRING_KINDS),
        )  # fmt: skip
        return {int(row["ticket_id"]) for row in rows}

    async def recent_endings(self, receiver: str, since: datetime) -> list[QueuedNotice]:
        """Resolutions and escalations routed to ``receiver`` since ``since`` (their alerts are sent as resolved
        again for a while, as Prometheus does)."""
        rows = await self._fetch(
            "SELECT n.id AS notice_id, n.ticket_id, n.idempotency_key, n.body FROM notices n"
            " JOIN deliveries d ON d.notice_id = n.id"
            " WHERE d.receiver = $1 AND n.at >= $2 AND n.kind IN ('resolved', 'escalated', 'flapping_stopped')"
            " AND d.state IN ('pending', 'delivered') AND d.deferred_by IS NULL ORDER BY n.id",
            receiver, since,
        )  # fmt: skip
        return [_queued(row) for row in rows]

    async def prune(self, older_than: timedelta, receivers: Sequence[str]) -> int:
        """Delete finished deliveries, and notices none of whose deliveries is pending, older than the retention;
        end the pending deliveries of a receiver no longer configured (after ``REMOVED_GRACE``: a rollout's replicas
        may differ for a while). The queue holds what is in flight and a bounded history, whatever a receiver does."""
        pool = await self._get_pool()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "UPDATE deliveries SET state = 'dead', result = 'receiver removed from the configuration',"
                " finished_at = now(), claimed_by = NULL, claimed_until = NULL"
                " WHERE state = 'pending' AND receiver <> ALL($1::text[]) AND created_at < now() - $2::interval",
                list(receivers), REMOVED_GRACE,
            )  # fmt: skip
            status = await connection.execute(
                "DELETE FROM deliveries WHERE state <> 'pending' AND finished_at < now() - $1::interval", older_than
            )
            await connection.execute(
                "DELETE FROM notices n WHERE n.at < now() - $1::interval AND n.routed_at IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notice_id = n.id AND d.state = 'pending')",
                older_than,
            )
        return int(status.rsplit(" ", 1)[-1])

    async def pending(self) -> dict[str, int]:
        """Pending deliveries per receiver: the queue's depth."""
        rows = await self._fetch(
            "SELECT receiver, count(*) AS pending FROM deliveries WHERE state = 'pending' GROUP BY receiver"
        )
        return {row["receiver"]: row["pending"] for row in rows}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
