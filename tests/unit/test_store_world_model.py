"""The store world's model (devstack.storeworld.model): TiKV's and PD's series, their counters and every fault, no I/O.

Quantiles are computed from the exposition text the way Prometheus does (``histogram_quantile`` over the increase
between two scrapes), so these tests read what a query would read.
"""

from __future__ import annotations

import math
import re

import pytest

from devstack.storeworld.model import (
    BUCKETS,
    CAPACITY_BYTES,
    GIB,
    PLACEHOLDER_BYTES,
    POINT_KINDS,
    REGION_STATUSES,
    STALL_REASONS,
    Cluster,
    Fault,
    PdMember,
    PdVersion,
    TikvStore,
    Timings,
    byte_size,
    fault_parameters,
    store_ids,
)
from operator_k8s.domain.diagnosis import tikv_config_evidence
from operator_k8s.domain.pd_api import pd_stores_evidence

T0 = 1_700_000_000.0
IDENTITY = ("namespace", "pod", "instance", "job", "kubernetes_namespace", "cluster", "tidb_cluster", "container")
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


def parse(text: str) -> Series:
    series: Series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not an exposition line: {line!r}"
        name, _, body, value = match.groups()
        series[(name, frozenset(LABEL.findall(body or "")))] = float(value)
    return series


def types_of(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)}


def select(series: Series, name: str, **matchers: str) -> Series:
    return {k: v for k, v in series.items() if k[0] == name and set(matchers.items()) <= set(k[1])}


def one(series: Series, name: str, **matchers: str) -> float:
    found = select(series, name, **matchers)
    assert len(found) == 1, (name, matchers, found)
    return next(iter(found.values()))


def quantile(q: float, before: Series, after: Series, **matchers: str) -> float:
    """``histogram_quantile(q, sum by (le) (increase(tikv_grpc_msg_duration_seconds_bucket{matchers}[…])))``, with
    Prometheus' own interpolation (promql/quantile.go)."""
    name = "tikv_grpc_msg_duration_seconds_bucket"
    by_le: dict[float, float] = {}
    for key, value in select(after, name, **matchers).items():
        le = float(dict(key[1])["le"])
        by_le[le] = by_le.get(le, 0.0) + value - before.get(key, 0.0)
    bounds = sorted(by_le)
    counts = [by_le[b] for b in bounds]
    if len(bounds) < 2 or counts[-1] == 0:
        return math.nan
    rank = q * counts[-1]
    index = next(i for i, c in enumerate(counts) if c >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    start = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    return start + (bounds[index] - start) * ((rank - below) / (counts[index] - below))


def scrape_twice(store: TikvStore, first: float, second: float) -> tuple[Series, Series]:
    return parse(store.exposition(first)), parse(store.exposition(second))


def store(**kwargs: object) -> TikvStore:
    return TikvStore("tc-tikv-0", started_at=T0, **kwargs)  # type: ignore[arg-type]


# -- names, types, labels --------------------------------------------------------------------------------------------


def test_tikv_exports_its_real_series_with_their_types_and_no_identity_label() -> None:
    text = store().exposition(T0 + 10)
    assert types_of(text) == {
        "tikv_grpc_msg_duration_seconds": "histogram",
        "tikv_grpc_msg_fail_total": "counter",
        "tikv_store_size_bytes": "gauge",
        "tikv_engine_write_stall": "gauge",
        "tikv_engine_write_stall_reason": "gauge",
        "tikv_engine_num_files_at_level": "gauge",
        "tikv_engine_pending_compaction_bytes": "gauge",
        "tikv_raftstore_slow_score": "gauge",
        "process_start_time_seconds": "gauge",
    }
    series = parse(text)
    assert {label for (_, labels) in series for label, _ in labels} == {"type", "priority", "le", "db", "cf", "level"}
    bucket = select(series, "tikv_grpc_msg_duration_seconds_bucket", type="kv_get")
    assert {name for key in bucket for name, _ in key[1]} == {"type", "priority", "le"}
    bounds = sorted(float(dict(key[1])["le"]) for key in bucket)
    assert bounds[:-1] == pytest.approx([5e-5 * 2**i for i in range(22)]) and bounds[-1] == math.inf
    assert len(BUCKETS) == 22
    assert {dict(k[1])["type"] for k in select(series, "tikv_store_size_bytes")} == {
        "capacity", "available", "used", "snap_size", "raft_size", "kv_size", "import_size"}  # fmt: skip
    assert {dict(k[1])["type"] for k in select(series, "tikv_engine_write_stall", db="kv")} >= {
        "write_stall_max", "write_stall_average", "write_stall_percentile99"}  # fmt: skip
    assert one(series, "process_start_time_seconds") == T0


def test_counts_are_whole_and_cumulative() -> None:
    series = parse(store().exposition(T0 + 7.3))
    for kind in ("kv_get", "coprocessor", "kv_gc"):
        by_le = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in select(series, "tikv_grpc_msg_duration_seconds_bucket", type=kind).items()
        )
        counts = [v for _, v in by_le]
        assert counts == sorted(counts) and all(c == int(c) for c in counts)
        assert counts[-1] == one(series, "tikv_grpc_msg_duration_seconds_count", type=kind)


