"""Evidence and diagnosis on the real stack: a store killed for its memory opens a storesReady ticket, whose
evidence (the pod, its Events, its node) is gathered from the API server and names the cause; a disk filled by other
files opens the store's diskUsage ticket and PD's low-space count, one incident diagnosed from Prometheus's evidence
and paged once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.e2e.support import Scene, SharedOperator, wait_healthy
from tests.receivers import Receiver, notifications_file, receiver_in_thread
from tests.stackutil import (
    eventually,
    pg_rows,
    report,
    simulator,
    store_fault,
    ticket_resources,
    tickets_in_db,
)

pytestmark = pytest.mark.stack


def test_a_store_killed_for_its_memory_is_diagnosed_from_its_pods_evidence(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    shared.running()
    namespace = scene.namespace("diagnosis")
    stores = scene.stores(namespace, "oom")
    scene.cluster(namespace, "oom", invariants={"latency": {"enabled": False}})
    wait_healthy(stack, namespace, "oom")
    faulted = time.time()
    store_fault(stack, namespace, "oom", stores[1], "down", {"reason": "OOMKilled"})
    try:
        shown = eventually(
            lambda: [t for t in ticket_resources(stack, namespace)
                     if t["status"]["store"] == stores[1] and t["status"].get("diagnosis")],
            what="the Ticket showing its diagnosis", timeout=60,
        )  # fmt: skip
        diagnosed_after = time.time() - faulted
        status = shown[0]["status"]
        assert status["state"] == "diagnosed"
        assert status["diagnosis"].startswith("memory limit hit: container tikv was killed for using more memory")
        assert "2Gi" in status["diagnosis"]
        assert "last exit OOMKilled (137)" in status["evidence"]
        assert "node devstack-node Ready=True" in status["evidence"]
        (row,) = [r for r in tickets_in_db(stack, namespace) if r["store"] == stores[1]]
        shown_by_cli = subprocess.run(
            [sys.executable, "-m", "operator_k8s", "tickets", "--dsn", stack.postgres_dsn, "-o", "json", "show",
             str(row["id"])], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        )  # fmt: skip
        body = json.loads(shown_by_cli.stdout)
        assert [f["rule"] for f in body["diagnosis"]] == ["memory-limit"]
        assert body["diagnosis"][0]["runbook"].endswith("#runbook-memory-limit")
        assert body["evidence"]["pod"]["containers"][0]["lastTermination"]["exitCode"] == 137
        assert [h["kind"] for h in body["history"]][-1] == "Diagnosed"
        report("diagnosis", fault_to_diagnosis_s=diagnosed_after)
    finally:
        store_fault(stack, namespace, "oom", stores[1], "down", heal=True)


def _shown_by_cli(stack: Stack, ticket_id: int) -> dict[str, Any]:
    shown = subprocess.run(
        [sys.executable, "-m", "operator_k8s", "tickets", "--dsn", stack.postgres_dsn, "-o", "json", "show",
         str(ticket_id)], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    body: dict[str, Any] = json.loads(shown.stdout)
    return body


def test_a_store_killed_for_its_memory_names_its_block_cache_read_from_tikvs_config(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    """Killed, the store cannot answer on its status port when its ticket opens: the finding says the block cache
    is not known, and why. Once the kubelet runs it again, TiKV's /config is read and the finding weighs the block
    cache (unset, as in a default install: sized from the node's memory) against the container's limit."""
    shared.running()
    namespace = scene.namespace("blockcache")
    stores = scene.stores(namespace, "bc")
    scene.cluster(namespace, "bc", invariants={"latency": {"enabled": False}})
    wait_healthy(stack, namespace, "bc")
    store_fault(stack, namespace, "bc", stores[1], "down", {"reason": "OOMKilled", "blockCacheCapacity": "unset"})
    healed = False
    try:
        (row,) = eventually(
            lambda: [r for r in tickets_in_db(stack, namespace) if r["store"] == stores[1] and r["state"] == "diagnosed"],
            what="the storesReady ticket diagnosed", timeout=60,
        )  # fmt: skip
        first = _shown_by_cli(stack, row["id"])["diagnosis"][0]
        assert first["rule"] == "memory-limit"
        assert "TiKV's block cache is not known: its /config was not read" in first["details"], first
        store_fault(stack, namespace, "bc", stores[1], "down", heal=True)
        healed = True
        weighed = eventually(
            lambda: [f for f in _shown_by_cli(stack, row["id"])["diagnosis"] if "capacity unset" in f["value"]],
            what="the finding weighing the block cache read from TiKV's /config", timeout=60,
        )  # fmt: skip
        finding = weighed[0]
        assert finding["rule"] == "memory-limit"
        assert "sized for the node, not the pod" in finding["details"]
        assert "28.8 GiB of node devstack-node's 64Gi" in finding["details"]
        assert "at most 922 MiB (45 % of the 2Gi limit)" in finding["next_step"]
        evidence = _shown_by_cli(stack, row["id"])["evidence"]
        assert evidence["tikvConfig"] == {"readable": True, "blockCacheCapacity": None, "blockCacheBytes": None,
                                          "memoryUsageLimit": None}  # fmt: skip
        report("diagnosis", block_cache_finding=finding["value"])
    finally:
        if not healed:
            store_fault(stack, namespace, "bc", stores[1], "down", heal=True)


def _opened(receiver: Receiver, invariant: str) -> list[dict[str, Any]]:
    return [h["payload"] for h in receiver.hooks
            if h["payload"]["ticket"]["invariant"] == invariant and h["payload"]["transition"] == "opened"]  # fmt: skip


def _pd_rows(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    """PD's cluster tickets with what their evidence said of PD (for the link, and for a failure's message)."""
    return pg_rows(
        stack,
        "SELECT t.id, t.state, t.cause_id, t.counted_stores, e.evidence -> 'prometheus' -> 'pd' AS pd,"
        " e.summary FROM tickets t LEFT JOIN ticket_evidence e ON e.ticket_id = t.id"
        " WHERE t.namespace = $1 AND t.invariant = 'pdStores'",
        namespace,
    )


def _diagnosed(stack: Stack, namespace: str, invariant: str) -> list[dict[str, Any]]:
    """The namespace's Ticket resources of ``invariant`` that show a diagnosis."""
    return [t for t in ticket_resources(stack, namespace)
            if t["status"]["invariant"] == invariant and t["status"].get("diagnosis")]  # fmt: skip


