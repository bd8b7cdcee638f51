"""Two replicas with kopf peering: exactly one is active; the standby takes over when the active one dies."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.receivers import Receiver, notifications_file, receiver_in_thread
from tests.stackutil import (
    condition,
    eventually,
    get_json,
    health_url,
    http_status,
    metric_value,
    pg_rows,
    report,
    scrape_metrics,
    start_cluster,
    store_fault,
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


def peered_replicas(stack: Stack, namespace: str, **env: str) -> tuple[Process, Process, list[Process]]:
    """Two operator processes peering through a KopfPeering in ``namespace``, once one runs and the other stands by:
    (active, standby, both)."""
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
           "OPERATOR_K8S_NAMESPACES": namespace, **env}  # fmt: skip
    replicas = {
        f"peer-{i}": operator_process(stack, f"operator-peer-{i}-{namespace}.log", POD_ID=f"peer-{i}", **env)
        for i in range(2)
    }
    try:
        eventually(lambda: all(http_status(health_url(r)) == 200 for r in replicas.values()), what="replicas healthy")
        listed = eventually(lambda: len(p := priorities(stack, namespace)) == 2 and p, what="both peers listed")
        low, high = sorted(listed, key=listed.__getitem__)
        # Until they have seen each other both may run: the cluster comes once only the higher priority runs.
        active, standby = replicas[high], replicas[low]
        eventually(lambda: resumed(active) and not resumed(standby), what=f"{high} running and {low} standing by")
    except BaseException:
        for replica in replicas.values():
            replica.stop()
        raise
    return active, standby, list(replicas.values())


def kill(replica: Process) -> None:
    assert replica.popen is not None
    replica.popen.send_signal(signal.SIGKILL)
    replica.popen.wait()


def test_one_active_replica_and_failover(stack: Stack, namespace: str) -> None:
    active, standby, replicas = peered_replicas(stack, namespace)
    try:
        start_cluster(stack, namespace, invariants={})
        eventually(lambda: cycles(active) > 0, what="the active replica checking the cluster")
        assert cycles(standby) == 0
        kill(active)
        eventually(lambda: cycles(standby) > 0, what="the standby to take over", timeout=90)
        healthy = condition(stack, namespace, "tikv", "Healthy")
        assert healthy is not None
        assert healthy["status"] == "True"
    finally:
        for replica in replicas:
            replica.stop()


def _told(receiver: Receiver, transition: str, namespace: str) -> list[str]:
    return [h["payload"]["ticket"]["store"] for h in receiver.unique_hooks().values()
            if h["payload"]["transition"] == transition and h["payload"]["ticket"]["namespace"] == namespace]  # fmt: skip


def test_two_peered_replicas_tell_each_transition_once_across_a_failover(
    stack: Stack, namespace: str, tmp_path: Path
) -> None:
    """Two real replicas with one notifications file: the standby sends nothing; the active one is SIGKILLed after
    a fault was told, and the standby, once it takes over, tells the heal. Every notice in Postgres reaches the
    receiver, once per ``webhook-id``."""
    with receiver_in_thread() as receiver:
        config = notifications_file(tmp_path, receiver, namespace)
        active, standby, replicas = peered_replicas(stack, namespace, OPERATOR_K8S_NOTIFICATIONS_FILE=str(config))
        try:
            start_cluster(stack, namespace, interval="1s",
                          invariants={"latency": {"enabled": False}, "diskUsage": {"clearFor": "0s"}})  # fmt: skip
            store_fault(stack, namespace, "tikv", "tikv-1", "disk", {"percent": 95})
            eventually(
                lambda: _told(receiver, "opened", namespace) == ["tikv-1"], what="the opening, told once", timeout=60
            )
            assert cycles(standby) == 0, "the standby stood by"
            kill(active)
            store_fault(stack, namespace, "tikv", "tikv-1", "disk", heal=True)
            eventually(lambda: _told(receiver, "resolved", namespace) == ["tikv-1"], what="the heal, told by the standby",
                       timeout=120)  # fmt: skip
            notices = pg_rows(stack, "SELECT n.idempotency_key FROM notices n JOIN tickets t ON t.id = n.ticket_id "
                                     "WHERE t.namespace = $1", namespace)  # fmt: skip
            # The stack's Postgres is shared by the tests: a delivery another test left pending for a receiver of
            # the same name is this receiver's to deliver too, so only this namespace's notices are compared.
            ours = {k for k, h in receiver.unique_hooks().items() if h["payload"]["ticket"]["namespace"] == namespace}
            assert ours == {n["idempotency_key"] for n in notices}
            assert not receiver.refused, "every signature verified"
            report("peered replicas", notices=len(notices), sent_again=receiver.duplicates())
        finally:
            for replica in replicas:
                replica.stop()
