"""The API server down for minutes during a fault: the ticket is recorded, shown once it is back, and the checks never stop."""

from __future__ import annotations

import time
from functools import partial

import pytest

from devstack.world.stack import Stack
from operator_k8s.domain.status import HEARTBEAT
from tests.e2e.support import (
    INTERVAL,
    OUTAGE_SECONDS,
    RECOVERY_TIMEOUT,
    SLACK,
    Scene,
    SharedOperator,
    checked_since,
    status_since,
    unresolved,
    unresolved_duplicates,
    wait_healthy,
)
from tests.stackutil import (
    OPEN_STATES,
    Poller,
    condition_status,
    eventually,
    health_url,
    http_status,
    report,
    shown_tickets,
    store_fault,
    ticket_resources,
    tickets_in_db,
)

pytestmark = pytest.mark.stack


# -- 1. API server outage during a fault ------------------------------------------------------------------------------


@pytest.mark.level("low")  # minutes long: the full run
@pytest.mark.timeout(OUTAGE_SECONDS + 300)
def test_api_server_outage_during_a_fault(stack: Stack, shared: SharedOperator, scene: Scene) -> None:
    """The API server is stopped for OUTAGE_SECONDS while a latency fault begins. Checks keep running meanwhile (the
    ticket opens in Postgres during the outage), liveness stays 200 throughout, and once /readyz answers every cluster
    is checked within one interval and the Ticket resource appears, with nothing duplicated."""
    operator = shared.running()
    namespace = scene.namespace("outage")
    for name in ("a", "b"):
        scene.stores(namespace, name)
        scene.cluster(namespace, name, invariants={"latency": {"thresholdMs": 300}})
    wait_healthy(stack, namespace, "a", "b")

    with Poller(lambda: http_status(health_url(operator), timeout=10), period=1.0) as health:
        stack.stop_component("kube-apiserver")
        stopped_at = time.time()
        try:
            # A metric fault needs no API server: the simulator serves it to Prometheus.
            store_fault(stack, namespace, "a", "a-1", "latency", {"seconds": 0.8})
            opened_in_outage = eventually(
                lambda: [r for r in tickets_in_db(stack, namespace, "latency") if r["state"] in OPEN_STATES],
                what="the latency ticket opening in Postgres while the API server is down",
                timeout=OUTAGE_SECONDS,
            )
            opened_after = time.time() - stopped_at
            remaining = OUTAGE_SECONDS - (time.time() - stopped_at)
            time.sleep(max(0.0, remaining))  # the outage's length is the scenario: wait it out
            assert operator.alive(), "the operator died during the API-server outage"
        finally:
            stack.start_component("kube-apiserver")
        ready_at = time.time()

        checked: dict[str, float] = {}
        for name in ("a", "b"):
            at = eventually(
                partial(checked_since, operator, namespace, name, ready_at),
                what=f"a successful check of {name} after the API server is back",
                timeout=RECOVERY_TIMEOUT,
                interval=0.2,
            )
            checked[name] = at - ready_at
        # Status shows it too: "a" changed (the ticket); "b" did not, so its heartbeat shows when one is due. A status
        # written after the stop can only have been written once the API server answered again (its lastCheckTime, the
        # start of that cycle, may be a moment before /readyz said ok).
        shown: dict[str, float] = {}
        for name in ("a", "b") if HEARTBEAT.total_seconds() <= OUTAGE_SECONDS else ("a",):
            eventually(
                partial(status_since, stack, namespace, name, stopped_at + 1),
                what=f"status.lastCheckTime of {name} refreshed",
                timeout=RECOVERY_TIMEOUT,
                interval=0.2,
            )
            shown[name] = time.time() - ready_at
        resource = eventually(
            lambda: [t for t in shown_tickets(stack, namespace) if t["status"]["invariant"] == "latency"],
            what="the latency Ticket resource",
            timeout=RECOVERY_TIMEOUT,
            interval=0.2,
        )
        resource_after = time.time() - ready_at
        eventually(
            lambda: condition_status(stack, namespace, "a", "LatencyWithinBudget") == "False",
            what="a: LatencyWithinBudget=False",
            timeout=RECOVERY_TIMEOUT,
        )

    report(
        "api-server outage",
        outage_s=OUTAGE_SECONDS,
        ticket_opened_in_postgres_during_outage_after_s=opened_after,
        **{f"ready_to_successful_check_{k}_s": v for k, v in checked.items()},
        **{f"ready_to_status_seen_{k}_s (kubectl poll)": v for k, v in shown.items()},
        ready_to_ticket_resource_s=resource_after,
        health_polls=len(health.results),
        health_not_200=[r for r in health.results if r[1] != 200],
    )
    for name, seconds in [*checked.items(), *shown.items()]:
        assert seconds <= INTERVAL + SLACK, f"{name} was first checked {seconds:.1f}s after the API server was ready"
    assert [r[1] for r in health.results if r[1] != 200] == [], "liveness failed during or after the outage"
    assert len(health.results) >= OUTAGE_SECONDS * 0.8
    assert http_status(health_url(operator)) == 200

    rows = tickets_in_db(stack, namespace)
    assert [(r["cluster_name"], r["invariant"], r["store"]) for r in rows] == [("a", "latency", "a-1")], (
        "exactly one ticket: the fault's"
    )
    assert rows[0]["state"] in OPEN_STATES
    assert [r["id"] for r in rows] == [opened_in_outage[0]["id"]]
    assert unresolved_duplicates(stack, namespace) == []
    assert [(t["status"]["ticketId"], t["status"]["state"]) for t in resource] == [(rows[0]["id"], rows[0]["state"])]
    assert len(ticket_resources(stack, namespace)) == 1

    # Nothing is stuck: the heal resolves the ticket and its resource.
    store_fault(stack, namespace, "a", "a-1", "latency", heal=True)
    eventually(lambda: not unresolved(stack, namespace), what="resolution after the heal", timeout=60)
    eventually(
        lambda: [t["status"]["state"] for t in shown_tickets(stack, namespace)] == ["resolved"],
        what="the Ticket resource resolved",
    )