# -- latency ---------------------------------------------------------------------------------------------------------


def test_healthy_point_operations_take_about_a_millisecond_and_scans_longer() -> None:
    before, after = scrape_twice(store(), T0 + 10, T0 + 70)
    for kind in POINT_KINDS:
        assert quantile(0.99, before, after, type=kind) < 0.004, kind  # writes go through Raft: a few ms
    assert quantile(0.99, before, after, type="kv_get") < 0.0017
    assert 0.02 < quantile(0.99, before, after, type="coprocessor") < 0.3
    everything = quantile(0.99, before, after)
    assert 0.005 < everything < 0.1, everything


def test_lock_contention_makes_the_all_types_p99_about_a_second_and_leaves_kv_get_alone() -> None:
    healthy = store()
    contended = store()
    contended.set_fault(Fault.CONTENTION, fault_parameters(Fault.CONTENTION, {}), T0)
    before, after = scrape_twice(contended, T0 + 10, T0 + 70)
    calm_before, calm_after = scrape_twice(healthy, T0 + 10, T0 + 70)
    assert 0.85 < quantile(0.99, before, after) < 1.2
    assert quantile(0.99, before, after, type="kv_get") == pytest.approx(quantile(0.99, calm_before, calm_after,
                                                                                  type="kv_get"))  # fmt: skip
    assert 0.8 < quantile(0.99, before, after, type="kv_pessimistic_lock") <= 1.6384
    # TiKV's own dashboard query (by type, without kv_gc) sees the waits only in kv_pessimistic_lock.
    others = [quantile(0.99, before, after, type=k) for k in POINT_KINDS]
    assert max(others) < 0.004


def test_latency_fault_slows_point_operations_only() -> None:
    slow = store()
    slow.set_fault(Fault.LATENCY, fault_parameters(Fault.LATENCY, {"seconds": 0.4}), T0)
    before, after = scrape_twice(slow, T0 + 10, T0 + 40)
    for kind in POINT_KINDS:
        assert 0.3 < quantile(0.99, before, after, type=kind) < 0.82, kind
    assert quantile(0.99, before, after, type="coprocessor") < 0.3
    total = sum(select(after, "tikv_grpc_msg_duration_seconds_sum").values()) - sum(
        select(before, "tikv_grpc_msg_duration_seconds_sum").values())  # fmt: skip
    count = sum(select(after, "tikv_grpc_msg_duration_seconds_count").values()) - sum(
        select(before, "tikv_grpc_msg_duration_seconds_count").values())  # fmt: skip
    assert total / count > 0.25, "the mean over every type follows the point operations (most of the traffic)"


