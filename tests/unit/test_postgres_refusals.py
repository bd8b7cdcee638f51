"""Which Postgres refusals drop a write and which are outages: a closed list, the same in code and in SQL."""

from __future__ import annotations

import re

import asyncpg
import pytest

from operator_k8s.adapters.ticket_store import DROPPABLE_SQLSTATE_CLASSES, migrations, refusal


@pytest.mark.parametrize(
    ("error", "says", "server_state"),
    [
        (asyncpg.ReadOnlySQLTransactionError, "read-only", True),
        (asyncpg.AdminShutdownError, "shutting down", True),
        (asyncpg.CannotConnectNowError, "starting up", True),
        (asyncpg.TooManyConnectionsError, "too many connections", True),
        (asyncpg.DiskFullError, "out of disk", True),
        (asyncpg.ConnectionFailureError, "dropped the connection", True),
        (asyncpg.SerializationError, "serialization failure", False),
        (asyncpg.DeadlockDetectedError, "deadlock", False),
        (asyncpg.LockNotAvailableError, "lock the sync needs", False),
        (asyncpg.QueryCanceledError, "cancelled the statement", False),
        (asyncpg.UndefinedFunctionError, "lacks the operator's schema", True),
        (asyncpg.InsufficientPrivilegeError, "refused the sync", False),
    ],
)
def test_every_refusal_keeps_the_writes_and_says_why(
    error: type[asyncpg.PostgresError], says: str, server_state: bool
) -> None:
    message, opens_breaker = refusal(error("server text"))
    assert says in message and error.sqlstate in message and "retried" in message
    assert opens_breaker is server_state


def test_the_sync_function_drops_exactly_the_closed_list() -> None:
    """The newest definition of sync_cluster_cas catches data and constraint errors per row and nothing else."""
    names = {"22": "data_exception", "23": "integrity_constraint_violation"}
    newest = [m.sql for m in migrations() if "FUNCTION sync_cluster_cas" in m.sql][-1]
    caught = re.findall(r"WHEN ([A-Za-z_ ]+?) THEN", newest)
    assert caught == ["unique_violation", " OR ".join(names[c] for c in DROPPABLE_SQLSTATE_CLASSES)], caught
    assert "WHEN OTHERS" not in newest.upper()
