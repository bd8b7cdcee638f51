"""Postgres as the ticket system of record, through asyncpg: versioned migrations and one round trip per cycle."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from operator_k8s.domain.ledger import SyncResult
from operator_k8s.domain.outbox import TicketWrite
from operator_k8s.domain.tickets import Ticket, TicketKey, TicketState, json_number
from operator_k8s.domain.vocabulary import Severity
from operator_k8s.ports import TicketStoreUnavailable

log = logging.getLogger("operator_k8s.ticket_store")
T = TypeVar("T")

MIGRATION_LOCK = 7_418_203  # pg_advisory_xact_lock key: one operator applies a migration at a time
UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,  # a session ended under a call (a switchover's terminated backends)
    TimeoutError,
)


DROPPABLE_SQLSTATE_CLASSES = ("22", "23")
"""The closed list of refusals that drop a write: a data exception (a value out of range, a malformed time) or a
constraint the data breaks can never succeed, however often it is sent. ``sync_cluster_cas`` catches exactly these
per row (migration 0004); any other refusal is the server's state and aborts the call, so the writes stay queued."""

SERVER_STATE_REFUSALS = {
    "25006": "Postgres refuses writes as read-only (a standby behind the DSN, or a switchover in progress)",
    "57P01": "Postgres is shutting down (an administrator's shutdown or a failover)",
    "57P02": "Postgres is recovering from a crash",
    "57P03": "Postgres is starting up or in recovery and accepts no connections yet",
    "53300": "Postgres has no connection to spare (too many connections)",
    "53100": "Postgres is out of disk space",
    "53200": "Postgres is out of memory",
    "42883": "Postgres lacks the operator's schema (a new or restored database): the next connection migrates it",
    "42P01": "Postgres lacks the operator's schema (a new or restored database): the next connection migrates it",
}
"""Refusals that say Postgres itself cannot take writes now: the breaker opens and the pool is rebuilt, so a DSN
naming several hosts (``target_session_attrs=read-write``) finds the new primary on the next connection."""

TRANSIENT_REFUSALS = {
    "40": "Postgres aborted the transaction (a serialization failure or deadlock)",
    "55P03": "a lock the sync needs is held elsewhere past the call's deadline (a long ALTER, VACUUM FULL, an open "
    "transaction)",
    "57014": "Postgres cancelled the statement (statement_timeout, or an administrator)",
}
"""Refusals of one call that a later attempt may pass (by SQLSTATE class or code): the writes stay queued and the
breaker stays closed, so other clusters go on. A SQLSTATE in none of these lists fails its call alone too."""

LOCK_TIMEOUT_SHARE = 0.8
"""The part of a call's deadline the sync may wait for locks on the server (``sync_cluster_within``): it ends there
before the operator gives up on it, so nothing it started stays behind."""

PROBE_SECONDS = 0.75
"""How long a fresh connection may take to answer ``SELECT 1`` after a call missed its deadline: it tells a slow
call (Postgres answers the probe) from an unreachable Postgres (it does not)."""


