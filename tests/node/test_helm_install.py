"""The install tier: the operator as users run it, a pod on a real node, driven only by helm, kubectl and Postgres.

The stack runs in node mode (``devstack.world.node``): kubelet, containerd and runc run the image built from the
repository's Dockerfile; the chart's quick-start Postgres runs as a StatefulSet; the operator reaches the API server
through the ``kubernetes`` Service and cluster DNS. ``pytest -s`` prints the ``[measured]`` timings the README quotes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from devstack.host.hoststate import GATEWAY, HostState
from devstack.host.paths import REPO_ROOT
from devstack.jobs import manifests
from devstack.jobs.demo import QUICK_START_VALUES
from devstack.world.node import NODE_NAME, Node
from devstack.world.stack import Stack
from tests.stackutil import (
    OPEN_STATES,
    apply,
    apply_tikv_example,
    eventually,
    get_json,
    metric_samples,
    monitored_cluster,
    prometheus_query,
    simulator,
    store_fault,
)

pytestmark = pytest.mark.stack
CHART = str(REPO_ROOT / "charts" / "operator-k8s")
HOME = "ok8s-helm"  # the namespace the chart is installed into
STORES = "tikv"  # the namespace of the monitored store pods
RELEASE = "ok8s"
POSTGRES_POD = f"{RELEASE}-operator-k8s-postgres-0"


def measured(what: str, seconds: float) -> None:
    print(f"[measured] {what}: {seconds:.1f}s", flush=True)


@pytest.fixture(scope="module")
def node_stack() -> Iterator[Stack]:
    """A stack with a real node; at the end the machine must be exactly as it was before (no chain, bridge, mount,
    cgroup, netns, log link or sysctl left behind)."""
    Node.check_machine()
    prepared = time.monotonic()
    Node.prepare()
    measured("node binaries and images ready (builds what the cache lacks)", time.monotonic() - prepared)
    before = HostState.capture()  # after the builds: the machine as the node finds it
    started = time.monotonic()
    stack = Stack.start(node=True)
    assert stack.node is not None
    measured("node-mode stack start (binaries and images built)", time.monotonic() - started)
    for what, seconds in stack.node.timings.items():
        measured(f"node: {what}", seconds)
    try:
        yield stack
    finally:
        stopped = time.monotonic()
        stack.stop()
        measured("node-mode stack stop", time.monotonic() - stopped)
        assert before.differences() == [], "the machine is as it was before the node started"


def pods(stack: Stack, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(stack, "pods", "-n", namespace, "-l", selector)["items"]
    return items


def ready_pod(stack: Stack, namespace: str, selector: str) -> dict[str, Any] | None:
    """The one Running, Ready, not-terminating pod that ``selector`` picks, if there is exactly one."""
    found = [p for p in pods(stack, namespace, selector) if not p["metadata"].get("deletionTimestamp")
             and p["status"].get("phase") == "Running"
             and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]  # fmt: skip
    return found[0] if len(found) == 1 else None


def start_to_ready(pod: dict[str, Any]) -> float:
    """Seconds from the pod's creation to its Ready condition, by the API server's and the kubelet's timestamps."""
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return (datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")) - created).total_seconds()


def store_cluster(stack: Stack, namespace: str) -> None:
    """Three simulator stores labelled ``app=tikv`` and a MonitoredCluster ``tikv`` of them, checked every 2 s."""
    simulator(stack, "PUT", f"/clusters/{namespace}/tikv", {"stores": 3, "labels": {"app": "tikv"}})
    apply(stack, monitored_cluster("tikv", namespace, stack, interval="2s"))


def psql(stack: Stack, sql: str, dsn: str | None = None) -> list[list[str]]:
    """Rows from the quick-start Postgres, read inside its pod, as an SRE would (by default over its local socket)."""
    target = [dsn] if dsn else ["-U", "operator", "-d", "operator"]
    out = stack.kubectl("exec", "-n", HOME, POSTGRES_POD, "--", "psql", *target, "-AtF", "\t", "-c", sql).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def tickets(stack: Stack, state: str | None = None) -> list[dict[str, Any]]:
    items = get_json(stack, "tickets", "-n", STORES)["items"]
    wanted = OPEN_STATES if state == "open" else (state,)  # a diagnosed ticket is open all the same
    return [t for t in items if state is None or t.get("status", {}).get("state") in wanted]


def open_in_postgres(stack: Stack) -> list[tuple[str, str, str, str]]:
    """(id, invariant, store, opened_at) of every unresolved ticket of the store namespace."""
    rows = psql(stack, f"SELECT id, invariant, store, opened_at FROM tickets WHERE namespace = '{STORES}' "
                       "AND state <> 'resolved' ORDER BY id")  # fmt: skip
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def kubelet_probes(stack: Stack, pod: str) -> dict[str, float]:
    """The kubelet's own probe counters for the operator container, by probe type and result."""
    assert stack.node is not None
    text = stack.kubectl("get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/metrics/probes").stdout
    counts: dict[str, float] = {}
    for sample in metric_samples(text):
        labels = sample.labels
        if sample.name == "prober_probe_total" and (labels.get("pod"), labels.get("container")) == (pod, "operator"):
            key = f"{labels['probe_type']}/{labels['result']}"
            counts[key] = counts.get(key, 0) + sample.value
    return counts


def operator_scraped(stack: Stack, pod: str) -> bool:
    """The stack's Prometheus scrapes the operator pod through its metrics Service (kubernetes_sd, endpoints)."""
    found = prometheus_query(stack, f'operator_k8s_check_cycles_total{{job="operator-k8s",pod="{pod}"}}')
    return bool(found) and all(s["metric"].get("service") == f"{RELEASE}-operator-k8s-metrics" for s in found)


def test_helm_install_fault_upgrade_pod_loss_uninstall(node_stack: Stack) -> None:
    stack = node_stack
    stack.kubectl("create", "namespace", HOME)
    stack.kubectl("label", "namespace", HOME, "pod-security.kubernetes.io/enforce=restricted")
    started = time.monotonic()
    stack.helm("install", RELEASE, CHART, "-n", HOME, *QUICK_START_VALUES, "--wait", "--timeout", "110s")
    measured("helm install --wait (operator and Postgres pods Ready)", time.monotonic() - started)
    operator = ready_pod(stack, HOME, "app.kubernetes.io/name=operator-k8s,app.kubernetes.io/component!=postgres")
    assert operator is not None, stack.kubectl("get", "pods", "-A", "-o", "wide").stdout
    assert operator["spec"]["nodeName"] == NODE_NAME
    assert operator["status"]["podIP"].startswith("198.18.0.")
    assert ready_pod(stack, HOME, "app.kubernetes.io/component=postgres") is not None
    for pod in (operator, ready_pod(stack, HOME, "app.kubernetes.io/component=postgres")):
        assert pod is not None
        measured(f"pod {pod['metadata']['name']} created → Ready (API timestamps, 1 s resolution)", start_to_ready(pod))
    unhardened = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unhardened"},
                  "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
    refused = stack.kubectl("create", "-n", HOME, "--dry-run=server", "-f", "-", input_text=json.dumps(unhardened),
                            check=False)  # fmt: skip
    assert "violates PodSecurity" in refused.stderr, "the namespace really enforces restricted (negative control)"

    # A TiKV cluster's pods and a MonitoredCluster for them, applied with kubectl.
    stack.kubectl("create", "namespace", STORES)
    store_cluster(stack, STORES)

    def healthy() -> bool:
        status = get_json(stack, "mc", "tikv", "-n", STORES).get("status", {})
        return any(c["type"] == "Healthy" and c["status"] == "True" for c in status.get("conditions", []))

    eventually(healthy, timeout=90, what="the in-cluster operator's first check (Healthy=True)")
    measured("helm install → first check", time.monotonic() - started)

    fault = time.monotonic()
    store_fault(stack, STORES, "tikv", "tikv-2", "disk", {"percent": 96})
    eventually(lambda: tickets(stack, "open"), timeout=60, what="kubectl get tickets shows the disk ticket open")
    measured("fault → ticket (kubectl get tickets)", time.monotonic() - fault)
    listed = stack.kubectl("get", "tickets", "-n", STORES).stdout
    assert "diskUsage" in listed and "tikv-2" in listed and any(s in listed for s in OPEN_STATES), listed
    measured("helm install → first ticket", time.monotonic() - started)
    healed = time.monotonic()
    store_fault(stack, STORES, "tikv", "tikv-2", "disk", heal=True)
    eventually(lambda: tickets(stack, "resolved"), timeout=60, what="the ticket resolved")
    measured("heal → resolved", time.monotonic() - healed)
    assert psql(stack, "SELECT invariant, store, state FROM tickets") == [["diskUsage", "tikv-2", "resolved"]]

    # The operator's metrics reach the stack's Prometheus through the chart's Service; the kubelet runs the chart's
    # probes (it counts them itself).
    name = operator["metadata"]["name"]
    eventually(lambda: operator_scraped(stack, name), timeout=60, what="the operator scraped through its Service")
    probes = eventually(lambda: (c := kubelet_probes(stack, name)).get("Liveness/successful") and c, timeout=60,
                        what="the kubelet's liveness probes of the operator")  # fmt: skip
    assert probes.get("Readiness/successful", 0) >= 1, probes

    # A ticket open across a helm upgrade (a changed value rolls the pod) and across the loss of the pod: the same
    # ticket (id, opened_at, Ticket resource) stays open, never a second one.
    store_fault(stack, STORES, "tikv", "tikv-1", "disk", {"percent": 97})
    held = eventually(lambda: open_in_postgres(stack), timeout=60, what="a ticket for tikv-1")
    assert [(row[1], row[2]) for row in held] == [("diskUsage", "tikv-1")]
    resource = eventually(lambda: tickets(stack, "open"), timeout=30, what="its Ticket resource")[0]
    upgraded = time.monotonic()
    stack.helm("upgrade", RELEASE, CHART, "-n", HOME, *QUICK_START_VALUES, "--set", "settings.logLevel=DEBUG", "--wait",
               "--timeout", "110s")  # fmt: skip
    operators = "app.kubernetes.io/component!=postgres,app.kubernetes.io/name=operator-k8s"
    rolled = eventually(lambda: (p := ready_pod(stack, HOME, operators)) and p["metadata"]["name"] != name and p,
                        timeout=90, what="a new operator pod")  # fmt: skip
    measured("helm upgrade → new pod Ready", time.monotonic() - upgraded)
    env = {e["name"]: e.get("value") for e in rolled["spec"]["containers"][0]["env"]}
    assert env["OPERATOR_K8S_LOG_LEVEL"] == "DEBUG"
    eventually(lambda: cycles(stack, rolled["metadata"]["name"]) >= 5, timeout=90, what="five checks by the new pod")
    assert open_in_postgres(stack) == held, "the same ticket is still open after the upgrade"

    deleted = time.monotonic()
    stack.kubectl("delete", "pod", "-n", HOME, rolled["metadata"]["name"], "--wait=false")
    replacement = eventually(
        lambda: (p := ready_pod(stack, HOME, operators)) and p["metadata"]["name"] != rolled["metadata"]["name"] and p,
        timeout=90, what="the Deployment's replacement pod Ready",
    )  # fmt: skip
    measured("operator pod deleted → replacement Ready", time.monotonic() - deleted)
    eventually(lambda: cycles(stack, replacement["metadata"]["name"]) >= 5, timeout=90,
               what="five checks by the replacement, scraped through the Service")  # fmt: skip
    assert open_in_postgres(stack) == held, "exactly the same ticket open, no duplicate"
    still_open = tickets(stack, "open")
    assert [t["metadata"]["uid"] for t in still_open] == [resource["metadata"]["uid"]], "the same Ticket resource"
    store_fault(stack, STORES, "tikv", "tikv-1", "disk", heal=True)
    eventually(lambda: not open_in_postgres(stack), timeout=60, what="the second ticket resolved")
    eventually(lambda: len(tickets(stack, "resolved")) == 2, timeout=30, what="both Ticket resources resolved")

    # Uninstall as the README says: clusters first (their tickets resolve, the finalizer goes), then the release.
    stack.kubectl("delete", "monitoredclusters", "--all", "-A", "--timeout=60s")
    history = psql(stack, "SELECT id, invariant, store, state FROM tickets ORDER BY id")
    assert [row[3] for row in history] == ["resolved"] * 2, history
    stack.helm("uninstall", RELEASE, "-n", HOME, "--wait", "--timeout", "110s")
    eventually(lambda: not pods(stack, HOME, "app.kubernetes.io/instance=" + RELEASE), timeout=90,
               what="the release's pods gone")  # fmt: skip
    selector = f"app.kubernetes.io/instance={RELEASE}"
    left = stack.kubectl("get", "deployments,statefulsets,services,serviceaccounts,secrets,roles,rolebindings", "-n",
                         HOME, "-l", selector, "-o", "name").stdout  # fmt: skip
    assert left.split() == [f"secret/{RELEASE}-operator-k8s-postgres"], "only the quick-start DSN Secret (README)"
    assert stack.kubectl("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").stdout.strip() == ""
    assert "tickets.operator-k8s.io" in stack.kubectl("get", "crd", "-o", "name").stdout, "CRDs stay (README)"
    claims = stack.kubectl("get", "pvc", "-n", HOME, "-o", "name").stdout.split()
    assert claims == [f"persistentvolumeclaim/data-{POSTGRES_POD}"], "the quick-start data stays (README)"

    # Installed again, the release finds its kept data and the password that unlocks it: the history is there.
    reinstalled = time.monotonic()
    stack.helm("install", RELEASE, CHART, "-n", HOME, *QUICK_START_VALUES, "--wait", "--timeout", "110s")
    measured("helm install again after uninstall → Ready", time.monotonic() - reinstalled)
    # Over TCP, as the operator connects (the socket trusts anyone): the DSN the reinstall wrote opens the kept data,
    # and the same DSN with another password does not (so the check can fail).
    dsn = base64.b64decode(stack.kubectl("get", "secret", f"{RELEASE}-operator-k8s-postgres", "-n", HOME, "-o",
                                         "jsonpath={.data.dsn}").stdout).decode()  # fmt: skip
    local = dsn.replace(f"@{RELEASE}-operator-k8s-postgres:", "@127.0.0.1:")
    sql = "SELECT id, invariant, store, state FROM tickets ORDER BY id"
    kept = psql(stack, sql, dsn=local)
    assert kept == history, "the first install's tickets, read with the password the reinstall found"
    wrong = local.replace(local.split(":")[2].split("@")[0], "not-the-password")
    refused = stack.kubectl("exec", "-n", HOME, POSTGRES_POD, "--", "psql", wrong, "-c", "SELECT 1", check=False)
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr, refused.stderr
    stack.helm("uninstall", RELEASE, "-n", HOME, "--wait", "--timeout", "110s")


def cycles(stack: Stack, pod: str) -> float:
    """How many checks ``pod`` has run, by its own counter as the stack's Prometheus scraped it."""
    found = prometheus_query(stack, f'sum(operator_k8s_check_cycles_total{{job="operator-k8s",pod="{pod}"}})')
    return float(found[0]["value"][1]) if found else 0.0


def test_plain_manifests_reach_the_same_state(node_stack: Stack) -> None:
    """``kubectl apply -f deploy/`` and a DSN Secret (the stack's Postgres through PgBouncer in transaction pooling, on
    the bridge address) → a Ready pod that opens and resolves tickets."""
    stack = node_stack
    stack.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "deploy"))
    home = manifests.NAMESPACE
    dsn = stack.pooled_dsn().replace("127.0.0.1", GATEWAY)
    stack.kubectl("create", "secret", "generic", "operator-k8s-database", f"--from-literal=dsn={dsn}", "-n", home)
    started = time.monotonic()
    stack.kubectl("rollout", "status", "deployment/operator-k8s", "-n", home, "--timeout=120s")
    measured("kubectl apply -f deploy/ → operator Ready", time.monotonic() - started)
    assert ready_pod(stack, home, "app.kubernetes.io/name=operator-k8s") is not None

    namespace = "tikv-plain"
    stack.kubectl("create", "namespace", namespace)
    apply_tikv_example(stack, namespace, interval="2s")
    store_fault(stack, namespace, "tikv-prod", "tikv-prod-0", "disk", {"percent": 96})
    eventually(lambda: [t for t in get_json(stack, "tickets", "-n", namespace)["items"]
                        if t.get("status", {}).get("invariant") == "diskUsage" and t["status"].get("store") == "tikv-prod-0"],
               timeout=90, what="the disk ticket of tikv-prod-0")  # fmt: skip
    row = stack.kubectl("get", "mc", "tikv-prod", "-n", namespace, "--no-headers").stdout.split()
    assert row[2:4] == ["3/3", "ready"], row
    store_fault(stack, namespace, "tikv-prod", "tikv-prod-0", "disk", heal=True)
    eventually(lambda: all(t.get("status", {}).get("state") == "resolved" for t in get_json(stack, "tickets", "-n", namespace)["items"]),
               timeout=60, what="the ticket resolved")  # fmt: skip
    stack.kubectl("delete", "monitoredclusters", "--all", "-n", namespace, "--timeout=60s")


