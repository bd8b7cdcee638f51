"""Prometheus's view of a ticket's store, decided here without I/O: which queries to send and what their answers say.

Evidence from Prometheus is gathered with the pod's (``domain.diagnosis``) when a ticket opens or escalates, inside
the same budget: at most ``MAX_QUERIES`` queries (with the three API requests, ten calls per ticket), each bounded
by the Prometheus adapter's timeouts and answer caps. What is asked depends on the ticket:

- latency: the p99 of each request type on this store and on the cluster's other stores (TiKV's own dashboards
  split by ``type`` and drop ``kv_gc``), and which types fail (``tikv_grpc_msg_fail_total``);
- diskUsage: ``tikv_store_size_bytes`` by ``type`` (TiKV's own data against what else fills the volume: ``used`` is
  TiKV's, ``capacity - available - used`` is not), and how fast ``available`` falls (``deriv`` over
  ``GROWTH_WINDOW``), hence the time left to the threshold and to TiKV's write-rejecting reserve (5 GiB);
- latency and writeStall: RocksDB's write stalls on the store by reason (``tikv_engine_write_stall_reason{db="kv",
  type}``, cumulative counts of RocksDB's cfstats held in a gauge: their ``increase`` over the writeStall window), with
  the level-0 files (``tikv_engine_num_files_at_level{level="0"}``) and the pending compaction bytes
  (``tikv_engine_pending_compaction_bytes``) that say why, in one query;
- every store ticket: TiKV's slow score (``tikv_raftstore_slow_score``, what the store reports to PD: slow at 80,
  evicted at 100), and PD's view from the PD leader's series: the store's state
  (``pd_cluster_status{type, store}``, PD ≥ v8.5.5; older PD exports counts only and which store it counts is not
  said) with the cluster's pending, down and missing peers (``pd_regions_status``) in one query, and PD's id and
  address of each store (``pd_scheduler_store_status{address, store}``);
- a cluster-level pdStores ticket: the stores PD counts in each state, named by pod (the shell then reads the pods of
  at most ``COUNTED_PODS`` of them, so that each is diagnosed from its own view: ``diagnosis.counted_views``).

A query that fails says so ("not reachable: …"); one that answers nothing says "no data". Nothing is guessed.
Each item links to its query's graph in Prometheus over the ticket's window.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from operator_k8s.domain.observations import QueryResult
from operator_k8s.domain.pd_api import api_states
from operator_k8s.domain.queries import render
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Invariant

MAX_QUERIES = 7
"""Prometheus queries per ticket: with the pod, its Events and its node, ten calls at most."""
COUNTED_PODS = 2
"""Stores PD counts whose pods a cluster-level pdStores ticket reads (three API requests each: with its two queries,
eight calls)."""
GIB = 2**30
RESERVE_BYTES = 5 * GIB
"""TiKV's ``storage.reserve-space`` default: at this much ``available`` it rejects writes."""
SLOW_SCORE_SLOW = 80.0
"""PD counts a store as slow at this slow score (tikv/pd:pkg/core/store.go)."""
SLOW_SCORE_EVICTED = 100.0
"""PD's evict-slow-store scheduler moves the store's leaders away at this score."""
GROWTH_WINDOW = "10m"
LATENCY_QUANTILE = 0.99
TYPES_KEPT = 12
PD_STATES = ("up", "disconnected", "down", "unhealth", "offline", "low_space", "slow")
"""PD's store states as its ``pd_cluster_status`` types spell them (``store_<state>_count``)."""
PD_REGION_TYPES = ("pending-peer-region-count", "down-peer-region-count", "miss-peer-region-count")
_PD_LEADER = " and on (instance) (max by (instance) (etcd_server_is_leader{selector}) > 0)"
STALL_REASONS = (
    "level0_file_limit_slowdown",
    "level0_file_limit_stop",
    "pending_compaction_bytes_slowdown",
    "pending_compaction_bytes_stop",
    "memtable_count_limit_slowdown",
    "memtable_count_limit_stop",
)
"""RocksDB's write-stall reasons as TiKV exports them (tikv/tikv:components/engine_rocks/src/rocks_metrics_defs.rs
``ROCKSDB_IOSTALL_TYPE``)."""
LEVEL0_FILES = "level0_files"
PENDING_COMPACTION_BYTES = "pending_compaction_bytes"


@dataclass(frozen=True)
class EvidenceQuery:
    """One query of a ticket's evidence: its PromQL, the label each sample is grouped by, and the labels kept."""

    name: str
    what: str
    promql: str
    group: str
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class TicketScope:
    """What the queries are about: the ticket's invariant and store, the cluster's other stores and PD pods."""

    invariant: str
    store: str
    others: tuple[str, ...]
    pd_pods: tuple[str, ...]
    watched: tuple[str, ...] = ()
    """The request types the latency invariant measures: the slowness a latency ticket is about."""


