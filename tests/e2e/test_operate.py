"""Operating it: the operator as a real process, its metrics endpoint, the ticket CLI, graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from functools import partial

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import free_port
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.stackutil import (
    cycles_past,
    eventually,
    metric_value,
    open_in_db,
    scrape_metrics,
    scraped_last_check,
    start_cluster,
    store_fault,
    tickets_in_db,
)

pytestmark = pytest.mark.stack

DOCUMENTED = [
    "operator_k8s_check_cycles_total",
    "operator_k8s_check_duration_seconds",
    "operator_k8s_check_errors_total",
    "operator_k8s_prometheus_query_duration_seconds",
    "operator_k8s_postgres_round_trip_seconds",
    "operator_k8s_kubernetes_requests_total",
    "operator_k8s_status_writes_total",
    "operator_k8s_open_tickets",
    "operator_k8s_last_successful_check_timestamp_seconds",
    "operator_k8s_last_check_timestamp_seconds",
]


def cli(stack: Stack, *args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "OPERATOR_K8S_DATABASE_DSN": dsn or stack.postgres_dsn,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run([sys.executable, "-m", "operator_k8s", "tickets", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)  # fmt: skip


def test_metrics_cli_and_graceful_shutdown(stack: Stack, namespace: str) -> None:
    operator = operator_process(stack, f"operator-{namespace}.log", OPERATOR_K8S_NAMESPACES=namespace)
    start_cluster(stack, namespace, invariants={})
    store_fault(stack, namespace, "tikv", "tikv-1", "latency", {"seconds": 0.8})
    eventually(lambda: open_in_db(stack, namespace, "latency"), what="a latency ticket")

    cycles_past(partial(scraped_last_check, operator, namespace, "tikv"), 3, f"MonitoredCluster {namespace}/tikv")
    during = scrape_metrics(operator)
    # open, or diagnosed once its evidence names the slow store: one ticket either way
    assert metric_value(during, r"operator_k8s_open_tickets\{.*state=\"(open|diagnosed)\".*\}") == 1  # fmt: skip
    for name in DOCUMENTED:
        assert any(k.startswith(name) for k in during), f"{name} is not served"
    assert metric_value(during, r"operator_k8s_check_cycles_total\{outcome=\"ok\"\}") >= 3
    assert metric_value(during, r"operator_k8s_check_duration_seconds_count") >= 3
    assert metric_value(during, r"operator_k8s_prometheus_query_duration_seconds_count") >= 6
    assert metric_value(during, r"operator_k8s_postgres_round_trip_seconds_count") >= 3
    creates = metric_value(during, r"operator_k8s_kubernetes_requests_total\{verb=\"create\"\}")
    assert creates >= 2  # the Ticket and an Event
    last = metric_value(
        during, rf"operator_k8s_last_successful_check_timestamp_seconds\{{cluster=\"tikv\",namespace=\"{namespace}\"\}}"
    )
    assert last > 1.7e9

    store_fault(stack, namespace, "tikv", "tikv-1", "latency", heal=True)
    eventually(lambda: not open_in_db(stack, namespace, "latency"), what="resolution", timeout=60)
    ticket_id = tickets_in_db(stack, namespace, "latency")[0]["id"]

    listing = cli(stack, "list", "--namespace", namespace, "--state", "resolved", "--since", "10m")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:7] == [
        "ID",
        "NAMESPACE",
        "CLUSTER",
        "INVARIANT",
        "STORE",
        "SEVERITY",
        "STATE",
    ]
    assert [line.split()[:7] for line in listing.stdout.splitlines()[1:]] == [
        [str(ticket_id), namespace, "tikv", "latency", "tikv-1", "warning", "resolved"]
    ]
    shown = cli(stack, "show", str(ticket_id))
    assert shown.returncode == 0, shown.stderr
    assert "Opened" in shown.stdout
    assert "Resolved" in shown.stdout
    assert "threshold: 500" in shown.stdout
    as_json = json.loads(cli(stack, "-o", "json", "show", str(ticket_id)).stdout)
    # the latency evidence names the slow store: diagnosed once it opened
    assert [e["kind"] for e in as_json["history"] if e["kind"] != "Diagnosed"] == ["Pending", "Opened", "Resolved"]
    assert as_json["snapshot"]["value"] > 500
    assert cli(stack, "-o", "json", "list", "--namespace", namespace, "--invariant", "diskUsage").stdout.strip() == "[]"

    unreachable = cli(stack, "list", dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    assert unreachable.returncode == 1
    assert "cannot read tickets: Postgres unreachable" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert cli(stack, "show", "999999").returncode == 1

    assert operator.popen is not None
    operator.popen.send_signal(signal.SIGTERM)
    assert operator.popen.wait(timeout=30) == 0
    assert "Closed the ticket store" in operator.log_path.read_text()