@pytest.mark.parametrize("kind", [Fault.IDLE, Fault.HUNG])
def test_an_idle_or_hung_store_observes_nothing_so_the_quantile_is_nan(kind: Fault) -> None:
    quiet = store()
    quiet.set_fault(kind, fault_parameters(kind, {}), T0 + 5)
    before, after = scrape_twice(quiet, T0 + 10, T0 + 40)
    assert select(after, "tikv_grpc_msg_duration_seconds_count"), "the series stay, they only stop moving"
    assert select(after, "tikv_grpc_msg_duration_seconds_count") == select(
        before, "tikv_grpc_msg_duration_seconds_count"
    )
    assert math.isnan(quantile(0.99, before, after))
    assert math.isnan(quantile(0.99, before, after, type="kv_get"))


def test_kv_gc_is_rare_and_slow() -> None:
    before, after = scrape_twice(store(), T0, T0 + 600)
    gcs = one(after, "tikv_grpc_msg_duration_seconds_count", type="kv_gc")
    assert gcs == 10
    assert 1.0 < quantile(0.5, before, after, type="kv_gc") < 3.3


# -- disk ------------------------------------------------------------------------------------------------------------


def sizes(s: TikvStore) -> dict[str, float]:
    series = parse(s.exposition(T0 + 1))
    return {dict(k[1])["type"]: v for k, v in select(series, "tikv_store_size_bytes").items()}


def test_disk_used_is_tikvs_own_data_and_available_also_counts_other_files() -> None:
    healthy = sizes(store())
    assert healthy["capacity"] == CAPACITY_BYTES
    assert healthy["used"] / healthy["capacity"] == pytest.approx(0.40)
    assert healthy["used"] == healthy["snap_size"] + healthy["raft_size"] + healthy["kv_size"] + PLACEHOLDER_BYTES
    assert healthy["import_size"] == 0
    assert healthy["available"] < healthy["capacity"] - healthy["used"], "other files take some space"


def test_disk_filled_by_tikv_raises_used_and_lowers_available() -> None:
    full = store()
    full.set_fault(Fault.DISK, fault_parameters(Fault.DISK, {"percent": 93}), T0)
    values = sizes(full)
    assert values["used"] / values["capacity"] == pytest.approx(0.93)
    assert values["available"] / values["capacity"] < 0.07


def test_disk_filled_by_something_else_lowers_available_only() -> None:
    other = store()
    other.set_fault(Fault.DISK_OTHER, fault_parameters(Fault.DISK_OTHER, {"percent": 50}), T0)
    healthy, values = sizes(store()), sizes(other)
    assert values["used"] == healthy["used"]
    filesystem_free = CAPACITY_BYTES - values["used"] - CAPACITY_BYTES * 0.5
    assert values["available"] == min(values["capacity"] - values["used"], filesystem_free)
    assert values["available"] / values["capacity"] == pytest.approx(0.10)
    assert values["used"] / values["capacity"] == pytest.approx(0.40), "used/capacity does not notice"


def test_unreadable_disk_stats_give_zero_capacity_and_available() -> None:
    broken = store()
    broken.set_fault(Fault.DISK_UNREADABLE, {}, T0)
    values = sizes(broken)
    assert (values["capacity"], values["available"]) == (0, 0)
    assert values["used"] == sizes(store())["used"]


# -- process faults --------------------------------------------------------------------------------------------------


def test_down_stops_the_process_and_healing_restarts_it_from_zero() -> None:
    s = store()
    s.exposition(T0 + 10)
    s.set_fault(Fault.DOWN, {}, T0 + 10)
    assert not s.responding and not s.pod_state().running
    s.heal(Fault.DOWN, T0 + 20)
    assert s.responding and s.pod_state().running and s.pod_state().restarts == 1
    series = parse(s.exposition(T0 + 21))
    assert one(series, "process_start_time_seconds") == T0 + 20
    assert one(series, "tikv_grpc_msg_duration_seconds_count", type="kv_get") == 90


