"""The shipped artefact: the wheel builds, installs into a clean virtualenv, and runs against the stack.

The image built from the Dockerfile runs as a pod in the install tier (tests/node).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process, free_port
from devstack.world.stack import Stack
from tests.stackutil import condition_status, eventually, monitored_cluster, simulator

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the built wheel (and its dependencies) installed; its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO_ROOT)],
                   check=True, capture_output=True)  # fmt: skip
    wheel = next((root / "dist").glob("operator_k8s-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "operator_k8s/adapters/sql/0001_tickets.sql" in names
    assert not [n for n in names if n.startswith(("devstack/", "tests/"))], "only the operator is shipped"
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    pip = subprocess.run(
        [str(root / "venv/bin/pip"), "install", "-q", str(wheel)], capture_output=True, text=True, check=False
    )
    assert pip.returncode == 0, pip.stderr
    return root / "venv" / "bin"


def test_entry_point_help(installed: Path) -> None:
    for args in ([], ["tickets"]):
        result = subprocess.run([str(installed / "operator-k8s"), *args, "--help"], capture_output=True, text=True,
                                cwd="/", check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "usage: operator-k8s" in result.stdout


def test_missing_database_setting_is_a_clear_error(installed: Path) -> None:
    result = subprocess.run(
        [str(installed / "operator-k8s")], capture_output=True, text=True, cwd="/", env={}, check=False
    )
    assert result.returncode == 2
    assert "Set OPERATOR_K8S_DATABASE_DSN or OPERATOR_K8S_DATABASE_DSN_FILE" in result.stderr


def test_installed_operator_runs_against_the_stack(installed: Path, stack: Stack, namespace: str) -> None:
    dsn_file = stack.workdir / f"dsn-{namespace}"
    dsn_file.write_text(stack.postgres_dsn + "\n")
    operator = Process(
        "operator-wheel",
        [str(installed / "operator-k8s"), "--kubeconfig", str(stack.kubeconfig)],
        stack.workdir / "logs" / f"operator-wheel-{namespace}.log",
        env={"OPERATOR_K8S_DATABASE_DSN_FILE": str(dsn_file), "OPERATOR_K8S_TICK_SECONDS": "0.5",
             "OPERATOR_K8S_METRICS_PORT": str(free_port()), "OPERATOR_K8S_HEALTH_PORT": str(free_port()),
             "OPERATOR_K8S_NAMESPACES": namespace, "PATH": "/usr/bin:/bin"},
    ).start()  # fmt: skip
    stack.processes.append(operator)
    try:
        simulator(stack, "PUT", f"/clusters/{namespace}/tikv", {"stores": 3, "labels": {"app": "tikv"}})
        stack.kubectl("apply", "-f", "-", input_text=json.dumps(monitored_cluster("tikv", namespace, stack)))
        eventually(
            lambda: condition_status(stack, namespace, "tikv", "Healthy") == "True", what="Healthy=True", timeout=90
        )
        assert stack.postgres_dsn not in operator.log_path.read_text(), "the DSN never reaches the logs"
    finally:
        operator.stop()
