"""Node mode: a real single Kubernetes node next to the stack's API server, so that ``helm install`` starts real pods.

containerd 2 (runc, overlayfs, cgroupfs), the bridge CNI plugin, kubelet, kube-proxy (iptables), the controller
manager, the scheduler and CoreDNS, all started by pid and stopped by pid. The pod and Service networks exist only on
this machine: a bridge with ``GATEWAY`` in 198.18.0.0/15 (the benchmarking range, never routed anywhere), pods in
``POD_SUBNET``, Services in ``SERVICE_RANGE``. Whatever must be reachable from pods (the API server, CoreDNS, the
kubelet, the stack's Postgres and Prometheus) listens on the bridge address, which exists only here.

Every change to the machine is recorded before the node starts (``HostState``) and undone at stop: iptables chains
and rules, the bridge, network namespaces, mounts, cgroups, kubelet's ``/var/log/containers`` links, the sysctls
kubelet and the CNI plugin set, the directories the runtime creates outside the work directory.

Host facts this relies on (measured, see the README's "Node mode"): root; cgroup v1 is used with ``failCgroupV1:
false`` (cgroup v2 works the same way with the cgroupfs driver); without CAP_SYS_RESOURCE containerd must clamp
oom_score_adj (``restrict_oom_score_adj``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.images import Image, operator_image, pause_image, postgres_image
from devstack.node_build import NodeBinaries, ensure_node
from devstack.pki import signed_client_cert
from devstack.processes import ComponentFailed, Process

if TYPE_CHECKING:
    from devstack.stack import Stack

BRIDGE = "ok8s0"
GATEWAY = "198.18.0.1"
POD_SUBNET = "198.18.0.0/24"
SERVICE_RANGE = "198.19.0.0/24"
KUBERNETES_SERVICE_IP = "198.19.0.1"
NODE_NAME = "operator-k8s-node"
RUNC = "/usr/sbin/runc"
CNI_PLUGINS = "/usr/lib/cni"

# Sysctls that kubelet (protectKernelDefaults: false), the bridge plugin and kube-proxy may set; restored at stop.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Paths outside the work directory that kubelet, containerd or CNI create on their own; removed if they were absent.
OUTSIDE_PATHS = (
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
    "/var/run/netns",
    "/var/lib/kubelet",
    "/etc/cni",
)
CGROUP_ROOTS = ("kubepods", "k8s.io")
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")


def _log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def free_port_on(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _chains(tool: str, table: str) -> set[str]:
    result = _sh(tool, "-w", "-t", table, "-S", check=False)
    return {line.split()[1] for line in result.stdout.splitlines() if line.startswith("-N ")}


def _mounts() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _cgroup_dirs() -> set[str]:
    found = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for name in CGROUP_ROOTS:
            if (hierarchy / name).is_dir():
                found.add(str(hierarchy / name))
    return found


@dataclass(frozen=True)
class HostState:
    """What the node may change on the machine, as it was; ``restore`` puts it back and ``differences`` names what
    still differs (empty when the machine is as it was)."""

    sysctls: dict[str, str]
    chains: dict[str, set[str]]
    rules: dict[str, list[str]]
    paths: set[str]
    mounts: list[str]
    cgroups: set[str]
    links: set[str]

    @classmethod
    def capture(cls) -> HostState:
        sysctls = {}
        for name in SYSCTLS:
            path = Path("/proc/sys") / name
            if path.exists():
                sysctls[name] = path.read_text().strip()
        chains = {f"{tool} {table}": _chains(tool, table) for tool in IPTABLES for table in TABLES}
        rules = {f"{tool} {table}": _sh(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
                 for tool in IPTABLES for table in TABLES}  # fmt: skip
        links = set(_sh("ip", "-o", "link", "show").stdout.split("\n"))
        return cls(
            sysctls=sysctls,
            chains=chains,
            rules=rules,
            paths={p for p in OUTSIDE_PATHS if os.path.lexists(p)},
            mounts=_mounts(),
            cgroups=_cgroup_dirs(),
            links={line.split(":")[1].strip().split("@")[0] for line in links if line.strip()},
        )

    def restore(self, workdir: Path) -> None:
        """Undo every change the node made (idempotent, best effort for each item, never raising)."""
        self._restore_iptables()
        self._unmount(workdir)
        for link in _current_links() - self.links:
            if link == BRIDGE or link.startswith("veth"):
                _sh("ip", "link", "delete", link, check=False)
        for directory in sorted(_cgroup_dirs() - self.cgroups):
            for root, _dirs, _files in os.walk(directory, topdown=False):
                with contextlib.suppress(OSError):
                    Path(root).rmdir()
        _unlink_container_logs(workdir)
        for path in OUTSIDE_PATHS:
            if path not in self.paths and os.path.lexists(path) and not os.path.ismount(path):
                shutil.rmtree(path, ignore_errors=True)
        self._restore_sysctls()

    def _unmount(self, workdir: Path) -> None:
        before = set(self.mounts)
        ours = (str(workdir), "/run/netns/", "/var/run/netns/", "/run/containerd")
        for mount in reversed(_mounts()):
            if mount not in before and mount.startswith(ours):
                _sh("umount", "-l", mount, check=False)

    def _restore_sysctls(self) -> None:
        for name, value in self.sysctls.items():
            path = Path("/proc/sys") / name
            if path.exists() and path.read_text().strip() != value:
                try:
                    path.write_text(value)
                except OSError as error:
                    _log(f"Could not restore sysctl {name}={value}: {error}")

    def _restore_iptables(self) -> None:
        for tool in IPTABLES:
            for table in TABLES:
                key = f"{tool} {table}"
                added = _chains(tool, table) - self.chains[key]
                kept = set(self.rules[key])
                for rule in _sh(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines():
                    if rule.startswith("-A ") and rule not in kept and rule.split()[1] not in added:
                        _sh(tool, "-w", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
                for chain in added:
                    _sh(tool, "-w", "-t", table, "-F", chain, check=False)
                for chain in added:
                    _sh(tool, "-w", "-t", table, "-X", chain, check=False)

    def differences(self) -> list[str]:
        """What differs from this state now (for tests: the machine must be as it was)."""
        now = HostState.capture()
        found = [f"sysctl {k}: {v} -> {now.sysctls.get(k)}" for k, v in self.sysctls.items() if now.sysctls.get(k) != v]
        for key, rules in self.rules.items():
            if sorted(rules) != sorted(now.rules[key]):
                found.append(f"{key}: rules {sorted(set(now.rules[key]) ^ set(rules))}")
        found += [f"path {p} appeared" for p in now.paths - self.paths]
        found += [f"mount {m} appeared" for m in set(now.mounts) - set(self.mounts)]
        found += [f"cgroup {c} appeared" for c in now.cgroups - self.cgroups]
        found += [f"link {link} appeared" for link in now.links - self.links]
        return found


def _current_links() -> set[str]:
    out = _sh("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def _unlink_container_logs(workdir: Path) -> None:
    """kubelet's links in /var/log/containers (a path it does not let one configure) that point into ``workdir``."""
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(workdir)):
                link.unlink()


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
    kubelet_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def prepare() -> tuple[NodeBinaries, list[Image]]:
        """Build (or find cached) every binary and image the node needs."""
        binaries = ensure_node()
        version = _chart_app_version()
        return binaries, [pause_image(binaries.pause), operator_image(version), postgres_image()]

    @classmethod
    def network_up(cls, workdir: Path) -> tuple[HostState, Path]:
        """Record the machine's state, then create the bridge, so that servers can bind ``GATEWAY`` before any pod."""
        if os.geteuid() != 0:
            raise ComponentFailed("Node mode needs root (network namespaces, cgroups, mounts, iptables)")
        if BRIDGE in _current_links():
            raise ComponentFailed(f"Bridge {BRIDGE} already exists: another node-mode stack runs, or one was killed "
                                  f"(remove it with `ip link delete {BRIDGE}`)")  # fmt: skip
        host = HostState.capture()
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        node_dir = Path(_sh("mktemp", "-d", "/var/tmp/operator-k8s-node-XXXXXX").stdout.strip())
        return host, node_dir

    def start(self, stack: Stack) -> None:
        """Start the node's components against ``stack``'s API server, in dependency order; node Ready at return."""
        assert stack.pki is not None
        started = time.monotonic()
        pki_dir = stack.workdir / "pki"
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        for name, subject in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
            ("controller-manager", "/CN=system:kube-controller-manager"),
            ("scheduler", "/CN=system:kube-scheduler"),
            ("kube-proxy", "/CN=system:kube-proxy"),
        ):
            signed_client_cert(pki_dir, name, subject)
        signed_client_cert(pki_dir, "kubelet-serving", f"/CN={NODE_NAME}", server_ips=(GATEWAY, "127.0.0.1"))
        ca = stack.pki.ca_cert

        def kubeconfig(name: str) -> Path:
            return _kubeconfig(conf / f"{name}.kubeconfig", stack.apiserver_url, ca, pki_dir / f"{name}.crt",
                               pki_dir / f"{name}.key")  # fmt: skip

        self._start_containerd(conf)
        self.timings["containerd and images"] = time.monotonic() - started
        kcm = kubeconfig("controller-manager")
        self._spawn("kube-controller-manager", [
            str(self.binaries.kube_controller_manager), f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}",
            f"--authorization-kubeconfig={kcm}", "--bind-address=127.0.0.1",
            f"--secure-port={free_port_on('127.0.0.1')}",
            "--leader-elect=false", "--use-service-account-credentials=true", f"--root-ca-file={ca}",
            f"--service-account-private-key-file={stack.pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", f"--cluster-signing-cert-file={ca}",
            f"--cluster-signing-key-file={stack.pki.ca_key}", f"--cert-dir={self.workdir / 'kcm-certs'}",
        ])  # fmt: skip
        scheduler = kubeconfig("scheduler")
        self._spawn("kube-scheduler", [
            str(self.binaries.kube_scheduler), f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}", f"--authorization-kubeconfig={scheduler}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port_on('127.0.0.1')}", "--leader-elect=false",
        ])  # fmt: skip
        corefile = conf / "Corefile"
        corefile.write_text(
            f".:53 {{\n  bind {GATEWAY}\n  errors\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"    kubeconfig {stack.kubeconfig}\n    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n  }}\n"
            "  cache 30\n}\n"
        )  # no forwarding: pods have no business outside this machine
        self._spawn("coredns", [str(self.binaries.coredns), "-conf", str(corefile)])
        self._start_kubelet(stack, conf, kubeconfig("kubelet"), pki_dir)
        proxy_config = conf / "kube-proxy.yaml"
        proxy_config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig("kube-proxy"))}, "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1", "healthzBindAddress": f"127.0.0.1:{free_port_on('127.0.0.1')}",
            "metricsBindAddress": f"127.0.0.1:{free_port_on('127.0.0.1')}", "clusterCIDR": POD_SUBNET,
            "nodePortAddresses": [f"{GATEWAY}/32"],
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))  # fmt: skip
        self._spawn("kube-proxy", [str(self.binaries.kube_proxy), f"--config={proxy_config}"])
        kubelet = self.processes[-2]
        kubelet.wait_until(lambda: _node_ready(stack), 120, f"registered Node {NODE_NAME} Ready")
        self.timings["node Ready"] = time.monotonic() - started
        kubelet.wait_until(
            lambda: stack.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            60,
            "seeing the default ServiceAccount (kube-controller-manager)",
        )
        self._provide_volumes(stack)
        self.timings["node usable"] = time.monotonic() - started
        _log(f"Node {NODE_NAME} Ready in {self.timings['node Ready']:.1f}s (containerd and images "
             f"{self.timings['containerd and images']:.1f}s)")  # fmt: skip

    def _provide_volumes(self, stack: Stack, count: int = 4) -> None:
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
        stack.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": volumes}))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.workdir / "logs" / f"{name}.log", env=env).start()
        self.processes.append(process)
        return process

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _sh(str(self.binaries.ctr), "--address", str(self.containerd_socket), "-n", "k8s.io", *args)

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
        config = conf / "containerd.toml"
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        config.write_text(
            f'version = 3\nroot = "{state / "root"}"\nstate = "{state / "state"}"\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            f"[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n"
            f"  [plugins.'io.containerd.cri.v1.images'.pinned_images]\n    sandbox = '{self.images[0].name}'\n"
            # Without CAP_SYS_RESOURCE runc cannot set the sandbox's oom_score_adj of -998: clamp it instead.
            f"[{runtime}]\n  restrict_oom_score_adj = true\n"
            f"  [{runtime}.containerd]\n    default_runtime_name = 'runc'\n"
            f"    [{runtime}.containerd.runtimes.runc]\n      runtime_type = 'io.containerd.runc.v2'\n"
            f"      [{runtime}.containerd.runtimes.runc.options]\n        BinaryName = '{RUNC}'\n"
            "        SystemdCgroup = false\n"
            f"  [{runtime}.cni]\n    bin_dirs = ['{CNI_PLUGINS}']\n    conf_dir = '{cni_conf}'\n"
            "[plugins.'io.containerd.grpc.v1.cri']\n  stream_server_address = '127.0.0.1'\n"
            "  stream_server_port = '0'\n"
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

    def _start_kubelet(self, stack: Stack, conf: Path, kubeconfig: Path, pki_dir: Path) -> None:
        port = free_port_on(GATEWAY)
        config = conf / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": GATEWAY, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port_on("127.0.0.1"),
            "staticPodPath": str(self.workdir / "manifests"), "podLogsDir": str(self.workdir / "pod-logs"),
            "tlsCertFile": str(pki_dir / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki_dir / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(stack.pki.ca_cert if stack.pki else "")}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDomain": "cluster.local", "clusterDNS": [GATEWAY],
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "resolvConf": str(self._resolv_conf()),
        }))  # fmt: skip
        (self.workdir / "manifests").mkdir(exist_ok=True)
        self.kubelet_url = f"https://{GATEWAY}:{port}"
        self._spawn("kubelet", [
            str(self.binaries.kubelet), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}",
        ])  # fmt: skip

    def _resolv_conf(self) -> Path:
        """Pods resolve only through the cluster's DNS: no host resolver leaks into them."""
        path = self.workdir / "resolv.conf"
        path.write_text("")
        return path

    def stop(self, stack: Stack) -> None:
        """Let kubelet tear the pods down (sandboxes, CNI DEL, volume unmounts), stop everything by pid, then undo
        every change to the machine."""
        kubelet = next((p for p in self.processes if p.name == "kubelet"), None)
        if kubelet is not None and kubelet.alive() and stack.kubeconfig.exists():
            stack.kubectl("delete", "deployments,statefulsets,replicasets,daemonsets,jobs", "--all", "--all-namespaces",
                          "--wait=false", check=False)  # fmt: skip
            stack.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
                          "--wait=true", "--timeout=60s", check=False)  # fmt: skip
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        self._stop_leftover_shims()
        self.host.restore(self.workdir)
        _sh("chmod", "-R", "u+rwX", str(self.workdir), check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_leftover_shims(self) -> None:
        """containerd's shims outlive containerd by design; ours (by socket address) are stopped with their tasks."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"containerd-shim" in part for part in cmdline[:1]) and str(
                self.containerd_socket
            ).encode() in b" ".join(cmdline):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)


def _node_ready(stack: Stack) -> bool:
    result = stack.kubectl("get", "node", NODE_NAME, "-o",
                           "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)  # fmt: skip
    return result.stdout.strip() == "True"


def _chart_app_version() -> str:
    chart = (Path(__file__).resolve().parent.parent / "charts" / "operator-k8s" / "Chart.yaml").read_text()
    for line in chart.splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise RuntimeError("charts/operator-k8s/Chart.yaml has no appVersion")
