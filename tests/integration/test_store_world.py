"""The store world on the real stack: per-pod TiKV and PD endpoints, pods in the API server, the stack's Prometheus
discovering them through the API server and labelling them as prometheus-operator (world A) and TidbMonitor (world B)
do, and the faults as Prometheus sees them."""

from __future__ import annotations

import math
import re
import urllib.request
from typing import Any

import pytest

from devstack.world.stack import Stack
from tests.stackutil import eventually, get_json, metric_samples, prometheus_query, simulator

pytestmark = pytest.mark.stack

TC = "tc"
FAST = {"storeHeartbeatSeconds": 1, "storeDisconnectSeconds": 2, "storeUnhealthySeconds": 60,
        "maxStoreDownSeconds": 120, "maxPeerDownSeconds": 30}  # fmt: skip
WORLD_A = {"__name__", "container", "endpoint", "instance", "job", "namespace", "pod"}
WORLD_B = {"__name__", "cluster", "component", "instance", "job", "kubernetes_namespace", "tidb_cluster"}
IDENTITY = {"namespace", "pod", "instance", "job", "container", "endpoint", "kubernetes_namespace", "cluster",
            "component", "tidb_cluster"}  # fmt: skip


def query(stack: Stack, promql: str) -> dict[str, float]:
    """One value per series, keyed by its ``pod`` (world A) or ``instance`` (world B) label."""
    return {
        s["metric"].get("pod") or s["metric"].get("instance", ""): float(s["value"][1])
        for s in prometheus_query(stack, promql)
    }


def wait_for(stack: Stack, promql: str, check: Any, what: str, timeout: float = 30) -> dict[str, float]:
    def probe() -> dict[str, float] | None:
        values = query(stack, promql)
        return values if check(values) else None

    return eventually(probe, timeout=timeout, interval=0.5, what=f"{what} ({promql})")


def fault(stack: Stack, namespace: str, pod: str, kind: str, body: dict[str, Any] | None = None, *,
          heal: bool = False) -> None:  # fmt: skip
    path = f"/tidbclusters/{namespace}/{TC}/stores/{pod}/faults/{kind}"
    simulator(stack, "DELETE" if heal else "PUT", path, body)


@pytest.fixture
def tidb(stack: Stack, namespace: str) -> dict[str, Any]:
    """A TidbCluster ``tc`` (3 TiKV, 3 PD, PD's clocks shortened) scraped in both worlds."""
    created = simulator(stack, "PUT", f"/tidbclusters/{namespace}/{TC}", {"stores": 3, "pd": 3, "timings": FAST})
    for world in ("namespace", "kubernetes_namespace"):
        wait_for(stack, f'tikv_store_size_bytes{{{world}="{namespace}",type="used"}}', lambda v: len(v) == 3,
                 f"world {world}: the three stores scraped")  # fmt: skip
        wait_for(stack, f'etcd_server_is_leader{{{world}="{namespace}"}}', lambda v: len(v) == 3,
                 f"world {world}: the three PD members scraped")  # fmt: skip
    return created


def label_names(series: list[dict[str, Any]]) -> set[frozenset[str]]:
    return {frozenset(s["metric"]) for s in series}


