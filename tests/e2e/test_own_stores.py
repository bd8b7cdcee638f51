"""Only its own stores: same pod names in two namespaces, unscoped queries and a podless cluster judge nothing foreign."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devstack.world.stack import Stack
from tests.e2e.support import (
    INTERVAL,
    Scene,
    SharedOperator,
    checked_since,
    last_success,
    unresolved,
    wait_healthy,
)
from tests.stackutil import (
    OPEN_STATES,
    condition,
    condition_status,
    eventually,
    get_json,
    metric_value,
    prometheus_query,
    report,
    scrape_metrics,
    store_fault,
    tickets_in_db,
)

pytestmark = pytest.mark.stack


# -- 3. only its own stores -------------------------------------------------------------------------------------------

UNSCOPED = 'tikv_store_size_bytes{type="used"} / 2^30'
"""GiB used by every store of every namespace: no namespace matcher, no store matcher."""
UNSCOPED_BY_POD = 'max by (pod) (tikv_store_size_bytes{type="used"}) / 2^30'
"""The same aggregated by pod name only: the namespace label is gone, so same-named pods of two namespaces merge."""


def custom_used(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "query": query, "comparator": ">", "threshold": 80}


def test_two_namespaces_same_pod_names_unscoped_queries_and_a_podless_cluster(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    """Two namespaces hold store pods of the same names; every cluster runs an unscoped custom query; a third cluster
    selects no pod. A fault in one namespace opens tickets there only, each cluster shows its own values, the
    podless cluster has only its own expected-count finding, and the ignored series are named."""
    operator = shared.running()
    first, second = scene.namespace("own-a"), scene.namespace("own-b")
    invariants = {"custom": [custom_used("used-gib", UNSCOPED)]}
    pods = {first: scene.stores(first, "tikv"), second: scene.stores(second, "tikv")}
    assert pods[first] == pods[second] == ["tikv-0", "tikv-1", "tikv-2"]
    scene.cluster(first, "tikv", invariants=invariants)
    scene.cluster(second, "tikv", invariants=invariants)
    scene.cluster(second, "ghost", invariants=invariants)  # selects app=ghost: no pod has it
    wait_healthy(stack, first, "tikv")
    wait_healthy(stack, second, "tikv")

    store_fault(stack, second, "tikv", "tikv-0", "disk", {"percent": 95})
    store_fault(stack, second, "tikv", "tikv-1", "latency", {"seconds": 0.8})
    expected_second = [
        ("ghost", "storesReady", "cluster"),
        ("tikv", "diskUsage", "tikv-0"),
        ("tikv", "latency", "tikv-1"),
        ("tikv", "used-gib", "tikv-0"),
    ]
    eventually(
        lambda: [k for k in unresolved(stack, second) if tickets_open(stack, second, k)] == expected_second,
        what=f"exactly {expected_second} open in {second}",
        timeout=60,
    )
    seen = time.time()
    # Proving an absence takes cycles: let the first namespace's cluster be checked twice more over the same data.
    eventually(
        lambda: last_success(operator, first, "tikv") > seen + 2 * INTERVAL,
        what=f"two more checks of {first}/tikv",
        timeout=30,
    )
    assert unresolved(stack, second) == expected_second, "a ticket outside the fault's namespace or stores"
    assert tickets_in_db(stack, first) == [], "a ticket in the namespace without a fault"

    own_stores = {(first, "tikv"): set(pods[first]), (second, "tikv"): set(pods[second]), (second, "ghost"): set()}
    for namespace in (first, second):
        for row in tickets_in_db(stack, namespace):
            allowed = own_stores[(namespace, row["cluster_name"])] | {"cluster"}
            assert row["store"] in allowed, f"foreign ticket: {row['cluster_name']} in {namespace} on {row['store']}"
    ghost = [(r["invariant"], r["store"]) for r in tickets_in_db(stack, second) if r["cluster_name"] == "ghost"]
    assert ghost == [("storesReady", "cluster")], "the podless cluster judged someone else's stores"

    # Each cluster shows its own values.
    values = {(r["invariant"], r["store"]): r["snapshot"] for r in tickets_in_db(stack, second)}
    assert json.loads(values[("used-gib", "tikv-0")])["value"] == pytest.approx(95, abs=0.1)
    # The filesystem's view (1 - available/capacity): TiKV's 95 % plus the other files on the volume.
    assert 95 <= json.loads(values[("diskUsage", "tikv-0")])["value"] < 97
    assert condition_status(stack, first, "tikv", "CustomUsedGib") == "True"
    assert condition_status(stack, first, "tikv", "DiskSpaceAvailable") == "True"
    assert condition_status(stack, first, "tikv", "LatencyWithinBudget") == "True"
    assert condition_status(stack, second, "tikv", "CustomUsedGib") == "False"
    assert "95" in condition(stack, second, "tikv", "CustomUsedGib")["message"]  # type: ignore[index]
    summaries = {
        (ns, name): get_json(stack, "mc", name, "-n", ns)["status"]["stores"]["summary"]
        for ns, name in ((first, "tikv"), (second, "tikv"), (second, "ghost"))
    }
    assert summaries == {(first, "tikv"): "3/3 ready", (second, "tikv"): "3/3 ready", (second, "ghost"): "0/3 ready"}
    messages = {ns: condition(stack, ns, "tikv", "MetricsAvailable")["message"] for ns in (first, second)}  # type: ignore[index]
    for namespace, message in messages.items():
        assert "ignored" in message and "series" in message, f"{namespace}: {message}"
    report(
        "own stores only",
        tickets_first=len(tickets_in_db(stack, first)),
        tickets_second=expected_second,
        metrics_available_first=messages[first],
        ignored_series_total=metric_value(scrape_metrics(operator), "operator_k8s_ignored_series_total"),
    )


def test_a_query_that_aggregates_the_namespace_away_judges_no_foreign_value(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    """An unscoped ``max by (pod)`` mixes every namespace's same-named pods: its namespace-less series are not this
    cluster's to judge (the operator trusts them only from queries it scoped, through the placeholders)."""
    operator = shared.running()
    first, second = scene.namespace("by-pod-a"), scene.namespace("by-pod-b")
    scene.stores(first, "tikv")
    scene.stores(second, "tikv")
    scene.cluster(first, "tikv", invariants={"custom": [custom_used("by-pod", UNSCOPED_BY_POD)]})
    # Never Healthy=True: the unscoped query's series cannot be attributed to this namespace, so its invariant has
    # no data (Unknown), and the series are counted as ignored.
    eventually(lambda: condition_status(stack, first, "tikv", "StoresReady") == "True", what="StoresReady=True")
    eventually(lambda: condition_status(stack, first, "tikv", "CustomByPod") == "Unknown", what="CustomByPod=Unknown")
    store_fault(stack, second, "tikv", "tikv-0", "disk", {"percent": 95})
    injected = time.time()
    eventually(
        lambda: prometheus_query(stack, f"{UNSCOPED_BY_POD} > 90"),
        what="the fault visible to the query",
    )
    eventually(
        lambda: checked_since(operator, first, "tikv", injected + 2 * INTERVAL) or tickets_in_db(stack, first),
        what=f"two more checks of {first}/tikv",
        timeout=30,
    )
    assert tickets_in_db(stack, first) == [], "a ticket from another namespace's value of a same-named pod"
    assert "ignored" in condition(stack, first, "tikv", "MetricsAvailable")["message"]  # type: ignore[index]


def tickets_open(stack: Stack, namespace: str, key: tuple[str, str, str]) -> bool:
    return any(
        (r["cluster_name"], r["invariant"], r["store"]) == key and r["state"] in OPEN_STATES
        for r in tickets_in_db(stack, namespace)
    )
