"""Two replicas with kopf peering: exactly one is active; the standby takes over when the active one dies."""

from __future__ import annotations

import json
import signal

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.stackutil import (
    condition,
    eventually,
    get_json,
    health_url,
    http_status,
    metric_value,
    scrape_metrics,
    start_cluster,
)

pytestmark = pytest.mark.stack


def cycles(operator: Process) -> float:
    return metric_value(scrape_metrics(operator), r"operator_k8s_check_cycles_total\{.*\}")


def resumed(operator: Process) -> bool:
    """Whether kopf's last peering decision in this replica's log is to run (a replica starts paused, and resumes
    once it sees no peer with a higher priority)."""
    text = operator.log_path.read_text() if operator.log_path.exists() else ""
    return text.rfind("Resuming operations after the pause") > text.rfind("Pausing operations in favour of")


def priorities(stack: Stack, namespace: str) -> dict[str, int]:
    """The peers the KopfPeering lists (kopf's identity of each, here its POD_ID) and their priorities."""
    status = get_json(stack, "kopfpeering", f"peers-{namespace}", "-n", namespace).get("status") or {}
    return {identity: int(peer["priority"]) for identity, peer in status.items()}


def test_one_active_replica_and_failover(stack: Stack, namespace: str) -> None:
    stack.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "charts/operator-k8s/crds/kopf-peering.yaml"))
    stack.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    # Watching one namespace, kopf peers through a KopfPeering there (the chart creates one per watched namespace).
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": f"peers-{namespace}", "namespace": namespace},
    }
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(peering))
    env = {"OPERATOR_K8S_PEERING": f"peers-{namespace}", "OPERATOR_K8S_PEERING_LIFETIME_SECONDS": "10",
           "OPERATOR_K8S_NAMESPACES": namespace}  # fmt: skip
    replicas = {
        f"peer-{i}": operator_process(stack, f"operator-peer-{i}-{namespace}.log", POD_ID=f"peer-{i}", **env)
        for i in range(2)
    }
    try:
        eventually(lambda: all(http_status(health_url(r)) == 200 for r in replicas.values()), what="replicas healthy")
        listed = eventually(lambda: len(p := priorities(stack, namespace)) == 2 and p, what="both peers listed")
        low, high = sorted(listed, key=listed.__getitem__)
        active, standby = replicas[high], replicas[low]
        # Until they have seen each other both may run: the cluster comes once only the higher priority runs.
        eventually(lambda: resumed(active) and not resumed(standby), what=f"{high} running and {low} standing by")
        start_cluster(stack, namespace, invariants={})
        eventually(lambda: cycles(active) > 0, what="the active replica checking the cluster")
        assert cycles(standby) == 0
        assert active.popen is not None
        active.popen.send_signal(signal.SIGKILL)
        active.popen.wait()
        eventually(lambda: cycles(standby) > 0, what="the standby to take over", timeout=90)
        healthy = condition(stack, namespace, "tikv", "Healthy")
        assert healthy is not None
        assert healthy["status"] == "True"
    finally:
        for replica in replicas.values():
            replica.stop()
