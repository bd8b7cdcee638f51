"""Node mode: a real single Kubernetes node next to the control plane's API server, so that ``helm install`` starts
real pods.

containerd 2 (runc, overlayfs, cgroupfs), the bridge CNI plugin, kubelet, kube-proxy (iptables), the controller
manager, the scheduler and CoreDNS, all started by pid and stopped by pid. The pod and Service networks exist only on
this machine (``devstack.host.hoststate``: a bridge in the benchmarking range 198.18.0.0/15, never routed anywhere,
fenced by iptables rules of its own). Whatever pods must reach (the API server, CoreDNS, the kubelet, the stack's
Postgres and Prometheus) listens on the bridge address, which exists only here; the rest stays on 127.0.0.1.

Setup: ``Node.prepare`` (builds and images), ``Node.network_up`` (the machine recorded, the fenced bridge), then
``Node.start(plane)`` against the control plane; teardown: ``Node.stop(plane)`` (pods, then processes by pid) and
``Node.restore`` (the machine as it was); logs in the node's work directory (``logs/``). The node takes the control
plane (``devstack.world.controlplane``), never the stack.

Every change to the machine is recorded before the node starts and undone at stop, or by the next run if this one
was killed (``devstack.host.hoststate``). Host facts this relies on (measured, see the README's "Node mode"): root;
cgroup v1 with ``failCgroupV1: false`` (cgroup v2 is detected but was never run here); without CAP_SYS_RESOURCE
containerd must clamp oom_score_adj (``restrict_oom_score_adj``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.builds.images import Image, operator_image, pause_image, postgres_image
from devstack.builds.node import NodeBinaries, ensure_node
from devstack.host import hoststate
from devstack.host.hoststate import BRIDGE, CGROUP_ROOT, GATEWAY, POD_SUBNET, SERVICE_RANGE, HostState, sh
from devstack.host.paths import REPO_ROOT
from devstack.host.pki import signed_cert
from devstack.host.processes import ComponentFailed, Process, free_port, log, stop_all
from devstack.world.controlplane import ControlPlane

NODE_NAME = "operator-k8s-node"
RUNC = "/usr/sbin/runc"
CNI_PLUGINS = "/usr/lib/cni"
# Where containerd would pull from when an image is not local: nowhere (pods run only the images the stack imports).
NO_REGISTRY = "http://127.0.0.1:9"


def _kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> Path:
    body = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devstack", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "devstack", "context": {"cluster": "devstack", "user": "user"}}],
        "current-context": "devstack",
    }
    path.write_text(json.dumps(body, indent=2))
    path.chmod(0o600)
    return path


@dataclass
class Node:
    """The node's processes and what they changed on the machine."""

    workdir: Path
    binaries: NodeBinaries
    host: HostState
    processes: list[Process] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lock: int | None = None  # the machine's node lock, held until ``restore``

    @staticmethod
    def prepare() -> tuple[NodeBinaries, list[Image]]:
        """Build (or find cached) every binary and image the node needs."""
        binaries = ensure_node()
        version = _chart_app_version()
        return binaries, [pause_image(binaries.pause), operator_image(version), postgres_image()]

    @staticmethod
    def _claim_machine() -> int:
        """Take the machine's node lock (returned), clean up after killed runs, then check the machine is usable."""
        try:
            hoststate.require_root()
            held = hoststate.lock()
        except RuntimeError as error:
            raise ComponentFailed(str(error)) from error
        try:
            hoststate.recover_abandoned()
            hoststate.check_machine()
        except BaseException as error:
            os.close(held)
            raise ComponentFailed(str(error)) from error
        return held

    @classmethod
    def check_machine(cls) -> None:
        """Refuse early (before minutes of building), with a reason, where node mode cannot run now. A killed run's
        leftovers (its bridge holds the range) are cleaned up first, as ``network_up`` would."""
        os.close(cls._claim_machine())

    @classmethod
    def network_up(cls, binaries: NodeBinaries, images: list[Image], stack_dir: Path) -> Node:
        """Take the machine's node lock, clean up after killed runs, record the machine (also on disk, for a later
        run if this one is killed), then create the fenced bridge, so that servers can bind ``GATEWAY`` before any
        pod exists."""
        held = cls._claim_machine()
        try:
            host = HostState.capture()
            node_dir = Path(sh("mktemp", "-d", f"{hoststate.NODE_DIRS}XXXXXX").stdout.strip())
        except BaseException as error:
            os.close(held)
            raise ComponentFailed(str(error)) from error
        host.save(node_dir)
        (node_dir / hoststate.STACK_DIR_FILE).write_text(str(stack_dir))
        node = cls(workdir=node_dir, binaries=binaries, host=host, images=images, lock=held)
        try:
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
            sh("ip", "link", "set", BRIDGE, "up")
            hoststate.isolate()
            hoststate.make_cgroup_root()
        except BaseException:
            node.restore()
            raise
        return node

    def restore(self) -> None:
        """Undo every change to the machine, remove the work directory, release the lock. If a step failed, the
        record stays, and the next run retries."""
        try:
            failed = self.host.restore(self.workdir)
            if failed:
                log(f"Could not undo everything ({', '.join(failed)}); {self.workdir} stays for the next run")
            else:
                sh("chmod", "-R", "u+rwX", str(self.workdir), check=False)
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            if self.lock is not None:
                os.close(self.lock)
                self.lock = None

    def record(self, process: Process) -> None:
        """Note a process of this node's stack, so that a later run can stop it if this run is killed."""
        hoststate.record_pid(self.workdir, process.pid)

    def start(self, plane: ControlPlane) -> None:
        """Start the node's components against ``plane``'s API server, in dependency order; node Ready at return."""
        started = time.monotonic()
        pki_dir = plane.pki_dir
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        for name, subject in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
            ("controller-manager", "/CN=system:kube-controller-manager"),
            ("scheduler", "/CN=system:kube-scheduler"),
            ("kube-proxy", "/CN=system:kube-proxy"),
        ):
            signed_cert(pki_dir, name, subject)
        signed_cert(pki_dir, "kubelet-serving", f"/CN={NODE_NAME}", server_ips=(GATEWAY, "127.0.0.1"))
        ca = plane.pki.ca_cert

        def kubeconfig(name: str) -> Path:
            return _kubeconfig(conf / f"{name}.kubeconfig", plane.url, ca, pki_dir / f"{name}.crt",
                               pki_dir / f"{name}.key")  # fmt: skip

        self._start_containerd(conf)
        self.timings["containerd and images"] = time.monotonic() - started
        kcm = kubeconfig("controller-manager")
        self._spawn("kube-controller-manager", [
            str(self.binaries.kube_controller_manager), f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}",
            f"--authorization-kubeconfig={kcm}", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--leader-elect=false", "--use-service-account-credentials=true", f"--root-ca-file={ca}",
            f"--service-account-private-key-file={plane.pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", f"--cluster-signing-cert-file={ca}",
            f"--cluster-signing-key-file={plane.pki.ca_key}", f"--cert-dir={self.workdir / 'kcm-certs'}",
        ])  # fmt: skip
        scheduler = kubeconfig("scheduler")
        self._spawn("kube-scheduler", [
            str(self.binaries.kube_scheduler), f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}", f"--authorization-kubeconfig={scheduler}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
        ])  # fmt: skip
        corefile = conf / "Corefile"
        corefile.write_text(
            f".:53 {{\n  bind {GATEWAY}\n  errors\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"    kubeconfig {plane.kubeconfig}\n    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n  }}\n"
            "  cache 30\n}\n"
        )  # no forwarding: pods have no business outside this machine
        self._spawn("coredns", [str(self.binaries.coredns), "-conf", str(corefile)])
        kubelet = self._start_kubelet(conf, kubeconfig("kubelet"), pki_dir)
        proxy_config = conf / "kube-proxy.yaml"
        proxy_config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig("kube-proxy"))}, "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1", "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}", "clusterCIDR": POD_SUBNET,
            "nodePortAddresses": [f"{GATEWAY}/32"],
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))  # fmt: skip
        self._spawn("kube-proxy", [str(self.binaries.kube_proxy), f"--config={proxy_config}"])
        kubelet.wait_until(lambda: _node_ready(plane), 120, f"registered Node {NODE_NAME} Ready")
        self.timings["node Ready"] = time.monotonic() - started
        kubelet.wait_until(
            lambda: plane.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            60,
            "seeing the default ServiceAccount (kube-controller-manager)",
        )
        self._provide_volumes(plane)
        self.timings["node usable"] = time.monotonic() - started
        log(f"Node {NODE_NAME} Ready in {self.timings['node Ready']:.1f}s (containerd and images "
             f"{self.timings['containerd and images']:.1f}s)")  # fmt: skip

    def _provide_volumes(self, plane: ControlPlane, count: int = 4) -> None:
        """Statically provisioned hostPath PersistentVolumes in the work directory (no default StorageClass), as a
        single-node cluster's local storage: a claim without a class, like the chart's quick-start Postgres, binds."""
        volumes = []
        for index in range(count):
            path = self.workdir / "volumes" / f"pv{index}"
            path.mkdir(parents=True)
            path.chmod(0o777)  # whatever uid the pod runs as (fsGroup does not apply to hostPath)
            volumes.append({
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"devstack-pv{index}"},
                "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                         "persistentVolumeReclaimPolicy": "Retain",
                         "hostPath": {"path": str(path), "type": "Directory"}},
            })  # fmt: skip
        plane.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": volumes}))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.workdir / "logs" / f"{name}.log", env=env).start()
        self.processes.append(process)
        self.record(process)
        return process

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return sh(str(self.binaries.ctr), "--address", str(self.containerd_socket), "-n", "k8s.io", *args, check=False)

    def _start_containerd(self, conf: Path) -> None:
        state = self.workdir / "containerd"
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-operator-k8s.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "operator-k8s-devstack",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(self.workdir / "cni" / "ipam"),
                         "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "198.18.0.10", "gateway": GATEWAY}]],
                         "routes": [{"dst": SERVICE_RANGE}]},  # no default route: nothing leaves
            }],
        }))  # fmt: skip
        registries = self.workdir / "containerd" / "registries" / "_default"
        registries.mkdir(parents=True)
        (registries / "hosts.toml").write_text(f'server = "{NO_REGISTRY}"\n')
        config = conf / "containerd.toml"
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        config.write_text(
            f'version = 3\nroot = "{state / "root"}"\nstate = "{state / "state"}"\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            f"[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n"
            f"  [plugins.'io.containerd.cri.v1.images'.pinned_images]\n    sandbox = '{self.images[0].name}'\n"
            f"  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '{registries.parent}'\n"
            # Without CAP_SYS_RESOURCE runc cannot set the sandbox's oom_score_adj of -998: clamp it instead.
            f"[{runtime}]\n  restrict_oom_score_adj = true\n"
            "  netns_mounts_under_state_dir = true\n"  # pods' network namespaces in the work directory, not /run/netns
            f"  [{runtime}.containerd]\n    default_runtime_name = 'runc'\n"
            f"    [{runtime}.containerd.runtimes.runc]\n      runtime_type = 'io.containerd.runc.v2'\n"
            f"      [{runtime}.containerd.runtimes.runc.options]\n        BinaryName = '{RUNC}'\n"
            "        SystemdCgroup = false\n"
            f"  [{runtime}.cni]\n    bin_dirs = ['{CNI_PLUGINS}']\n    conf_dir = '{cni_conf}'\n"
            f"[plugins.'io.containerd.internal.v1.opt']\n  path = '{state / 'opt'}'\n"  # not /opt/containerd
            "[plugins.'io.containerd.grpc.v1.cri']\n  stream_server_address = '127.0.0.1'\n"
            "  stream_server_port = '0'\n"
            "[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n"  # no NRI plugins here; no /run/nri/nri.sock
        )
        env = {**os.environ, "PATH": f"{self.binaries.containerd.parent}:{os.environ.get('PATH', '')}"}
        containerd = self._spawn("containerd", [str(self.binaries.containerd), "--config", str(config)], env=env)
        containerd.wait_until(lambda: self.ctr("version").returncode == 0, 60, "serving its socket")
        for image in self.images:
            imported = time.monotonic()
            result = self.ctr("images", "import", str(image.archive))
            if image.name not in self.ctr("images", "list", "-q").stdout.split():
                raise ComponentFailed(f"Importing {image.archive} did not yield {image.name}: {result.stdout}")
            self.timings[f"import {image.name}"] = time.monotonic() - imported

    def _start_kubelet(self, conf: Path, kubeconfig: Path, pki_dir: Path) -> Process:
        port = free_port(GATEWAY)
        config = conf / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": GATEWAY, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "staticPodPath": str(self.workdir / "manifests"), "podLogsDir": str(self.workdir / "pod-logs"),
            "tlsCertFile": str(pki_dir / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki_dir / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDomain": "cluster.local", "clusterDNS": [GATEWAY],
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "resolvConf": str(self._resolv_conf()),
        }))  # fmt: skip
        (self.workdir / "manifests").mkdir(exist_ok=True)
        return self._spawn("kubelet", [
            str(self.binaries.kubelet), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}",
        ])  # fmt: skip

    def _resolv_conf(self) -> Path:
        """Pods resolve only through the cluster's DNS: no host resolver leaks into them."""
        path = self.workdir / "resolv.conf"
        path.write_text("")
        return path

    def stop(self, plane: ControlPlane | None) -> None:
        """Let kubelet tear the pods down (sandboxes, CNI DEL, volume unmounts) while ``plane``'s API server still
        runs, then stop the node's processes by pid. ``restore`` undoes the rest."""
        kubelet = next((p for p in self.processes if p.name == "kubelet"), None)
        try:
            if kubelet is not None and kubelet.alive() and plane is not None and plane.kubeconfig.exists():
                plane.kubectl("delete", "deployments,statefulsets,replicasets,daemonsets,jobs", "--all",
                              "--all-namespaces", "--wait=false", check=False)  # fmt: skip
                plane.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
                              "--wait=true", "--timeout=45s", check=False)  # fmt: skip
        finally:
            stop_all(self.processes)


def _node_ready(plane: ControlPlane) -> bool:
    result = plane.kubectl("get", "node", NODE_NAME, "-o",
                           "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)  # fmt: skip
    return result.stdout.strip() == "True"


def _chart_app_version() -> str:
    chart = (REPO_ROOT / "charts" / "operator-k8s" / "Chart.yaml").read_text()
    for line in chart.splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise RuntimeError("charts/operator-k8s/Chart.yaml has no appVersion")
