"""Build the node's Go programs from Go modules, cached by version: kubelet, kube-proxy, kube-controller-manager,
kube-scheduler, containerd 2 (with its runc shim and ``ctr``), CoreDNS and a minimal pause program.

The Kubernetes commands come from the same generated module trick as kube-apiserver (``devstack.builds.gomodules``);
containerd and CoreDNS have no ``replace`` directives and are ``go install``-ed. runc and the CNI plugins need cgo
and come from Debian packages instead (``scripts/setup-system.sh``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.builds import versions
from devstack.builds.gomodules import (
    CACHE_ROOT,
    bin_dir,
    kubernetes_go_mod,
    kubernetes_ldflags,
    run_with_progress,
    write_module,
)

NODE_COMMANDS = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")

# The sandbox ("pause") container: sleeps until told to stop and reaps orphans, like Kubernetes' pause.c. There is
# no registry to pull registry.k8s.io/pause from, so the stack builds it.
PAUSE_MAIN = """package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsignals := make(chan os.Signal, 4)
\tsignal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range signals {
\t\tif s != syscall.SIGCHLD {
\t\t\tos.Exit(0)
\t\t}
\t\tfor {
\t\t\tvar status syscall.WaitStatus
\t\t\tif pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil); pid <= 0 || err != nil {
\t\t\t\tbreak
\t\t\t}
\t\t}
\t}
}
"""


@dataclass(frozen=True)
class NodeBinaries:
    """Paths of the node's programs."""

    kubelet: Path
    kube_proxy: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    containerd: Path
    containerd_shim: Path
    ctr: Path
    coredns: Path
    pause: Path


def _build_into(out: Path, what: str, cmd: list[str], workdir: Path) -> None:
    """Run ``cmd`` (which writes into ``{partial}``) into a scratch directory, then move it to ``out`` whole, so an
    interrupted build never leaves a half-filled cache entry."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run_with_progress(what, [arg.replace("{partial}", str(partial)) for arg in cmd], workdir)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def build_kubernetes_node(version: str = versions.KUBERNETES) -> Path:
    """kubelet, kube-proxy, kube-controller-manager and kube-scheduler of one release; a no-op when cached."""
    out = bin_dir("kubernetes-node", version)
    if all((out / command).exists() for command in NODE_COMMANDS):
        return out
    workdir = CACHE_ROOT / "build" / f"kubernetes-node-{version}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{command}"\n' for command in NODE_COMMANDS)
    write_module(
        workdir,
        kubernetes_go_mod(version),
        {"tools.go": f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"},
    )
    run_with_progress(f"go mod tidy for the kubernetes {version} node", ["go", "mod", "tidy"], workdir)
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", kubernetes_ldflags(version), "-o", "{partial}/"]
    cmd += [f"k8s.io/kubernetes/cmd/{command}" for command in NODE_COMMANDS]
    _build_into(out, f"{', '.join(NODE_COMMANDS)} {version}", cmd, workdir)
    return out


def _go_install(name: str, version: str, packages: list[str], flags: list[str]) -> Path:
    """``go install`` of modules without replace directives into the cache; a no-op when cached."""
    out = bin_dir(name, version)
    if (out / name).exists():
        return out
    workdir = CACHE_ROOT / "build" / f"{name}-{version}"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["env", "GOBIN={partial}", "go", "install", "-v", "-trimpath", *flags, *packages]
    _build_into(out, f"{name} {version}", cmd, workdir)
    return out


def build_containerd(version: str = versions.CONTAINERD) -> Path:
    """containerd, its runc v2 shim and ``ctr``."""
    module = "github.com/containerd/containerd/v2"
    packages = [f"{module}/cmd/{command}@{version}" for command in ("containerd", "containerd-shim-runc-v2", "ctr")]
    return _go_install("containerd", version, packages, ["-tags", "no_btrfs", "-ldflags",
                                                         f"-s -w -X {module}/version.Version={version}"])  # fmt: skip


def build_coredns(version: str = versions.COREDNS) -> Path:
    """CoreDNS, the cluster's DNS server."""
    return _go_install("coredns", version, [f"github.com/coredns/coredns@{version}"], ["-ldflags", "-s -w"])


def build_pause() -> Path:
    """The sandbox container's program; a no-op when cached."""
    out = bin_dir("pause", versions.PAUSE)
    if (out / "pause").exists():
        return out
    workdir = CACHE_ROOT / "build" / f"pause-{versions.PAUSE}"
    write_module(workdir, "module operator-k8s.local/pause\n\ngo 1.22\n", {"main.go": PAUSE_MAIN})
    _build_into(out, "pause", ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", "{partial}/pause", "."], workdir)
    return out


def ensure_node() -> NodeBinaries:
    """Build whatever the node needs and the cache lacks."""
    started = time.monotonic()
    pause = build_pause()
    containerd = build_containerd()
    coredns = build_coredns()
    kube = build_kubernetes_node()
    print(f"[devstack] Node binaries ready in {time.monotonic() - started:.0f}s under {CACHE_ROOT / 'bin'}", flush=True)
    return NodeBinaries(
        kubelet=kube / "kubelet",
        kube_proxy=kube / "kube-proxy",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        containerd=containerd / "containerd",
        containerd_shim=containerd / "containerd-shim-runc-v2",
        ctr=containerd / "ctr",
        coredns=coredns / "coredns",
        pause=pause / "pause",
    )


if __name__ == "__main__":
    print(ensure_node())
