"""The presets as TiKV and PD define them, rendered for both real label worlds (golden PromQL)."""

from __future__ import annotations

from typing import Any

import pytest

from operator_k8s.domain.invariants import Verdict, evaluate, invariant_names
from operator_k8s.domain.observations import QueryResult, Sample, Snapshot, StorePod
from operator_k8s.domain.queries import DISK_AVAILABLE, cycle_queries
from operator_k8s.domain.specs import MonitoredClusterSpec

STORES = ("basic-tikv-0", "basic-tikv-1")
PD = ("basic-pd-0",)
PROMETHEUS_OPERATOR: dict[str, Any] = {"url": "http://prometheus:9090"}
TIDB_MONITOR: dict[str, Any] = {
    "url": "http://basic-prometheus:9090",
    "storeLabel": "instance",
    "namespaceLabel": "kubernetes_namespace",
    "matchers": {"tidb_cluster": "db-basic"},
}


def cluster(prometheus: dict[str, Any], **spec: Any) -> MonitoredClusterSpec:
    body = {
        "stores": {"selector": {"matchLabels": {"app.kubernetes.io/component": "tikv"}}},
        "pd": {"selector": {"matchLabels": {"app.kubernetes.io/component": "pd"}}},
        "prometheus": prometheus,
        **spec,
    }
    return MonitoredClusterSpec.model_validate(body)


def test_prometheus_operator_world() -> None:
    queries = {k: q.promql for k, q in cycle_queries(cluster(PROMETHEUS_OPERATOR), "db", STORES, PD).items()}
    scope = 'namespace="db",pod=~"basic-tikv-0|basic-tikv-1"'
    assert queries["latency"] == (
        f"histogram_quantile(0.99, sum by (le, pod) (rate(tikv_grpc_msg_duration_seconds_bucket{{{scope},"
        'type=~"kv_batch_get|kv_batch_get_command|kv_check_txn_status|kv_cleanup|kv_commit|kv_get|kv_prewrite|'
        'raw_batch_get|raw_batch_put|raw_delete|raw_get|raw_put"}[1m]))) * 1000'
    )
    assert queries["diskUsage"] == (
        f'(1 - sum by (pod) (tikv_store_size_bytes{{type="available",{scope}}}) / '
        f'(sum by (pod) (tikv_store_size_bytes{{type="capacity",{scope}}}) > 0)) * 100'
    )
    assert queries["criticalErrors"] == (
        f"sum by (pod) (increase(tikv_critical_error_total{{{scope}}}[1m]))"
        f" or (0 * max by (pod) (process_start_time_seconds{{{scope}}}))"
    )
    assert queries["writeStall"] == f"max by (pod) (delta(tikv_engine_write_stall{{{scope}}}[10m]))"
    pd = 'namespace="db",pod=~"basic-pd-0"'
    assert queries["pdStores"] == (
        f'sum(pd_cluster_status{{{pd},type=~"store_disconnected_count|store_down_count|store_low_space_count|'
        f'store_slow_count"}} and on (instance) (max by (instance) (etcd_server_is_leader{{{pd}}}) > 0))'
    )
    assert queries["pdRegions"] == (
        f'sum(pd_regions_status{{{pd},type=~"miss-peer-region-count"}} and on (instance) '
        f"(max by (instance) (etcd_server_is_leader{{{pd}}}) > 0))"
    )


def test_tidb_monitor_world() -> None:
    queries = {k: q.promql for k, q in cycle_queries(cluster(TIDB_MONITOR), "db", STORES, PD).items()}
    assert (
        'kubernetes_namespace="db",tidb_cluster="db-basic",instance=~"basic-tikv-0|basic-tikv-1"' in queries["latency"]
    )
    assert "sum by (le, instance)" in queries["latency"]
    assert 'instance=~"basic-pd-0"' in queries["pdStores"]
    assert "namespace=" not in queries["diskUsage"].replace("kubernetes_namespace=", "")


def test_no_namespace_label_leaves_the_namespace_out() -> None:
    spec = cluster({**TIDB_MONITOR, "namespaceLabel": ""})
    assert "namespace" not in cycle_queries(spec, "db", STORES, PD)["latency"].promql


def test_pd_invariants_need_pd_pods_and_the_tikv_preset() -> None:
    assert "pdStores" not in cycle_queries(cluster(PROMETHEUS_OPERATOR), "db", STORES, ())
    generic = cluster(PROMETHEUS_OPERATOR, preset="generic", invariants={"latency": {"enabled": False}})
    assert set(cycle_queries(generic, "db", STORES, PD)) == {"diskUsage"}
    assert invariant_names(generic) == ["storesReady", "diskUsage"]


def test_generic_disk_reads_kubelet_volume_stats_by_claim() -> None:
    generic = cluster(PROMETHEUS_OPERATOR, preset="generic", invariants={"latency": {"enabled": False}})
    query = cycle_queries(generic, "db", STORES, ())["diskUsage"].promql
    assert (
        'kubelet_volume_stats_available_bytes{namespace="db",persistentvolumeclaim=~".+-(basic-tikv-0|basic-tikv-1)"}'
        in query
    )
    assert '"pod", "$1", "persistentvolumeclaim", ".+-(basic-tikv-0|basic-tikv-1)"' in query


def test_the_disk_floor_adds_one_query() -> None:
    spec = cluster(PROMETHEUS_OPERATOR, invariants={"diskUsage": {"minAvailableBytes": 5 * 2**30}})
    assert DISK_AVAILABLE in cycle_queries(spec, "db", STORES, ())


def _snapshot(results: dict[str, list[Sample]]) -> Snapshot:
    pods = tuple(StorePod(name, "Running", True) for name in STORES)
    return Snapshot(pods, {k: QueryResult(k, tuple(v)) for k, v in results.items()}, {})


@pytest.mark.parametrize(
    ("available_bytes", "percent", "want"),
    [
        (10 * 2**30, 50.0, Verdict.HOLDS),
        (4 * 2**30, 50.0, Verdict.VIOLATED),  # under the 5 GiB floor although only half full
        (10 * 2**30, 81.0, Verdict.VIOLATED),  # over 80 % (the default, TiKV's own 20 % available)
    ],
)
def test_disk_breaks_on_percent_or_on_the_floor(available_bytes: float, percent: float, want: Verdict) -> None:
    spec = cluster(PROMETHEUS_OPERATOR, invariants={"diskUsage": {"minAvailableBytes": 5 * 2**30}})
    snap = _snapshot({"diskUsage": [Sample("basic-tikv-0", percent)],
                      DISK_AVAILABLE: [Sample("basic-tikv-0", available_bytes)]})  # fmt: skip
    found = {f.store: f for f in evaluate(spec, snap) if f.invariant == "diskUsage"}
    assert found["basic-tikv-0"].verdict is want
    assert found["basic-tikv-1"].verdict is Verdict.UNKNOWN, "no series: unknown, never a verdict"


@pytest.mark.parametrize(
    ("count", "want"), [(0.0, Verdict.HOLDS), (1.0, Verdict.VIOLATED), (float("nan"), Verdict.UNKNOWN)]
)
def test_pd_stores_is_one_finding_for_the_cluster(count: float, want: Verdict) -> None:
    found = [f for f in evaluate(cluster(PROMETHEUS_OPERATOR), _snapshot({"pdStores": [Sample(None, count)]}))
             if f.invariant == "pdStores"]  # fmt: skip
    assert [(f.store, f.verdict) for f in found] == [("cluster", want)]
