"""The Go module builds every cached binary shares: the cache's layout, the Go environment, a long build with
progress lines, and the generated module that pins Kubernetes' staging modules to their published twins.

Kubernetes and etcd cannot be ``go install``-ed directly (their go.mod files carry ``replace`` directives to local
staging directories), so each is built from a small generated module of our own that pins the published versions
instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("OPERATOR_K8S_CACHE", Path.home() / ".cache" / "operator-k8s"))


def bin_dir(name: str, version: str) -> Path:
    return CACHE_ROOT / "bin" / f"{name}-{version}"


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"})
    return env


def run_with_progress(what: str, cmd: list[str], cwd: Path) -> None:
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
            result = subprocess.run(cmd, cwd=cwd, env=go_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    finally:
        done.set()
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"Building {what} failed (exit {result.returncode}); last lines of {log_path}:\n{tail}")
    print(f"[devstack] Built {what} in {time.monotonic() - started:.0f}s", flush=True)


def write_module(workdir: Path, go_mod: str, sources: dict[str, str]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "go.mod").write_text(go_mod)
    for name, text in sources.items():
        (workdir / name).write_text(text)


def go(args: list[str], cwd: Path) -> str:
    return subprocess.run(["go", *args], cwd=cwd, env=go_env(), check=True, capture_output=True, text=True).stdout


def kubernetes_go_mod(version: str) -> str:
    """A go.mod that requires k8s.io/kubernetes and replaces every staging module with its published twin."""
    info = json.loads(go(["mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=CACHE_ROOT))
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


def kubernetes_ldflags(version: str) -> str:
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
