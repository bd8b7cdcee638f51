"""Evidence and diagnosis on the real stack: a store killed for its memory opens a storesReady ticket, whose
evidence (the pod, its Events, its node) is gathered from the API server and names the cause."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.world.stack import Stack
from tests.e2e.support import Scene, SharedOperator, wait_healthy
from tests.stackutil import eventually, report, store_fault, ticket_resources, tickets_in_db

pytestmark = pytest.mark.stack


def test_a_store_killed_for_its_memory_is_diagnosed_from_its_pods_evidence(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    shared.running()
    namespace = scene.namespace("diagnosis")
    stores = scene.stores(namespace, "oom")
    scene.cluster(namespace, "oom", invariants={"latency": {"enabled": False}})
    wait_healthy(stack, namespace, "oom")
    faulted = time.time()
    store_fault(stack, namespace, "oom", stores[1], "down", {"reason": "OOMKilled"})
    try:
        shown = eventually(
            lambda: [t for t in ticket_resources(stack, namespace)
                     if t["status"]["store"] == stores[1] and t["status"].get("diagnosis")],
            what="the Ticket showing its diagnosis", timeout=60,
        )  # fmt: skip
        diagnosed_after = time.time() - faulted
        status = shown[0]["status"]
        assert status["state"] == "diagnosed"
        assert status["diagnosis"].startswith("memory limit hit: container tikv was killed for using more memory")
        assert "2Gi" in status["diagnosis"]
        assert "last exit OOMKilled (137)" in status["evidence"]
        assert "node devstack-node Ready=True" in status["evidence"]
        (row,) = [r for r in tickets_in_db(stack, namespace) if r["store"] == stores[1]]
        shown_by_cli = subprocess.run(
            [sys.executable, "-m", "operator_k8s", "tickets", "--dsn", stack.postgres_dsn, "-o", "json", "show",
             str(row["id"])], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        )  # fmt: skip
        body = json.loads(shown_by_cli.stdout)
        assert [f["rule"] for f in body["diagnosis"]] == ["memory-limit"]
        assert body["diagnosis"][0]["runbook"].endswith("#runbook-memory-limit")
        assert body["evidence"]["pod"]["containers"][0]["lastTermination"]["exitCode"] == 137
        assert [h["kind"] for h in body["history"]][-1] == "Diagnosed"
        report("diagnosis", fault_to_diagnosis_s=diagnosed_after)
    finally:
        store_fault(stack, namespace, "oom", stores[1], "down", heal=True)
