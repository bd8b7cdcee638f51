"""Build etcd, kube-apiserver, kubectl, helm and Prometheus from Go modules, cached by version.

Every binary is built through the Go module proxy with the machine's Go. Kubernetes and etcd cannot be
``go install``-ed directly (their go.mod files carry ``replace`` directives to local staging directories), so each is
built from a small generated module of our own that pins the published versions instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devstack import versions

CACHE_ROOT = Path(os.environ.get("OPERATOR_K8S_CACHE", Path.home() / ".cache" / "operator-k8s"))


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


def _bin_dir(name: str, version: str) -> Path:
    return CACHE_ROOT / "bin" / f"{name}-{version}"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"})
    return env


def _run_with_progress(what: str, cmd: list[str], cwd: Path) -> None:
    """Run a long Go command, printing what is built and the elapsed time every 30 s."""
    print(f"[devstack] Building {what}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    log_path = cwd / "build.log"
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(30):
            lines = log_path.read_text(errors="replace").count("\n") if log_path.exists() else 0
            elapsed = time.monotonic() - started
            print(f"[devstack] Still building {what}: {elapsed:.0f}s elapsed, {lines} packages so far", flush=True)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        with log_path.open("w") as log:
            result = subprocess.run(cmd, cwd=cwd, env=_go_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    finally:
        done.set()
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"Building {what} failed (exit {result.returncode}); last lines of {log_path}:\n{tail}")
    print(f"[devstack] Built {what} in {time.monotonic() - started:.0f}s", flush=True)


def _write_module(workdir: Path, go_mod: str, sources: dict[str, str]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "go.mod").write_text(go_mod)
    for name, text in sources.items():
        (workdir / name).write_text(text)


def _go(args: list[str], cwd: Path) -> str:
    return subprocess.run(["go", *args], cwd=cwd, env=_go_env(), check=True, capture_output=True, text=True).stdout


def _kubernetes_go_mod(version: str) -> str:
    """A go.mod that requires k8s.io/kubernetes and replaces every staging module with its published twin."""
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=CACHE_ROOT))
    upstream = Path(info["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+) => \./staging/", upstream, flags=re.MULTILINE)))
    if not staging:
        raise RuntimeError(f"No staging modules found in k8s.io/kubernetes@{version} go.mod")
    go_directive = re.search(r"^go (\S+)$", upstream, flags=re.MULTILINE)
    godebug = re.search(r"^godebug .+$", upstream, flags=re.MULTILINE)
    staging_version = "v0." + version.removeprefix("v1.")
    lines = ["module operator-k8s.local/kubebuild", ""]
    lines.append(f"go {go_directive.group(1) if go_directive else '1.26.0'}")
    if godebug:
        lines += ["", godebug.group(0)]
    lines += ["", f"require k8s.io/kubernetes {version}", "", "replace ("]
    lines += [f"\t{module} => {module} {staging_version}" for module in staging]
    lines += [")", ""]
    return "\n".join(lines)


def _kubernetes_ldflags(version: str) -> str:
    major, minor = version.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def build_kubernetes(version: str = versions.KUBERNETES) -> tuple[Path, Path]:
    """Build kube-apiserver and kubectl of one release; a no-op when the cache has them."""
    out = _bin_dir("kubernetes", version)
    apiserver, kubectl = out / "kube-apiserver", out / "kubectl"
    if apiserver.exists() and kubectl.exists():
        return apiserver, kubectl
    workdir = CACHE_ROOT / "build" / f"kubernetes-{version}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tools = (
        "//go:build tools\n\npackage tools\n\nimport (\n"
        '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
    )
    _write_module(workdir, _kubernetes_go_mod(version), {"tools.go": tools})
    _run_with_progress(f"go mod tidy for kubernetes {version}", ["go", "mod", "tidy"], workdir)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", _kubernetes_ldflags(version), "-o", str(staging) + "/"]
    cmd += ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"]
    _run_with_progress(f"kube-apiserver and kubectl {version}", cmd, workdir)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return apiserver, kubectl


def build_etcd(version: str = versions.ETCD) -> Path:
    """Build etcd from a module whose main calls etcdmain.Main; a no-op when cached."""
    out = _bin_dir("etcd", version)
    binary = out / "etcd"
    if binary.exists():
        return binary
    workdir = CACHE_ROOT / "build" / f"etcd-{version}"
    main = (
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    go_mod = f"module operator-k8s.local/etcdbuild\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 {version}\n"
    _write_module(workdir, go_mod, {"main.go": main})
    _run_with_progress(f"go mod tidy for etcd {version}", ["go", "mod", "tidy"], workdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "etcd.partial"
    _run_with_progress(
        f"etcd {version}", ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], workdir
    )
    tmp.rename(binary)
    return binary


def _helm_ldflags(version: str) -> str:
    """The flags helm's own release build sets: its version, and the Kubernetes version ``helm template`` assumes.

    Without the latter an offline ``helm template`` assumes Kubernetes v1.20 and refuses any chart that requires a
    newer one (ours says >=1.28). helm's Makefile derives it from the client-go it builds with (major + 1, minor).
    """
    info = json.loads(_go(["mod", "download", "-json", f"helm.sh/helm/v3@{version}"], cwd=CACHE_ROOT))
    client_go = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", Path(info["GoMod"]).read_text(), re.MULTILINE)
    if client_go is None:
        raise RuntimeError(f"No k8s.io/client-go requirement found in helm.sh/helm/v3@{version} go.mod")
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}"]
    for package in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {package}.k8sVersionMajor=1", f"-X {package}.k8sVersionMinor={client_go.group(1)}"]
    return " ".join(flags)


def helm_dir(version: str = versions.HELM) -> Path:
    return _bin_dir("helm", f"{version}-release")  # "-release": not the earlier builds without the Kubernetes flags


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
    _run_with_progress(f"helm {version}", env_cmd, workdir)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return binary


def ensure_all() -> Binaries:
    """Build whatever a stack starts that is missing from the cache (etcd, kube-apiserver, kubectl, Prometheus)."""
    from devstack.prometheus_build import build_prometheus  # noqa: PLC0415 - it builds on this module's helpers

    started = time.monotonic()
    etcd = build_etcd()
    apiserver, kubectl = build_kubernetes()
    prometheus = build_prometheus()
    print(f"[devstack] Binaries ready in {time.monotonic() - started:.0f}s under {CACHE_ROOT / 'bin'}", flush=True)
    return Binaries(etcd=etcd, kube_apiserver=apiserver, kubectl=kubectl, prometheus=prometheus)


if __name__ == "__main__":
    ensure_all()
    sys.exit(0)
