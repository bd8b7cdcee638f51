"""The control plane: etcd and kube-apiserver (RBAC, TokenRequest), apart from the stack.

Setup ``ControlPlane.start`` (etcd healthy, the API server ready, a kubeconfig, the CRDs established); readiness
``ready``; teardown by whoever owns its processes (``own``: the stack stops them by pid, newest first); logs ``logs``.
The node (``devstack.world.node``) takes this object, never the stack.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.builds.binaries import Binaries
from devstack.host.hoststate import GATEWAY, KUBERNETES_SERVICE_IP, SERVICE_RANGE
from devstack.host.paths import REPO_ROOT
from devstack.host.pki import Pki, make_pki, signed_cert
from devstack.host.probes import http_ok
from devstack.host.processes import ComponentFailed, Process, free_port

CRD_DIR = REPO_ROOT / "crds"


@dataclass
class ControlPlane:
    """A running etcd and kube-apiserver; ``url`` is the API server, ``kubeconfig`` its admin's."""

    workdir: Path
    binaries: Binaries
    pki: Pki
    url: str
    kubeconfig: Path
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def start(
        cls, *, workdir: Path, binaries: Binaries, bind_host: str, serve_node: bool, own: Callable[[Process], None]
    ) -> ControlPlane:
        """etcd on 127.0.0.1, the API server on ``bind_host``; ``serve_node`` authorises a kubelet (Node, RBAC) and
        serves the ``kubernetes`` Service's address. Each process is handed to ``own`` as soon as it runs."""
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port(bind_host)
        etcd = Process(
            "etcd",
            [
                str(binaries.etcd),
                "--name",
                "devstack",
                "--data-dir",
                str(workdir / "etcd"),
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
            workdir / "logs" / "etcd.log",
        ).start()
        own(etcd)
        etcd.wait_until(lambda: http_ok(f"http://127.0.0.1:{etcd_port}/health", expect="true"), 30, "healthy")

        server_ips = ("127.0.0.1", GATEWAY, KUBERNETES_SERVICE_IP) if serve_node else ("127.0.0.1",)
        pki_dir = workdir / "pki"
        pki = make_pki(pki_dir, server_ips)
        if serve_node:
            # Pods reach it through the kubernetes Service (its endpoint is the advertised bridge address); nodes
            # are authorised as nodes; ServiceAccount tokens are mounted; logs and exec go to the kubelet.
            signed_cert(pki_dir, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver")
            mode = [
                "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki.ca_cert}", "--kubelet-preferred-address-types=InternalIP",
            ]  # fmt: skip
        else:
            # No kubelet, no controller manager: no token controller to serve ServiceAccount admission, no endpoint.
            mode = ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
                    "--endpoint-reconciler-type=none"]  # fmt: skip
        apiserver = Process(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={bind_host}",
                f"--advertise-address={bind_host}",
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
                f"--cert-dir={workdir / 'apiserver-certs'}",
            ],
            workdir / "logs" / "kube-apiserver.log",
        ).start()
        own(apiserver)
        plane = cls(
            workdir=workdir,
            binaries=binaries,
            pki=pki,
            url=f"https://{bind_host}:{api_port}",
            kubeconfig=workdir / "kubeconfig",
            processes=[etcd, apiserver],
        )
        apiserver.wait_until(plane.ready, 90, "ready (/readyz)")
        plane._write_admin_kubeconfig()
        # The simulator's pods are bound to this Node so that their status may say Running; no kubelet runs it, and
        # nothing is scheduled to it.
        fake_node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "devstack-node"},
                     "spec": {"unschedulable": True}}  # fmt: skip
        plane.kubectl("apply", "-f", "-", input_text=json.dumps(fake_node))
        plane.wait_for_namespace("default")
        plane.install_crds()
        return plane

    @property
    def pki_dir(self) -> Path:
        """Where the CA's key is, for more certificates signed by it (the node's)."""
        return self.workdir / "pki"

    def ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return http_ok(f"{self.url}/readyz", context, "ok")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.log_tail()}" for p in self.processes)

    def _write_admin_kubeconfig(self) -> None:
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "devstack",
                            "cluster": {"server": self.url, "certificate-authority": str(self.pki.ca_cert)},
                        }
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {
                                "client-certificate": str(self.pki.admin_cert),
                                "client-key": str(self.pki.admin_key),
                            },
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

    # -- clients ---------------------------------------------------------------------------------------------------

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

    def token_kubeconfig(self, token: str, name: str) -> Path:
        """A kubeconfig that authenticates with a bearer token only (e.g. a ServiceAccount's, from TokenRequest)."""
        path = self.workdir / f"kubeconfig-{name}"
        cluster = {"server": self.url, "certificate-authority": str(self.pki.ca_cert)}
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
