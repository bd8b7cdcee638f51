"""Writes the API server refuses, and the human edits that must survive them: a refused status is counted and the cluster recovers; an edit made while Ticket writes are refused is kept; a hold survives a rebuilt Ticket."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from devstack.world.stack import Stack
from tests.e2e.support import (
    INTERVAL,
    RECOVERY_TIMEOUT,
    SLACK,
    Scene,
    SharedOperator,
    events_of,
    last_check,
    last_success,
    patch_ticket,
    refusal_policy,
    unresolved,
    wait_healthy,
)
from tests.stackutil import (
    OPEN_STATES,
    apply,
    condition,
    condition_status,
    eventually,
    health_url,
    http_status,
    metric_value,
    report,
    scrape_metrics,
    shown_tickets,
    store_fault,
    ticket_resources,
    tickets_in_db,
)

pytestmark = pytest.mark.stack


# -- 2. a cycle that meets a 422 --------------------------------------------------------------------------------------


def status_write_refused(stack: Stack, namespace: str, name: str) -> str | None:
    """The API server's refusal of a (dry-run) status patch, or None if it would be accepted."""
    result = stack.kubectl(
        "patch", "mc", name, "-n", namespace, "--subresource=status", "--type=merge", "--dry-run=server",
        "-p", json.dumps({"status": {"observedGeneration": 1}}), check=False,
    )  # fmt: skip
    return result.stderr.strip() if result.returncode != 0 else None


