"""Twenty Prometheus servers that never answer and twenty that dribble a byte a second, each the Prometheus of a
MonitoredCluster at the largest timeout (checked every 5 s), beside a healthy cluster checked every second: its
cadence and its detection stay as they were without them. The whole operator runs (a process, its threads, slots and buffer budget), not the client alone."""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.host.processes import Process
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.e2e.support import Scene, SharedOperator, wait_healthy
from tests.hostile_http import dribbling_body, serving_many, silent
from tests.stackutil import eventually, open_in_db, pg_rows, report, scraped_last_check, store_fault

pytestmark = pytest.mark.stack
HOSTILE_EACH = 20
CADENCE_SECONDS = 30.0
TRIALS = 10
"""A detection is 0 to 2 s of sampling phase (a 1 s scrape, a 1 s interval) plus the operator's own delay; its spread
(about 0.5 s) is larger than 10 % of it, so the comparison is of means over ten trials each, allowing two standard
errors of their difference for the phase."""


def _cadence(operator: Process, namespace: str) -> float:
    """Check cycles per second of the healthy cluster, counted from the operator's own metric."""
    seen, started = {scraped_last_check(operator, namespace, "healthy")}, time.monotonic()
    while time.monotonic() - started < CADENCE_SECONDS:
        seen.add(scraped_last_check(operator, namespace, "healthy"))
        time.sleep(0.1)  # the sampling period of the count, not a wait for a condition
    return (len(seen) - 1) / CADENCE_SECONDS


def _detections(stack: Stack, namespace: str, store: str) -> list[float]:
    """Seconds from a disk fault to its ticket opening (or reopening), by Postgres's record of it, over ``TRIALS``."""
    delays = []
    for _ in range(TRIALS):
        faulted = time.time()
        store_fault(stack, namespace, "healthy", store, "disk", {"percent": 95})

        def opened(faulted: float = faulted) -> float | None:
            (row,) = pg_rows(
                stack, "SELECT max(e.at) AS at FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id"
                " WHERE t.namespace = $1 AND e.kind IN ('Opened', 'Reopened')", namespace,
            )  # fmt: skip
            at = row["at"].timestamp() if row["at"] is not None else None
            return at if at is not None and at > faulted else None

        delays.append(eventually(opened, what="the ticket opened (again)", timeout=60) - faulted)
        store_fault(stack, namespace, "healthy", store, "disk", heal=True)
        eventually(lambda: not open_in_db(stack, namespace, "diskUsage"), what="the resolution", timeout=60)
    return delays


def _measured(stack: Stack, operator: Process, namespace: str, store: str) -> tuple[float, list[float]]:
    """The cadence and the detections of one phase, measured side by side (the count runs in a thread while the
    faults come and go): quiet and busy phases alike, so their comparison stays the same, in half the time. The
    detections' faults change only the healthy cluster's verdicts, never how often its timer fires."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        cadence = pool.submit(_cadence, operator, namespace)
        detections = _detections(stack, namespace, store)
        return cadence.result(), detections


@pytest.mark.level("low")  # about two minutes
@pytest.mark.timeout(900)
def test_hung_and_dribbling_prometheus_servers_leave_a_healthy_cluster_as_it_was(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    shared.stop()
    namespace = scene.namespace("hostile")
    stores = scene.stores(namespace, "healthy")
    operator = operator_process(stack, "operator-hostile.log", OPERATOR_K8S_NAMESPACES=namespace)
    invariants = {"latency": {"enabled": False}, "diskUsage": {"clearFor": "0s"}}
    try:
        scene.cluster(namespace, "healthy", interval="1s", invariants=invariants)
        wait_healthy(stack, namespace, "healthy")
        quiet_cadence, quiet_detection = _measured(stack, operator, namespace, stores[0])
        with serving_many(silent, HOSTILE_EACH) as hung, serving_many(dribbling_body(1.0), HOSTILE_EACH) as slow:
            scene.clusters_of(namespace, {
                f"hostile-{i}": {"stores": {"selector": {"matchLabels": {"app": "healthy"}}, "expected": 3},
                                 "prometheus": {"url": server.url, "timeout": "60s"}, "invariants": invariants}
                for i, server in enumerate(hung + slow)
            }, interval="5s")  # fmt: skip
            eventually(lambda: sum(len(s.requests) > 0 for s in hung + slow) == 2 * HOSTILE_EACH,
                       what="every hostile Prometheus asked", timeout=60)  # fmt: skip
            busy_cadence, busy_detection = _measured(stack, operator, namespace, stores[0])
            asked = sum(len(s.requests) for s in hung + slow)
        report(
            "hostile prometheus",
            quiet_cadence_hz=quiet_cadence, busy_cadence_hz=busy_cadence,
            quiet_detection_mean_s=statistics.mean(quiet_detection), busy_detection_mean_s=statistics.mean(busy_detection),
            quiet_detections=" ".join(f"{d:.2f}" for d in quiet_detection),
            busy_detections=" ".join(f"{d:.2f}" for d in busy_detection), hostile_requests=asked,
        )  # fmt: skip
        assert busy_cadence >= 0.9 * quiet_cadence, "the healthy cluster is checked less often"
        noise = 2 * math.sqrt(
            statistics.variance(quiet_detection) / TRIALS + statistics.variance(busy_detection) / TRIALS
        )
        assert statistics.mean(busy_detection) <= 1.1 * statistics.mean(quiet_detection) + noise, "detection slowed"
    finally:
        # While the operator runs (its finalizer), and after the hostile servers closed: a deletion waits for the
        # cluster's check in flight, which a hung Prometheus holds up to its timeout.
        stack.kubectl("delete", "mc", "--all", "-n", namespace, "--wait=false", check=False)
        eventually(lambda: not json.loads(stack.kubectl("get", "mc", "-n", namespace, "-o", "json").stdout)["items"],
                   what="the clusters deleted", timeout=180)  # fmt: skip
        operator.stop()
        stack.processes.remove(operator)
