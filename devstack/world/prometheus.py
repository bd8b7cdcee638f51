"""Prometheus (built with Kubernetes discovery, ``devstack.builds.prometheus``) scraping what it is given.

Setup ``Prometheus.start`` with the scrape jobs, alerting rules and Alertmanager its caller composes (the stack: the
store world's jobs from ``devstack.storeworld.scrapeconfig``); readiness ``ready`` and ``wait_for_up``; teardown by
whoever owns its process (``own``); logs in ``logs/prometheus.log``. The configuration is ``prometheus.yml`` in the
work directory (the referee rewrites it and reloads).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.host.probes import http_ok
from devstack.host.processes import Process, free_port


@dataclass
class Prometheus:
    """A running Prometheus; ``url`` is on the stack's bind address."""

    url: str
    process: Process

    @classmethod
    def start(
        cls,
        *,
        workdir: Path,
        binary: Path,
        bind_host: str,
        scrape_interval: str,
        scrape_configs: list[dict[str, Any]],
        alert_rules: list[dict[str, Any]],
        alertmanager_url: str,
        own: Callable[[Process], None],
    ) -> Prometheus:
        port = free_port(bind_host)
        config = workdir / "prometheus.yml"
        body: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": scrape_configs,
        }
        if alert_rules:
            rules = workdir / "rules.yml"
            rules.write_text(json.dumps({"groups": [{"name": "operator-k8s-comparison", "rules": alert_rules}]}))
            body["rule_files"] = [str(rules)]
        if alertmanager_url:
            target = urllib.parse.urlparse(alertmanager_url).netloc
            body["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        config.write_text(json.dumps(body))
        process = Process(
            "prometheus",
            [
                str(binary),  # Debian's has no Kubernetes discovery (devstack.builds.prometheus)
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prometheus'}",
                f"--web.listen-address={bind_host}:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            workdir / "logs" / "prometheus.log",
        ).start()
        own(process)
        prometheus = cls(url=f"http://{bind_host}:{port}", process=process)
        process.wait_until(prometheus.ready, 60, "ready")
        return prometheus

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready")

    def wait_for_up(self, job: str, what: str, timeout: float = 60) -> None:
        """Until a target of ``job`` is up (discovered, relabelled and scraped); ``what`` names it in a failure."""
        query = urllib.parse.quote(f'up{{job="{job}"}} == 1')
        self.process.wait_until(
            lambda: http_ok(f"{self.url}/api/v1/query?query={query}", expect='"value"'), timeout, what
        )