def test_a_refused_status_write_is_counted_and_the_cluster_recovers(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    """While the API server refuses the cluster's status (422), the cycle still runs: the fault's ticket opens in
    Postgres and its resource appears, the refusal is counted (kubernetes_rejected), the operator stays live. Once the
    policy is gone the status is written within one interval."""
    operator = shared.running()
    namespace = scene.namespace("refused")
    scene.stores(namespace, "c")
    scene.cluster(namespace, "c")
    wait_healthy(stack, namespace, "c")
    rejected = r'operator_k8s_check_errors_total\{kind="kubernetes_rejected"\}'
    before = metric_value(scrape_metrics(operator), rejected)

    name, manifests = refusal_policy(namespace)
    apply(stack, *manifests)
    try:
        refusal = eventually(
            lambda: status_write_refused(stack, namespace, "c"), what="the policy refusing status writes"
        )
        assert "is invalid" in refusal, f"not a 422 Invalid: {refusal}"
        refused_at = time.time()
        store_fault(stack, namespace, "c", "c-2", "disk", {"percent": 95})
        eventually(
            lambda: [r for r in tickets_in_db(stack, namespace, "diskUsage") if r["state"] in OPEN_STATES],
            what="the ticket opening while the status is refused",
        )
        eventually(lambda: ticket_resources(stack, namespace), what="its Ticket resource")
        counted = eventually(
            lambda: (n := metric_value(scrape_metrics(operator), rejected) - before) >= 4 and n,
            what="refusals counted over several cycles",
        )
        # The refused status never landed: the cluster still shows the state from before the fault.
        assert condition_status(stack, namespace, "c", "DiskSpaceAvailable") == "True"
        assert operator.alive()
        assert http_status(health_url(operator)) == 200
    finally:
        stack.kubectl("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found")
        stack.kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found")
    removed_at = time.time()
    eventually(
        lambda: condition_status(stack, namespace, "c", "DiskSpaceAvailable") == "False",
        what="the status written after the policy is removed",
        timeout=RECOVERY_TIMEOUT,
        interval=0.2,
    )
    written_after = time.time() - removed_at
    accepted_after = eventually(
        lambda: status_write_refused(stack, namespace, "c") is None and time.time() - removed_at,
        what="status writes accepted again",
    )
    report(
        "status refused (422)",
        refusal=refusal[:160],
        kubernetes_rejected_counted=counted,
        removal_to_status_written_s=written_after,
        removal_seen_by_dry_run_s=accepted_after,
    )
    assert written_after <= INTERVAL + SLACK
    assert last_check(stack, namespace, "c") >= math.floor(refused_at), "no status written since the refusal began"
    assert condition_status(stack, namespace, "c", "Healthy") == "False"
    assert unresolved(stack, namespace) == [("c", "diskUsage", "c-2")]


# -- 4. human intent ----------------------------------------------------------------------------------------------------


def test_an_edit_made_while_ticket_writes_are_refused_is_kept(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    """A human edits a Ticket while the API server refuses the operator's status changes of it (an admission
    policy): the edit still reaches Postgres, and once the policy is gone the next cycle shows it."""
    shared.running()
    namespace = scene.namespace("early-edit")
    scene.stores(namespace, "tikv")
    scene.cluster(namespace, "tikv")
    wait_healthy(stack, namespace, "tikv")
    store_fault(stack, namespace, "tikv", "tikv-0", "disk", {"percent": 97})
    created = eventually(lambda: shown_tickets(stack, namespace), what="the Ticket created, with its status")[0]
    assert created["status"]["state"] in OPEN_STATES, "created whole: its status in the same request"
    policy, manifests = refusal_policy(namespace, "tickets")
    apply(stack, *manifests)
    try:
        eventually(lambda: ticket_status_refused(stack, namespace, created["metadata"]["name"]),
                   what="the policy refusing Ticket status changes")  # fmt: skip
        patch_ticket(stack, namespace, created["metadata"]["name"], {"hold": True, "acknowledged": True})
        row = eventually(
            lambda: next((r for r in tickets_in_db(stack, namespace, "diskUsage") if r["hold"]), None),
            what="the edit in Postgres",
        )
        assert (row["state"], row["hold"]) == ("acknowledged", True)
        assert shown_tickets(stack, namespace)[0]["status"]["state"] in OPEN_STATES, "the status change was refused"
    finally:
        stack.kubectl("delete", "validatingadmissionpolicybinding", policy, "--ignore-not-found")
        stack.kubectl("delete", "validatingadmissionpolicy", policy, "--ignore-not-found")
    shown = eventually(
        lambda: (t := shown_tickets(stack, namespace)) and t[0]["status"]["state"] == "acknowledged" and t[0],
        what="the status written once the policy is gone",
    )
    assert shown["spec"] == {"hold": True, "acknowledged": True}


def ticket_status_refused(stack: Stack, namespace: str, name: str) -> bool:
    """Whether the API server refuses a (dry-run) status change of Ticket ``name``."""
    result = stack.kubectl(
        "patch", "ticket", name, "-n", namespace, "--type=merge", "--dry-run=server",
        "-p", json.dumps({"status": {"message": "probe"}}), check=False,
    )  # fmt: skip
    return result.returncode != 0 and "the test refuses tickets status writes" in result.stderr


def test_hold_survives_a_rebuilt_ticket_and_release_resolves_it_ack_keeps_a_hold(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    shared.running()
    namespace = scene.namespace("hold")
    scene.stores(namespace, "tikv")
    scene.cluster(namespace, "tikv", invariants={"diskUsage": {"clearFor": "2s"}})
    wait_healthy(stack, namespace, "tikv")

    def ticket_of(store: str) -> dict[str, Any] | None:
        return next((t for t in shown_tickets(stack, namespace) if t["status"]["store"] == store), None)

    def row_of(store: str) -> dict[str, Any]:
        return next(r for r in tickets_in_db(stack, namespace, "diskUsage") if r["store"] == store)

    store_fault(stack, namespace, "tikv", "tikv-0", "disk", {"percent": 97})
    name = eventually(lambda: ticket_of("tikv-0"), what="the diskUsage Ticket")["metadata"]["name"]
    patch_ticket(stack, namespace, name, {"hold": True})
    eventually(lambda: row_of("tikv-0")["hold"], what="the hold in Postgres")

    stack.kubectl("delete", "ticket", name, "-n", namespace)
    rebuilt = eventually(
        lambda: (t := ticket_of("tikv-0")) and t["metadata"]["uid"] and t, what="the Ticket rebuilt", timeout=30
    )
    assert rebuilt["metadata"]["name"] == name
    assert rebuilt["spec"]["hold"] is True, f"rebuilt without the hold: {rebuilt['spec']}"

    store_fault(stack, namespace, "tikv", "tikv-0", "disk", heal=True)
    eventually(
        lambda: (condition(stack, namespace, "tikv", "DiskSpaceAvailable") or {}).get("reason") == "TicketHeld",
        what="DiskSpaceAvailable held open although it holds again",
    )
    healed = time.time()
    # clearFor is 2 s: a few intervals past it, the held ticket must still be open.
    eventually(
        lambda: last_success(shared.running(), namespace, "tikv") > healed + 2 + 2 * INTERVAL,
        what="checks past clearFor",
        timeout=30,
    )
    assert row_of("tikv-0")["state"] in OPEN_STATES and row_of("tikv-0")["hold"] is True

    released = time.time()
    patch_ticket(stack, namespace, name, {"hold": False})
    eventually(lambda: row_of("tikv-0")["state"] == "resolved", what="resolution after the release", timeout=30)
    eventually(
        lambda: (ticket_of("tikv-0") or {}).get("status", {}).get("state") == "resolved",
        what="the Ticket resource resolved",
    )
    kinds = [e["kind"] for e in events_of(stack, row_of("tikv-0")["id"])]
    # its evidence diagnoses it once, in whatever order that lands beside the human's edits
    assert [k for k in kinds if k != "Diagnosed"] == ["Pending", "Opened", "Held", "Released", "Resolved"], kinds
    assert kinds.count("Diagnosed") <= 1, kinds
    report("hold", release_to_resolved_s=time.time() - released)

    # Acknowledging keeps a hold: only what the human changed changes.
    store_fault(stack, namespace, "tikv", "tikv-1", "disk", {"percent": 97})
    second = eventually(lambda: ticket_of("tikv-1"), what="a second Ticket")["metadata"]["name"]
    patch_ticket(stack, namespace, second, {"hold": True})
    eventually(lambda: row_of("tikv-1")["hold"], what="the second hold in Postgres")
    patch_ticket(stack, namespace, second, {"acknowledged": True})
    eventually(lambda: row_of("tikv-1")["state"] == "acknowledged", what="acknowledged in Postgres")
    row = row_of("tikv-1")
    assert (row["hold"], row["acknowledged"]) == (True, True), "acknowledging released the hold"
    shown = eventually(lambda: (t := ticket_of("tikv-1")) and t["status"]["state"] == "acknowledged" and t, what="ack")
    assert shown["spec"] == {"hold": True, "acknowledged": True}
    store_fault(stack, namespace, "tikv", "tikv-1", "disk", heal=True)
    eventually(
        lambda: (condition(stack, namespace, "tikv", "DiskSpaceAvailable") or {}).get("reason") == "TicketHeld",
        what="the acknowledged ticket held open",
    )
    assert row_of("tikv-1")["state"] == "acknowledged"
