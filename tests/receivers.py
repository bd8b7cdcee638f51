"""The people on call, as tests see them: one local HTTP server that takes Alertmanager's webhook notifications
(``/alertmanager``) and Standard Webhooks (``/hook``), verifying every signature as a real receiver would, and that
can be made to fail the ways receivers fail (down, 410, 429 with Retry-After, a redirect elsewhere)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devstack.host.processes import Process, free_port
from devstack.world.alertmanager import Alertmanager

KEY = "whsec_" + "dGVzdC1zaWduaW5nLWtleS1vcGVyYXRvci1rOHM="
"""The signing key the tests mount (base64 of a test string; not a secret)."""


@dataclass
class Answer:
    """What ``/hook`` answers: a status, and headers (Retry-After, Location)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Receiver:
    url: str
    runner: web.AppRunner
    verifier: Webhook
    answer: Answer = field(default_factory=Answer)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    """Every accepted webhook, in arrival order, with its ``webhook-id`` and ``received_at`` (duplicates included:
    at least once)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Webhooks answered with a failure, or whose signature did not verify, by reason."""
    notifications: list[dict[str, Any]] = field(default_factory=list)
    """Alertmanager's webhook notifications (each a group of alerts, with ``received_at``), in arrival order."""

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hook"

    @property
    def alertmanager_url(self) -> str:
        return f"{self.url}/alertmanager"

    def unique_hooks(self) -> dict[str, dict[str, Any]]:
        """The webhooks after deduplication on ``webhook-id``, as a deduplicating receiver keeps them."""
        return {hook["id"]: hook for hook in self.hooks}

    def duplicates(self) -> int:
        return len(self.hooks) - len(self.unique_hooks())

    def alert_statuses(self, **labels: str) -> list[str]:
        """The status (firing/resolved) of every alert Alertmanager notified whose labels include ``labels``."""
        return [
            alert["status"]
            for notification in self.notifications
            for alert in notification["alerts"]
            if all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    async def go_down(self) -> None:
        """Stop listening: senders meet a refused connection, as with a receiver that is down."""
        for site in list(self.runner.sites):
            await site.stop()

    async def come_back(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        await web.TCPSite(self.runner, host, int(port)).start()

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_receiver() -> Receiver:
    app = web.Application()
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}", web.AppRunner(app), Webhook(KEY))

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = receiver.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as error:
            receiver.refused[f"signature: {error}"] += 1
            return web.Response(status=401)
        if receiver.answer.status >= 300:
            receiver.refused[str(receiver.answer.status)] += 1
            return web.Response(status=receiver.answer.status, headers=receiver.answer.headers)
        receiver.hooks.append({"id": request.headers["webhook-id"], "payload": payload, "received_at": time.time()})
        return web.Response(status=204)

    async def alertmanager(request: web.Request) -> web.Response:
        receiver.notifications.append({**json.loads(await request.read()), "received_at": time.time()})
        return web.Response(status=200)

    app.router.add_post("/hook", hook)
    app.router.add_post("/alertmanager", alertmanager)
    await receiver.runner.setup()
    await web.TCPSite(receiver.runner, "127.0.0.1", port).start()
    return receiver


@contextmanager
def receiver_in_thread() -> Iterator[Receiver]:
    """The receiver for synchronous tests: its own event loop in a thread, stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = asyncio.run_coroutine_threadsafe(start_receiver(), loop).result(10)
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def notifications_file(
    directory: Path, receiver: Receiver, namespace: str, *, alertmanager: str = "", resend_seconds: float = 2,
    cluster_selector: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """A notifications file that sends every notice of ``namespace`` to the receiver's signed webhook (and, given
    one, to an Alertmanager that re-sends every ``resend_seconds``, with the watchdog); with ``cluster_selector``,
    only the notices of the clusters it selects by label."""
    key = directory / "webhook-key"
    key.write_text(KEY)
    receivers: list[dict[str, Any]] = [
        {"name": "hook", "webhook": {"url": receiver.hook_url, "keyFiles": [str(key)], "timeoutSeconds": 2}}
    ]
    if alertmanager:
        receivers.append({"name": "am", "alertmanager": {"urls": [alertmanager], "resendSeconds": resend_seconds}})
    path = directory / "notifications.yaml"
    path.write_text(json.dumps({
        "receivers": receivers,
        "routes": [{"receivers": [r["name"] for r in receivers], "namespaces": [namespace]}
                   | ({"clusterSelector": cluster_selector} if cluster_selector is not None else {})],
        "watchdog": ["am"] if alertmanager else [],
    }))  # fmt: skip
    return path


@contextmanager
def alertmanager_for(workdir: Path, receiver: Receiver) -> Iterator[Alertmanager]:
    """Debian's Alertmanager 0.25 grouping per ticket with a one-second wait, notifying ``receiver``."""
    owned: list[Process] = []
    started = Alertmanager.start(
        workdir=workdir, webhook=receiver.alertmanager_url, own=owned.append,
        route={"group_by": ["ticket", "alertname"], "group_wait": "1s", "group_interval": "1s",
               "repeat_interval": "1h"},
    )  # fmt: skip
    try:
        yield started
    finally:
        for process in owned:
            process.stop()
