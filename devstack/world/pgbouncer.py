"""PgBouncer in transaction pooling in front of a Postgres: what many production set-ups put between an application
and its database. A server session serves one transaction of one client, then another client's: nothing a client
leaves on a session (a prepared statement, a SET, a session advisory lock) is there for its next transaction.

Setup ``PgBouncer.start`` (a config of its own in the work directory, Debian's ``pgbouncer`` binary, run as the
``postgres`` user when the stack runs as root: PgBouncer refuses root); readiness ``ready`` (a query through it);
teardown by whoever owns its process (``own``); logs in ``logs/pgbouncer.log``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack.host.processes import ComponentFailed, Process, free_port
from devstack.world.postgres import postgres_bindir

BINARY = Path("/usr/sbin/pgbouncer")


@dataclass
class PgBouncer:
    """A running PgBouncer; ``dsn(database)`` reaches ``database`` of the Postgres behind it."""

    port: int
    process: Process

    @classmethod
    def start(
        cls, *, workdir: Path, postgres_port: int, own: Callable[[Process], None], bind_host: str = "127.0.0.1"
    ) -> PgBouncer:
        """``bind_host``: also listen there (the bridge address in node mode, so the node's pods connect as the host's
        operators do)."""
        if not BINARY.exists():
            raise ComponentFailed("PgBouncer not found: run `make setup` (installs the pgbouncer package)")
        home = workdir / "pgbouncer"
        home.mkdir()
        port = free_port()
        (home / "userlist.txt").write_text('"postgres" ""\n')
        (home / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={postgres_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {','.join(dict.fromkeys(['127.0.0.1', bind_host]))}\nlisten_port = {port}\n"
            "unix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {home / 'userlist.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            shutil.chown(home, user, user)
            for path in home.iterdir():
                shutil.chown(path, user, user)
            os.chmod(workdir, 0o755)
        process = Process(
            "pgbouncer", [str(BINARY), str(home / "pgbouncer.ini")], workdir / "logs" / "pgbouncer.log", user=user
        ).start()
        own(process)
        bouncer = cls(port=port, process=process)
        process.wait_until(bouncer.ready, 30, "passing queries to Postgres")
        return bouncer

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def ready(self) -> bool:
        argv = [str(postgres_bindir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        argv += ["-d", "postgres", "-tAc", "SELECT 1"]
        return subprocess.run(argv, capture_output=True, check=False, text=True).stdout.strip() == "1"
