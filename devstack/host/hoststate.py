"""What node mode may change on the machine, recorded before it starts and put back at stop, even after a crash.

A node changes the machine outside its work directory: kube-proxy's and kubelet's iptables chains, the bridge and
the veths of pods, network namespaces, mounts, cgroups, kubelet's ``/var/log/containers`` links, a few sysctls and
directories the runtime creates. ``HostState.capture`` records the machine before the bridge exists; ``restore`` undoes
what the node did, touching only what is recognisably the node's own (chains named KUBE-/CNI-/OK8S-, rules naming
them or tagged with ``RULE_COMMENT``, veths on ``BRIDGE``, ``cni-`` network namespaces, the node's cgroup root), so
another runtime's objects on the same machine are left alone. The record is also written next to the node's work
directory with the pids the node started: a later run finds the record of a run that was killed and cleans up after
it (``recover_abandoned``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devstack.host.processes import log

BRIDGE = "ok8s0"
GATEWAY = "198.18.0.1"
RESERVED_RANGE = "198.18.0.0/15"  # the benchmarking range (RFC 2544): bridge, pods and Services, never routed
POD_SUBNET = "198.18.0.0/24"
SERVICE_RANGE = "198.19.0.0/24"
KUBERNETES_SERVICE_IP = "198.19.0.1"  # the kubernetes Service, first address of SERVICE_RANGE
CGROUP_ROOT = "operator-k8s-devstack"  # kubelet's cgroupRoot: every pod's cgroup lives under it
NODE_DIRS = "/var/tmp/operator-k8s-node-"
RULE_COMMENT = "operator-k8s devstack node"
ISOLATION_CHAIN = "OK8S-ISOLATION"
OUR_CHAIN_PREFIXES = ("KUBE-", "OK8S-")  # kube-proxy's and kubelet's, and the fence of ``isolate``
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")
# Sysctls that kubelet (protectKernelDefaults: false), kube-proxy and the bridge plugin may set.
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
    "/opt/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/run/nri",
    "/var/lib/kubelet",
    "/etc/cni",
)
NETNS_DIR = Path("/run/netns")
STATE_FILE = "host-state.json"
PIDS_FILE = "pids"
STACK_DIR_FILE = "stack-workdir"
# Held from before the machine is recorded until it is restored: one node per machine, and a record found while
# holding it belongs to a run that is gone (every live run holds the lock).
LOCK_FILE = Path("/run/lock/operator-k8s-devstack-node.lock")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def _rules(tool: str, table: str) -> list[str]:
    return sh(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()


def is_node_rule(rule: str) -> bool:
    """A rule the node added: it names one of the node's chains, carries its comment, or names its bridge/ranges."""
    words = shlex.split(rule)
    chain = words[1] if len(words) > 1 else ""
    return (
        chain.startswith(OUR_CHAIN_PREFIXES)
        or any(w.startswith(OUR_CHAIN_PREFIXES) for w in words[2:])
        or RULE_COMMENT in rule
        or BRIDGE in words
    )


