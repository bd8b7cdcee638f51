"""Build etcd, kube-apiserver, kubectl, helm and Prometheus from Go modules, cached by version.

Every binary is built through the Go module proxy with the machine's Go, from the generated modules of
``devstack.builds.gomodules``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.builds import versions
from devstack.builds.gomodules import (
    CACHE_ROOT,
    bin_dir,
    go,
    kubernetes_go_mod,
    kubernetes_ldflags,
    run_with_progress,
    write_module,
)
from devstack.builds.prometheus import build_prometheus


@dataclass(frozen=True)
class Binaries:
    """Paths of the tools a stack starts; helm, which only the install tier and ``manifests`` run, is built on first
    use (a cold ``make demo`` never builds it)."""

    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    prometheus: Path

    @property
    def helm(self) -> Path:
        return build_helm()

    @property
    def helm_dir(self) -> Path:
        """Where helm is (or will be) installed: for a PATH, without building it."""
        return helm_dir()


def build_kubernetes(version: str = versions.KUBERNETES) -> tuple[Path, Path]:
    """Build kube-apiserver and kubectl of one release; a no-op when the cache has them."""
    out = bin_dir("kubernetes", version)
    apiserver, kubectl = out / "kube-apiserver", out / "kubectl"
    if apiserver.exists() and kubectl.exists():
        return apiserver, kubectl
    workdir = CACHE_ROOT / "build" / f"kubernetes-{version}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tools = (
        "//go:build tools\n\npackage tools\n\nimport (\n"
        '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
    )
    write_module(workdir, kubernetes_go_mod(version), {"tools.go": tools})
    run_with_progress(f"go mod tidy for kubernetes {version}", ["go", "mod", "tidy"], workdir)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", kubernetes_ldflags(version), "-o", str(staging) + "/"]
    cmd += ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"]
    run_with_progress(f"kube-apiserver and kubectl {version}", cmd, workdir)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return apiserver, kubectl


def build_etcd(version: str = versions.ETCD) -> Path:
    """Build etcd from a module whose main calls etcdmain.Main; a no-op when cached."""
    out = bin_dir("etcd", version)
    binary = out / "etcd"
    if binary.exists():
        return binary
    workdir = CACHE_ROOT / "build" / f"etcd-{version}"
    main = (
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    go_mod = f"module operator-k8s.local/etcdbuild\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 {version}\n"
    write_module(workdir, go_mod, {"main.go": main})
    run_with_progress(f"go mod tidy for etcd {version}", ["go", "mod", "tidy"], workdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "etcd.partial"
    run_with_progress(
        f"etcd {version}", ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], workdir
    )
    tmp.rename(binary)
    return binary


def _helm_ldflags(version: str) -> str:
    """The flags helm's own release build sets: its version, and the Kubernetes version ``helm template`` assumes.

    Without the latter an offline ``helm template`` assumes Kubernetes v1.20 and refuses any chart that requires a
    newer one (ours says >=1.28). helm's Makefile derives it from the client-go it builds with (major + 1, minor).
    """
    info = json.loads(go(["mod", "download", "-json", f"helm.sh/helm/v3@{version}"], cwd=CACHE_ROOT))
    client_go = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", Path(info["GoMod"]).read_text(), re.MULTILINE)
    if client_go is None:
        raise RuntimeError(f"No k8s.io/client-go requirement found in helm.sh/helm/v3@{version} go.mod")
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}"]
    for package in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {package}.k8sVersionMajor=1", f"-X {package}.k8sVersionMinor={client_go.group(1)}"]
    return " ".join(flags)


def helm_dir(version: str = versions.HELM) -> Path:
    return bin_dir("helm", f"{version}-release")  # "-release": not the earlier builds without the Kubernetes flags


def build_helm(version: str = versions.HELM) -> Path:
    """``go install`` helm (its module has no replace directives) as its release is built; a no-op when cached."""
    out = helm_dir(version)
    binary = out / "helm"
    if binary.exists():
        return binary
    print(f"[devstack] helm {version} is built on first use (the install tier, manifests)", flush=True)
    workdir = CACHE_ROOT / "build" / f"helm-{version}"
    workdir.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cmd = [
        "go",
        "install",
        "-v",
        "-trimpath",
        "-ldflags",
        _helm_ldflags(version),
        f"helm.sh/helm/v3/cmd/helm@{version}",
    ]
    env_cmd = ["env", f"GOBIN={partial}", *cmd]
    run_with_progress(f"helm {version}", env_cmd, workdir)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return binary


def ensure_all() -> Binaries:
    """Build whatever a stack starts that is missing from the cache (etcd, kube-apiserver, kubectl, Prometheus)."""
    started = time.monotonic()
    etcd = build_etcd()
    apiserver, kubectl = build_kubernetes()
    prometheus = build_prometheus()
    print(f"[devstack] Binaries ready in {time.monotonic() - started:.0f}s under {CACHE_ROOT / 'bin'}", flush=True)
    return Binaries(etcd=etcd, kube_apiserver=apiserver, kubectl=kubectl, prometheus=prometheus)


if __name__ == "__main__":
    ensure_all()
    sys.exit(0)
