"""The main job: a TiKV-like cluster, the example MonitoredCluster, the operator, and faults injected one by one."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devstack.operator import operator_process
from devstack.stack import REPO_ROOT, Stack

NAMESPACE = "demo"
CLUSTER = "tikv-prod"
EXAMPLE = REPO_ROOT / "deploy" / "examples" / "tikv-cluster.yaml"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _simulator(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    request = urllib.request.Request(
        stack.simulator_url + path,
        data=json.dumps(body or {}).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def example_for_local_stack(stack: Stack, example: Path = EXAMPLE) -> dict[str, Any]:
    """The example MonitoredCluster, pointed at the local Prometheus with demo-sized timings."""
    body: dict[str, Any] = yaml.safe_load(example.read_text())
    spec = body["spec"]
    spec["interval"] = "2s"
    spec["prometheus"].update(url=stack.prometheus_url, rateWindow="5s", timeout="2s")
    for name in ("storesReady", "latency", "diskUsage"):
        spec["invariants"][name].update({"for": "2s", "clearFor": "4s"})
    spec["invariants"]["custom"] = []
    body["metadata"]["namespace"] = NAMESPACE
    return body


def _start(stack: Stack) -> None:
    say(f"Creating namespace {NAMESPACE} and 3 simulated TiKV stores (Pods + metrics scraped by Prometheus)")
    stack.kubectl("create", "namespace", NAMESPACE)
    _simulator(
        stack,
        "PUT",
        f"/clusters/{NAMESPACE}/{CLUSTER}",
        {"stores": 3, "labels": {"app.kubernetes.io/component": "tikv"}},
    )
    print(stack.kubectl("get", "pods", "-n", NAMESPACE).stdout, end="")
    say(f"Applying {EXAMPLE.relative_to(REPO_ROOT)} (Prometheus URL and timings adjusted for the local stack)")
    print(stack.kubectl("apply", "-f", "-", input_text=json.dumps(example_for_local_stack(stack))).stdout, end="")
    say("Starting the operator (python -m operator_k8s)")
    operator_process(stack, OPERATOR_K8S_LOG_FORMAT="text")
    _wait(lambda: _condition(stack, "Healthy") == "True", 90, "the cluster to be Healthy")
    _show(stack)


def _condition(stack: Stack, ctype: str) -> str | None:
    body = json.loads(stack.kubectl("get", "mc", CLUSTER, "-n", NAMESPACE, "-o", "json").stdout)
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == ctype:
            return str(item["status"])
    return None


def _ticket_state(stack: Stack, invariant: str, store: str) -> str | None:
    items = json.loads(
        stack.kubectl("get", "tickets", "-n", NAMESPACE, "-l", f"invariant={invariant}", "-o", "json").stdout
    )
    states = [i.get("status", {}).get("state") for i in items["items"] if i.get("status", {}).get("store") == store]
    return "open" if "open" in states else (states[-1] if states else None)


def _wait(probe: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"Timed out after {timeout:.0f}s waiting for {what}")


def _show(stack: Stack) -> None:
    print(stack.kubectl("get", "mc,tickets", "-n", NAMESPACE).stdout, end="", flush=True)


SCENARIOS = [
    ("store outage", f"{CLUSTER}-1", "down", None, "storesReady"),
    ("latency spike (800 ms)", f"{CLUSTER}-2", "latency", {"seconds": 0.8}, "latency"),
    ("disk fill (95 %)", f"{CLUSTER}-0", "disk", {"percent": 95}, "diskUsage"),
]


def run_demo() -> int:
    with Stack.start() as stack:
        try:
            _start(stack)
            results = []
            for title, store, fault, body, invariant in SCENARIOS:
                say(f"Injecting a {title} on {store}")
                _simulator(stack, "PUT", f"/clusters/{NAMESPACE}/{CLUSTER}/stores/{store}/faults/{fault}", body)
                detected = _wait(
                    lambda i=invariant, s=store: _ticket_state(stack, i, s) == "open", 90, f"a {invariant} ticket"
                )
                print(f"Ticket opened {detected:.1f}s after the fault ({invariant} 'for' grace is 2s)")
                _show(stack)
                say(f"Healing {store}")
                _simulator(stack, "DELETE", f"/clusters/{NAMESPACE}/{CLUSTER}/stores/{store}/faults/{fault}")
                resolved = _wait(
                    lambda i=invariant, s=store: _ticket_state(stack, i, s) == "resolved", 120, "resolution"
                )
                print(f"Ticket auto-resolved {resolved:.1f}s after healing ('clearFor' grace is 4s)")
                _show(stack)
                results.append((title, invariant, detected, resolved))
            say("Events on the MonitoredCluster")
            print(stack.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp").stdout, end="")
            say("Summary (interval 2s, scrape 1s, for 2s, clearFor 4s)")
            print(f"{'fault':<26}{'invariant':<13}{'detection':>10}{'resolution':>12}")
            for title, invariant, detected, resolved in results:
                print(f"{title:<26}{invariant:<13}{detected:>9.1f}s{resolved:>11.1f}s")
            return 0
        except BaseException:
            print(stack.logs())
            raise


def up(*, hold: bool) -> int:
    with Stack.start() as stack:
        _start(stack)
        say("The stack is up. Point kubectl at it with:")
        print(f"  export KUBECONFIG={stack.kubeconfig}\n  export PATH={stack.binaries.kubectl.parent}:$PATH")
        print(f"  Prometheus {stack.prometheus_url}   simulator {stack.simulator_url}   Postgres {stack.postgres_dsn}")
        if hold:
            say("Press Ctrl-C to stop everything")
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
            say("Stopping every process of the stack")
    return 0
