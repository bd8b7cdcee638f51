"""The main job: a TiKV-like cluster, the example MonitoredCluster, the operator, and faults injected one by one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devstack.builds.images import POSTGRES_IMAGE
from devstack.host.hoststate import GATEWAY
from devstack.host.paths import REPO_ROOT
from devstack.world.operator import operator_process
from devstack.world.stack import Stack

NAMESPACE = "demo"
CLUSTER = "tikv-prod"
EXAMPLE = REPO_ROOT / "deploy" / "examples" / "tikv-cluster.yaml"
CHART = REPO_ROOT / "charts" / "operator-k8s"
HELM_NAMESPACE = "operator-k8s"
QUICK_START_VALUES = ("--set", "postgres.enabled=true",
                      "--set", f"postgres.image.repository={POSTGRES_IMAGE.rsplit(':', 1)[0]}",
                      "--set", f"postgres.image.tag={POSTGRES_IMAGE.rsplit(':', 1)[1]}")  # fmt: skip
"""The chart's quick-start Postgres with the stand-in image the node has (no registry is reachable)."""


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
    for name in ("storesReady", "latency", "diskUsage", "pdStores", "pdRegions"):
        spec["invariants"][name].update({"for": "2s", "clearFor": "4s"})
    spec["invariants"].pop("custom", None)
    body["metadata"]["namespace"] = NAMESPACE
    return body


def _create_example(stack: Stack) -> None:
    say(f"Creating namespace {NAMESPACE} and a TidbCluster of 3 TiKV and 3 PD pods (one metrics endpoint each,")
    print("    discovered by Prometheus through the API server, labelled as prometheus-operator does)")
    stack.kubectl("create", "namespace", NAMESPACE)
    # PD v8.5.5 says which stores it counts (pd_cluster_status per store): a disk fault is then one incident
    tidb = {"stores": 3, "pd": 3, "timings": TIMINGS, "pdVersion": "v8.5.5"}
    _simulator(stack, "PUT", f"/tidbclusters/{NAMESPACE}/{CLUSTER}", tidb)
    print(stack.kubectl("get", "pods", "-n", NAMESPACE).stdout, end="")
    say(f"Applying {EXAMPLE.relative_to(REPO_ROOT)} (Prometheus URL and timings adjusted for the local stack)")
    print(stack.kubectl("apply", "-f", "-", input_text=json.dumps(example_for_local_stack(stack))).stdout, end="")


def _start(stack: Stack) -> None:
    _create_example(stack)
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
    # A diagnosed ticket is open with a probable cause (the operator moves it there once its evidence names one).
    return "open" if {"open", "diagnosed"} & set(states) else (states[-1] if states else None)


def _wait(probe: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"Timed out after {timeout:.0f}s waiting for {what}")


def _show(stack: Stack) -> None:
    print(stack.kubectl("get", "mc,tickets", "-n", NAMESPACE).stdout, end="", flush=True)


TIMINGS = {"storeHeartbeatSeconds": 2, "storeDisconnectSeconds": 6, "maxStoreDownSeconds": 3600}
"""PD's store timings shortened for the demo (upstream: heartbeat 10 s, disconnected after 20 s)."""
STORE = f"{CLUSTER}-tikv-{{}}"
SCENARIOS = [
    ("store killed for its memory", STORE.format(1), "down", {"reason": "OOMKilled"}, "storesReady"),
    ("hung store, still Ready", STORE.format(1), "hung", None, "pdStores"),  # PD's view: a cluster ticket
    ("latency spike (800 ms)", STORE.format(2), "latency", {"seconds": 0.8}, "latency"),
    ("disk filled by TiKV (95 %)", STORE.format(0), "disk", {"percent": 95}, "diskUsage"),
    ("disk filled by other files", STORE.format(2), "disk-other", {"percent": 70}, "diskUsage"),
]
CONTROLS = [
    ("lock contention (lock waits up to 1 s)", STORE.format(0), "contention"),
    ("idle store (no traffic)", STORE.format(1), "idle"),
]
"""Healthy by TiKV's own standards: they must open no ticket."""


def _ticket(stack: Stack, invariant: str, subject: str) -> dict[str, Any] | None:
    """The newest Ticket of ``invariant`` on ``subject`` (a store, or ``cluster``), as ``kubectl`` shows it."""
    items = json.loads(
        stack.kubectl("get", "tickets", "-n", NAMESPACE, "-l", f"invariant={invariant}", "-o", "json").stdout
    )["items"]
    mine = [i for i in items if (i.get("status") or {}).get("store") == subject]
    return max(mine, key=lambda i: i["status"].get("ticketId") or 0) if mine else None