_LATENCY_BY_TYPE = (
    f"histogram_quantile({LATENCY_QUANTILE}, sum by (le, type) "
    '(rate(tikv_grpc_msg_duration_seconds_bucket{{matchers},type!="kv_gc"}[{window}]))) * 1000'
)
_FAILURES = "sum by (type) (rate(tikv_grpc_msg_fail_total{selector}[{window}])) > 0"
_SIZES = "tikv_store_size_bytes{selector}"
_GROWTH = 'deriv(tikv_store_size_bytes{{matchers},type="available"}[' + GROWTH_WINDOW + "])"
_SLOW_SCORE = "max by ({store_label}) (tikv_raftstore_slow_score{selector})"
_PD_STATES = (
    'pd_cluster_status{{matchers},type=~"' + "|".join(f"store_{state}_count" for state in PD_STATES) + '",store!=""}'
    " > 0" + _PD_LEADER
)
_PD_ADDRESSES = (
    'max by (store, address) (pd_scheduler_store_status{{matchers},type="store_capacity"}' + _PD_LEADER + ")"
)
_PD_REGIONS = 'pd_regions_status{{matchers},type=~"' + "|".join(PD_REGION_TYPES) + '"}' + _PD_LEADER
_PD_STATES_AND_REGIONS = _PD_STATES + " or " + _PD_REGIONS
_STALLS = (
    'sum by (type) (increase(tikv_engine_write_stall_reason{{matchers},db="kv"}[{window}]))'
    ' or label_replace(max(tikv_engine_num_files_at_level{{matchers},db="kv",level="0"}), "type", "'
    + LEVEL0_FILES
    + '", "", "")'
    ' or label_replace(sum(tikv_engine_pending_compaction_bytes{{matchers},db="kv"}), "type", "'
    + PENDING_COMPACTION_BYTES
    + '", "", "")'
)


def evidence_queries(spec: MonitoredClusterSpec, namespace: str, scope: TicketScope) -> list[EvidenceQuery]:
    """The queries for one ticket's evidence (at most ``MAX_QUERIES``); none for a preset without TiKV's series."""
    if spec.preset != "tikv":
        return []
    found: list[EvidenceQuery] = []

    def ask(
        name: str, what: str, template: str, about: tuple[str, ...], group: str, keep: tuple[str, ...] = (),
        window: str = "",
    ) -> None:  # fmt: skip
        promql = render(template, spec, namespace, about, window=window or spec.prometheus.rate_window)
        found.append(EvidenceQuery(name, what, promql, group, keep))

    store, label = (scope.store,), spec.prometheus.store_label
    if scope.store != CLUSTER_STORE:
        if scope.invariant == Invariant.LATENCY:
            ask("latency_by_type", "p99 by request type on this store (ms)", _LATENCY_BY_TYPE, store, "type")
            if scope.others:
                ask("latency_by_type_others", "p99 by request type on the cluster's other stores (ms)",
                    _LATENCY_BY_TYPE, scope.others, "type")  # fmt: skip
            ask("failures_by_type", "failed requests per second by type", _FAILURES, store, "type")
        if scope.invariant in (Invariant.LATENCY, Invariant.WRITE_STALL):
            window = spec.invariants.write_stall.window
            ask("write_stalls", f"RocksDB write stalls by reason over {window}, level-0 files, pending compaction"
                " bytes", _STALLS, store, "type", window=window)  # fmt: skip
        if scope.invariant == Invariant.DISK_USAGE:
            ask("disk_sizes", "tikv_store_size_bytes by type (bytes)", _SIZES, store, "type")
            ask("disk_available_deriv", f"change of available bytes per second over {GROWTH_WINDOW}", _GROWTH, store,
                label)  # fmt: skip
        ask("slow_score", "TiKV's slow score (slow at 80, evicted at 100)", _SLOW_SCORE, store, label)
    if spec.pd is not None and scope.pd_pods:
        if scope.store != CLUSTER_STORE:
            ask("pd_store_states", "PD's state of each store (PD >= v8.5.5) and its regions with pending, down or"
                " missing peers", _PD_STATES_AND_REGIONS, scope.pd_pods, "type", ("store",))  # fmt: skip
        else:
            ask("pd_store_states", "PD's state of each store (PD >= v8.5.5)", _PD_STATES, scope.pd_pods, "type",
                ("store",))  # fmt: skip
        ask("pd_store_addresses", "PD's store ids and addresses", _PD_ADDRESSES, scope.pd_pods, "store",
            ("address",))  # fmt: skip
    return found[:MAX_QUERIES]


