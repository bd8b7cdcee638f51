"""Prometheus evidence, decided without I/O: which queries a ticket asks (within its budget) and what the answers say."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from operator_k8s.domain.metric_evidence import (
    GIB,
    MAX_QUERIES,
    EvidenceQuery,
    TicketScope,
    evidence_queries,
    graph_link,
    pd_named_stores,
    prometheus_evidence,
)
from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample
from tests.unit.builders import T0, at, spec

PD = {"pd": {"selector": {"matchLabels": {"app": "pd"}}}}
STORES = ("tikv-0", "tikv-1", "tikv-2")


def scope(invariant: str, store: str = "tikv-1") -> TicketScope:
    return TicketScope(invariant, store, tuple(s for s in STORES if s != store), ("pd-0", "pd-1"), ("kv_get",))


@pytest.mark.parametrize(
    ("invariant", "store", "with_pd", "names"),
    [
        ("latency", "tikv-1", True, ["latency_by_type", "latency_by_type_others", "failures_by_type", "write_stalls",
                                     "slow_score", "pd_store_states", "pd_store_addresses"]),
        ("diskUsage", "tikv-1", True, ["disk_sizes", "disk_available_deriv", "slow_score", "pd_store_states",
                                       "pd_store_addresses"]),
        ("writeStall", "tikv-1", True, ["write_stalls", "slow_score", "pd_store_states", "pd_store_addresses"]),
        ("storesReady", "tikv-1", True, ["slow_score", "pd_store_states", "pd_store_addresses"]),
        ("diskUsage", "tikv-1", False, ["disk_sizes", "disk_available_deriv", "slow_score"]),
        ("pdStores", "cluster", True, ["pd_store_states", "pd_store_addresses"]),
        ("pdStores", "cluster", False, []),
    ],
)  # fmt: skip
def test_each_ticket_asks_what_explains_it_within_the_budget(
    invariant: str, store: str, with_pd: bool, names: list[str]
) -> None:
    cluster = spec(**PD) if with_pd else spec()
    queries = evidence_queries(cluster, "ns", scope(invariant, store))
    assert [q.name for q in queries] == names
    assert len(queries) <= MAX_QUERIES, "with the pod's three API requests, ten calls at most"
    for query in queries:
        assert 'namespace="ns"' in query.promql, "label-selected: the cluster's own series only"


def test_queries_name_the_store_the_others_and_pds_leader() -> None:
    queries = {q.name: q for q in evidence_queries(spec(**PD), "ns", scope("latency"))}
    assert 'pod=~"tikv-1"' in queries["latency_by_type"].promql
    assert 'pod=~"tikv-0|tikv-2"' in queries["latency_by_type_others"].promql
    assert 'type!="kv_gc"' in queries["latency_by_type"].promql
    assert "etcd_server_is_leader" in queries["pd_store_states"].promql
    assert "pd_regions_status" in queries["pd_store_states"].promql, "PD's region health rides on its states query"
    stalls = queries["write_stalls"].promql
    assert 'increase(tikv_engine_write_stall_reason{namespace="ns",pod=~"tikv-1",db="kv"}[10m])' in stalls
    assert 'tikv_engine_num_files_at_level{namespace="ns",pod=~"tikv-1",db="kv",level="0"}' in stalls
    assert queries["pd_store_states"].keep == ("store",)
    assert queries["pd_store_addresses"].keep == ("address",)
    generic = spec(preset="generic", invariants={"latency": {"enabled": False}})
    assert evidence_queries(generic, "ns", scope("diskUsage")) == []


def test_graph_link_covers_the_tickets_window() -> None:
    link = graph_link("http://prom:9090/", 'up{pod="a"}', T0, at(3600))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    assert link.startswith("http://prom:9090/graph?")
    assert query == {"g0.expr": ['up{pod="a"}'], "g0.tab": ["0"], "g0.range_input": ["60m"],
                     "g0.end_input": ["2026-01-01 13:00:00"]}  # fmt: skip
    assert "g0.range_input=5m" in graph_link("http://p", "up", T0, at(10)), "at least five minutes"


def answer(**groups: float) -> QueryResult:
    return QueryResult("q", tuple(Sample(group, value) for group, value in groups.items()))


def pd_answers(states: list[tuple[str, str]], addresses: dict[str, str]) -> dict[str, QueryResult]:
    return {
        "pd_store_states": QueryResult("q", tuple(Sample(t, 1.0, labels=(("store", s),)) for t, s in states)),
        "pd_store_addresses": QueryResult(
            "q", tuple(Sample(s, 1.0, labels=(("address", a),)) for s, a in addresses.items())
        ),
    }


ADDRESSES = {str(i): f"tikv-{n}.tc-tikv-peer.ns.svc:20160" for n, i in enumerate((1, 4, 5))}
CAPACITY = 100 * GIB


def read(invariant: str, results: dict[str, QueryResult], store: str = "tikv-1") -> dict[str, Any]:
    the_scope = scope(invariant, store)
    queries: list[EvidenceQuery] = evidence_queries(spec(**PD), "ns", the_scope)
    return prometheus_evidence(
        queries, results, scope=the_scope, threshold_percent=80, prometheus_url="http://p", start=T0, end=at(60)
    )


@pytest.mark.parametrize(
    ("sizes", "deriv", "expected"),
    [
        # filled by something else: TiKV holds 40 %, the volume is 90 % full
        ({"capacity": CAPACITY, "available": 10 * GIB, "used": 40 * GIB}, None,
         {"usedPercent": 90.0, "tikvPercent": 40.0, "otherPercent": 50.0}),
        # filled by TiKV itself, falling 1 MiB/s: 5 GiB above the 80 % line, 10 GiB above the 5 GiB reserve
        ({"capacity": CAPACITY, "available": 25 * GIB, "used": 74 * GIB}, -(2**20),
         {"usedPercent": 75.0, "tikvPercent": 74.0, "secondsToThreshold": 5120.0, "secondsToReserve": 20480.0}),
        # TiKV could not read its disk: capacity 0, nothing is computed
        ({"capacity": 0, "available": 0, "used": 40 * GIB}, None, {"readable": False}),
    ],
)  # fmt: skip
def test_what_fills_the_disk_and_when_it_is_full(
    sizes: dict[str, float], deriv: float | None, expected: dict[str, Any]
) -> None:
    results = {"disk_sizes": answer(**sizes)}
    if deriv is not None:
        results["disk_available_deriv"] = answer(**{"tikv-1": deriv})
    disk = read("diskUsage", results)["disk"]
    assert {key: disk.get(key) for key in expected} == expected


def test_latency_compares_each_type_with_the_other_stores() -> None:
    results = {
        "latency_by_type": answer(kv_get=800.0, coprocessor=40.0, kv_scan=float("nan")),
        "latency_by_type_others": answer(kv_get=0.8, coprocessor=38.0),
        "failures_by_type": answer(kv_get=2.5),
    }
    latency = read("latency", results)["latency"]
    assert latency["types"][0] == {"type": "kv_get", "p99Ms": 800.0, "othersP99Ms": 0.8, "ratio": 1000.0}
    assert [t["type"] for t in latency["types"]] == ["kv_get", "coprocessor"], "NaN (no traffic) is not a value"
    assert latency["failures"] == {"kv_get": 2.5}
    assert latency["watched"] == ["kv_get"], "the types the latency invariant measures, for the rules"


def test_pd_names_the_stores_it_counts_by_pod() -> None:
    results = pd_answers(
        [("store_low_space_count", "4"), ("store_up_count", "4"), ("store_disconnected_count", "5"),
         ("store_up_count", "1")], ADDRESSES,
    )  # fmt: skip
    evidence = {"prometheus": read("pdStores", results, store="cluster")}
    counted = ("store_low_space_count", "store_disconnected_count")
    assert pd_named_stores(evidence, counted) == {"tikv-1": ["low_space"], "tikv-2": ["disconnected"]}
    assert evidence["prometheus"]["pd"]["stores"]["tikv-0"] == ["up"], "the evidence shows every state"
    with_regions = QueryResult("q", (*results["pd_store_states"].samples, Sample("pending-peer-region-count", 3.0)))
    own = read("diskUsage", results | {"pd_store_states": with_regions})["pd"]
    assert own["storeId"] == "4" and own["states"] == ["low_space", "up"]
    assert own["regions"] == {"pending-peer-region-count": 3}


def test_write_stalls_are_read_by_reason_with_what_says_why() -> None:
    results = {"write_stalls": answer(level0_file_limit_slowdown=6.0, level0_file_limit_stop=2.0,
                                      memtable_count_limit_slowdown=0.0, level0_files=28.0,
                                      pending_compaction_bytes=float(GIB))}  # fmt: skip
    stalls = read("writeStall", results)["stalls"]
    assert stalls == {"reasons": {"level0_file_limit_slowdown": 6.0, "level0_file_limit_stop": 2.0},
                      "level0Files": 28.0, "pendingCompactionBytes": GIB, "answered": True}  # fmt: skip
    nothing = read("writeStall", {"write_stalls": QueryResult("q", ())})["stalls"]
    assert nothing["reasons"] == {} and not nothing["answered"]


@pytest.mark.parametrize(
    ("results", "status"),
    [
        ({}, "not asked"),
        ({"pd_store_states": QueryResult.failed("q", QueryFailure.UNREACHABLE, "Prometheus unreachable")},
         "not reachable: Prometheus unreachable"),
        ({"pd_store_states": QueryResult("q", ())}, "no data"),
    ],
)  # fmt: skip
def test_unreachable_and_no_data_are_said_never_guessed(results: dict[str, QueryResult], status: str) -> None:
    evidence = read("pdStores", results, store="cluster")
    item = next(i for i in evidence["items"] if i["name"] == "pd_store_states")
    assert item["status"] == status
    assert evidence["pd"]["stores"] == {}
    assert pd_named_stores({"prometheus": evidence}, ("store_low_space_count",)) == {}