def active(stack: Stack, pod: str) -> float | None:
    """A replica's ``operator_k8s_active`` as the stack's Prometheus scraped it (None: not scraped yet)."""
    found = prometheus_query(stack, f'operator_k8s_active{{job="operator-k8s",pod="{pod}"}}')
    return float(found[0]["value"][1]) if found else None


def test_a_fresh_two_replica_install_never_checks_on_two_replicas(node_stack: Stack) -> None:
    """dfbc121 ran both replicas of a fresh install as active for about 50 s (Helm creates the peering object after
    the Deployment). Each replica's own check counter, scraped from its first seconds, shows that only one ever
    checked; ``operator_k8s_active`` says which."""
    stack, home, namespace, release = node_stack, "ok8s-peers", "tikv-peers", "peers"
    stack.kubectl("create", "namespace", home)
    stack.kubectl("create", "namespace", namespace)
    store_cluster(stack, namespace)  # there before the operator: checked at once
    started = time.monotonic()
    stack.helm("install", release, CHART, "-n", home, *QUICK_START_VALUES, "--set", "replicaCount=2",
               "--set", "peering.enabled=true", "--wait", "--timeout", "110s")  # fmt: skip
    replicas = [p["metadata"]["name"] for p in pods(stack, home, f"app.kubernetes.io/instance={release},"
                                                                 "app.kubernetes.io/component!=postgres")]  # fmt: skip
    assert len(replicas) == 2, replicas
    eventually(lambda: all(active(stack, pod) is not None for pod in replicas), timeout=90,
               what="both replicas scraped")  # fmt: skip
    runner = eventually(lambda: next((p for p in replicas if cycles(stack, p) >= 10), None), timeout=120,
                        what="ten checks by one replica")  # fmt: skip
    measured("two-replica helm install → ten checks by the active replica", time.monotonic() - started)
    standby = next(p for p in replicas if p != runner)
    assert cycles(stack, standby) == 0, "the standby never checked, not even in its first seconds"
    assert (active(stack, runner), active(stack, standby)) == (1.0, 0.0)
    stack.kubectl("delete", "monitoredclusters", "--all", "-n", namespace, "--timeout=60s")
    stack.helm("uninstall", release, "-n", home, "--wait", "--timeout", "110s")