def test_hung_store_keeps_running_answers_nothing_and_resumes_without_restart() -> None:
    s = store()
    s.set_fault(Fault.HUNG, {}, T0 + 10)
    assert s.pod_state().running and not s.responding
    s.heal(Fault.HUNG, T0 + 20)
    assert s.responding and s.pod_state().restarts == 0


def test_restart_loop_changes_the_start_time_every_few_seconds_and_resets_counters() -> None:
    s = store()
    s.set_fault(Fault.RESTART_LOOP, fault_parameters(Fault.RESTART_LOOP, {"seconds": 5}), T0)
    starts = set()
    for second in range(1, 13):
        starts.add(one(parse(s.exposition(T0 + second)), "process_start_time_seconds"))
    assert starts == {T0, T0 + 5, T0 + 10}
    assert s.pod_state().restarts == 2
    assert one(parse(s.exposition(T0 + 12)), "tikv_grpc_msg_duration_seconds_count", type="kv_get") == 180
    s.heal(Fault.RESTART_LOOP, T0 + 12)
    s.exposition(T0 + 30)
    assert s.pod_state().restarts == 2


def test_critical_errors_appear_with_the_first_and_keep_counting() -> None:
    s = store()
    assert not select(parse(s.exposition(T0 + 5)), "tikv_critical_error_total"), "no series before the first error"
    s.set_fault(Fault.CRITICAL_ERROR, fault_parameters(Fault.CRITICAL_ERROR, {}), T0 + 5)
    first = one(parse(s.exposition(T0 + 5)), "tikv_critical_error_total", type="default value not found")
    later = one(parse(s.exposition(T0 + 15)), "tikv_critical_error_total", type="default value not found")
    assert first == 1 and later == 11
    s.heal(Fault.CRITICAL_ERROR, T0 + 15)
    assert one(parse(s.exposition(T0 + 60)), "tikv_critical_error_total") == 11, "a counter keeps its value"
    assert "# TYPE tikv_critical_error_total counter" in s.exposition(T0 + 61)


def test_write_stall_is_a_gauge_that_moves_under_a_stall() -> None:
    s = store()
    assert one(parse(s.exposition(T0 + 5)), "tikv_engine_write_stall", type="write_stall_max") == 0
    s.set_fault(Fault.WRITE_STALL, {}, T0 + 5)
    first = one(parse(s.exposition(T0 + 8)), "tikv_engine_write_stall", db="kv", type="write_stall_max")
    second = one(parse(s.exposition(T0 + 12)), "tikv_engine_write_stall", db="kv", type="write_stall_max")
    assert 0 < first < second


@pytest.mark.parametrize(
    ("cause", "reason", "level0", "pending_gib"),
    [
        ("level0", "level0_file_limit", (26, 36), (0, 1)),
        ("pending-compaction", "pending_compaction_bytes", (3, 3), (192, 300)),
        ("memtable", "memtable_count_limit", (3, 3), (0, 1)),
    ],
)  # fmt: skip
def test_a_write_stall_counts_its_reason_and_shows_its_cause(
    cause: str, reason: str, level0: tuple[int, int], pending_gib: tuple[float, float]
) -> None:
    s = store()
    healthy = parse(s.exposition(T0 + 5))
    assert {dict(k[1])["type"] for k in select(healthy, "tikv_engine_write_stall_reason", db="kv")} == set(
        STALL_REASONS), "every reason is there, at 0, before any stall"  # fmt: skip
    assert all(v == 0 for v in select(healthy, "tikv_engine_write_stall_reason").values())
    s.set_fault(Fault.WRITE_STALL, fault_parameters(Fault.WRITE_STALL, {"cause": cause}), T0 + 5)
    series = parse(s.exposition(T0 + 13))
    counts = {dict(k[1])["type"]: v for k, v in select(series, "tikv_engine_write_stall_reason", db="kv").items()}
    assert counts[f"{reason}_slowdown"] == 6 and counts[f"{reason}_stop"] == 2, "8 stalls, one in four a stop"
    assert sum(counts.values()) == 8, "no other reason counts"
    assert level0[0] <= one(series, "tikv_engine_num_files_at_level", cf="write", level="0") <= level0[1]
    pending = one(series, "tikv_engine_pending_compaction_bytes", cf="write") / 2**30
    assert pending_gib[0] <= pending <= pending_gib[1]
    with pytest.raises(ValueError, match="cause"):
        fault_parameters(Fault.WRITE_STALL, {"cause": "tuesday"})