def _evidence_delays(stack: Stack, namespace: str) -> list[float]:
    rows = pg_rows(
        stack,
        "SELECT extract(epoch FROM e.gathered_at - t.opened_at)::float AS delay FROM ticket_evidence e"
        " JOIN tickets t ON t.id = e.ticket_id WHERE t.namespace = $1 AND t.opened_at IS NOT NULL",
        namespace,
    )
    return sorted(r["delay"] for r in rows)


def test_a_disk_filled_by_other_files_is_one_incident_diagnosed_with_what_fills_it(
    stack: Stack, shared: SharedOperator, scene: Scene, tmp_path: Path
) -> None:
    shared.stop()  # one operator in this namespace, with a webhook that counts the pages
    namespace = scene.namespace("incident")
    tc = "disk"
    # TiDB Operator v1's pods, PD v8.5.5: pd_cluster_status per store, so PD's count names the store
    stores = simulator(stack, "PUT", f"/tidbclusters/{namespace}/{tc}", {"stores": 3, "pd": 3, "pdVersion": "v8.5.5"})
    scene.store_sets.append((namespace, tc))
    store = stores["pods"][1]
    selector = {"app.kubernetes.io/instance": tc}
    with receiver_in_thread() as receiver:
        config = notifications_file(tmp_path, receiver, namespace)
        operator = operator_process(
            stack, "operator-incident.log", OPERATOR_K8S_NAMESPACES=namespace, OPERATOR_K8S_NOTIFICATIONS_FILE=str(config)
        )  # fmt: skip
        try:
            scene.cluster(
                namespace, tc,
                stores={"selector": {"matchLabels": {**selector, "app.kubernetes.io/component": "tikv"}}, "expected": 3},
                pd={"selector": {"matchLabels": {**selector, "app.kubernetes.io/component": "pd"}}},
                invariants={"latency": {"enabled": False}, "diskUsage": {"for": "0s"}, "pdStores": {"for": "0s"}},
            )  # fmt: skip
            wait_healthy(stack, namespace, tc)
            faulted = time.time()
            store_fault(stack, namespace, tc, store, "disk-other", {"percent": 50})
            (disk,) = eventually(lambda: _diagnosed(stack, namespace, "diskUsage"),
                                 what="the diskUsage Ticket diagnosed", timeout=60)  # fmt: skip
            diagnosed_after = time.time() - faulted
            status = disk["status"]
            assert status["store"] == store and status["state"] == "diagnosed"
            assert status["diagnosis"].startswith("disk filled by other files: the volume is 90"), status
            assert "not TiKV's are 50%" in status["diagnosis"]
            assert "disk 90" in status["evidence"] and "other 50%" in status["evidence"], status["evidence"]
            disk_id = status["ticketId"]
            (row,) = [r for r in tickets_in_db(stack, namespace, "diskUsage")]
            shown = subprocess.run(
                [sys.executable, "-m", "operator_k8s", "tickets", "--dsn", stack.postgres_dsn, "-o", "json", "show",
                 str(row["id"])], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
            )  # fmt: skip
            body = json.loads(shown.stdout)
            assert body["diagnosis"][0]["rule"] == "disk-other"
            prometheus = body["evidence"]["prometheus"]
            assert prometheus["disk"]["tikvPercent"] == 40 and prometheus["disk"]["otherPercent"] == 50
            assert "low_space" in prometheus["pd"]["states"], prometheus["pd"]
            for item in prometheus["items"]:
                assert item["status"] == "ok", item
                assert item["graph"].startswith(stack.prometheus_url.rstrip("/") + "/graph?g0.expr=")
            # PD's low-space count, if it opens, is linked under the store's ticket, and is never paged on its own
            # PD's low-space count opens a cluster ticket of its own: linked under the store's, never paged alone
            eventually(lambda: _pd_rows(stack, namespace), what="PD's low-space ticket", timeout=30)
            try:
                eventually(
                    lambda: [r for r in _pd_rows(stack, namespace) if r["cause_id"]], what="the link", timeout=30
                )
            except AssertionError as error:
                raise AssertionError(
                    f"{error}; PD's ticket as Postgres holds it: {_pd_rows(stack, namespace)}"
                ) from None
            (pd,) = eventually(
                lambda: [t for t in ticket_resources(stack, namespace)
                         if t["status"]["invariant"] == "pdStores" and t["status"].get("causeTicketId")],
                what="PD's ticket linked to the diskUsage ticket", timeout=30,
            )  # fmt: skip
            assert pd["status"]["causeTicketId"] == disk_id
            assert pd["status"]["countedStores"] == f"{store} low_space"
            (suppressed,) = eventually(
                lambda: pg_rows(stack, "SELECT d.result FROM deliveries d JOIN notices n ON n.id = d.notice_id"
                                " WHERE n.ticket_id = $1 AND n.kind = 'opened' AND d.state = 'suppressed'",
                                pd["status"]["ticketId"]),
                what="PD's opening settled as part of the incident", timeout=30,
            )  # fmt: skip
            assert suppressed["result"].startswith(f"explained by ticket {disk_id}")
            opened = eventually(lambda: _opened(receiver, "diskUsage"), what="the page", timeout=30)
            assert len(opened) == 1 and opened[0]["ticket"]["store"] == store
            assert _opened(receiver, "pdStores") == [], "one incident, one page"
            delays = _evidence_delays(stack, namespace)
            report(
                "incident",
                fault_to_diagnosis_s=diagnosed_after,
                pages=len(_opened(receiver, "diskUsage")) + len(_opened(receiver, "pdStores")),
                evidence_tickets=len(delays),
                evidence_after_opening_p95_s=delays[min(len(delays) - 1, int(0.95 * len(delays)))],
                evidence_after_opening_max_s=delays[-1],
            )
            assert delays[-1] <= 5.0, delays
        finally:
            store_fault(stack, namespace, tc, store, "disk-other", heal=True)
            operator.kill()
            stack.processes.remove(operator)


