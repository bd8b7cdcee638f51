"""Review findings (review-stop22) on sharded replicas, measured on the stack; a strict xfail until fixed.

A replica that hands a shard over keeps exporting the per-cluster timestamps of the clusters it no longer checks (so
README's alert ``time() - operator_k8s_last_successful_check_timestamp_seconds > 3 * interval`` fires for every
moved cluster), and one that gets a shard back counts the time it did not hold it as skipped intervals and late
starts (the overload signal), because on_taken drops caches but not the schedule's due times."""

from __future__ import annotations

import time

import pytest

from devstack.host.processes import Process
from devstack.world.stack import Stack
from tests.e2e.test_sharding import CLUSTERS, INTERVAL, SHARDS, checked_since, settled, sharded_replica, shards_held
from tests.stackutil import (
    eventually,
    get_json,
    health_url,
    http_status,
    metric_value,
    report,
    scrape_metrics,
    scraped_last_check,
    start_cluster,
)

pytestmark = pytest.mark.stack


def skipped(replica: Process) -> float:
    return metric_value(scrape_metrics(replica), "operator_k8s_skipped_intervals_total")


def lag_count_over(replica: Process, bound: str) -> float:
    samples = scrape_metrics(replica)
    total = metric_value(samples, r"operator_k8s_check_start_lag_seconds_count")
    under = metric_value(samples, rf'operator_k8s_check_start_lag_seconds_bucket\{{le="{bound}"\}}')
    return total - under


@pytest.mark.xfail(
    strict=True, reason="review-stop22: stale per-cluster series; a regained shard's absence counted as skipped"
)
def test_regained_shards_count_their_absence_as_skipped_intervals(stack: Stack, namespace: str) -> None:
    a = sharded_replica(stack, namespace, "replica-a")
    replicas = [a]
    try:
        eventually(lambda: http_status(health_url(a)) == 200, what="a healthy")
        for name in CLUSTERS:
            start_cluster(stack, namespace, name, invariants={"latency": {"enabled": False}}, interval=f"{INTERVAL}s")
        eventually(lambda: shards_held(a) == SHARDS, what="a holds all", timeout=60)
        since = time.time()
        eventually(lambda: checked_since(a, namespace, since) == set(CLUSTERS), what="a checked all", timeout=30)
        b = sharded_replica(stack, namespace, "replica-b")
        replicas.append(b)
        eventually(lambda: http_status(health_url(b)) == 200, what="b healthy")
        eventually(lambda: settled(a, b), what="split", timeout=60)
        before_skipped, before_late = skipped(a), lag_count_over(a, "5.0")
        away = time.time()
        eventually(lambda: time.time() - away > 20, what="20 s with b holding its share", timeout=30)
        moved = checked_since(b, namespace, away)
        stale_on_a = {n: round(time.time() - scraped_last_check(a, namespace, n), 1) for n in moved}
        report("review-stale-series", moved_to_b=sorted(moved), age_of_a_series_s=stale_on_a)
        assert all(scraped_last_check(a, namespace, n) == 0 for n in moved), "a no longer shows clusters it left"
        b.stop()
        stopped = time.time()
        eventually(lambda: shards_held(a) == SHARDS, what="a takes all back", timeout=30)
        handover = time.time() - stopped
        since = time.time()
        eventually(lambda: checked_since(a, namespace, since) == set(CLUSTERS), what="a checks all", timeout=30)
        leases = get_json(stack, "leases", "-n", namespace)["items"]
        report(
            "review-regain",
            handover_s=handover,
            skipped_before=before_skipped,
            skipped_after=skipped(a),
            late_over_5s_before=before_late,
            late_over_5s_after=lag_count_over(a, "5.0"),
            leases=sorted(i["metadata"]["name"] for i in leases),
        )
        assert skipped(a) == before_skipped, "a shard handed back is not an overloaded operator"
    finally:
        for replica in replicas:
            replica.stop()