def test_a_write_stall_with_write_seconds_slows_point_writes_only() -> None:
    s = store()
    s.set_fault(Fault.WRITE_STALL, fault_parameters(Fault.WRITE_STALL, {"writeSeconds": 0.6}), T0)
    before, after = scrape_twice(s, T0 + 1, T0 + 6)
    assert 0.5 < quantile(0.99, before, after, type="kv_prewrite") < 1.0
    assert quantile(0.99, before, after, type="kv_get") < 0.002


def test_a_crash_loop_keeps_the_pod_down_counts_restarts_and_says_why() -> None:
    s = store()
    parameters = fault_parameters(Fault.CRASH_LOOP, {"seconds": 2, "message": "[FATAL] cluster id mismatch"})
    s.set_fault(Fault.CRASH_LOOP, parameters, T0 + 10)
    assert not s.responding
    s.advance(T0 + 15)
    state = s.pod_state()
    assert not state.running and state.restarts == 3 and state.last_exit_at == T0 + 14
    assert (state.last_exit_reason, state.last_exit_message) == ("Error", "[FATAL] cluster id mismatch")
    s.heal(Fault.CRASH_LOOP, T0 + 15)
    assert s.responding and s.pod_state().restarts == 4 and s.next_crash is None


def test_an_unschedulable_pod_is_pending_with_the_schedulers_message_and_starts_fresh_when_placed() -> None:
    s = store()
    s.set_fault(Fault.UNSCHEDULABLE, fault_parameters(Fault.UNSCHEDULABLE, {}), T0 + 10)
    state = s.pod_state()
    assert not state.running and state.unschedulable is not None and "Insufficient memory" in state.unschedulable
    s.heal(Fault.UNSCHEDULABLE, T0 + 20)
    assert s.responding and s.pod_state().restarts == 0 and s.pod_state().unschedulable is None
    assert one(parse(s.exposition(T0 + 21)), "process_start_time_seconds") == T0 + 20


def test_fault_parameters_are_validated() -> None:
    assert fault_parameters(Fault.DISK, {"percent": 90}) == {"percent": 90.0}
    assert fault_parameters(Fault.LATENCY, {}) == {"seconds": 0.8, "slowScore": 1.0}
    with pytest.raises(ValueError, match="percent"):
        fault_parameters(Fault.DISK, {"percent": 120})
    with pytest.raises(ValueError, match="not"):
        fault_parameters(Fault.DOWN, {"seconds": 1})


# -- PD --------------------------------------------------------------------------------------------------------------


FAST = Timings(store_heartbeat=1, store_disconnect=2, store_unhealthy=6, max_store_down=10, max_peer_down=4)


def cluster(stores: int = 3, version: PdVersion = PdVersion.CLASSIC, timings: Timings = FAST) -> Cluster:
    return Cluster(
        "ns",
        "tc",
        stores={
            f"tc-tikv-{i}": TikvStore(f"tc-tikv-{i}", started_at=T0, store_id=sid)
            for i, sid in enumerate(store_ids(stores))
        },
        pd={f"tc-pd-{i}": PdMember(f"tc-pd-{i}", started_at=T0) for i in range(3)},
        timings=timings,
        pd_version=version,
    )