def test_a_hung_store_under_an_older_pd_is_named_and_diagnosed_through_pds_store_api(
    stack: Stack, shared: SharedOperator, scene: Scene
) -> None:
    """PD v8.5.4 exports counts only (``pd_cluster_status{type}``): its series cannot say which store it counts
    disconnected. PD's store API names it (by its address), so its pod is read and the hung store diagnosed."""
    shared.running()
    namespace = scene.namespace("pdapi")
    tc = "pdapi"
    stores = simulator(stack, "PUT", f"/tidbclusters/{namespace}/{tc}", {"stores": 3, "pd": 3, "pdVersion": "v8.5.4"})
    scene.store_sets.append((namespace, tc))
    store = stores["pods"][1]
    selector = {"app.kubernetes.io/instance": tc}
    scene.cluster(
        namespace, tc,
        stores={"selector": {"matchLabels": {**selector, "app.kubernetes.io/component": "tikv"}}, "expected": 3},
        pd={"selector": {"matchLabels": {**selector, "app.kubernetes.io/component": "pd"}}},
        invariants={"latency": {"enabled": False}, "pdStores": {"for": "0s"}},
    )  # fmt: skip
    wait_healthy(stack, namespace, tc)
    faulted = time.time()
    store_fault(stack, namespace, tc, store, "hung")
    try:
        (pd,) = eventually(lambda: _diagnosed(stack, namespace, "pdStores"), what="PD's cluster ticket diagnosed",
                           timeout=90)  # fmt: skip
        diagnosed_after = time.time() - faulted
        status = pd["status"]
        assert status["state"] == "diagnosed", status
        assert status["diagnosis"].startswith("store hung while its pod is Ready: PD's store API says Disconnected")
        assert status["countedStores"] == f"{store} disconnected"
        assert f"{store}: PD API: Disconnected" in status["evidence"], status["evidence"]
        evidence = _shown_by_cli(stack, status["ticketId"])["evidence"]
        assert evidence["prometheus"]["pd"]["stores"] == {}, "PD v8.5.4's series name no store"
        api = evidence["pdApi"]
        assert api["readable"] and api["stores"][store]["stateName"] == "Disconnected", api
        assert api["stores"][stores["pods"][0]]["stateName"] == "Up"
        assert list(evidence["counted"]) == [store]
        report("diagnosis", hung_older_pd_fault_to_diagnosis_s=diagnosed_after)
    finally:
        store_fault(stack, namespace, tc, store, "hung", heal=True)
