"""The monitoring core end to end: simulator faults → tickets in Postgres, Ticket resources, conditions → resolution."""

from __future__ import annotations

import signal
import time
from functools import partial
from typing import Any

import pytest

from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.stackutil import (
    OPEN_STATES,
    TICKET_COLUMNS,
    InProcessOperator,
    condition,
    condition_status,
    cycles_past,
    eventually,
    get_json,
    open_in_db,
    pg_rows,
    scraped_last_check,
    shown_tickets,
    simulator,
    start_cluster,
    store_fault,
    ticket_resources,
    tickets_in_db,
)

pytestmark = pytest.mark.stack

CONDITION = {"storesReady": "StoresReady", "latency": "LatencyWithinBudget", "diskUsage": "DiskSpaceAvailable",
             "slow-stores": "CustomSlowStores"}  # fmt: skip


@pytest.mark.parametrize(
    ("invariant", "kind", "body", "stores"),
    [
        ("storesReady", "down", None, ["tikv-1"]),
        ("latency", "latency", {"seconds": 0.8}, ["tikv-0", "tikv-2"]),
        ("diskUsage", "disk", {"percent": 95}, ["tikv-2"]),
        ("slow-stores", "latency", {"seconds": 0.4}, ["tikv-1"]),
    ],
)
def test_fault_opens_one_ticket_per_store_and_heal_resolves_it(
    stack: Stack, namespace: str, operator: InProcessOperator, invariant: str, kind: str, body: Any, stores: list[str]
) -> None:
    start_cluster(stack, namespace)
    for store in stores:
        store_fault(stack, namespace, "tikv", store, kind, body)
    eventually(lambda: len(open_in_db(stack, namespace, invariant)) == len(stores), what=f"{invariant} tickets open")
    eventually(
        lambda: condition_status(stack, namespace, "tikv", CONDITION[invariant]) == "False", what="condition False"
    )
    operator.checked_after(namespace, "tikv", 3)  # more cycles of the same violation must not duplicate anything
    rows = open_in_db(stack, namespace, invariant)
    assert sorted(r["store"] for r in rows) == stores
    assert len(tickets_in_db(stack, namespace, invariant)) == len(stores), "exactly one ticket per affected store"
    resources = [t for t in shown_tickets(stack, namespace) if t["status"]["invariant"] == invariant]
    assert sorted(t["status"]["store"] for t in resources) == stores
    assert {t["status"]["state"] for t in resources} <= set(OPEN_STATES)
    assert all(t["metadata"]["ownerReferences"][0]["kind"] == "MonitoredCluster" for t in resources)

    for store in stores:
        store_fault(stack, namespace, "tikv", store, kind, heal=True)
    eventually(lambda: not open_in_db(stack, namespace, invariant), what="auto-resolution in Postgres", timeout=60)
    eventually(
        lambda: condition_status(stack, namespace, "tikv", CONDITION[invariant]) == "True", what="condition True"
    )
    eventually(
        lambda: (
            {t["status"]["state"] for t in shown_tickets(stack, namespace) if t["status"]["invariant"] == invariant}
            == {"resolved"}
        ),
        what="Ticket resources resolved",
    )
    assert len(tickets_in_db(stack, namespace, invariant)) == len(stores)


def test_held_ticket_stays_open_after_heal(stack: Stack, namespace: str, operator: InProcessOperator) -> None:
    start_cluster(stack, namespace, invariants={"diskUsage": {"clearFor": "2s"}})
    store_fault(stack, namespace, "tikv", "tikv-0", "disk", {"percent": 97})
    eventually(lambda: open_in_db(stack, namespace, "diskUsage"), what="a diskUsage ticket")
    name = eventually(lambda: [t["metadata"]["name"] for t in ticket_resources(stack, namespace)], what="its resource")[
        0
    ]
    stack.kubectl(
        "patch", "ticket", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"hold":true,"acknowledged":true}}'
    )
    eventually(lambda: [r for r in tickets_in_db(stack, namespace, "diskUsage") if r["hold"] and r["state"] == "acknowledged"],
               what="hold and acknowledgement in Postgres")  # fmt: skip
    store_fault(stack, namespace, "tikv", "tikv-0", "disk", heal=True)
    operator.checked_after(namespace, "tikv", 2 + 3)  # well past clearFor
    row = tickets_in_db(stack, namespace, "diskUsage")[0]
    assert (row["state"], row["hold"]) == ("acknowledged", True)
    assert condition(stack, namespace, "tikv", "DiskSpaceAvailable")["reason"] == "TicketHeld"
    stack.kubectl("patch", "ticket", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"hold":false}}')
    eventually(
        lambda: tickets_in_db(stack, namespace, "diskUsage")[0]["state"] == "resolved", what="resolution after release"
    )