def pd_series(c: Cluster, member: str, now: float) -> Series:
    return parse(c.pd_exposition(c.pd[member], now))


def status(c: Cluster, now: float) -> dict[str, float]:
    leader = c.leader()
    assert leader is not None
    series = pd_series(c, leader.name, now)
    totals: dict[str, float] = {}
    for key, value in select(series, "pd_cluster_status").items():
        kind = dict(key[1])["type"]
        totals[kind] = totals.get(kind, 0.0) + value
    return totals


def regions(c: Cluster, member: str, now: float) -> dict[str, float]:
    return {dict(k[1])["type"]: v for k, v in select(pd_series(c, member, now), "pd_regions_status").items()}


def test_pd_cluster_status_comes_from_the_leader_only() -> None:
    c = cluster()
    leader = pd_series(c, "tc-pd-0", T0 + 1)
    assert one(leader, "etcd_server_is_leader") == 1
    assert one(leader, "service_member_role", service="PD") == 1
    assert one(leader, "pd_cluster_status", type="store_up_count") == 3
    assert one(leader, "pd_cluster_status", type="storage_capacity") == 3 * CAPACITY_BYTES
    for follower in ("tc-pd-1", "tc-pd-2"):
        series = pd_series(c, follower, T0 + 1)
        assert one(series, "etcd_server_is_leader") == 0
        assert not select(series, "pd_cluster_status"), "statistics.Reset() leaves a follower none"
        assert set(regions(c, follower, T0 + 1).values()) == {0}, "pre-created, zero on followers"
        assert not any(label in IDENTITY for (_, labels) in series for label, _ in labels)
    assert set(regions(c, "tc-pd-0", T0 + 1)) == set(REGION_STATUSES)
    assert all("-" in kind and "_" not in kind for kind in REGION_STATUSES), "PD's types are hyphenated"


def test_per_store_format_of_pd_v8_5_5() -> None:
    c = cluster(version=PdVersion.PER_STORE)
    series = select(pd_series(c, "tc-pd-0", T0 + 1), "pd_cluster_status", type="store_up_count")
    assert {frozenset(dict(k[1])) for k in series} == {frozenset({"type", "engine", "store"})}
    assert sorted(dict(k[1])["store"] for k in series) == ["1", "4", "5"]
    assert sum(series.values()) == 3


def test_pd_scheduler_store_status_names_each_store_by_id_and_address_on_the_leader_only() -> None:
    c = cluster()
    c.stores["tc-tikv-1"].set_fault(Fault.DISK_OTHER, fault_parameters(Fault.DISK_OTHER, {"percent": 50}), T0)
    series = select(pd_series(c, "tc-pd-0", T0 + 1), "pd_scheduler_store_status", type="store_available")
    by_store = {dict(k[1])["store"]: (dict(k[1])["address"], v) for k, v in series.items()}
    assert by_store["4"][0] == "tc-tikv-1.tc-tikv-peer.ns.svc:20160"
    assert by_store["4"][1] == pytest.approx(0.10 * CAPACITY_BYTES, abs=2)
    assert by_store["1"][1] > 0.5 * CAPACITY_BYTES
    assert not select(pd_series(c, "tc-pd-1", T0 + 1), "pd_scheduler_store_status")