def _findings(stack: Stack, ticket_id: int) -> list[dict[str, str]]:
    """The ticket's diagnosis rows, as ``operator-k8s tickets show`` prints them (from Postgres)."""
    shown = subprocess.run(
        [sys.executable, "-m", "operator_k8s", "tickets", "--dsn", stack.postgres_dsn, "-o", "json", "show",
         str(ticket_id)], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    found: list[dict[str, str]] = json.loads(shown.stdout)["diagnosis"]
    return found


def _print_diagnosis(stack: Stack, ticket_id: int, what: str) -> str:
    """Print the top finding row (rule, value, reference, next step) of the ticket; return its rule."""
    findings = _findings(stack, ticket_id)
    if not findings:
        print(f"Diagnosis of ticket {ticket_id} ({what}): unknown")
        return "unknown"
    top = findings[0]
    print(f"Diagnosis of ticket {ticket_id} ({what}), as `operator-k8s tickets show {ticket_id}` prints it:")
    for name, value in (("rule", top["rule"]), ("value", top["value"]), ("reference", top["reference"]),
                        ("details", top["details"]), ("next step", top["next_step"])):  # fmt: skip
        print(f"    {name:<10} {value}")
    return top["rule"]


def _diagnosed(stack: Stack, invariant: str, subject: str) -> dict[str, Any]:
    """Wait for the ticket's evidence (gathered when it opens, within 5 s; its findings are stored with it)."""
    found: dict[str, Any] = {}

    def gathered() -> bool:
        ticket = _ticket(stack, invariant, subject)
        if ticket is not None and (ticket["status"].get("diagnosis") or ticket["status"].get("evidence")):
            found.update(ticket)
        return bool(found)

    try:
        _wait(gathered, 20, f"the {invariant} ticket's evidence")
    except RuntimeError:  # nothing shown: its diagnosis (from Postgres) says what there is
        found.update(_ticket(stack, invariant, subject) or {})
    return found


def _one_incident(stack: Stack, cause: dict[str, Any]) -> str:
    """Wait for PD's pdStores ticket to be linked under the disk ticket; print it."""
    cause_id = cause["status"]["ticketId"]
    linked: dict[str, Any] = {}

    def under() -> bool:
        ticket = _ticket(stack, "pdStores", "cluster")
        if ticket is not None and ticket["status"].get("causeTicketId") == cause_id:
            linked.update(ticket)
        return bool(linked)

    _wait(under, 30, "PD's pdStores ticket to be linked under the disk ticket")
    status = linked["status"]
    print(f"One incident: PD's pdStores ticket {status['ticketId']} (PD counts {status.get('countedStores')})"
          f" is linked under diskUsage ticket {cause_id}; it pages with its cause, not on its own")  # fmt: skip
    return f"pdStores ticket {status['ticketId']} under it"


def _fault_path(store: str, fault: str) -> str:
    return f"/tidbclusters/{NAMESPACE}/{CLUSTER}/stores/{store}/faults/{fault}"


def _all_types_p99_ms(stack: Stack, store: str) -> float | None:
    """What a naive query (every request type summed) reads for the store, for the narration."""
    query = (
        "histogram_quantile(0.99, sum by (le) (rate(tikv_grpc_msg_duration_seconds_bucket"
        f'{{namespace="{NAMESPACE}",pod="{store}"}}[5s]))) * 1000'
    )
    with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}",
                                timeout=5) as response:  # fmt: skip
        result = json.loads(response.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _checks(stack: Stack) -> float:
    """Check cycles the operator has run (its own metric)."""
    operator = stack.process("operator")
    assert operator.env is not None
    url = f"http://127.0.0.1:{operator.env['OPERATOR_K8S_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("operator_k8s_check_cycles_total{"))


def _controls(stack: Stack) -> list[tuple[str, str]]:
    """Inject each control, let the operator check it several times, and show that no ticket opened."""
    results = []
    for title, store, fault in CONTROLS:
        say(f"Control: {title} on {store}")
        _simulator(stack, "PUT", _fault_path(store, fault))
        if fault == "contention":
            _wait(lambda s=store: (_all_types_p99_ms(stack, s) or 0) > 500, 60, "lock waits to show in the histogram")
            print(f"A p99 over every request type now reads {_all_types_p99_ms(stack, store):.0f} ms;"
                  " the point operations the operator judges stay fast")  # fmt: skip
        start = _checks(stack)
        _wait(lambda b=start: _checks(stack) >= b + 5, 60, "five more checks")
        tickets = [i for i in ("latency", "diskUsage", "storesReady", "pdStores") if _ticket_state(stack, i, store)]
        outcome = "no ticket" if not tickets else f"TICKETS: {', '.join(tickets)}"
        print(f"After 5 checks: {outcome}; LatencyWithinBudget={_condition(stack, 'LatencyWithinBudget')}")
        _simulator(stack, "DELETE", _fault_path(store, fault))
        results.append((title, outcome))
    return results


def run_demo() -> int:
    with Stack.start() as stack:
        try:
            _start(stack)
            controls = _controls(stack)
            results = []
            for title, store, fault, body, invariant in SCENARIOS:
                say(f"Injecting a {title} on {store}")
                _simulator(stack, "PUT", _fault_path(store, fault), body)
                subject = "cluster" if invariant.startswith("pd") else store
                detected = _wait(
                    lambda i=invariant, s=subject: _ticket_state(stack, i, s) == "open", 90, f"a {invariant} ticket"
                )
                print(f"Ticket opened {detected:.1f}s after the fault ({invariant} 'for' grace is 2s)")
                ticket = _diagnosed(stack, invariant, subject)
                rule = _print_diagnosis(stack, ticket["status"]["ticketId"], f"{invariant} {subject}")
                incident = _one_incident(stack, ticket) if invariant == "diskUsage" else ""
                _show(stack)
                say(f"Healing {store}")
                _simulator(stack, "DELETE", _fault_path(store, fault))
                resolved = _wait(
                    lambda i=invariant, s=subject: _ticket_state(stack, i, s) == "resolved", 120, "resolution"
                )
                print(f"Ticket auto-resolved {resolved:.1f}s after healing ('clearFor' grace is 4s)")
                if body and body.get("reason") == "OOMKilled":
                    # Killed, the store could not answer on its status port; running again, TiKV's /config can.
                    rule = _print_diagnosis(stack, ticket["status"]["ticketId"], "once the store ran again")
                _show(stack)
                results.append((title, invariant, detected, resolved, rule, incident))
            say("Events on the MonitoredCluster")
            print(stack.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp").stdout, end="")
            say("Summary (interval 2s, scrape 1s, for 2s, clearFor 4s)")
            print(f"{'fault':<30}{'invariant':<13}{'detection':>10}{'resolution':>12}  {'diagnosis':<16}incident")
            for title, invariant, detected, resolved, rule, incident in results:
                print(f"{title:<30}{invariant:<13}{detected:>9.1f}s{resolved:>11.1f}s  {rule:<16}{incident}")
            for title, outcome in controls:
                print(f"{title:<43}{outcome:>22}")
            bad = [title for title, outcome in controls if outcome != "no ticket"]
            return 1 if bad else 0
        except BaseException:
            print(stack.logs())
            raise


def up(*, hold: bool, node: bool = False) -> int:
    """Start the stack and the example; in node mode the user installs the operator with helm, as the README says."""
    with Stack.start(node=node) as stack:
        if node:
            _create_example(stack)  # the operator is the user's to install, with helm
        else:
            _start(stack)
        say("The stack is up. Point kubectl and helm at it with:")
        print(f"  export KUBECONFIG={stack.kubeconfig}")
        helm = stack.binaries.helm.parent if node else stack.binaries.helm_dir  # node mode installs with helm: build it
        print(f"  export PATH={stack.binaries.kubectl.parent}:{helm}:$PATH")
        print(f"  Prometheus {stack.prometheus_url}   simulator {stack.simulator_url}   Postgres {stack.postgres_dsn}")
        say("Inject a fault into a store, and heal it (the simulator's API; see devstack/storeworld/simulator.py):")
        disk = f"{stack.simulator_url}{_fault_path(f'{CLUSTER}-tikv-0', 'disk')}"
        print(f"  curl -X PUT -H 'Content-Type: application/json' -d '{{\"percent\": 96}}' {disk}")
        print(f"  curl -X DELETE {disk}")
        print(
            "  Other faults (down, latency, hung, restart-loop, …) are listed in devstack/storeworld/simulator.py's "
            "docstring"
        )
        if node:
            say("Install the operator from the chart (its image and a Postgres stand-in are already on the node):")
            print(f"  kubectl create namespace {HELM_NAMESPACE}")
            print(f"  kubectl label namespace {HELM_NAMESPACE} pod-security.kubernetes.io/enforce=restricted")
            chart = CHART.relative_to(REPO_ROOT)
            print(f"  helm install operator-k8s {chart} -n {HELM_NAMESPACE} --wait {' '.join(QUICK_START_VALUES)}")
            print(f"  kubectl get mc,tickets -n {NAMESPACE}     # the example cluster, checked by the operator's pod")
            gateway_dsn = stack.postgres_dsn.replace("127.0.0.1", GATEWAY)
            print(f"  For kubectl apply -f deploy/ instead of helm, the DSN pods can reach: {gateway_dsn}")
        if hold or node:
            say("Press Ctrl-C to stop everything")
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
            say("Stopping everything" + ("; the machine is restored when this command ends (9-18 s)" if node else ""))
    return 0
