"""Postgres: the ticket store, a throwaway cluster in the stack's work directory; and a primary with a streaming
standby, switched over as production switches over (for the tests of Postgres as production runs it).

Setup ``Postgres.start`` (initdb, then the server accepting connections) or ``PostgresPair.start`` (a primary, and a
standby made by ``pg_basebackup -R``); readiness ``ready`` (pg_isready); teardown by whoever owns its processes
(``own``); logs in ``logs/<name>.log``. ``Stack.stop_component``/``start_component`` stop the stack's Postgres and
bring it back on the same port and data.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack.host.processes import ComponentFailed, Process, free_port, log

SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "dynamic_shared_memory_type": "mmap",  # in the data directory: a killed run leaves nothing in /dev/shm
}


def postgres_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise ComponentFailed("Postgres server binaries not found: run `make setup` (installs the postgresql package)")
    return found[-1].parent


def _server_user(workdir: Path, *directories: Path) -> str | None:
    """Postgres refuses to run as root: under root its directories belong to the ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    for directory in directories:
        shutil.chown(directory, "postgres", "postgres")
    os.chmod(workdir, 0o755)
    return "postgres"


@dataclass
class Postgres:
    """A running Postgres; ``dsn`` reaches it over TCP on 127.0.0.1 as the ``postgres`` superuser."""

    dsn: str
    process: Process
    port: int
    data: Path

    @classmethod
    def start(
        cls,
        *,
        workdir: Path,
        bind_host: str,
        trust_subnet: str | None,
        own: Callable[[Process], None],
        name: str = "postgres",
        standby_of: Postgres | None = None,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> Postgres:
        """Listen on 127.0.0.1 and ``bind_host``; ``trust_subnet`` (the node's pods, tests only) may connect too.
        ``standby_of``: a streaming hot standby of that server (a base backup of it, following its WAL). ``tls``: a
        serving certificate and key (PEM): TLS offered to every client, as a managed Postgres does."""
        bindir = postgres_bindir()
        data = workdir / name
        sockets = workdir / f"{name}-sockets"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(mode=0o700)
        sockets.mkdir(exist_ok=True)
        user = _server_user(workdir, data, sockets)
        if standby_of is None:
            argv = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]
        else:  # -R writes standby.signal and primary_conninfo: the copy starts as a standby of its source
            argv = [str(bindir / "pg_basebackup"), "-D", str(data), "-h", "127.0.0.1", "-p", str(standby_of.port)]
            argv += ["-U", "postgres", "-R", "-X", "stream", "--no-sync"]
        subprocess.run(argv, check=True, capture_output=True, user=user)
        if trust_subnet and standby_of is None:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust_subnet} trust\n")
        port = port or free_port()
        listen = ",".join(dict.fromkeys(["127.0.0.1", bind_host]))
        settings = {"listen_addresses": listen, **SERVER_SETTINGS}
        if tls is not None:  # copied into the data directory: Postgres wants its key private to the server's user
            for source, target in zip(tls, ("server.crt", "server.key"), strict=True):
                shutil.copyfile(source, data / target)
                os.chmod(data / target, 0o600)
                if user:
                    shutil.chown(data / target, user, user)
            settings.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        process = Process(name, argv, workdir / "logs" / f"{name}.log", user=user).start()
        own(process)
        postgres = cls(dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres", process=process, port=port, data=data)
        process.wait_until(postgres.ready, 30, "accepting connections")
        return postgres

    def ready(self) -> bool:
        argv = [str(postgres_bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def sql(self, statement: str) -> str:
        """One statement through psql as the superuser; its output, unaligned."""
        argv = [str(postgres_bindir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        argv += ["-d", "postgres", "-tAc", statement]
        return subprocess.run(argv, capture_output=True, check=True, text=True).stdout.strip()

    def in_recovery(self) -> bool:
        return self.sql("SELECT pg_is_in_recovery()") == "t"

    def shut_down_fast(self) -> None:
        """Postgres's fast shutdown (SIGINT), as a switchover does it: sessions are ended (clients read SQLSTATE
        57P01), and the WAL up to the shutdown checkpoint reaches the standby before the server exits."""
        popen = self.process.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGINT)
        popen.wait(timeout=30)


@dataclass
class PostgresPair:
    """A primary and a streaming standby on 127.0.0.1, and ``dsn``: both hosts with
    ``target_session_attrs=read-write``, as a client of a Patroni or CloudNativePG cluster names them."""

    primary: Postgres
    standby: Postgres
    workdir: Path
    own: Callable[[Process], None]

    @classmethod
    def start(cls, *, workdir: Path, own: Callable[[Process], None]) -> PostgresPair:
        primary = Postgres.start(workdir=workdir, bind_host="127.0.0.1", trust_subnet=None, own=own, name="pg-a")
        standby = Postgres.start(
            workdir=workdir, bind_host="127.0.0.1", trust_subnet=None, own=own, name="pg-b", standby_of=primary
        )
        pair = cls(primary, standby, workdir, own)
        standby.process.wait_until(standby.in_recovery, 30, "streaming as a standby")
        return pair

    def dsn(self, database: str = "postgres") -> str:
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in (self.primary, self.standby))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def switchover(self) -> float:
        """The primary shuts down fast and the standby takes over (``promote``). Returns the seconds without a
        writable primary."""
        started = time.monotonic()
        self.primary.shut_down_fast()
        self.promote()
        return time.monotonic() - started

    def promote(self) -> None:
        """The standby becomes the primary, and the old primary (shut down) comes back as the new standby on its
        own port, from a fresh base backup of the new primary: the DSN's first host is then a standby."""
        old, new = self.primary, self.standby
        subprocess.run(
            [str(postgres_bindir() / "pg_ctl"), "promote", "-w", "-D", str(new.data)],
            check=True,
            capture_output=True,
            user=_server_user(self.workdir),
        )
        new.process.wait_until(lambda: not new.in_recovery(), 30, "promoted")
        log(f"Postgres switched over: {new.process.name} is the primary")
        rejoined = Postgres.start(
            workdir=self.workdir,
            bind_host="127.0.0.1",
            trust_subnet=None,
            own=self.own,
            name=old.process.name,
            standby_of=new,
            port=old.port,
        )
        rejoined.process.wait_until(rejoined.in_recovery, 30, "streaming as a standby")
        self.primary, self.standby = new, rejoined