def test_a_slow_disk_raises_the_slow_score_and_pd_counts_the_store_slow() -> None:
    c = cluster(version=PdVersion.PER_STORE)
    s = c.stores["tc-tikv-2"]
    assert one(parse(s.exposition(T0 + 1)), "tikv_raftstore_slow_score") == 1
    s.set_fault(Fault.LATENCY, fault_parameters(Fault.LATENCY, {"slowScore": 90}), T0 + 1)
    assert one(parse(s.exposition(T0 + 2)), "tikv_raftstore_slow_score") == 90
    slow = select(pd_series(c, "tc-pd-0", T0 + 2), "pd_cluster_status", type="store_slow_count")
    assert {dict(k[1])["store"]: v for k, v in slow.items()} == {"1": 0, "4": 0, "5": 1}
    s.set_fault(Fault.LATENCY, fault_parameters(Fault.LATENCY, {}), T0 + 3)
    assert status(c, T0 + 4)["store_slow_count"] == 0, "a latency whose cause is not the disk: not slow to PD"
    with pytest.raises(ValueError, match="slowScore"):
        fault_parameters(Fault.LATENCY, {"slowScore": 101})


def test_leadership_moves_when_the_leader_goes_down() -> None:
    c = cluster()
    c.pd["tc-pd-0"].set_fault(Fault.DOWN, {}, T0 + 1)
    assert c.leader() is c.pd["tc-pd-1"]
    assert one(pd_series(c, "tc-pd-1", T0 + 2), "etcd_server_is_leader") == 1


def test_a_hung_store_is_disconnected_then_unhealthy_then_down_for_pd() -> None:
    c = cluster()
    c.stores["tc-tikv-1"].set_fault(Fault.HUNG, {}, T0 + 10)
    assert status(c, T0 + 11)["store_up_count"] == 3
    assert status(c, T0 + 13)["store_disconnected_count"] == 1
    assert status(c, T0 + 13)["store_up_count"] == 2
    assert status(c, T0 + 17)["store_unhealth_count"] == 1
    assert status(c, T0 + 21)["store_down_count"] == 1
    assert c.stores["tc-tikv-1"].pod_state().running, "the pod itself stays Ready"


def test_a_down_store_gives_pending_then_down_then_missing_peers() -> None:
    c = cluster()
    c.stores["tc-tikv-2"].set_fault(Fault.DOWN, {}, T0 + 10)
    assert regions(c, "tc-pd-0", T0 + 10.5)["pending-peer-region-count"] == 0
    assert regions(c, "tc-pd-0", T0 + 12)["pending-peer-region-count"] == 1000
    assert regions(c, "tc-pd-0", T0 + 15)["down-peer-region-count"] == 1000
    late = regions(c, "tc-pd-0", T0 + 21)
    assert late["down-peer-region-count"] == 0 and late["miss-peer-region-count"] == 1000


def test_missing_peers_fault_shows_on_the_leader_only() -> None:
    c = cluster()
    c.set_fault(Fault.MISSING_PEERS, fault_parameters(Fault.MISSING_PEERS, {}))
    assert regions(c, "tc-pd-0", T0 + 1)["miss-peer-region-count"] > 100
    assert regions(c, "tc-pd-1", T0 + 1)["miss-peer-region-count"] == 0
    c.heal(Fault.MISSING_PEERS)
    assert regions(c, "tc-pd-0", T0 + 2)["miss-peer-region-count"] == 0


def test_pd_sees_low_space_from_available_not_used() -> None:
    c = cluster()
    c.stores["tc-tikv-0"].set_fault(Fault.DISK_OTHER, fault_parameters(Fault.DISK_OTHER, {"percent": 45}), T0)
    assert status(c, T0 + 1)["store_low_space_count"] == 1
    c.stores["tc-tikv-0"].heal(Fault.DISK_OTHER, T0 + 1)
    c.stores["tc-tikv-0"].set_fault(Fault.DISK_UNREADABLE, {}, T0 + 1)
    assert status(c, T0 + 2)["store_low_space_count"] == 0, "PD ignores a store whose capacity is 0"


def test_a_disconnected_store_is_judged_on_its_last_reported_disk() -> None:
    c = cluster()
    s = c.stores["tc-tikv-0"]
    s.set_fault(Fault.DOWN, {}, T0 + 1)
    s.set_fault(Fault.DISK, fault_parameters(Fault.DISK, {"percent": 99}), T0 + 2)
    assert status(c, T0 + 3)["store_low_space_count"] == 0
    assert status(c, T0 + 3)["storage_size"] == pytest.approx(3 * 0.40 * CAPACITY_BYTES, abs=3)


