"""The store simulator's process: ``devstack.storeworld.simulator`` serving the store world's model.

Setup ``Simulator.start`` (serving ``/healthz``); readiness ``ready``; teardown by whoever owns its process
(``own``); logs in ``logs/simulator.log``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack.host.paths import REPO_ROOT
from devstack.host.probes import http_ok
from devstack.host.processes import Process, free_port


@dataclass
class Simulator:
    """A running simulator; ``url`` is its control API (faults, pod state)."""

    url: str
    process: Process

    @classmethod
    def start(cls, *, workdir: Path, kubeconfig: Path, own: Callable[[Process], None]) -> Simulator:
        """The simulator creates its pods through the API server that ``kubeconfig`` names."""
        port = free_port()
        process = Process(
            "simulator",
            [sys.executable, "-m", "devstack.storeworld.simulator", "--port", str(port), "--kubeconfig",
             str(kubeconfig)],
            workdir / "logs" / "simulator.log",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        ).start()  # fmt: skip
        own(process)
        simulator = cls(url=f"http://127.0.0.1:{port}", process=process)
        process.wait_until(simulator.ready, 30, "serving")
        return simulator

    def ready(self) -> bool:
        return http_ok(f"{self.url}/healthz")
