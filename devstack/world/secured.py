"""Prometheus set-ups that demand credentials, for testing the operator's authentication against the real thing.

- A Prometheus behind its own ``--web.config.file``: TLS with a certificate from its own CA, and basic auth (a bcrypt
  hash, as Prometheus requires). It scrapes itself over the same TLS and basic auth, so it has data.
- A gateway in front of a plain Prometheus that behaves like a multi-tenant Mimir or Thanos gateway: every request
  needs ``Authorization: Bearer <token>`` (the token is read from a file on each request, so a test can rotate it)
  and ``X-Scope-OrgID: <tenant>``; the rest is proxied. It counts what it accepted and refused (``/gateway/stats``),
  so a test can prove what reached it and what never did.

Every process is started on a free 127.0.0.1 port and stopped by pid. ``python -m devstack.world.secured gateway ...``
is the gateway's own entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import json
import os
import secrets
import shutil
import ssl
import sys
import tempfile
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import ClientSession, ClientTimeout, web

from devstack.host.paths import REPO_ROOT
from devstack.host.pki import Pki, make_pki
from devstack.host.processes import Process, free_port, log

SCRAPE_INTERVAL = "1s"
USERNAME = "operator"
TENANT = "team-a"
_SESSION = web.AppKey("session", ClientSession)


def _ok(url: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return bool(response.status == 200)


def _has_data(url: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(f"{url}/api/v1/query?query=up%3D%3D1", headers=headers or {})
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return '"value"' in response.read().decode()


def _prometheus(name: str, workdir: Path, port: int, config: dict[str, Any], web_config: Path | None) -> Process:
    config_path = workdir / f"{name}.yml"
    config_path.write_text(json.dumps(config))
    argv = [
        "prometheus",
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / name}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    if web_config is not None:
        argv.append(f"--web.config.file={web_config}")
    return Process(name, argv, workdir / "logs" / f"{name}.log").start()


@dataclass
class SecuredWorld:
    """The running set-ups. ``secured_url`` needs ``username``/``password`` and trusts only ``pki.ca_cert``;
    ``gateway_url`` needs the token in ``gateway_token_file`` and ``X-Scope-OrgID: tenant``. ``other_ca`` is a CA
    that signed nothing here (for the unknown-CA case)."""

    workdir: Path
    pki: Pki
    other_ca: Path
    password: str
    gateway_token_file: Path
    username: str = USERNAME
    tenant: str = TENANT
    secured_url: str = ""
    plain_url: str = ""
    gateway_url: str = ""
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def start(cls) -> SecuredWorld:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        workdir = Path(tempfile.mkdtemp(prefix="operator-k8s-secured-", dir=base))
        pki = make_pki(workdir / "pki")
        other_ca = make_pki(workdir / "other-pki").ca_cert
        token_file = workdir / "gateway-token"
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
        world = cls(workdir, pki, other_ca, secrets.token_urlsafe(18), token_file)
        try:
            world._start_secured()
            world._start_plain_and_gateway()
        except BaseException:
            world.stop()
            raise
        log(f"Secured Prometheus at {world.secured_url}, gateway at {world.gateway_url} (workdir {workdir})")
        return world

    @property
    def basic_header(self) -> dict[str, str]:
        value = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {value}"}

    @property
    def gateway_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gateway_token_file.read_text().strip()}", "X-Scope-OrgID": self.tenant}

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_cert))

    def gateway_stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.gateway_url}/gateway/stats", timeout=5) as response:
            stats: dict[str, object] = json.loads(response.read())
            return stats

    def _start_secured(self) -> None:
        port = free_port()
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=10)).decode()
        web_config = self.workdir / "web-config.yml"
        web_config.write_text(json.dumps({
            "tls_server_config": {"cert_file": str(self.pki.serving_cert), "key_file": str(self.pki.serving_key)},
            "basic_auth_users": {self.username: hashed},
        }))  # fmt: skip
        password_file = self.workdir / "scrape-password"
        password_file.write_text(self.password)
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{
                "job_name": "prometheus", "scheme": "https",
                "tls_config": {"ca_file": str(self.pki.ca_cert)},
                "basic_auth": {"username": self.username, "password_file": str(password_file)},
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }],
        }  # fmt: skip
        process = _prometheus("secured-prometheus", self.workdir, port, config, web_config)
        self.processes.append(process)
        self.secured_url = f"https://127.0.0.1:{port}"
        context, headers = self.tls_context(), self.basic_header
        process.wait_until(lambda: _ok(f"{self.secured_url}/-/ready", context=context, headers=headers), 60, "ready")
        process.wait_until(lambda: _has_data(self.secured_url, context=context, headers=headers), 60, "scraping")

    def _start_plain_and_gateway(self) -> None:
        port = free_port()
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        }
        plain = _prometheus("plain-prometheus", self.workdir, port, config, None)
        self.processes.append(plain)
        self.plain_url = f"http://127.0.0.1:{port}"
        plain.wait_until(lambda: _ok(f"{self.plain_url}/-/ready"), 60, "ready")
        plain.wait_until(lambda: _has_data(self.plain_url), 60, "scraping")
        gateway_port = free_port()
        gateway = Process(
            "gateway",
            [sys.executable, "-m", "devstack.world.secured", "gateway", "--port", str(gateway_port),
             "--upstream", self.plain_url, "--token-file", str(self.gateway_token_file), "--tenant", self.tenant],
            self.workdir / "logs" / "gateway.log",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        ).start()  # fmt: skip
        self.processes.append(gateway)
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        gateway.wait_until(lambda: _ok(f"{self.gateway_url}/-/ready"), 30, "serving")
        gateway.wait_until(lambda: _has_data(self.gateway_url, headers=self.gateway_headers), 30, "proxying")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.log_tail()}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SecuredWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the gateway ---------------------------------------------------------------------------------------------------


def gateway_app(upstream: str, token_file: Path, tenant: str) -> web.Application:
    """A Mimir-like gateway: 401 without the current bearer token, 401 ``no org id`` without a tenant, 403 for
    another tenant; anything else is proxied to ``upstream``."""
    stats: Counter[str] = Counter()
    app = web.Application()

    def refuse(status: int, reason: str) -> web.Response:
        stats[f"refused: {reason}"] += 1
        return web.Response(status=status, text=reason + "\n")

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/-/ready":
            return web.Response(text="ready\n")
        if request.path == "/gateway/stats":
            return web.json_response(dict(stats))
        expected = f"Bearer {token_file.read_text().strip()}"  # noqa: ASYNC240 - a test double; rotation is the point
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected.encode()):
            return refuse(401, "missing or invalid bearer token")
        org = request.headers.get("X-Scope-OrgID")
        if org is None:
            return refuse(401, "no org id")
        if org != tenant:
            return refuse(403, f"tenant {org} is not allowed")
        stats["accepted"] += 1
        session: ClientSession = app[_SESSION]
        async with session.request(
            request.method, upstream + request.path_qs, data=await request.read(), headers={"Accept": "*/*"}
        ) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)

    async def open_session(app: web.Application) -> None:
        app[_SESSION] = ClientSession(timeout=ClientTimeout(total=30))

    async def close_session(app: web.Application) -> None:
        await app[_SESSION].close()

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.world.secured")
    commands = parser.add_subparsers(dest="command", required=True)
    gateway = commands.add_parser("gateway", help="serve the bearer-token and tenant gateway")
    gateway.add_argument("--port", type=int, required=True)
    gateway.add_argument("--upstream", required=True)
    gateway.add_argument("--token-file", type=Path, required=True)
    gateway.add_argument("--tenant", required=True)
    args = parser.parse_args(argv)
    app = gateway_app(args.upstream.rstrip("/"), args.token_file, args.tenant)
    asyncio.run(_serve(app, args.port))
    return 0


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until SIGTERM


if __name__ == "__main__":
    raise SystemExit(main())