def test_prometheus_down_resolves_nothing(stack: Stack, namespace: str, operator: InProcessOperator) -> None:
    start_cluster(stack, namespace, invariants={"latency": {"thresholdMs": 100}})
    store_fault(stack, namespace, "tikv", "tikv-1", "latency", {"seconds": 0.8})
    eventually(lambda: open_in_db(stack, namespace, "latency"), what="a latency ticket")
    stack.stop_component("prometheus")
    try:
        store_fault(stack, namespace, "tikv", "tikv-1", "latency", heal=True)
        eventually(
            lambda: condition_status(stack, namespace, "tikv", "MetricsAvailable") == "False",
            what="MetricsAvailable=False",
        )
        assert condition(stack, namespace, "tikv", "MetricsAvailable")["reason"] == "PrometheusUnreachable"
        operator.checked_after(namespace, "tikv", 4)
        (row,) = tickets_in_db(stack, namespace, "latency")
        assert row["state"] in OPEN_STATES
        assert condition_status(stack, namespace, "tikv", "LatencyWithinBudget") == "False"
    finally:
        stack.start_component("prometheus")
    eventually(
        lambda: not open_in_db(stack, namespace, "latency"), what="resolution once Prometheus is back", timeout=60
    )


def test_postgres_outage_loses_no_transition(stack: Stack, namespace: str, operator: InProcessOperator) -> None:
    start_cluster(stack, namespace)
    stack.stop_component("postgres")
    try:
        store_fault(stack, namespace, "tikv", "tikv-2", "down")
        eventually(
            lambda: condition_status(stack, namespace, "tikv", "TicketStoreAvailable") == "False",
            what="TicketStoreAvailable=False",
        )
        eventually(
            lambda: condition_status(stack, namespace, "tikv", "StoresReady") == "False", what="StoresReady=False"
        )
        store_fault(stack, namespace, "tikv", "tikv-2", "down", heal=True)
        eventually(lambda: condition_status(stack, namespace, "tikv", "StoresReady") == "True", what="StoresReady=True")
    finally:
        stack.start_component("postgres")
    eventually(
        lambda: condition_status(stack, namespace, "tikv", "TicketStoreAvailable") == "True", what="Postgres back"
    )
    rows = eventually(
        lambda: tickets_in_db(stack, namespace, "storesReady"), what="the ticket written after the outage"
    )
    assert [(r["store"], r["state"]) for r in rows] == [("tikv-2", "resolved")]
    events = [e["kind"] for e in pg_events(stack, rows[0]["id"])]
    assert events == ["Pending", "Opened", "Resolved"]


def pg_events(stack: Stack, ticket_id: int) -> list[dict[str, Any]]:
    return pg_rows(stack, "SELECT kind FROM ticket_events WHERE ticket_id = $1 ORDER BY id", ticket_id)


DOWNTIME = 4.0
"""How long after the violation was first seen the operator stays down in the restart test."""