def unreachable(error: BaseException) -> str:
    """Why Postgres could not be reached, for a condition: a refused TLS certificate says what to fix."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or str(error)
        return f"Postgres's TLS certificate was refused: {detail} (the DSN's sslrootcert names the CA that signed it)"
    return f"Postgres unreachable: {type(error).__name__}"


def refusal(error: asyncpg.PostgresError) -> tuple[str, bool]:
    """What a refused call means, said for a condition, and whether it is Postgres's own state (open the breaker)
    rather than one transaction's bad luck. The message names the SQLSTATE, never the DSN."""
    code = str(error.sqlstate or "")
    name = f"{type(error).__name__} ({code})"
    if code in SERVER_STATE_REFUSALS:
        return f"{SERVER_STATE_REFUSALS[code]}: {name}; writes wait and are retried", True
    if code.startswith("08"):
        return f"Postgres dropped the connection: {name}; writes wait and are retried", True
    transient = TRANSIENT_REFUSALS.get(code) or TRANSIENT_REFUSALS.get(code[:2])
    if transient is not None:
        return f"{transient}: {name}; writes wait and are retried", False
    return f"Postgres refused the sync: {name}; writes wait and are retried", False


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The versioned migrations shipped in ``adapters/sql``, in order (``NNNN_name.sql``)."""
    found = []
    for entry in resources.files("operator_k8s.adapters").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append(Migration(version, entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def applied_versions(connection: Any) -> set[int]:
    """The migrations this database has, read without writing anything (a standby or a read-only server answers)."""
    if not await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return set()
    return {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}


async def migrate(connection: Any, *, target: int | None = None) -> list[int]:
    """Apply the migrations not yet applied (up to ``target``); return the versions applied now. A database that
    has them all is only read: a pool rebuilt while Postgres is read-only (a switchover) connects without a write.

    Each migration is one transaction holding a transaction-scoped advisory lock, so replicas starting together
    apply each once, also behind PgBouncer in transaction pooling (where a session lock would be taken on one server
    session and released on another)."""
    wanted = [m for m in migrations() if target is None or m.version <= target]
    if {m.version for m in wanted} <= await applied_versions(connection):
        return []
    applied = []
    for migration in wanted:
        async with connection.transaction():
            await connection.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            if migration.version in await applied_versions(connection):
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO schema_migrations (version, name) VALUES ({migration.version}, '{migration.name}')"
            )
        applied.append(migration.version)
        log.info("Applied migration", extra={"version": migration.version, "migration": migration.name})
    return applied


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _finite(value: Any) -> Any:
    """JSON Postgres accepts: non-finite numbers become Prometheus's text for them, and NUL characters (which jsonb
    refuses for the whole payload, so for every write of the cycle) become U+FFFD."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _write_json(write: TicketWrite) -> dict[str, Any]:
    ticket = write.after or write.before
    assert ticket is not None
    body: dict[str, Any] = _finite(
        {
            "expected": write.expected_version,
            "delete": write.after is None,
            "ticket": {
                "id": ticket.id,
                "namespace": ticket.namespace,
                "cluster_name": ticket.cluster_name,
                "invariant": ticket.key.invariant,
                "store": ticket.key.store,
                "state": ticket.state.value,
                "severity": ticket.severity.value,
                "message": ticket.message,
                "occurrences": ticket.occurrences,
                "first_seen": _time(ticket.first_seen),
                "last_seen": _time(ticket.last_seen),
                "violating_since": _time(ticket.violating_since),
                "clearing_since": _time(ticket.clearing_since),
                "opened_at": _time(ticket.opened_at),
                "resolved_at": _time(ticket.resolved_at),
                "hold": ticket.hold,
                "acknowledged": ticket.acknowledged,
                "note": ticket.note,
                "snapshot": ticket.snapshot,
                "flapping": ticket.flapping,
                "flap_changes": [_time(at) for at in ticket.flap_changes],
                "cluster_labels": ticket.cluster_labels,
            },
            "events": [
                {
                    "at": _time(at),
                    "kind": effect.kind.value,
                    "from_state": effect.from_state.value if effect.from_state else None,
                    "to_state": effect.to_state.value if effect.to_state else None,
                    "actor": effect.actor,
                    "reason": effect.reason,
                    "notice": effect.notice.to_json() if effect.notice is not None else None,
                }
                for at, effect in write.history
            ],
        }
    )
    return body


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _json_object(value: Any) -> dict[str, Any] | None:
    """A jsonb column as a dict (asyncpg gives its text; ``to_jsonb`` its value), None when unset."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else None


def ticket_from_row(row: dict[str, Any]) -> Ticket:
    """A Ticket from a ``tickets`` row (as a record or as ``to_jsonb``)."""

    def when(name: str) -> datetime | None:
        value = row.get(name)
        return _parse_time(value) if isinstance(value, str) else value

    snapshot = row.get("snapshot") or {}
    labels = row.get("cluster_labels") or {}
    first_seen, last_seen = when("first_seen"), when("last_seen")
    assert first_seen is not None
    assert last_seen is not None
    return Ticket(
        key=TicketKey(row["cluster_uid"], row["invariant"], row["store"]),
        namespace=row["namespace"],
        cluster_name=row["cluster_name"],
        state=TicketState(row["state"]),
        severity=Severity(row["severity"]),
        message=row["message"],
        first_seen=first_seen,
        last_seen=last_seen,
        occurrences=row["occurrences"],
        violating_since=when("violating_since"),
        clearing_since=when("clearing_since"),
        opened_at=when("opened_at"),
        resolved_at=when("resolved_at"),
        hold=row["hold"],
        acknowledged=row["acknowledged"],
        note=row.get("note"),
        snapshot=json.loads(snapshot) if isinstance(snapshot, str) else dict(snapshot),
        cluster_labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
        id=row["id"],
        version=row.get("version", 1),
        flapping=row.get("flapping", False),
        last_notification=row.get("last_notification"),
        evidence_summary=row.get("evidence_summary"),
        diagnosis=row.get("diagnosis"),
        cause_id=row.get("cause_id"),
        counted_stores=_json_object(row.get("counted_stores")),
        flap_changes=tuple(
            datetime.fromisoformat(at) if isinstance(at, str) else at for at in row.get("flap_changes") or ()
        ),
    )


async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
    """A connection with no prepared-statement cache: behind PgBouncer in transaction pooling the next transaction
    may run on another server session, where a named statement does not exist (measured: 0.1 ms more per call on
    loopback). Every connection of the operator and its CLI is made here."""
    return await asyncpg.connect(dsn, statement_cache_size=0, **options)


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve an abandoned task's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _keep_session(connection: Any) -> None:
    """Skip asyncpg's reset on release: it is a second round trip per cycle, and our sessions never change state
    (no SET, no LISTEN; the migration's advisory lock is released explicitly)."""


class PostgresTicketStore:
    """The TicketStore port over an asyncpg pool, with a deadline on every call and a circuit breaker.

    A Postgres that hangs (frozen, partitioned) must not hold every cycle for its deadline: after one call times out
    or fails, the store counts as down and other calls fail at once, while one call at a time probes it again every
    ``probe_every`` seconds. A timed-out pool is terminated (its connections may be stuck mid-query) and rebuilt.
    """

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        pool_size: int = 4,
        probe_every: float = 2.0,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._dsn = dsn if callable(dsn) else (lambda: dsn)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._observe = observe
        self._probe_every = probe_every
        self._down: str | None = None
        self._probe: asyncio.Future[str | None] | None = None
        self._next_probe = 0.0
        self.round_trips = 0

    @property
    def available(self) -> bool:
        return self._down is None

    async def _ensure_pool(self) -> asyncpg.Pool:
        """One pool per process, migrated once: cycles that start together while Postgres is away wait for it.
        A Postgres that answers but refuses (a wrong password, a missing database, a migration it rejects) is
        unavailable in its own words, so the condition on every cluster says what to fix."""
        async with self._pool_lock:
            if self._pool is None:
                pool = None
                phase = "connection"
                try:
                    pool = await asyncpg.create_pool(
                        connect=self._connect,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=5,
                        command_timeout=None,  # the store's own deadlines, which close a connection, never cancel
                        reset=_keep_session,
                    )
                    phase = "schema migration"
                    async with pool.acquire() as connection:
                        await migrate(connection)
                except BaseException as error:
                    if pool is not None:
                        pool.terminate()
                    if isinstance(error, asyncpg.PostgresError) and not isinstance(error, UNAVAILABLE):
                        if error.sqlstate in SERVER_STATE_REFUSALS:
                            raise self._trip(refusal(error)[0]) from None
                        reason = f"{type(error).__name__} ({error.sqlstate}): {error}"
                        raise self._trip(f"Postgres refused the {phase}: {reason}") from None
                    raise
                self._pool = pool
            return self._pool

    async def _connect(self, *_: Any, **options: Any) -> asyncpg.Connection:
        """A new pooled connection from the DSN as it is now: a password rotated in the mounted Secret is used by
        the next connection, without a restart (the pool is rebuilt when Postgres refuses the old one)."""
        return await connect(self._dsn(), **options)

    def _admit(self) -> None:
        """Fail at once while Postgres is down, except for one probe every ``probe_every`` seconds."""
        if self._down is None:
            return
        now = time.monotonic()
        if now < self._next_probe:
            raise TicketStoreUnavailable(self._down)
        self._next_probe = now + self._probe_every

    def _trip(self, reason: str) -> TicketStoreUnavailable:
        if self._down is None:
            log.warning("Marked the ticket store unavailable", extra={"error": reason})
        self._down = reason
        self._next_probe = time.monotonic() + self._probe_every
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        return TicketStoreUnavailable(reason)

    async def _within(self, deadline: float, call: Coroutine[Any, Any, T], held: list[Any] | None = None) -> T:
        """``call``'s result, or TimeoutError at the deadline sharp. The call runs as a task of its own; at the
        deadline the connections it ``held`` are closed under it (it then ends with an error, left behind), and only
        a call that holds none yet is cancelled. Never a cancel request: asyncpg answers a cancellation of a running
        query with one and waits for it, which a hung server never answers, and PgBouncer 1.18 crashes on one that
        arrives as its client disconnects (FATAL "bad client state", seen on the real stack)."""
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({task}, timeout=deadline)
        if task in done:
            return task.result()
        if held:
            for connection in held:
                connection.terminate()
        else:
            task.cancel()
        task.add_done_callback(_consume)
        raise TimeoutError

    async def _missed_deadline(self, deadline: float) -> TicketStoreUnavailable:
        """One call missed its deadline: the breaker opens only if Postgres itself does not answer a probe on a
        fresh connection. A slow call (a cluster with many writes) fails alone and its writes wait. Calls that miss
        their deadlines together share one probe (a hundred timeouts must not open a hundred connections)."""
        message = f"Postgres did not answer within {deadline:g}s"
        if self._down is not None:
            return self._trip(message)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_once())
        failure = await asyncio.shield(self._probe)
        if failure is not None:
            return self._trip(failure or message)
        return TicketStoreUnavailable(f"{message} (Postgres answers: this call was slow, the others go on)")

    async def _probe_once(self) -> str | None:
        """None if Postgres answers ``SELECT 1`` on a fresh connection within ``PROBE_SECONDS``; else why not, in
        Postgres's words when it refused (too many connections), or "" when it did not answer."""

        async def probe() -> None:
            connection = await connect(self._dsn(), timeout=PROBE_SECONDS)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close(timeout=PROBE_SECONDS)

        try:
            await self._within(PROBE_SECONDS, probe())
        except asyncpg.PostgresError as error:
            return refusal(error)[0]
        except UNAVAILABLE:
            return ""
        return None

    async def start(self, deadline: float = 10.0) -> None:
        """Connect and migrate; raises TicketStoreUnavailable if Postgres does not answer or refuses: either way the
        operator starts, says why on every cluster and retries."""
        try:
            await self._within(deadline, self._ensure_pool())
        except TimeoutError:
            raise self._trip(f"Postgres did not answer within {deadline:g}s") from None
        except UNAVAILABLE as error:
            raise self._trip(unreachable(error)) from None

    async def sync(
        self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime, *, deadline: float
    ) -> SyncResult:
        self._admit()
        payload = json.dumps([_write_json(w) for w in writes], allow_nan=False)
        started = time.monotonic()

        held: list[Any] = []  # the pooled connection in use, to close at the deadline

        async def round_trip() -> Any:
            pool = await self._ensure_pool()
            self.round_trips += 1
            async with pool.acquire() as connection:
                held.append(connection)
                sql = "SELECT sync_cluster_within($1, $2::jsonb, $3, $4)"
                left = deadline - (time.monotonic() - started)  # waiting for a pooled connection counts too
                lock_timeout = int(max(left, 0.001) * LOCK_TIMEOUT_SHARE * 1000)
                return await connection.fetchval(sql, cluster_uid, payload, horizon, lock_timeout)

        try:
            result = await self._guarded(deadline, round_trip(), held)
        finally:
            if self._observe is not None:
                self._observe(time.monotonic() - started)
        if self._down is not None:
            log.info("Ticket store answered again", extra={"was": self._down})
            self._down = None
        body = json.loads(result)
        return SyncResult(
            tickets=[ticket_from_row(row) for row in body["tickets"]],
            conflicts=frozenset(int(position) for position in body["conflicts"]),
            rejected=tuple(str(reason) for reason in body["rejected"]),
        )

    async def store_evidence(
        self, ticket_id: int, evidence: dict[str, Any], findings: Sequence[dict[str, str]], summary: str,
        diagnosis: str | None, *, deadline: float,
    ) -> None:  # fmt: skip
        """Keep the latest evidence of a ticket and what the rules found in it (one row per ticket)."""
        self._admit()
        held: list[Any] = []

        async def write() -> None:
            pool = await self._ensure_pool()
            async with pool.acquire() as connection:
                held.append(connection)
                await connection.execute(
                    "INSERT INTO ticket_evidence (ticket_id, gathered_at, evidence, findings, summary, diagnosis)"
                    " VALUES ($1, now(), $2::jsonb, $3::jsonb, $4, $5) ON CONFLICT (ticket_id) DO UPDATE SET"
                    " gathered_at = now(), evidence = $2::jsonb, findings = $3::jsonb, summary = $4, diagnosis = $5",
                    ticket_id, json.dumps(_finite(evidence)), json.dumps(list(findings)), summary, diagnosis,
                )  # fmt: skip

        await self._guarded(deadline, write(), held)

    async def store_incidents(
        self, counted: Mapping[int, dict[str, list[str]]], links: Mapping[int, int | None], *, deadline: float
    ) -> None:
        """Keep the stores cluster-level PD tickets count and which ticket explains which, in one transaction.
        Idempotent: derived facts, decided again every cycle, outside the tickets' versions."""
        self._admit()
        held: list[Any] = []

        async def write() -> None:
            pool = await self._ensure_pool()
            async with pool.acquire() as connection, connection.transaction():
                held.append(connection)
                for ticket_id, stores in counted.items():
                    await connection.execute(
                        "UPDATE tickets SET counted_stores = $2::jsonb WHERE id = $1", ticket_id, json.dumps(stores)
                    )
                for ticket_id, cause in links.items():
                    await connection.execute("UPDATE tickets SET cause_id = $2 WHERE id = $1", ticket_id, cause)

        await self._guarded(deadline, write(), held)

    async def _guarded(self, deadline: float, call: Coroutine[Any, Any, T], held: list[Any]) -> T:
        """``call`` within ``deadline``, every failure as TicketStoreUnavailable in the words a condition shows: a
        missed deadline probes Postgres, an unreachable or refusing Postgres opens the breaker, a refusal of this
        call alone does not."""
        try:
            return await self._within(deadline, call, held)
        except TimeoutError:
            raise await self._missed_deadline(deadline) from None
        except UNAVAILABLE as error:
            raise self._trip(unreachable(error)) from None
        except asyncpg.PostgresError as error:
            message, server_state = refusal(error)
            raise (self._trip(message) if server_state else TicketStoreUnavailable(message)) from None

    async def cluster_uids(self, namespaces: Sequence[str] | None) -> dict[str, str]:
        """Clusters with unresolved tickets (uid → namespace), in ``namespaces`` (None: all), for the orphan sweep."""
        self._admit()

        held: list[Any] = []  # the pooled connection in use, to close at the deadline

        async def query() -> Any:
            pool = await self._ensure_pool()
            async with pool.acquire() as connection:
                held.append(connection)
                return await connection.fetch(
                    "SELECT DISTINCT cluster_uid, namespace FROM tickets WHERE state <> 'resolved'"
                    " AND ($1::text[] IS NULL OR namespace = ANY($1))",
                    list(namespaces) if namespaces is not None else None,
                )

        try:
            rows = await self._within(10, query(), held)
        except TimeoutError:
            raise self._trip("Postgres did not answer within 10s") from None
        except UNAVAILABLE as error:
            raise self._trip(unreachable(error)) from None
        return {row["cluster_uid"]: row["namespace"] for row in rows}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


