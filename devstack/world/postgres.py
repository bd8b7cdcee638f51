"""Postgres: the ticket store, a throwaway cluster in the stack's work directory.

Setup ``Postgres.start`` (initdb, then the server accepting connections); readiness ``ready`` (pg_isready); teardown
by whoever owns its process (``own``); logs in ``logs/postgres.log``. ``Stack.stop_component``/``start_component``
stop it and bring it back on the same port and data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack.host.processes import ComponentFailed, Process, free_port


def postgres_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise ComponentFailed("Postgres server binaries not found: run `make setup` (installs the postgresql package)")
    return found[-1].parent


@dataclass
class Postgres:
    """A running Postgres; ``dsn`` reaches it over TCP on 127.0.0.1 as the ``postgres`` superuser."""

    dsn: str
    process: Process

    @classmethod
    def start(
        cls, *, workdir: Path, bind_host: str, trust_subnet: str | None, own: Callable[[Process], None]
    ) -> Postgres:
        """Listen on 127.0.0.1 and ``bind_host``; ``trust_subnet`` (the node's pods, tests only) may connect too."""
        bindir = postgres_bindir()
        data = workdir / "postgres"
        sockets = workdir / "postgres-sockets"
        data.mkdir()
        sockets.mkdir()
        user = "postgres" if os.geteuid() == 0 else None
        if user:
            shutil.chown(data, user, user)
            shutil.chown(sockets, user, user)
            os.chmod(workdir, 0o755)
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=user,
        )
        if trust_subnet:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust_subnet} trust\n")
        port = free_port()
        process = Process(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                f"listen_addresses={','.join(dict.fromkeys(['127.0.0.1', bind_host]))}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "dynamic_shared_memory_type=mmap",  # in the data directory: a killed run leaves nothing in /dev/shm
            ],
            workdir / "logs" / "postgres.log",
            user=user,
        ).start()
        own(process)
        postgres = cls(dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres", process=process)
        process.wait_until(postgres.ready, 30, "accepting connections")
        return postgres

    def ready(self) -> bool:
        port = self.dsn.rsplit(":", 1)[1].split("/")[0]
        argv = [str(postgres_bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", port, "-U", "postgres"]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
