"""Postgres over TLS with the server verified (``sslmode=verify-full`` and the CA that signed it), as a managed
Postgres is reached: the ticket store works, and a server signed by another CA is refused, said without the DSN."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.host.pki import Pki, make_pki
from devstack.host.processes import Process, stop_all
from devstack.world.postgres import Postgres
from operator_k8s.adapters.ticket_store import PostgresTicketStore, connect
from operator_k8s.ports import TicketStoreUnavailable
from tests.unit.builders import at

pytestmark = pytest.mark.stack


@pytest.fixture
def served() -> Iterator[tuple[Postgres, Pki, Pki]]:
    """A Postgres of its own serving TLS from one CA's certificate for 127.0.0.1, and another CA."""
    workdir = Path(tempfile.mkdtemp(prefix="operator-k8s-pg-tls-", dir="/dev/shm"))
    processes: list[Process] = []
    try:
        pki, other = make_pki(workdir / "pki"), make_pki(workdir / "other-pki")
        postgres = Postgres.start(
            workdir=workdir, bind_host="127.0.0.1", trust_subnet=None, own=processes.append,
            tls=(pki.serving_cert, pki.serving_key),
        )  # fmt: skip
        yield postgres, pki, other
    finally:
        stop_all(processes)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_the_store_verifies_the_server_and_refuses_another_ca(served: tuple[Postgres, Pki, Pki]) -> None:
    postgres, pki, other = served
    dsn = f"{postgres.dsn}?sslmode=verify-full&sslrootcert={pki.ca_cert}"
    verified = PostgresTicketStore(dsn)
    try:
        assert (await verified.sync("uid-1", [], at(0), deadline=5)).tickets == []
    finally:
        await verified.close()
    connection = await connect(dsn)
    try:
        assert await connection.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "not TLS"
    finally:
        await connection.close()
    impostor = PostgresTicketStore(f"{postgres.dsn}?sslmode=verify-full&sslrootcert={other.ca_cert}")
    try:
        with pytest.raises(TicketStoreUnavailable) as refused:
            await impostor.sync("uid-1", [], at(0), deadline=5)
        said = str(refused.value)
        assert "TLS certificate was refused: unable to get local issuer certificate" in said, said
        assert str(other.ca_cert) not in said and "127.0.0.1" not in said, "no part of the DSN is shown"
    finally:
        await impostor.close()
