"""Two sharded replicas (real operator processes, real Leases in the API server): each checks only its shards'
clusters, a SIGKILLed replica's clusters are checked again by the other within the lease and an interval with no
duplicate ticket, and a graceful stop hands its shards over at once."""

from __future__ import annotations

import signal
import time

import pytest

from devstack.host.processes import Process
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.e2e.support import unresolved, unresolved_duplicates
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
    store_fault,
)

pytestmark = pytest.mark.stack
SHARDS, LEASE_SECONDS, RENEW_SECONDS, INTERVAL = 8, 10, 2, 1
CLUSTERS = [f"c{i}" for i in range(6)]


def shards_held(replica: Process) -> float:
    return metric_value(scrape_metrics(replica), "operator_k8s_shards_held")


def checked_since(replica: Process, namespace: str, since: float) -> set[str]:
    return {name for name in CLUSTERS if scraped_last_check(replica, namespace, name) > since}


def sharded_replica(stack: Stack, namespace: str, identity: str) -> Process:
    return operator_process(
        stack, f"operator-{identity}-{namespace}.log", OPERATOR_K8S_NAMESPACES=namespace,
        OPERATOR_K8S_SHARDING="leases", OPERATOR_K8S_SHARD_COUNT=str(SHARDS),
        OPERATOR_K8S_SHARD_LEASE_SECONDS=str(LEASE_SECONDS), OPERATOR_K8S_SHARD_RENEW_SECONDS=str(RENEW_SECONDS),
        OPERATOR_K8S_LEASE_NAMESPACE=namespace, OPERATOR_K8S_LEASE_PREFIX="shards", OPERATOR_K8S_IDENTITY=identity,
    )  # fmt: skip


def checked_by(stack: Stack, namespace: str) -> dict[str, str | None]:
    """Which replica each cluster's status says checks it."""
    items = get_json(stack, "mc", "-n", namespace)["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("checkedBy", {}).get("replica") for i in items}


def settled(a: Process, b: Process) -> bool:
    """Both hold a share and together every shard: the hand-over after the second replica joined is done."""
    held = shards_held(a), shards_held(b)
    return min(held) > 0 and sum(held) == SHARDS


def test_sharded_replicas_split_the_clusters_and_take_over_a_killed_ones(stack: Stack, namespace: str) -> None:
    a, b = sharded_replica(stack, namespace, "replica-a"), sharded_replica(stack, namespace, "replica-b")
    replicas = [a, b]
    try:
        eventually(lambda: all(http_status(health_url(r)) == 200 for r in (a, b)), what="replicas healthy")
        for name in CLUSTERS:
            start_cluster(stack, namespace, name, invariants={"latency": {"enabled": False}},
                          interval=f"{INTERVAL}s")  # fmt: skip
        eventually(lambda: settled(a, b), what="the shards split between the replicas", timeout=60)
        leases = get_json(stack, "leases", "-n", namespace)["items"]
        holders = {item["metadata"]["name"]: item["spec"].get("holderIdentity") for item in leases}
        assert {h for n, h in holders.items() if "-shard-" in n} == {"replica-a", "replica-b"}, holders

        since = time.time()
        eventually(lambda: checked_since(a, namespace, since) | checked_since(b, namespace, since) == set(CLUSTERS),
                   what="every cluster checked by one replica or the other", timeout=30)  # fmt: skip
        by_a, by_b = checked_since(a, namespace, since), checked_since(b, namespace, since)
        assert not by_a & by_b, f"checked by both: {by_a & by_b}"
        assert by_a and by_b, "each replica checks a share"
        expected = {name: "replica-a" if name in by_a else "replica-b" for name in CLUSTERS}
        eventually(lambda: checked_by(stack, namespace) == expected, what="each cluster's status naming its checker")

        victim = next(name for name in CLUSTERS if name in by_a)
        store_fault(stack, namespace, victim, f"{victim}-0", "disk", {"percent": 95})
        eventually(lambda: (victim, "diskUsage", f"{victim}-0") in unresolved(stack, namespace),
                   what="a ticket open on a cluster of the replica to be killed", timeout=60)  # fmt: skip
        assert a.popen is not None
        a.popen.send_signal(signal.SIGKILL)
        a.popen.wait()
        killed = time.time()
        eventually(lambda: checked_since(b, namespace, killed) >= by_a, what="the killed replica's clusters",
                   timeout=LEASE_SECONDS + 30)  # fmt: skip
        takeover = time.time() - killed
        assert unresolved_duplicates(stack, namespace) == []
        assert unresolved(stack, namespace) == [(victim, "diskUsage", f"{victim}-0")], "the one ticket, kept"

        c = sharded_replica(stack, namespace, "replica-c")
        replicas.append(c)
        eventually(lambda: http_status(health_url(c)) == 200, what="the newcomer healthy")
        eventually(lambda: settled(b, c), what="the newcomer taking its share", timeout=60)
        b.stop()  # graceful: its Leases are released, not left to expire
        stopped = time.time()
        eventually(lambda: shards_held(c) == SHARDS, what="the shards handed over", timeout=LEASE_SECONDS + 10)
        handover = time.time() - stopped
        report("sharding", takeover_after_sigkill_s=takeover, handover_after_stop_s=handover)
        assert takeover <= LEASE_SECONDS + RENEW_SECONDS + INTERVAL + 3, "within the lease, a period and an interval"
        assert handover < LEASE_SECONDS, "a graceful stop hands over before the lease would have expired"
    finally:
        for replica in replicas:
            replica.stop()


def skipped(replica: Process) -> float:
    return metric_value(scrape_metrics(replica), "operator_k8s_skipped_intervals_total")


def lag_count_over(replica: Process, bound: str) -> float:
    samples = scrape_metrics(replica)
    total = metric_value(samples, r"operator_k8s_check_start_lag_seconds_count")
    under = metric_value(samples, rf'operator_k8s_check_start_lag_seconds_bucket\{{le="{bound}"\}}')
    return total - under


@pytest.mark.level("low")  # a minute and a half: the full run
def test_a_shard_handed_over_leaves_no_stale_series_and_coming_back_counts_no_skipped_interval(
    stack: Stack, namespace: str
) -> None:
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
        eventually(lambda: checked_since(a, namespace, away) | checked_since(b, namespace, away) == set(CLUSTERS),
                   what="every cluster checked by its holder since the split", timeout=30)  # fmt: skip
        moved = checked_since(b, namespace, away)
        assert moved, "b took a share"
        # a lets go of a cluster as soon as it hands its shard over; its series must not stay behind as a stale timestamp.
        eventually(lambda: all(scraped_last_check(a, namespace, n) == 0 for n in moved),
                   what="a no longer showing the clusters it left", timeout=10)  # fmt: skip
        report("review-stale-series", moved_to_b=sorted(moved), left_after_s=time.time() - away)
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