def links() -> set[str]:
    out = sh("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def _bridge_ports() -> list[str]:
    out = sh("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]


def _mounts() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def cgroup_roots() -> list[Path]:
    """Where the node's cgroup root lives: in every cgroup v1 hierarchy and, on a hybrid layout, in the cgroup v2
    mount beside them (``unified``: runc creates the pods' cgroups there too); once on a cgroup v2 machine."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base / CGROUP_ROOT]
    return [h / CGROUP_ROOT for h in sorted(base.iterdir()) if h.is_dir() and not h.is_symlink()]


def _stray_cgroups() -> set[str]:
    """Pod cgroups outside the node's root (kubelet's default places): none may appear."""
    base = Path("/sys/fs/cgroup")
    candidates = [base, *(h for h in base.iterdir() if h.is_dir() and not h.is_symlink())]
    return {
        str(c / name) for c in candidates for name in ("kubepods", "kubepods.slice", "k8s.io") if (c / name).is_dir()
    }


@dataclass(frozen=True)
class HostState:
    """The machine as the node found it (only what the node may change)."""

    sysctls: dict[str, str]
    rules: dict[str, list[str]]
    paths: list[str]
    mounts: list[str]
    netns: list[str]
    links: list[str]
    stray_cgroups: list[str]

    @classmethod
    def capture(cls) -> HostState:
        sysctls = {}
        for name in SYSCTLS:
            path = Path("/proc/sys") / name
            if path.exists():
                sysctls[name] = path.read_text().strip()
        return cls(
            sysctls=sysctls,
            rules={f"{tool} {table}": _rules(tool, table) for tool in IPTABLES for table in TABLES},
            paths=[p for p in OUTSIDE_PATHS if os.path.lexists(p)],
            mounts=_mounts(),
            netns=sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else [],
            links=sorted(links()),
            stray_cgroups=sorted(_stray_cgroups()),
        )

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: Path) -> HostState:
        return cls(**json.loads((directory / STATE_FILE).read_text()))

    def restore(self, node_dir: Path) -> list[str]:
        """Undo what the node changed; idempotent, every step runs even if an earlier one fails; the names of the
        steps that failed."""
        failed = []
        for step in (
            _kill_pod_processes,
            lambda: _kill_shims(node_dir),
            self._restore_iptables,
            lambda: self._unmount(node_dir),
            self._remove_netns,
            self._remove_network,
            _remove_cgroup_root,
            lambda: _unlink_container_logs(node_dir),
            self._remove_paths,
            self._restore_sysctls,
        ):
            try:
                step()
            except Exception as error:
                log(f"Restoring the machine: a step failed ({error}); the others run")
                failed.append(getattr(step, "__name__", "step"))
        return failed

    def _restore_iptables(self) -> None:
        for tool in IPTABLES:
            for table in TABLES:
                before = set(self.rules[f"{tool} {table}"])
                now = _rules(tool, table)
                for rule in now:
                    if rule.startswith("-A ") and rule not in before and is_node_rule(rule):
                        sh(tool, "-w", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
                added = [r.split()[1] for r in now if r.startswith("-N ") and r not in before and is_node_rule(r)]
                for chain in added:
                    sh(tool, "-w", "-t", table, "-F", chain, check=False)
                for chain in added:
                    sh(tool, "-w", "-t", table, "-X", chain, check=False)

    def _unmount(self, node_dir: Path) -> None:
        before = set(self.mounts)
        ours = (f"{node_dir}/", f"{NETNS_DIR}/cni-", f"/var{NETNS_DIR}/cni-")
        for mount in reversed(_mounts()):
            if mount not in before and mount.startswith(ours):
                sh("umount", "-l", mount, check=False)

    def _remove_netns(self) -> None:
        if NETNS_DIR.is_dir():
            for entry in NETNS_DIR.iterdir():
                if entry.name.startswith("cni-") and entry.name not in self.netns:
                    entry.unlink(missing_ok=True)

    def _remove_network(self) -> None:
        for port in _bridge_ports():
            if port not in self.links:
                sh("ip", "link", "delete", port, check=False)
        if BRIDGE in links() and BRIDGE not in self.links:
            sh("ip", "link", "delete", BRIDGE, check=False)

    def _remove_paths(self) -> None:
        for path in OUTSIDE_PATHS:
            if path not in self.paths and os.path.lexists(path) and not os.path.ismount(path):
                shutil.rmtree(path, ignore_errors=True)

    def _restore_sysctls(self) -> None:
        for name, value in self.sysctls.items():
            path = Path("/proc/sys") / name
            if path.exists() and path.read_text().strip() != value:
                path.write_text(value)

    def differences(self) -> list[str]:
        """What the node left behind (for tests: the machine must be as it was); changes that are not the node's
        kinds of objects are not reported."""
        now = HostState.capture()
        found = [f"sysctl {k}: {v} -> {now.sysctls.get(k)}" for k, v in self.sysctls.items() if now.sysctls.get(k) != v]
        for key, rules in self.rules.items():
            found += [f"{key}: {rule}" for rule in now.rules[key] if rule not in rules and is_node_rule(rule)]
        found += [f"path {p} appeared" for p in set(now.paths) - set(self.paths)]
        found += [
            f"mount {m} appeared" for m in set(now.mounts) - set(self.mounts) if "operator-k8s" in m or "/netns/" in m
        ]
        found += [f"netns {n} appeared" for n in set(now.netns) - set(self.netns)]
        found += [f"cgroup {c} appeared" for c in set(now.stray_cgroups) - set(self.stray_cgroups)]
        found += [f"cgroup {c} left" for c in cgroup_roots() if c.exists()]
        found += [
            f"link {link} appeared"
            for link in set(now.links) - set(self.links)
            if link == BRIDGE or link.startswith("veth")
        ]
        return found


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("Node mode needs root (network namespaces, cgroups, mounts, iptables)")


def check_machine() -> None:
    """Refuse early, with a reason, where node mode cannot work or would collide with the machine's own network.
    Called with the lock held and abandoned runs recovered, so whatever uses the range is not a node-mode run's,
    unless one of them could not be undone (its record stays)."""
    require_root()
    unrecovered = records()
    reserved = ipaddress.ip_network(RESERVED_RANGE)
    for line in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines() + sh("ip", "-4", "route").stdout.splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                if "/" in word and ipaddress.ip_network(word, strict=False).overlaps(reserved):
                    raise RuntimeError(
                        f"{RESERVED_RANGE} is already in use on this machine ({line.strip()}): "
                        + (f"a killed node-mode run could not be undone entirely (its record: {unrecovered[0]})"
                           if unrecovered else "the machine's own network uses the benchmarking range")
                    )  # fmt: skip
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        raise RuntimeError("Bridged traffic must pass iptables (Services between pods on the bridge): load the "
                           "br_netfilter module (`modprobe br_netfilter`)")  # fmt: skip


def isolate() -> None:
    """Only the bridge and the machine itself may reach the node's addresses, and nothing is forwarded out of them:
    the bridge plugin turns IP forwarding on for the whole machine, these rules keep the node's ranges off it."""
    comment = ["-m", "comment", "--comment", RULE_COMMENT]
    sh("iptables", "-w", "-N", ISOLATION_CHAIN)
    for rule in (["-i", "lo", "-j", "RETURN"], ["-i", BRIDGE, "-j", "RETURN"], ["-j", "DROP"]):
        sh("iptables", "-w", "-A", ISOLATION_CHAIN, *rule, *comment)
    sh("iptables", "-w", "-I", "INPUT", "-d", RESERVED_RANGE, *comment, "-j", ISOLATION_CHAIN)
    sh("iptables", "-w", "-I", "FORWARD", "-s", RESERVED_RANGE, "!", "-o", BRIDGE, *comment, "-j", "DROP")
    sh("iptables", "-w", "-I", "FORWARD", "-d", RESERVED_RANGE, "!", "-i", BRIDGE, *comment, "-j", "DROP")
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")


def make_cgroup_root() -> None:
    """kubelet refuses a cgroupRoot that does not exist."""
    for root in cgroup_roots():
        root.mkdir(exist_ok=True)


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for root in cgroup_roots():
        if root.is_dir():
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids |= {int(p) for p in procs.read_text().split()}
    return pids


def _kill_pod_processes() -> None:
    """Every process still in the node's cgroups (containers whose shim died first), until none is left."""
    deadline = time.monotonic() + 10
    while (pids := _cgroup_pids()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _kill_shims(node_dir: Path) -> None:
    """containerd's shims outlive containerd by design; the node's (those serving its socket) go with it."""
    for pid, argv in _processes():
        if argv and "containerd-shim" in argv[0] and any(str(node_dir) in arg for arg in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")))
    return found


def _remove_cgroup_root() -> None:
    for root in cgroup_roots():
        if root.is_dir():
            for directory, _dirs, _files in os.walk(root, topdown=False):
                with contextlib.suppress(OSError):
                    Path(directory).rmdir()


def _unlink_container_logs(node_dir: Path) -> None:
    """kubelet's links in /var/log/containers (a path it does not let one configure) that point into ``node_dir``."""
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(node_dir)):
                link.unlink()


def lock() -> int:
    """Take the machine's node lock (a file descriptor; closing it releases the lock), or refuse with a reason."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RuntimeError(f"Another node-mode stack runs on this machine (it holds {LOCK_FILE})") from None
    return descriptor


def _start_time(pid: int) -> str | None:
    """A process's start time (in clock ticks since boot): with the boot id, what tells it from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def record_pid(node_dir: Path, pid: int) -> None:
    """Remember a process the node's stack started, for ``recover_abandoned``."""
    with (node_dir / PIDS_FILE).open("a") as pids:
        pids.write(f"{_boot_id()} {pid} {_start_time(pid)}\n")


def records() -> list[Path]:
    """The node directories of runs with a record on disk (the running one's too, if any)."""
    return [state.parent for state in sorted(Path(NODE_DIRS).parent.glob(Path(NODE_DIRS).name + "*/" + STATE_FILE))]


def recorded_processes(node_dir: Path) -> list[int]:
    """The processes a run recorded that are still alive: the very processes, not pids reused since."""
    recorded = (node_dir / PIDS_FILE).read_text().splitlines() if (node_dir / PIDS_FILE).exists() else []
    alive = []
    for line in recorded:
        boot, pid, started = line.split()
        if boot == _boot_id() and _start_time(int(pid)) == started:
            alive.append(int(pid))
    return alive


def recover_abandoned() -> None:
    """Stop the processes and undo the changes of node-mode runs that were killed before they could stop. Called
    with the lock held, so every record found is a dead run's."""
    for node_dir in records():
        host = HostState.load(node_dir)
        log(f"Cleaning up after an abandoned node-mode run ({node_dir})")
        for pid in recorded_processes(node_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        failed = host.restore(node_dir)
        if failed:
            log(f"Could not undo everything of {node_dir} ({', '.join(failed)}); its record stays for the next run")
            continue
        if (node_dir / STACK_DIR_FILE).exists():
            shutil.rmtree((node_dir / STACK_DIR_FILE).read_text().strip(), ignore_errors=True)
        shutil.rmtree(node_dir, ignore_errors=True)