def test_store_ids_are_as_a_fresh_cluster_allocates_them() -> None:
    assert store_ids(3) == [1, 4, 5]
    assert store_ids(1) == [1]
    assert GIB == 2**30


def test_tikvs_config_leaves_the_block_cache_unset_until_an_oom_fault_sets_what_it_was_killed_with() -> None:
    tikv = store()
    assert tikv_config_evidence(tikv.config())["blockCacheCapacity"] is None, "a default install leaves it unset"
    tikv.set_fault(Fault.DOWN, fault_parameters(Fault.DOWN, {"reason": "OOMKilled", "blockCacheCapacity": "28GiB"}),
                   T0 + 1)  # fmt: skip
    assert tikv.pod_state().last_exit_reason == "OOMKilled"
    assert tikv_config_evidence(tikv.config())["blockCacheBytes"] == 28 * GIB
    tikv.heal(Fault.DOWN, T0 + 2)
    tikv.set_fault(Fault.DOWN, fault_parameters(Fault.DOWN, {"reason": "OOMKilled"}), T0 + 3)
    assert tikv.config()["storage"]["block-cache"]["capacity"] == "28GiB", "a fault that says nothing keeps it"  # type: ignore[index]
    tikv.set_fault(Fault.DOWN, fault_parameters(Fault.DOWN, {"blockCacheCapacity": "unset"}), T0 + 4)
    assert tikv_config_evidence(tikv.config())["blockCacheCapacity"] is None


@pytest.mark.parametrize(
    ("quiet", "state"),
    [(0.5, "Up"), (3.0, "Disconnected"), (7.0, "Disconnected"), (12.0, "Down")],
    ids=["heard", "disconnected", "unhealthy-is-disconnected", "down"],
)
def test_pds_store_api_says_each_stores_state_from_the_heartbeat_model_the_series_use(quiet: float, state: str) -> None:
    c = cluster()
    c.stores["tc-tikv-1"].set_fault(Fault.HUNG, {}, T0 + 100)
    answer = c.stores_api(T0 + 100 + quiet)
    assert answer["count"] == 3
    found = pd_stores_evidence(answer, ("tc-tikv-0", "tc-tikv-1", "tc-tikv-2"))
    assert found["readable"] and list(found["stores"]) == ["tc-tikv-0", "tc-tikv-1", "tc-tikv-2"]
    assert found["stores"]["tc-tikv-1"]["stateName"] == state
    assert found["stores"]["tc-tikv-0"]["stateName"] == "Up" and found["stores"]["tc-tikv-0"]["lowSpace"] is False


def test_pds_store_api_writes_sizes_as_pd_does_and_says_low_space_by_its_rule() -> None:
    c = cluster()
    c.stores["tc-tikv-2"].set_fault(Fault.DISK_OTHER, fault_parameters(Fault.DISK_OTHER, {"percent": 85}), T0 + 1)
    answer = c.stores_api(T0 + 2)
    entries = {e["store"]["address"].split(".")[0]: e for e in answer["stores"]}  # type: ignore[attr-defined]
    assert entries["tc-tikv-0"]["status"]["capacity"].endswith("GiB")
    assert entries["tc-tikv-0"]["store"]["address"] == "tc-tikv-0.tc-tikv-peer.ns.svc:20160"
    found = pd_stores_evidence(answer, ("tc-tikv-0", "tc-tikv-1", "tc-tikv-2"))["stores"]
    assert found["tc-tikv-2"]["lowSpace"] and "low_space" in found["tc-tikv-2"]["states"]
    assert byte_size(100 * GIB) == "100GiB" and byte_size(2000 * 2**20) == "1.953GiB" and byte_size(12) == "12B"
