"""Run the real operator as a child process against a stack (for the demo and restart tests)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process, free_port
from devstack.world.stack import Stack


def operator_process(
    stack: Stack, log_name: str = "operator.log", *, kubeconfig: Path | None = None, **env: str
) -> Process:
    """``python -m operator_k8s`` with the stack's DSN and (by default) admin kubeconfig; ``env`` overrides
    OPERATOR_K8S_* settings. Pass a ServiceAccount token's kubeconfig to run with the chart's RBAC."""
    kubeconfig = kubeconfig or stack.kubeconfig
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "KUBECONFIG": str(kubeconfig),
        "OPERATOR_K8S_DATABASE_DSN": stack.operator_dsn,
        "OPERATOR_K8S_TICK_SECONDS": "0.5",
        "OPERATOR_K8S_METRICS_PORT": str(free_port()),
        "OPERATOR_K8S_HEALTH_PORT": str(free_port()),
        **env,
    }
    process = Process(
        "operator",
        [sys.executable, "-m", "operator_k8s", "--kubeconfig", str(kubeconfig)],
        Path(stack.workdir) / "logs" / log_name,
        env=environment,
    )
    stack.processes.append(process)
    return process.start()