def test_each_world_labels_the_series_exactly_as_its_real_set_up(
    stack: Stack, namespace: str, tidb: dict[str, Any]
) -> None:
    world_a = prometheus_query(stack, f'tikv_grpc_msg_duration_seconds_count{{namespace="{namespace}",type="kv_get"}}')
    assert label_names(world_a) == {frozenset(WORLD_A | {"type", "priority"})}
    for series in world_a:
        labels = series["metric"]
        pod = get_json(stack, "pod", labels["pod"], "-n", namespace)
        assert labels["instance"] == f"{pod['status']['podIP']}:20180" == tidb["endpoints"][labels["pod"]]
        assert (labels["job"], labels["container"], labels["endpoint"]) == ("monitoring/tikv", "tikv", "status")
    assert sorted(s["metric"]["pod"] for s in world_a) == tidb["pods"]

    world_b = prometheus_query(
        stack, f'tikv_grpc_msg_duration_seconds_count{{kubernetes_namespace="{namespace}",type="kv_get"}}'
    )
    assert label_names(world_b) == {frozenset(WORLD_B | {"type", "priority"})}
    for series in world_b:
        labels = series["metric"]
        assert (labels["job"], labels["cluster"], labels["tidb_cluster"], labels["component"]) == (
            f"{namespace}-{TC}-tikv", TC, f"{namespace}-{TC}", "tikv")  # fmt: skip
    assert sorted(s["metric"]["instance"] for s in world_b) == tidb["pods"]

    pd_a = prometheus_query(stack, f'etcd_server_is_leader{{namespace="{namespace}"}}')
    assert {(s["metric"]["job"], s["metric"]["endpoint"], s["metric"]["container"]) for s in pd_a} == {
        ("monitoring/pd", "client", "pd")}  # fmt: skip
    pd_b = prometheus_query(stack, f'etcd_server_is_leader{{kubernetes_namespace="{namespace}"}}')
    assert {(s["metric"]["job"], s["metric"]["component"]) for s in pd_b} == {(f"{namespace}-{TC}-pd", "pd")}
    # One target per pod and world, though a pod has two container ports.
    assert len(prometheus_query(stack, f'up{{job="{namespace}-{TC}-tikv"}}')) == 3


def test_the_worlds_are_disjoint_and_older_clusters_live_in_world_a_only(
    stack: Stack, namespace: str, tidb: dict[str, Any]
) -> None:
    del tidb
    simulator(stack, "PUT", f"/clusters/{namespace}/old", {"stores": 2, "labels": {"app": "old"}})
    wait_for(stack, f'tikv_store_size_bytes{{namespace="{namespace}",type="used"}}', lambda v: len(v) == 5,
             "the older cluster's stores in world A")  # fmt: skip
    assert not prometheus_query(stack, f'{{namespace="{namespace}",kubernetes_namespace!=""}}')
    assert not prometheus_query(stack, f'{{kubernetes_namespace="{namespace}",namespace!=""}}')
    world_b = query(stack, f'tikv_store_size_bytes{{kubernetes_namespace="{namespace}",type="used"}}')
    assert sorted(world_b) == [f"{TC}-tikv-{i}" for i in range(3)]
    old = prometheus_query(stack, f'tikv_store_size_bytes{{namespace="{namespace}",pod=~"old-.*",type="used"}}')
    assert label_names(old) == {frozenset(WORLD_A | {"type"})}
    pod = get_json(stack, "pod", "old-0", "-n", namespace)
    assert pod["metadata"]["labels"] == {"app": "old"}


def raw(endpoint: str) -> str:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as response:
        body: str = response.read().decode()
        return body


def test_raw_expositions_carry_no_identity_label(stack: Stack, tidb: dict[str, Any]) -> None:
    del stack
    for pod, endpoint in tidb["endpoints"].items():
        text = raw(endpoint)
        names = {label for sample in metric_samples(text) for label in sample.labels}
        assert not names & IDENTITY, (pod, names & IDENTITY)
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
        if "-tikv-" in pod:
            assert names == {"type", "priority", "le", "db", "cf", "level"}  # RocksDB's column family and level
            assert types["tikv_grpc_msg_duration_seconds"] == "histogram"
            assert types["tikv_engine_write_stall"] == "gauge"
        else:
            # service_member_role{service="PD"}: PD's own label; the leader's pd_scheduler_store_status{address, store}
            assert {"type", "service"} <= names <= {"type", "service", "address", "store"}
            assert types["pd_regions_status"] == "gauge"
            assert "etcd_server_is_leader" in types


def sizes(stack: Stack, namespace: str, pod: str) -> dict[str, float]:
    series = prometheus_query(stack, f'tikv_store_size_bytes{{namespace="{namespace}",pod="{pod}"}}')
    return {s["metric"]["type"]: float(s["value"][1]) for s in series}


