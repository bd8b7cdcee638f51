"""Alertmanager (Debian's ``prometheus-alertmanager``), for side-by-side comparisons with Prometheus alerting.

Setup ``Alertmanager.start`` with its default grouping (group_wait 30s, group_interval 5m, or a route given) and one
webhook receiver;
readiness ``ready``; teardown by whoever owns its process (``own``); logs in ``logs/alertmanager.log``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.host.probes import http_ok
from devstack.host.processes import Process, free_port


@dataclass
class Alertmanager:
    """A running Alertmanager on 127.0.0.1."""

    url: str
    process: Process

    @classmethod
    def start(
        cls, *, workdir: Path, webhook: str, own: Callable[[Process], None], route: dict[str, Any] | None = None
    ) -> Alertmanager:
        """``route`` adds to the one route (e.g. a shorter ``group_wait``); by default Alertmanager's own grouping."""
        port = free_port()
        config = workdir / "alertmanager.yml"
        config.write_text(json.dumps({
            "route": {"receiver": "webhook", **(route or {})},
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook, "send_resolved": True}]}],
        }))  # fmt: skip
        process = Process(
            "alertmanager",
            [
                "prometheus-alertmanager", f"--config.file={config}", f"--storage.path={workdir / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
            ],
            workdir / "logs" / "alertmanager.log",
        ).start()  # fmt: skip
        own(process)
        alertmanager = cls(url=f"http://127.0.0.1:{port}", process=process)
        process.wait_until(alertmanager.ready, 30, "ready")
        return alertmanager

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready")