@dataclass(frozen=True)
class TicketFilter:
    """What ``operator-k8s tickets list`` narrows by; None means any."""

    namespace: str | None = None
    cluster: str | None = None
    invariant: str | None = None
    state: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


@dataclass(frozen=True)
class TicketHistoryEntry:
    at: datetime
    kind: str
    from_state: str | None
    to_state: str | None
    actor: str
    reason: str


@dataclass(frozen=True)
class DeliveryRecord:
    """One line of "who was told what, when, with which result"."""

    receiver: str
    kind: str
    idempotency_key: str
    state: str
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    result: str | None


@dataclass(frozen=True)
class TicketRecord:
    ticket: Ticket
    events: list[TicketHistoryEntry]
    deliveries: list[DeliveryRecord]
    findings: list[dict[str, str]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    explains: list[int] = field(default_factory=list)
    """The tickets whose cause this ticket is (one incident)."""


class TicketHistory:
    """The read side for humans: every ticket ever recorded, with its events (resolved ones included)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    async def _connect(self) -> Any:
        try:
            return await connect(self._dsn, timeout=5)
        except (*UNAVAILABLE, asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as error:
            raise TicketStoreUnavailable(f"Postgres unreachable: {type(error).__name__}: {error}") from None

    async def find(self, where: TicketFilter) -> list[Ticket]:
        """Tickets last seen within the range, newest first."""
        connection = await self._connect()
        try:
            rows = await connection.fetch(
                """
                SELECT * FROM tickets
                 WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR cluster_name = $2)
                   AND ($3::text IS NULL OR invariant = $3) AND ($4::text IS NULL OR state = $4)
                   AND ($5::timestamptz IS NULL OR last_seen >= $5) AND ($6::timestamptz IS NULL OR first_seen <= $6)
                 ORDER BY last_seen DESC, id DESC
                 LIMIT $7
                """,
                where.namespace, where.cluster, where.invariant, where.state, where.since, where.until, where.limit,
            )  # fmt: skip
        finally:
            await connection.close()
        return [ticket_from_row(dict(row)) for row in rows]

    async def show(self, ticket_id: int) -> TicketRecord | None:
        """The ticket, its history, and who was told of it (each delivery of each notice, oldest first)."""
        connection = await self._connect()
        try:
            row = await connection.fetchrow("SELECT * FROM tickets WHERE id = $1", ticket_id)
            if row is None:
                return None
            events = await connection.fetch(
                "SELECT at, kind, from_state, to_state, actor, reason FROM ticket_events WHERE ticket_id = $1"
                " ORDER BY at, id",
                ticket_id,
            )
            gathered = await connection.fetchrow(
                "SELECT evidence, findings FROM ticket_evidence WHERE ticket_id = $1", ticket_id
            )
            deliveries = await connection.fetch(
                "SELECT d.receiver, n.kind, n.idempotency_key, d.state, d.attempts, d.created_at, d.finished_at,"
                " d.result FROM deliveries d JOIN notices n ON n.id = d.notice_id WHERE n.ticket_id = $1"
                " ORDER BY n.id, d.receiver",
                ticket_id,
            )
            explained = await connection.fetch("SELECT id FROM tickets WHERE cause_id = $1 ORDER BY id", ticket_id)
        finally:
            await connection.close()
        return TicketRecord(
            ticket_from_row(dict(row)),
            [TicketHistoryEntry(**dict(e)) for e in events],
            [DeliveryRecord(**dict(d)) for d in deliveries],
            json.loads(gathered["findings"]) if gathered else [],
            json.loads(gathered["evidence"]) if gathered else {},
            [r["id"] for r in explained],
        )