def test_disk_filled_by_something_else_lowers_available_but_not_used(
    stack: Stack, namespace: str, tidb: dict[str, Any]
) -> None:
    del tidb
    before = sizes(stack, namespace, f"{TC}-tikv-1")
    fault(stack, namespace, f"{TC}-tikv-1", "disk-other", {"percent": 50})
    eventually(lambda: sizes(stack, namespace, f"{TC}-tikv-1")["available"] < before["available"] / 2,
               what="available to drop")  # fmt: skip
    after = sizes(stack, namespace, f"{TC}-tikv-1")
    capacity, used = after["capacity"], after["used"]
    filesystem_free = capacity - capacity * 0.5 - used
    assert used == before["used"] and used / capacity == pytest.approx(0.40)
    assert after["available"] == min(capacity - used, filesystem_free)
    assert after["available"] / capacity == pytest.approx(0.10)
    # PD sees it from available, as its low-space check does; only the leader says so.
    low = wait_for(stack, f'pd_cluster_status{{namespace="{namespace}",type="store_low_space_count"}}',
                   lambda v: v == {f"{TC}-pd-0": 1}, "PD's low-space count")  # fmt: skip
    assert low == {f"{TC}-pd-0": 1}


def test_an_idle_store_has_a_nan_p99(stack: Stack, namespace: str, tidb: dict[str, Any]) -> None:
    del tidb
    fault(stack, namespace, f"{TC}-tikv-2", "idle")
    p99 = f'histogram_quantile(0.99, sum by (le, pod) (rate(tikv_grpc_msg_duration_seconds_bucket{{namespace="{namespace}"}}[5s])))'
    values = wait_for(stack, p99, lambda v: len(v) == 3 and math.isnan(v[f"{TC}-tikv-2"]), "a NaN p99", timeout=20)
    assert all(math.isfinite(v) for pod, v in values.items() if pod != f"{TC}-tikv-2")
    count = f'sum by (pod) (tikv_grpc_msg_duration_seconds_count{{namespace="{namespace}",pod="{TC}-tikv-2"}})'
    assert query(stack, count)[f"{TC}-tikv-2"] > 0, "the series are there; they do not move"


def test_lock_contention_makes_the_all_types_p99_about_a_second_while_kv_get_stays_fast(
    stack: Stack, namespace: str, tidb: dict[str, Any]
) -> None:
    del tidb
    fault(stack, namespace, f"{TC}-tikv-0", "contention")
    store = f'namespace="{namespace}",pod="{TC}-tikv-0"'
    everything = (
        f"histogram_quantile(0.99, sum by (le, pod) (rate(tikv_grpc_msg_duration_seconds_bucket{{{store}}}[5s])))"
    )
    kv_get = f'histogram_quantile(0.99, sum by (le, pod) (rate(tikv_grpc_msg_duration_seconds_bucket{{{store},type="kv_get"}}[5s])))'
    wait_for(stack, everything, lambda v: 0.8 < v.get(f"{TC}-tikv-0", 0) < 1.3, "the all-types p99 near 1 s")
    assert query(stack, kv_get)[f"{TC}-tikv-0"] < 0.002


def ready(stack: Stack, namespace: str, pod: str) -> str:
    conditions = get_json(stack, "pod", pod, "-n", namespace)["status"]["conditions"]
    return next(str(c["status"]) for c in conditions if c["type"] == "Ready")


def test_a_hung_store_stays_ready_while_its_target_is_down_and_pd_sees_it_disconnected(
    stack: Stack, namespace: str, tidb: dict[str, Any]
) -> None:
    del tidb
    pod = f"{TC}-tikv-1"
    fault(stack, namespace, pod, "hung")
    wait_for(stack, f'up{{namespace="{namespace}",pod="{pod}"}}', lambda v: v == {pod: 0}, "the target down")
    wait_for(stack, f'pd_cluster_status{{namespace="{namespace}",type="store_disconnected_count"}}',
             lambda v: v == {f"{TC}-pd-0": 1}, "PD's leader to count it disconnected")  # fmt: skip
    # The TidbMonitor-style job scrapes the same target on its own schedule: it sees the timeout in its own time.
    wait_for(stack, f'up{{kubernetes_namespace="{namespace}",instance="{pod}"}}', lambda v: v == {pod: 0},
             "the TidbMonitor-style target down")  # fmt: skip
    assert ready(stack, namespace, pod) == "True"
    fault(stack, namespace, pod, "hung", heal=True)
    wait_for(stack, f'up{{namespace="{namespace}",pod="{pod}"}}', lambda v: v == {pod: 1}, "the target back")


