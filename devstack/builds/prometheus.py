"""Build Prometheus with Kubernetes service discovery, cached by version.

Debian's ``prometheus`` package (2.42.0+ds) is built without ``kubernetes_sd_configs`` (the Kubernetes client is not
packaged), and the store world's Prometheus discovers pods through the API server as real set-ups do. So the stack
builds the very same release, 2.42.0 (module ``github.com/prometheus/prometheus v0.42.0``), from the Go module proxy
with every service discovery it ships with. ``promtool`` still comes from Debian.

Like Kubernetes and etcd, Prometheus' own go.mod carries ``replace`` and ``exclude`` directives, which count only in
the main module: a small module of our own requires the release and repeats them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from devstack.builds.gomodules import CACHE_ROOT, bin_dir, run_with_progress, write_module

PROMETHEUS_VERSION = "2.42.0"
PROMETHEUS_MODULE_VERSION = "v0.42.0"

GO_MOD = f"""module operator-k8s.local/prometheusbuild

go 1.18

require github.com/prometheus/prometheus {PROMETHEUS_MODULE_VERSION}

// Only the Windows build of moby/term needs it; pinned so that `go mod tidy` never looks for its latest version.
require github.com/Azure/go-ansiterm v0.0.0-20210617225240-d185dfc1b5a1 // indirect

// From github.com/prometheus/prometheus@{PROMETHEUS_MODULE_VERSION}'s go.mod.
replace (
\tk8s.io/klog => github.com/simonpasquier/klog-gokit v0.3.0
\tk8s.io/klog/v2 => github.com/simonpasquier/klog-gokit/v3 v3.0.0
)

exclude github.com/linode/linodego v1.0.0

exclude (
\tgithub.com/grpc-ecosystem/grpc-gateway v1.14.7
\tgoogle.golang.org/api v0.30.0
)
"""
TOOLS = '//go:build tools\n\npackage tools\n\nimport _ "github.com/prometheus/prometheus/cmd/prometheus"\n'


def build_prometheus(version: str = PROMETHEUS_VERSION) -> Path:
    """The path of a Prometheus ``version`` with Kubernetes discovery; built when the cache does not have it."""
    out = bin_dir("prometheus", version)
    binary = out / "prometheus"
    if binary.exists():
        return binary
    workdir = CACHE_ROOT / "build" / f"prometheus-{version}"
    write_module(workdir, GO_MOD, {"tools.go": TOOLS})
    run_with_progress(f"go mod tidy for prometheus {version}", ["go", "mod", "tidy"], workdir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    version_package = "github.com/prometheus/common/version"
    ldflags = f"-s -w -X {version_package}.Version={version} -X {version_package}.Branch=HEAD"
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(partial / "prometheus")]
    run_with_progress(f"prometheus {version}", [*cmd, "github.com/prometheus/prometheus/cmd/prometheus"], workdir)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return binary


if __name__ == "__main__":
    print(build_prometheus())