def test_restart_mid_violation_keeps_countdown_and_makes_no_duplicate(stack: Stack, namespace: str) -> None:
    first = operator_process(stack, "operator-restart-1.log")
    try:
        start_cluster(stack, namespace, invariants={"storesReady": {"for": "10s"}})
        store_fault(stack, namespace, "tikv", "tikv-0", "down")
        [pending] = eventually(
            lambda: [r for r in tickets_in_db(stack, namespace, "storesReady") if r["state"] == "pending"],
            what="a pending ticket",
        )
    finally:
        assert first.popen is not None
        first.popen.send_signal(signal.SIGKILL)  # no graceful shutdown: a crash mid-violation
        first.popen.wait()
    first_seen = pending["first_seen"].timestamp()
    time.sleep(max(0.0, first_seen + DOWNTIME - time.time()))  # the scenario: the operator stays down a while
    second = operator_process(stack, "operator-restart-2.log")
    try:
        # The end of the second operator's first cycle: a countdown restarted there opens no sooner than "for" later.
        def last_check() -> float | None:
            try:
                return scraped_last_check(second, namespace, "tikv") or None
            except OSError:  # its metrics server is not up yet
                return None

        first_check = eventually(last_check, what="the second operator's first check", interval=0.1)
        [row] = eventually(lambda: open_in_db(stack, namespace, "storesReady"), what="the ticket to open", timeout=60)
        opened = row["opened_at"].timestamp()
        assert row["first_seen"].timestamp() == first_seen
        # Kept, it opens "for" after first_seen, or at the first check if that is later (within an interval and a
        # cycle). Restarted, it could open no sooner than "for" after the first check: past this bound, as the
        # operator was down DOWNTIME.
        assert opened < max(first_seen + 10, first_check) + 2, (
            f"the countdown restarted: opened {opened - first_check:.1f}s after the second operator's first check "
            f"and {opened - first_seen:.1f}s after first seen (for: 10s)"
        )
        assert len(tickets_in_db(stack, namespace, "storesReady")) == 1
        cycles_past(partial(scraped_last_check, second, namespace, "tikv"), 3, f"MonitoredCluster {namespace}/tikv")
        assert len(tickets_in_db(stack, namespace, "storesReady")) == 1
        assert len([t for t in ticket_resources(stack, namespace)]) == 1
    finally:
        second.stop()


def test_deleting_the_cluster_resolves_its_tickets(stack: Stack, namespace: str, operator: InProcessOperator) -> None:
    start_cluster(stack, namespace)
    store_fault(stack, namespace, "tikv", "tikv-1", "down")
    eventually(lambda: open_in_db(stack, namespace, "storesReady"), what="a storesReady ticket")
    stack.kubectl("delete", "mc", "tikv", "-n", namespace, "--wait=true", "--timeout=30s")
    rows = tickets_in_db(stack, namespace, "storesReady")
    assert [r["state"] for r in rows] == ["resolved"]
    assert [e["kind"] for e in pg_events(stack, rows[0]["id"])][-1] == "Resolved"


def test_deleted_ticket_resource_is_rebuilt_from_postgres(
    stack: Stack, namespace: str, operator: InProcessOperator
) -> None:
    start_cluster(stack, namespace)
    store_fault(stack, namespace, "tikv", "tikv-1", "down")
    name = eventually(lambda: [t["metadata"]["name"] for t in ticket_resources(stack, namespace)], what="a Ticket")[0]
    stack.kubectl("delete", "ticket", name, "-n", namespace)
    eventually(
        lambda: name in [t["metadata"]["name"] for t in ticket_resources(stack, namespace)], what="the Ticket rebuilt"
    )


def test_kubectl_get_tickets_shows_real_values(stack: Stack, namespace: str, operator: InProcessOperator) -> None:
    start_cluster(stack, namespace)
    store_fault(stack, namespace, "tikv", "tikv-2", "disk", {"percent": 99})
    eventually(lambda: shown_tickets(stack, namespace), what="a Ticket with its status")
    lines = stack.kubectl("get", "tickets", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == TICKET_COLUMNS
    columns = lines[1].split()[1:7]
    assert columns[:4] + columns[5:] == ["tikv", "diskUsage", "tikv-2", "warning", "1"]
    assert columns[4] in OPEN_STATES
    by_label = stack.kubectl(
        "get", "tickets", "-n", namespace, "-l", "invariant=diskUsage", "-o", "name"
    ).stdout.split()
    assert len(by_label) == 1


def test_clusters_sharing_a_namespace_judge_only_their_own_pods(
    stack: Stack, namespace: str, operator: InProcessOperator
) -> None:
    start_cluster(stack, namespace, "tikv", invariants={})
    start_cluster(stack, namespace, "other", invariants={})
    simulator(stack, "PUT", f"/clusters/{namespace}/other/stores/other-0/faults/down")
    eventually(
        lambda: condition_status(stack, namespace, "other", "StoresReady") == "False", what="other: StoresReady=False"
    )
    operator.checked_after(namespace, "tikv", 2)
    assert condition_status(stack, namespace, "tikv", "StoresReady") == "True"
    summary = get_json(stack, "mc", "tikv", "-n", namespace)["status"]["stores"]["summary"]
    assert summary == "3/3 ready"
    assert [r["cluster_name"] for r in tickets_in_db(stack, namespace)] == ["other"]
