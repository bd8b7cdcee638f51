"""Plain manifests for kubectl-only installs, rendered from the Helm chart (the chart is the source)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devstack.builds import versions
from devstack.builds.binaries import build_helm
from devstack.host.paths import REPO_ROOT

CHART = REPO_ROOT / "charts" / "operator-k8s"
OUTPUT = REPO_ROOT / "deploy" / "operator-k8s.yaml"
NAMESPACE = "operator-k8s"
HEADER = f"""# Generated from charts/operator-k8s by `make manifests`; do not edit (a test keeps it in sync).
# kubectl-only install into namespace {NAMESPACE}:
#   kubectl apply -f deploy/
#   kubectl -n {NAMESPACE} create secret generic operator-k8s-database --from-literal=dsn='postgresql://...'
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    pod-security.kubernetes.io/enforce: restricted
"""


def render(helm: Path | None = None) -> str:
    helm = helm or build_helm()
    rendered = subprocess.run(
        [str(helm), "template", "operator-k8s", str(CHART), "--namespace", NAMESPACE, "--include-crds",
         "--kube-version", versions.KUBERNETES, "--set", "database.existingSecret=operator-k8s-database"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return HEADER + rendered


def write() -> Path:
    OUTPUT.write_text(render())
    return OUTPUT
