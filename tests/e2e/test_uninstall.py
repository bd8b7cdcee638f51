"""Deleting MonitoredClusters, with the operator running and without it: the README's uninstall path."""

from __future__ import annotations

import pytest

from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.stackutil import (
    eventually,
    get_json,
    open_in_db,
    pg_rows,
    start_cluster,
    store_fault,
    tickets_in_db,
)

pytestmark = pytest.mark.stack


def _resolved_as_deleted(stack: Stack, namespace: str) -> bool:
    rows = tickets_in_db(stack, namespace, "storesReady")
    if not rows or any(r["state"] != "resolved" for r in rows):
        return False
    events = pg_rows(stack, "SELECT reason FROM ticket_events WHERE ticket_id = ANY($1)", [r["id"] for r in rows])
    return any(e["reason"] == "ClusterDeleted" for e in events)


def test_deleting_a_cluster_with_the_operator_running_resolves_its_tickets(stack: Stack, namespace: str) -> None:
    operator = operator_process(stack, f"operator-uninstall-{namespace}.log")
    try:
        start_cluster(stack, namespace, invariants={})
        store_fault(stack, namespace, "tikv", "tikv-1", "down")
        eventually(lambda: open_in_db(stack, namespace, "storesReady"), what="a storesReady ticket")
        stack.kubectl("delete", "mc", "tikv", "-n", namespace, "--timeout=60s")
        assert eventually(lambda: _resolved_as_deleted(stack, namespace), what="tickets resolved as ClusterDeleted")
    finally:
        operator.stop()


def test_without_the_operator_the_documented_path_deletes_and_the_next_run_resolves(
    stack: Stack, namespace: str
) -> None:
    operator = operator_process(stack, f"operator-orphan-{namespace}.log", OPERATOR_K8S_ORPHAN_SWEEP_SECONDS="2")
    try:
        start_cluster(stack, namespace, invariants={})
        store_fault(stack, namespace, "tikv", "tikv-1", "down")
        eventually(lambda: open_in_db(stack, namespace, "storesReady"), what="a storesReady ticket")
    finally:
        operator.stop()
    # The operator is gone: a deletion waits on its finalizer (what the README says, and how to release it).
    stack.kubectl("delete", "mc", "tikv", "-n", namespace, "--wait=false")
    body = get_json(stack, "mc", "tikv", "-n", namespace)
    assert body["metadata"].get("deletionTimestamp") and body["metadata"]["finalizers"] == ["operator-k8s.io/tickets"]
    stack.kubectl("patch", "mc", "tikv", "-n", namespace, "--type", "merge", "-p", '{"metadata":{"finalizers":null}}')
    eventually(
        lambda: stack.kubectl("get", "mc", "tikv", "-n", namespace, check=False).returncode != 0,
        what="the MonitoredCluster to be gone once its finalizer is released",
    )
    assert open_in_db(stack, namespace, "storesReady"), "nothing resolved it yet: no operator ran"
    operator = operator_process(stack, f"operator-orphan-2-{namespace}.log", OPERATOR_K8S_ORPHAN_SWEEP_SECONDS="2")
    try:
        assert eventually(lambda: _resolved_as_deleted(stack, namespace), what="the orphan sweep to resolve them")
    finally:
        operator.stop()
