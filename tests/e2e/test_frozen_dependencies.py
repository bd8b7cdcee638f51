"""Postgres frozen and a Prometheus that never answers slow no other cluster."""

from __future__ import annotations

import itertools
import time
from functools import partial

import pytest

from devstack.world.stack import Stack
from tests import hostile_http
from tests.e2e.support import (
    FREEZE_SECONDS,
    INTERVAL,
    LARGEST_TIMEOUT,
    RECOVERY_TIMEOUT,
    SLACK,
    Scene,
    SharedOperator,
    condition_is,
    events_of,
    resources_by_id,
    unresolved_duplicates,
    wait_healthy,
)
from tests.hostile_http import serving
from tests.stackutil import (
    OPEN_STATES,
    LogFollower,
    condition,
    condition_status,
    eventually,
    report,
    store_fault,
    tickets_in_db,
)

pytestmark = pytest.mark.stack


# -- 5. Postgres frozen and a Prometheus that never answers -----------------------------------------------------------


STORE_DOWN_MESSAGES = {"Could not store Ticket transitions", "Could not load Tickets"}


@pytest.mark.level("low")  # minutes long: the full run
@pytest.mark.timeout(FREEZE_SECONDS + 240)
def test_frozen_postgres_and_a_silent_prometheus_slow_no_other_cluster(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    operator = shared.running()
    namespace = scene.namespace("frozen")
    for name in ("a", "b"):
        scene.stores(namespace, name)
        scene.cluster(namespace, name)
    wait_healthy(stack, namespace, "a", "b")
    with serving(hostile_http.silent) as silent:
        scene.cluster(
            namespace,
            "silent",
            stores={"selector": {"matchLabels": {"app": "a"}}, "expected": 3},
            prometheus={"url": silent.url, "timeout": LARGEST_TIMEOUT, "rateWindow": "5s"},
        )
        # A Prometheus that never answered gets one query slot: it holds one connection, never the threads.
        eventually(lambda: silent.connections >= 1, what="the silent Prometheus holding a query", timeout=30)
        assert condition_status(stack, namespace, "a", "TicketStoreAvailable") == "True"

        with LogFollower(operator.log_path) as log:
            stack.process("postgres").freeze()
            frozen_at = time.time()
            try:
                store_fault(stack, namespace, "b", "b-2", "disk", {"percent": 95})
                marked: dict[str, float] = {}
                for name in ("a", "b"):
                    eventually(
                        partial(condition_is, stack, namespace, name, "TicketStoreAvailable", "False"),
                        what=f"{name}: TicketStoreAvailable=False while Postgres is frozen",
                        timeout=RECOVERY_TIMEOUT,
                        interval=0.2,
                    )
                    marked[name] = time.time() - frozen_at
                time.sleep(max(0.0, FREEZE_SECONDS - (time.time() - frozen_at)))  # the freeze is the scenario
            finally:
                stack.process("postgres").thaw()
            thawed_at = time.time()
        back: dict[str, float] = {}
        for name in ("a", "b"):
            eventually(
                partial(condition_is, stack, namespace, name, "TicketStoreAvailable", "True"),
                what=f"{name}: TicketStoreAvailable=True after the thaw",
                timeout=RECOVERY_TIMEOUT,
                interval=0.2,
            )
            back[name] = time.time() - thawed_at
        ticket = eventually(
            lambda: [r for r in tickets_in_db(stack, namespace, "diskUsage") if r["state"] in OPEN_STATES],
            what="the ticket of the fault injected during the freeze",
            timeout=30,
        )
        eventually(lambda: resources_by_id(stack, namespace).get(ticket[0]["id"]), what="its Ticket resource")
        eventually(
            lambda: (
                (condition(stack, namespace, "silent", "MetricsAvailable") or {}).get("reason")
                == "PrometheusUnreachable"
            ),
            what="the silent Prometheus shown on its own cluster",
            timeout=90,
        )

    # Each store-down warning is one cycle of that cluster that met the frozen Postgres (stamped when logged).
    cycles: dict[str, list[float]] = {"a": [], "b": []}
    for at, record in log.records:
        ours = record.get("namespace") == namespace and record.get("cluster") in cycles
        if ours and record.get("message") in STORE_DOWN_MESSAGES and frozen_at <= at <= thawed_at:
            cycles[str(record["cluster"])].append(at)
    gaps = {name: max(b - a for a, b in itertools.pairwise(times)) for name, times in cycles.items() if len(times) > 1}
    expected_cycles = FREEZE_SECONDS / INTERVAL
    report(
        "postgres frozen + silent prometheus",
        freeze_s=thawed_at - frozen_at,
        **{f"ticket_store_false_after_{k}_s": v for k, v in marked.items()},
        **{f"ticket_store_true_after_thaw_{k}_s": v for k, v in back.items()},
        **{f"cycles_during_freeze_{k}": len(v) for k, v in cycles.items()},
        expected_cycles=expected_cycles,
        **{f"max_gap_between_cycle_ends_{k}_s": v for k, v in gaps.items()},
        silent_connections=silent.connections,
    )
    for name in ("a", "b"):
        assert marked[name] <= INTERVAL + SLACK
        assert back[name] <= INTERVAL + SLACK
        # A cycle waits for Postgres at most min(5 s, interval): ends may be up to one interval further apart.
        assert len(cycles[name]) >= expected_cycles - 4, f"{name} ran {len(cycles[name])} cycles in the freeze"
        assert gaps[name] <= 2 * INTERVAL + 1.5, f"{name}: {gaps[name]:.1f}s between cycles during the freeze"
    events = [e["kind"] for e in events_of(stack, ticket[0]["id"])]
    assert [e for e in events if e != "Diagnosed"] == ["Pending", "Opened"], events
    assert unresolved_duplicates(stack, namespace) == []
