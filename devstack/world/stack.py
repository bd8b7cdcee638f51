"""The local stack: the control plane, Postgres, the store simulator, Prometheus (and Alertmanager, and a node, when
asked), composed.

Each component is a module of ``devstack.world`` with its own setup, readiness and logs; ``Stack.start`` starts them
in dependency order on free ports (127.0.0.1, or the node's bridge address for what pods must reach) and owns every
process they start; ``Stack.stop`` stops them all by pid, newest first, and restores the machine after a node. Used
by pytest fixtures and by ``python -m devstack``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from devstack.builds.binaries import Binaries, ensure_all
from devstack.host.hoststate import GATEWAY, POD_SUBNET
from devstack.host.pki import Pki
from devstack.host.processes import Process, log, stop_all
from devstack.storeworld.scrapeconfig import KUBE_STATE_METRICS_JOB, kubernetes_sd, operator_job, store_world_jobs
from devstack.world.alertmanager import Alertmanager
from devstack.world.controlplane import ControlPlane
from devstack.world.node import Node
from devstack.world.pgbouncer import PgBouncer
from devstack.world.postgres import Postgres
from devstack.world.prometheus import Prometheus
from devstack.world.simulator import Simulator

SCRAPE_INTERVAL = "1s"

T = TypeVar("T")


def _started(component: T | None) -> T:
    assert component is not None, "the stack did not start it"
    return component


@dataclass
class Stack:
    """A running stack; every address is on 127.0.0.1 (or the node's bridge address, in node mode)."""

    workdir: Path
    binaries: Binaries
    processes: list[Process] = field(default_factory=list)
    keep_workdir: bool = False
    scrape_interval: str = SCRAPE_INTERVAL
    control_plane: ControlPlane | None = None
    postgres: Postgres | None = None
    pgbouncer: PgBouncer | None = None
    simulator: Simulator | None = None
    alertmanager: Alertmanager | None = None
    prometheus: Prometheus | None = None
    # Node mode (``devstack.world.node``): a kubelet runs pods, and what pods must reach listens on the bridge address.
    node: Node | None = None
    bind_host: str = "127.0.0.1"

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        simulator: bool = True,
        keep_workdir: bool = False,
        scrape_interval: str = SCRAPE_INTERVAL,
        alert_rules: list[dict[str, Any]] | None = None,
        alert_webhook: str | None = None,
        node: bool = False,
    ) -> Stack:
        """Start everything; ``alert_rules`` and ``alert_webhook`` add Prometheus alerting through Alertmanager
        (default grouping) to a webhook, for side-by-side comparisons; ``node`` adds a real node (root only)."""
        if node:
            Node.check_machine()  # before minutes of building: root, a free address range, br_netfilter
        binaries = ensure_all()
        node_parts = Node.prepare() if node else None
        workdir = Path(
            tempfile.mkdtemp(prefix="operator-k8s-stack-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
        )
        stack = cls(workdir=workdir, binaries=binaries, keep_workdir=keep_workdir, scrape_interval=scrape_interval)
        started = time.monotonic()
        try:
            if node_parts is not None:
                stack.node = Node.network_up(*node_parts, stack_dir=workdir)
                stack.bind_host = GATEWAY
            plane = stack.control_plane = ControlPlane.start(
                workdir=workdir, binaries=binaries, bind_host=stack.bind_host, serve_node=node, own=stack._own
            )
            if stack.node is not None:
                stack.node.start(plane)  # before the simulator: its pods need the controller manager's ServiceAccounts
            stack.postgres = Postgres.start(
                workdir=workdir, bind_host=stack.bind_host, trust_subnet=POD_SUBNET if node else None, own=stack._own
            )  # in node mode the node's pods may connect (tests only)
            stack.pgbouncer = PgBouncer.start(
                workdir=workdir, postgres_port=stack.postgres.port, own=stack._own, bind_host=stack.bind_host
            )
            if simulator:
                stack.simulator = Simulator.start(workdir=workdir, kubeconfig=plane.kubeconfig, own=stack._own)
            if alert_webhook:
                stack.alertmanager = Alertmanager.start(workdir=workdir, webhook=alert_webhook, own=stack._own)
            stack._start_prometheus(plane, alert_rules or [])
        except BaseException:
            stack.stop()
            raise
        log(f"Stack ready in {time.monotonic() - started:.1f}s (workdir {workdir})")
        return stack

    def _start_prometheus(self, plane: ControlPlane, alert_rules: list[dict[str, Any]]) -> None:
        """Prometheus scraping the store world: every store and PD pod found through the API server (as its admin)
        and labelled as prometheus-operator and TidbMonitor label them (``devstack.storeworld.scrapeconfig``), every
        ``scrape_interval``; in node mode, the operator's pods too."""
        sd = kubernetes_sd(plane.url, str(plane.pki.ca_cert), str(plane.pki.admin_cert), str(plane.pki.admin_key))
        scrape = store_world_jobs(sd, self.scrape_interval) if self.simulator else []
        if self.node:
            scrape.append(operator_job(sd, self.scrape_interval))
        self.prometheus = prometheus = Prometheus.start(
            workdir=self.workdir,
            binary=self.binaries.prometheus,
            bind_host=self.bind_host,
            scrape_interval=self.scrape_interval,
            scrape_configs=scrape,
            alert_rules=alert_rules,
            alertmanager_url=self.alertmanager_url,
            own=self._own,
        )
        if self.simulator:
            # The simulator's kube-state-metrics pod, found through the API server: discovery, relabelling and the
            # simulator all work.
            prometheus.wait_for_up(
                KUBE_STATE_METRICS_JOB, "scraping the simulator (kube-state-metrics found through the API server)"
            )

    def stop(self) -> None:
        try:
            if self.node is not None:
                self.node.stop(self.control_plane)
        finally:
            try:
                stop_all(self.processes)
                if self.node is not None:
                    self.node.restore()  # the machine as it was, even when the node never started
                    self.node = None
            finally:
                if not self.keep_workdir:
                    subprocess.run(["chmod", "-R", "u+rwX", str(self.workdir)], check=False, capture_output=True)
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _own(self, process: Process) -> None:
        self.processes.append(process)
        if self.node is not None:
            self.node.record(process)  # a later run stops it if this one is killed

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def logs(self) -> str:
        """The tail of every component's log, for a failing test's output."""
        processes = self.processes + (self.node.processes if self.node else [])
        return "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.log_tail()}" for p in processes)

    def stop_component(self, name: str) -> None:
        """Stop one component (for outage tests); ``start_component`` brings it back on the same port and data."""
        self.process(name).stop()

    def start_component(self, name: str) -> None:
        process = self.process(name)
        process.start()
        ready = {
            "postgres": _started(self.postgres).ready,
            "prometheus": _started(self.prometheus).ready,
            "kube-apiserver": self.plane.ready,
        }[name]
        process.wait_until(ready, 90, "ready again")

    # -- what clients need -----------------------------------------------------------------------------------------

    @property
    def plane(self) -> ControlPlane:
        return _started(self.control_plane)

    @property
    def pki(self) -> Pki | None:
        return self.control_plane.pki if self.control_plane else None

    @property
    def apiserver_url(self) -> str:
        return self.control_plane.url if self.control_plane else ""

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig if self.control_plane else Path()

    @property
    def postgres_dsn(self) -> str:
        return self.postgres.dsn if self.postgres else ""

    @property
    def operator_dsn(self) -> str:
        """The DSN operators run on the host use: through PgBouncer in transaction pooling, as production often
        reaches Postgres (assertions read Postgres directly, ``postgres_dsn``)."""
        return self.pooled_dsn() if self.pgbouncer else self.postgres_dsn

    def pooled_dsn(self, database: str = "postgres") -> str:
        """``database`` through PgBouncer in transaction pooling, as many production set-ups reach Postgres."""
        return _started(self.pgbouncer).dsn(database)

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url if self.prometheus else ""

    @property
    def simulator_url(self) -> str:
        return self.simulator.url if self.simulator else ""

    @property
    def alertmanager_url(self) -> str:
        return self.alertmanager.url if self.alertmanager else ""

    def env(self) -> dict[str, str]:
        """Environment variables that point clients (kubectl, helm, the operator) at this stack."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "OPERATOR_K8S_DATABASE_DSN": self.operator_dsn,
            "DEVSTACK_PROMETHEUS_URL": self.prometheus_url,
            "DEVSTACK_SIMULATOR_URL": self.simulator_url,
            "PATH": f"{self.binaries.kubectl.parent}:{self.binaries.helm_dir}:{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, check=check, input_text=input_text)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.plane.helm(*args, check=check)

    def token_kubeconfig(self, token: str, name: str) -> Path:
        """A kubeconfig that authenticates with a bearer token only (e.g. a ServiceAccount's, from TokenRequest)."""
        return self.plane.token_kubeconfig(token, name)

    def wait_for_namespace(self, name: str, timeout: float = 30) -> None:
        self.plane.wait_for_namespace(name, timeout)

    def install_crds(self) -> None:
        self.plane.install_crds()