def test_a_down_store_is_not_ready_and_its_target_is_gone(stack: Stack, namespace: str, tidb: dict[str, Any]) -> None:
    del tidb
    pod = f"{TC}-tikv-2"
    fault(stack, namespace, pod, "down")
    eventually(lambda: ready(stack, namespace, pod) == "False", what="the pod NotReady")
    wait_for(stack, f'up{{namespace="{namespace}",pod="{pod}"}}', lambda v: v == {pod: 0}, "the target down")
    fault(stack, namespace, pod, "down", heal=True)
    eventually(lambda: ready(stack, namespace, pod) == "True", what="the pod Ready again")
    restarts = get_json(stack, "pod", pod, "-n", namespace)["status"]["containerStatuses"][0]["restartCount"]
    assert restarts == 1


def test_pd_cluster_status_comes_from_the_leader_only(stack: Stack, namespace: str, tidb: dict[str, Any]) -> None:
    del tidb
    leaders = query(stack, f'etcd_server_is_leader{{namespace="{namespace}"}}')
    assert leaders == {f"{TC}-pd-0": 1, f"{TC}-pd-1": 0, f"{TC}-pd-2": 0}
    assert query(stack, f'pd_cluster_status{{namespace="{namespace}",type="store_up_count"}}') == {f"{TC}-pd-0": 3}
    missing = f'pd_regions_status{{namespace="{namespace}",type="miss-peer-region-count"}}'
    assert set(query(stack, missing).values()) == {0}
    simulator(stack, "PUT", f"/tidbclusters/{namespace}/{TC}/faults/missing-peers")
    wait_for(stack, missing, lambda v: v.get(f"{TC}-pd-0", 0) > 100, "the leader's missing peers")
    assert query(stack, missing)[f"{TC}-pd-1"] == 0
    for world, store_label in (("namespace", "instance"), ("kubernetes_namespace", "instance")):
        upstream = (f'(sum(pd_regions_status{{{world}="{namespace}",type="miss-peer-region-count"}}) by ({store_label}) > 100)'
                    f' and (sum(etcd_server_is_leader{{{world}="{namespace}"}}) by ({store_label}) > 0)')  # fmt: skip
        # Each world is its own scrape job: the second may see the fault a scrape later than the first.
        eventually(lambda q=upstream: len(prometheus_query(stack, q)) == 1, what=f"the upstream rule in {world}")
    simulator(stack, "PUT", f"/tidbclusters/{namespace}/{TC}/pd-leader", {"pod": f"{TC}-pd-1"})
    wait_for(stack, f'pd_cluster_status{{namespace="{namespace}",type="store_up_count"}}',
             lambda v: v == {f"{TC}-pd-1": 3}, "the new leader's status only")  # fmt: skip


def test_restart_loop_and_critical_errors_show_as_their_upstream_rules_read_them(
    stack: Stack, namespace: str, tidb: dict[str, Any]
) -> None:
    del tidb
    fault(stack, namespace, f"{TC}-tikv-0", "restart-loop", {"seconds": 2})
    fault(stack, namespace, f"{TC}-tikv-1", "critical-error")
    wait_for(stack, f'changes(process_start_time_seconds{{namespace="{namespace}",pod=~"{TC}-tikv-.*"}}[10s]) > 0',
             lambda v: set(v) == {f"{TC}-tikv-0"}, "restarts of the looping store only")  # fmt: skip
    wait_for(stack, f'rate(tikv_critical_error_total{{namespace="{namespace}"}}[5s]) > 0',
             lambda v: set(v) == {f"{TC}-tikv-1"}, "critical errors")  # fmt: skip
    restarts = eventually(
        lambda: (
            get_json(stack, "pod", f"{TC}-tikv-0", "-n", namespace)["status"]["containerStatuses"][0]["restartCount"]
            >= 2
        ),
        what="restartCount to grow",
    )
    assert restarts