def graph_link(prometheus_url: str, expr: str, start: datetime, end: datetime) -> str:
    """The query's graph in Prometheus over ``start``..``end`` (at least 5 minutes, in whole minutes)."""
    minutes = max(5, math.ceil((end - start).total_seconds() / 60))
    params = {
        "g0.expr": expr,
        "g0.tab": "0",
        "g0.range_input": f"{minutes}m",
        "g0.end_input": end.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return f"{prometheus_url.rstrip('/')}/graph?{urllib.parse.urlencode(params)}"


def _status(result: QueryResult | None) -> str:
    if result is None:
        return "not asked"
    if result.failure is not None:
        return f"not reachable: {result.error[:200]}"
    if not any(not math.isnan(s.value) for s in result.samples):
        return "no data"
    return "ok"


def _by_group(result: QueryResult | None) -> dict[str, float]:
    if result is None or result.failure is not None:
        return {}
    return {s.store: s.value for s in result.samples if s.store is not None and not math.isnan(s.value)}


def _number(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def pod_of_address(address: str) -> str:
    """The pod a TiKV address names: TiDB Operator advertises ``<pod>.<peer service>.<namespace>.svc:20160``."""
    return address.split(":", 1)[0].split(".", 1)[0]


def prometheus_evidence(
    queries: Sequence[EvidenceQuery], results: Mapping[str, QueryResult], *, scope: TicketScope,
    threshold_percent: float | None, prometheus_url: str, start: datetime, end: datetime,
) -> dict[str, Any]:  # fmt: skip
    """What the answers say, item by item (each with its status and graph link) and read together: the latency by
    request type against the other stores, what fills the disk and when it fills, PD's view of the store."""
    items = [
        {"name": q.name, "what": q.what, "status": _status(results.get(q.name)), "query": q.promql,
         "graph": graph_link(prometheus_url, q.promql, start, end)}
        for q in queries
    ]  # fmt: skip
    evidence: dict[str, Any] = {"items": items}
    asked = {q.name for q in queries}
    if "latency_by_type" in asked:
        evidence["latency"] = _latency(results) | {"watched": list(scope.watched)}
    if "disk_sizes" in asked:
        evidence["disk"] = _disk(results, threshold_percent)
    if "write_stalls" in asked:
        evidence["stalls"] = _stalls(results.get("write_stalls"))
    if "slow_score" in asked:
        score = _by_group(results.get("slow_score")).get(scope.store)
        evidence["slowScore"] = _number(score)
    if "pd_store_states" in asked:
        evidence["pd"] = _pd(results, scope)
    return evidence


def _latency(results: Mapping[str, QueryResult]) -> dict[str, Any]:
    own = _by_group(results.get("latency_by_type"))
    others = _by_group(results.get("latency_by_type_others"))
    rows = []
    for kind, value in own.items():
        other = others.get(kind)
        ratio = value / other if other else None
        rows.append({"type": kind, "p99Ms": _number(value), "othersP99Ms": _number(other), "ratio": _number(ratio, 3)})
    rows.sort(key=lambda r: -float(r["ratio"] or 0.0))
    failing = _by_group(results.get("failures_by_type"))
    return {
        "types": rows[:TYPES_KEPT],
        "failures": {kind: _number(rate) for kind, rate in sorted(failing.items())},
        "othersAnswered": bool(others),
    }


def _stalls(result: QueryResult | None) -> dict[str, Any]:
    """The write stalls by reason over the window (only the reasons that stalled), and the level-0 files and pending
    compaction bytes that say why."""
    found = _by_group(result)
    return {
        "reasons": {reason: _number(found[reason]) for reason in STALL_REASONS if found.get(reason, 0.0) > 0},
        "level0Files": _number(found.get(LEVEL0_FILES)),
        "pendingCompactionBytes": int(found[PENDING_COMPACTION_BYTES]) if PENDING_COMPACTION_BYTES in found else None,
        "answered": _status(result) == "ok",
    }


def _disk(results: Mapping[str, QueryResult], threshold_percent: float | None) -> dict[str, Any]:
    sizes = _by_group(results.get("disk_sizes"))
    capacity, available, used = sizes.get("capacity"), sizes.get("available"), sizes.get("used")
    disk: dict[str, Any] = {"sizes": {k: int(v) for k, v in sorted(sizes.items())}}
    if not capacity or available is None or used is None:
        disk["readable"] = False  # TiKV reports capacity 0 when it cannot read disk stats
        return disk
    other = max(0.0, capacity - available - used)
    disk.update(
        readable=True,
        usedPercent=_number((1 - available / capacity) * 100, 3),
        tikvPercent=_number(used / capacity * 100, 3),
        otherPercent=_number(other / capacity * 100, 3),
        otherBytes=int(other),
    )
    growth = next(iter(_by_group(results.get("disk_available_deriv")).values()), None)
    disk["availableChangePerSecond"] = _number(growth)
    if growth is not None and growth < 0:
        if threshold_percent is not None:
            floor = capacity * (1 - threshold_percent / 100)
            disk["secondsToThreshold"] = _number(max(0.0, (available - floor) / -growth), 5)
        disk["secondsToReserve"] = _number(max(0.0, (available - RESERVE_BYTES) / -growth), 5)
    return disk


def _pd(results: Mapping[str, QueryResult], scope: TicketScope) -> dict[str, Any]:
    addresses = results.get("pd_store_addresses")
    pods: dict[str, str] = {}
    if addresses is not None and addresses.failure is None:
        for sample in addresses.samples:
            address = sample.label("address")
            if sample.store is not None and address:
                pods[sample.store] = pod_of_address(address)
    states = results.get("pd_store_states")
    counted: dict[str, list[str]] = {}
    if states is not None and states.failure is None:
        for sample in states.samples:
            store_id = sample.label("store")
            if sample.store in PD_REGION_TYPES or not store_id:
                continue  # a region count, asked in the same query
            if sample.store and not math.isnan(sample.value) and sample.value > 0:
                state = sample.store.removeprefix("store_").removesuffix("_count")
                counted.setdefault(pods.get(store_id, f"store id {store_id}"), []).append(state)
    pd: dict[str, Any] = {
        "status": _status(states) if states is None or states.failure else ("ok" if counted else "no data"),
        "stores": {pod: sorted(found) for pod, found in sorted(counted.items())},
    }
    if scope.store != CLUSTER_STORE:
        ids = [store_id for store_id, pod in pods.items() if pod == scope.store]
        pd["storeId"] = ids[0] if ids else None
        pd["states"] = sorted(counted.get(scope.store, []))
        regions = _by_group(states)
        pd["regions"] = {kind: int(count) for kind, count in sorted(regions.items()) if kind in PD_REGION_TYPES}
    return pd


def pd_states(evidence: Mapping[str, Any]) -> dict[str, list[str]]:
    """PD's states of each store by pod: from its series when they name stores (PD >= v8.5.5), else from its store
    API (``pd_api.api_states``); empty when neither said."""
    pd = (evidence.get("prometheus") or {}).get("pd") or {}
    return dict(pd.get("stores") or {}) or api_states(evidence)


def pd_named_stores(evidence: Mapping[str, Any], counted: Sequence[str]) -> dict[str, list[str]]:
    """The stores PD counts in the ``counted`` types (``store_low_space_count``…: a pdStores ticket's states), by
    pod, with their states (empty when PD did not say: an old PD or no answer). A store is counted Up and low on
    space at once; only the states the ticket counts explain it. An older PD's series only count: then PD's store
    API names them (``pd_states``)."""
    named = {}
    for pod, states in pd_states(evidence).items():
        kept = [state for state in states if f"store_{state}_count" in counted]
        if kept:
            named[pod] = kept
    return named


def metric_summary(evidence: Mapping[str, Any]) -> str:
    """One line of what Prometheus shows, for the Ticket."""
    prometheus = evidence.get("prometheus") or {}
    parts = []
    disk = prometheus.get("disk")
    if disk and disk.get("readable"):
        parts.append(
            f"disk {disk['usedPercent']:g}% used: TiKV {disk['tikvPercent']:g}%, other {disk['otherPercent']:g}%"
        )
    latency = prometheus.get("latency")
    if latency and latency.get("types"):
        top = latency["types"][0]
        parts.append(f"slowest {top['type']} p99 {top['p99Ms']} ms (others {top['othersP99Ms']} ms)")
    pd = prometheus.get("pd")
    if pd and pd.get("stores"):
        parts.append("PD counts " + ", ".join(f"{pod} {'/'.join(s)}" for pod, s in pd["stores"].items()))
    stalls = prometheus.get("stalls")
    if stalls and stalls.get("reasons"):
        parts.append("write stalls " + ", ".join(f"{r} {n:g}" for r, n in stalls["reasons"].items()))
    if prometheus.get("slowScore") is not None:
        parts.append(f"slow score {prometheus['slowScore']:g}")
    unreachable = [i["name"] for i in prometheus.get("items") or [] if i["status"].startswith("not reachable")]
    if unreachable:
        parts.append(f"Prometheus not reachable for {len(unreachable)} queries")
    return "; ".join(parts)


def window_start(opened_at: datetime | None, first_seen: datetime, now: datetime) -> datetime:
    """The start of the ticket's window in Prometheus: a quarter hour before it opened (what led to it)."""
    return min(opened_at or first_seen, first_seen, now) - timedelta(minutes=15)


__all__ = [
    "COUNTED_PODS",
    "STALL_REASONS",
    "EvidenceQuery",
    "TicketScope",
    "evidence_queries",
    "graph_link",
    "metric_summary",
    "pd_named_stores",
    "pd_states",
    "prometheus_evidence",
    "window_start",
]
