"""The local stack: etcd + kube-apiserver (RBAC, TokenRequest), Postgres, Prometheus and the store simulator.

``Stack`` starts each component on a free 127.0.0.1 port, waits for real readiness, and stops every process it
started by pid. Used by pytest fixtures and by ``python -m devstack``.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.builds.binaries import Binaries, ensure_all
from devstack.host.hoststate import GATEWAY, POD_SUBNET, SERVICE_RANGE
from devstack.host.paths import REPO_ROOT
from devstack.host.pki import Pki, make_pki, signed_cert
from devstack.host.processes import ComponentFailed, Process, free_port, log, stop_all
from devstack.storeworld.scrapeconfig import KUBE_STATE_METRICS_JOB, kubernetes_sd, operator_job, store_world_jobs
from devstack.world.node import KUBERNETES_SERVICE_IP, Node

CRD_DIR = REPO_ROOT / "crds"
SCRAPE_INTERVAL = "1s"


def _postgres_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise ComponentFailed("Postgres server binaries not found: run `make setup` (installs the postgresql package)")
    return found[-1].parent


def _http_ok(url: str, context: ssl.SSLContext | None = None, expect: str | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        body: str = response.read().decode()
        return response.status == 200 and (expect is None or expect in body)


@dataclass
class Stack:
    """A running stack; every address is on 127.0.0.1."""

    workdir: Path
    binaries: Binaries
    processes: list[Process] = field(default_factory=list)
    pki: Pki | None = None
    apiserver_url: str = ""
    kubeconfig: Path = Path()
    postgres_dsn: str = ""
    prometheus_url: str = ""
    simulator_url: str = ""
    alertmanager_url: str = ""
    keep_workdir: bool = False
    scrape_interval: str = SCRAPE_INTERVAL
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
            stack._start_kubernetes()
            if stack.node is not None:
                stack.node.start(stack)  # before the simulator: its pods need the controller manager's ServiceAccounts
            stack._start_postgres()
            if simulator:
                stack._start_simulator()
            if alert_webhook:
                stack._start_alertmanager(alert_webhook)
            stack._start_prometheus(alert_rules or [])
        except BaseException:
            stack.stop()
            raise
        log(f"Stack ready in {time.monotonic() - started:.1f}s (workdir {workdir})")
        return stack

    def stop(self) -> None:
        try:
            if self.node is not None:
                self.node.stop(self)
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

    def env(self) -> dict[str, str]:
        """Environment variables that point clients (kubectl, helm, the operator) at this stack."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "OPERATOR_K8S_DATABASE_DSN": self.postgres_dsn,
            "DEVSTACK_PROMETHEUS_URL": self.prometheus_url,
            "DEVSTACK_SIMULATOR_URL": self.simulator_url,
            "PATH": f"{self.binaries.kubectl.parent}:{self.binaries.helm_dir}:{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=60,
        )

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "helm-cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm-config"),
            "HELM_DATA_HOME": str(self.workdir / "helm-data"),
        }
        return subprocess.run(
            [str(self.binaries.helm), *args], check=check, capture_output=True, text=True, env=env, timeout=120
        )

    # -- Kubernetes ------------------------------------------------------------------------------------------------

    def _start_kubernetes(self) -> None:
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port(self.bind_host)
        etcd = Process(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name",
                "devstack",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"devstack=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            self.workdir / "logs" / "etcd.log",
        ).start()
        self._own(etcd)
        etcd.wait_until(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health", expect="true"), 30, "healthy")

        server_ips = ("127.0.0.1", GATEWAY, KUBERNETES_SERVICE_IP) if self.node else ("127.0.0.1",)
        self.pki = pki = make_pki(self.workdir / "pki", server_ips)
        if self.node:
            # Pods reach it through the kubernetes Service (its endpoint is the advertised bridge address); nodes
            # are authorised as nodes; ServiceAccount tokens are mounted; logs and exec go to the kubelet.
            signed_cert(self.workdir / "pki", "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver")
            mode = [
                "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={self.workdir / 'pki' / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={self.workdir / 'pki' / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki.ca_cert}", "--kubelet-preferred-address-types=InternalIP",
            ]  # fmt: skip
        else:
            # No kubelet, no controller manager: no token controller to serve ServiceAccount admission, no endpoint.
            mode = ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
                    "--endpoint-reconciler-type=none"]  # fmt: skip
        apiserver = Process(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={self.bind_host}",
                f"--advertise-address={self.bind_host}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                *mode,
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--allow-privileged=false",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
            ],
            self.workdir / "logs" / "kube-apiserver.log",
        ).start()
        self._own(apiserver)
        self.apiserver_url = f"https://{self.bind_host}:{api_port}"
        apiserver.wait_until(self._apiserver_ready, 90, "ready (/readyz)")

        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "devstack",
                            "cluster": {"server": self.apiserver_url, "certificate-authority": str(pki.ca_cert)},
                        }
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
                        }
                    ],
                    "contexts": [
                        {
                            "name": "devstack",
                            "context": {"cluster": "devstack", "user": "admin", "namespace": "default"},
                        }
                    ],
                    "current-context": "devstack",
                },
                indent=2,
            )
        )
        # The simulator's pods are bound to this Node so that their status may say Running; no kubelet runs it, and
        # nothing is scheduled to it.
        fake_node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "devstack-node"},
                     "spec": {"unschedulable": True}}  # fmt: skip
        self.kubectl("apply", "-f", "-", input_text=json.dumps(fake_node))
        self.wait_for_namespace("default")
        self.install_crds()

    def token_kubeconfig(self, token: str, name: str) -> Path:
        """A kubeconfig that authenticates with a bearer token only (e.g. a ServiceAccount's, from TokenRequest)."""
        assert self.pki is not None
        path = self.workdir / f"kubeconfig-{name}"
        cluster = {"server": self.apiserver_url, "certificate-authority": str(self.pki.ca_cert)}
        body = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "devstack", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "devstack", "user": name, "namespace": "default"}}],
            "current-context": name,
        }
        path.write_text(json.dumps(body))
        path.chmod(0o600)
        return path

    def wait_for_namespace(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "namespace", name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ComponentFailed(f"Namespace {name} never appeared; API server log:\n{self.logs()}")
            time.sleep(0.2)

    def install_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRD_DIR))

    # -- Postgres --------------------------------------------------------------------------------------------------

    def _start_postgres(self) -> None:
        bindir = _postgres_bindir()
        data = self.workdir / "postgres"
        sockets = self.workdir / "postgres-sockets"
        data.mkdir()
        sockets.mkdir()
        user = "postgres" if os.geteuid() == 0 else None
        if user:
            shutil.chown(data, user, user)
            shutil.chown(sockets, user, user)
            os.chmod(self.workdir, 0o755)
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=user,
        )
        if self.node:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {POD_SUBNET} trust\n")  # pods of the node (tests only)
        port = free_port()
        postgres = Process(
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
                f"listen_addresses={','.join(dict.fromkeys(['127.0.0.1', self.bind_host]))}",
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
            self.workdir / "logs" / "postgres.log",
            user=user,
        ).start()
        self._own(postgres)
        self.postgres_dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        postgres.wait_until(self._postgres_ready, 30, "accepting connections")

    def stop_component(self, name: str) -> None:
        """Stop one component (for outage tests); ``start_component`` brings it back on the same port and data."""
        self.process(name).stop()

    def start_component(self, name: str) -> None:
        process = self.process(name)
        process.start()
        ready = {
            "postgres": self._postgres_ready,
            "prometheus": self._prometheus_ready,
            "kube-apiserver": self._apiserver_ready,
        }[name]
        process.wait_until(ready, 90, "ready again")

    def _apiserver_ready(self) -> bool:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return _http_ok(f"{self.apiserver_url}/readyz", context, "ok")

    def _postgres_ready(self) -> bool:
        port = self.postgres_dsn.rsplit(":", 1)[1].split("/")[0]
        argv = [str(_postgres_bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", port, "-U", "postgres"]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def _prometheus_ready(self) -> bool:
        return _http_ok(f"{self.prometheus_url}/-/ready")

    # -- simulator and Prometheus ----------------------------------------------------------------------------------

    def _start_simulator(self) -> None:
        port = free_port()
        simulator = Process(
            "simulator",
            [
                sys.executable,
                "-m",
                "devstack.storeworld.simulator",
                "--port",
                str(port),
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            self.workdir / "logs" / "simulator.log",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        ).start()
        self._own(simulator)
        self.simulator_url = f"http://127.0.0.1:{port}"
        simulator.wait_until(lambda: _http_ok(f"{self.simulator_url}/healthz"), 30, "serving")

    def _start_alertmanager(self, webhook: str) -> None:
        """Alertmanager with its default grouping (group_wait 30s, group_interval 5m) and one webhook receiver."""
        port = free_port()
        config = self.workdir / "alertmanager.yml"
        config.write_text(json.dumps({
            "route": {"receiver": "webhook"},
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook, "send_resolved": True}]}],
        }))  # fmt: skip
        alertmanager = Process(
            "alertmanager",
            [
                "prometheus-alertmanager", f"--config.file={config}", f"--storage.path={self.workdir / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
            ],
            self.workdir / "logs" / "alertmanager.log",
        ).start()  # fmt: skip
        self._own(alertmanager)
        self.alertmanager_url = f"http://127.0.0.1:{port}"
        alertmanager.wait_until(lambda: _http_ok(f"{self.alertmanager_url}/-/ready"), 30, "ready")

    def _kubernetes_sd(self) -> dict[str, Any]:
        """Prometheus' pod discovery through this stack's API server, as its admin."""
        assert self.pki is not None
        return kubernetes_sd(self.apiserver_url, str(self.pki.ca_cert), str(self.pki.admin_cert),
                             str(self.pki.admin_key))  # fmt: skip

    def _start_prometheus(self, alert_rules: list[dict[str, Any]]) -> None:
        """Prometheus scraping the store world: every store and PD pod found through the API server and labelled as
        prometheus-operator and TidbMonitor label them (``devstack.storeworld.scrapeconfig``), every
        ``scrape_interval``."""
        port = free_port(self.bind_host)
        config = self.workdir / "prometheus.yml"
        scrape = store_world_jobs(self._kubernetes_sd(), self.scrape_interval) if self.simulator_url else []
        if self.node:
            scrape.append(operator_job(self._kubernetes_sd(), self.scrape_interval))
        body: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": scrape,
        }
        if alert_rules:
            rules = self.workdir / "rules.yml"
            rules.write_text(json.dumps({"groups": [{"name": "operator-k8s-comparison", "rules": alert_rules}]}))
            body["rule_files"] = [str(rules)]
        if self.alertmanager_url:
            target = urllib.parse.urlparse(self.alertmanager_url).netloc
            body["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        config.write_text(json.dumps(body))
        prometheus = Process(
            "prometheus",
            [
                str(self.binaries.prometheus),  # Debian's has no Kubernetes discovery (devstack.builds.prometheus)
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'prometheus'}",
                f"--web.listen-address={self.bind_host}:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            self.workdir / "logs" / "prometheus.log",
        ).start()
        self._own(prometheus)
        self.prometheus_url = f"http://{self.bind_host}:{port}"
        prometheus.wait_until(self._prometheus_ready, 60, "ready")
        if self.simulator_url:
            # The simulator's kube-state-metrics pod, found through the API server: discovery, relabelling and the
            # simulator all work.
            query = urllib.parse.quote(f'up{{job="{KUBE_STATE_METRICS_JOB}"}} == 1')
            prometheus.wait_until(
                lambda: _http_ok(f"{self.prometheus_url}/api/v1/query?query={query}", expect='"value"'),
                60,
                "scraping the simulator (kube-state-metrics found through the API server)",
            )
