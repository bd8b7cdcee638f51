"""What the exactly-right scenarios share (issue 8's "Must show" items, one module per concern): the module's
operator process, a scene of namespaces, stores and clusters removed afterwards, the refusal policy, and the
readers of what the stack holds.

``OPERATOR_K8S_E2E_OUTAGE_SECONDS`` shortens the API-server outage (default 180 s, as the issue demands) for quicker
local iteration; ``OPERATOR_K8S_E2E_SEED`` replays a crash storm (its seed is printed).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from functools import partial
from typing import Any

from devstack.host.processes import Process
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from operator_k8s.domain.status import parse_time
from tests.stackutil import (
    apply,
    condition_status,
    eventually,
    get_json,
    health_url,
    http_status,
    metric_value,
    monitored_cluster,
    pg_rows,
    scrape_metrics,
    shown_tickets,
    simulator,
    tickets_in_db,
)

OUTAGE_SECONDS = float(os.environ.get("OPERATOR_K8S_E2E_OUTAGE_SECONDS", "180"))
"""How long the API server stays down during a fault (the issue: 3 minutes)."""
FREEZE_SECONDS = 60.0
"""How long Postgres stays frozen (SIGSTOP) next to a Prometheus that never answers."""
INTERVAL = 2.0
"""The check interval of every MonitoredCluster here (but the crash storm's, which is 1 s)."""
SLACK = 10.0
"""Slack on "within one interval" for a loaded 2-core machine; the measured numbers are printed."""
RECOVERY_TIMEOUT = 60.0
"""How long to wait for a recovery before failing (the budget asserted is INTERVAL + SLACK)."""
MIN_KILLS = 30
MIN_KILLS_OF_EACH = 5
"""Of those, at least this many by the test (at any moment) and by the failpoint (right after a commit)."""
LARGEST_TIMEOUT = "60s"
"""The largest prometheus.timeout the CRD admits."""
SHARED_LOG = "operator-exactly-right.log"
_names = itertools.count()


class SharedOperator:
    """The module's operator process, watching every namespace; started on demand, stopped for the crash storm."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.process: Process | None = None

    def running(self) -> Process:
        if self.process is None or not self.process.alive():
            if self.process is not None:
                self.stack.processes.remove(self.process)
            self.process = operator_process(self.stack, SHARED_LOG)
            process = self.process
            eventually(lambda: http_status(health_url(process)) == 200, what="the operator's /healthz", timeout=60)
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.stack.processes.remove(self.process)
            self.process = None


class Scene:
    """Namespaces, simulated stores and MonitoredClusters of one test, removed afterwards (while an operator runs,
    so that deleting a MonitoredCluster completes)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.clusters: list[tuple[str, str]] = []
        self.store_sets: list[tuple[str, str]] = []

    def namespace(self, hint: str) -> str:
        name = f"xr-{hint}-{os.getpid()}-{next(_names)}"
        self.stack.kubectl("create", "namespace", name)
        return name

    def stores(self, namespace: str, name: str, count: int = 3) -> list[str]:
        """Simulated store pods ``<name>-<i>`` labelled ``app=<name>``."""
        pods: list[str] = simulator(
            self.stack, "PUT", f"/clusters/{namespace}/{name}", {"stores": count, "labels": {"app": name}}
        )["pods"]
        self.store_sets.append((namespace, name))
        return pods

    def cluster(
        self, namespace: str, name: str, *, interval: str = f"{INTERVAL:g}s", labels: dict[str, str] | None = None,
        **spec: Any,
    ) -> None:  # fmt: skip
        """A MonitoredCluster of the stores labelled ``app=<name>`` (``stores=`` overrides the selector), itself
        labelled ``labels``."""
        self.clusters_of(namespace, {name: spec}, interval=interval, labels=labels)

    def clusters_of(
        self, namespace: str, specs: dict[str, dict[str, Any]], *, interval: str = f"{INTERVAL:g}s",
        labels: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """``cluster`` for each name with its own spec, all in one request: forty clusters are one kubectl call, not
        forty (each a process start and a round trip)."""
        bodies = [
            monitored_cluster(name, namespace, self.stack, interval=interval, **spec) for name, spec in specs.items()
        ]
        for body in bodies:
            if labels:
                body["metadata"]["labels"] = labels
        apply(self.stack, *bodies)
        self.clusters.extend((namespace, name) for name in specs)

    def cleanup(self) -> None:
        by_namespace: dict[str, list[str]] = {}
        for namespace, name in self.clusters:
            by_namespace.setdefault(namespace, []).append(name)
        for namespace, names in by_namespace.items():  # one request per namespace, not one per cluster
            self.stack.kubectl(
                "delete", "mc", *names, "-n", namespace, "--wait=false", "--ignore-not-found", check=False
            )
        for namespace, name in self.store_sets:
            simulator(self.stack, "DELETE", f"/clusters/{namespace}/{name}")


def wait_healthy(stack: Stack, namespace: str, *names: str) -> None:
    for name in names:
        eventually(
            partial(condition_is, stack, namespace, name, "Healthy", "True"),
            what=f"{namespace}/{name} Healthy=True",
            timeout=90,
        )


def condition_is(stack: Stack, namespace: str, name: str, ctype: str, status: str) -> bool:
    return condition_status(stack, namespace, name, ctype) == status


def checked_since(operator: Process, namespace: str, name: str, since: float) -> float | None:
    """When the cluster was last checked successfully, if that was after ``since``."""
    at = last_success(operator, namespace, name)
    return at if at > since else None


def status_since(stack: Stack, namespace: str, name: str, since: float) -> bool:
    """Whether the cluster's status.lastCheckTime (whole seconds) is from ``since`` or later."""
    return last_check(stack, namespace, name) >= math.floor(since)


def last_check(stack: Stack, namespace: str, name: str) -> float:
    """The cluster's status.lastCheckTime as unix time (whole seconds), 0 if it has none."""
    status = get_json(stack, "mc", name, "-n", namespace).get("status") or {}
    text = status.get("lastCheckTime")
    return parse_time(text).timestamp() if text else 0.0


def last_success(operator: Process, namespace: str, name: str) -> float:
    """When the operator last checked the cluster without a dependency failure (its own metric), unix time."""
    pattern = rf'operator_k8s_last_successful_check_timestamp_seconds\{{cluster="{name}",namespace="{namespace}"\}}'
    return metric_value(scrape_metrics(operator), pattern)


def unresolved_duplicates(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    """Keys with more than one unresolved ticket in Postgres (the invariant: never)."""
    return pg_rows(
        stack,
        "SELECT cluster_uid, invariant, store, count(*) AS n FROM tickets WHERE namespace = $1"
        " AND state <> 'resolved' GROUP BY cluster_uid, invariant, store HAVING count(*) > 1",
        namespace,
    )


def unresolved(stack: Stack, namespace: str) -> list[tuple[str, str, str]]:
    return sorted(
        (r["cluster_name"], r["invariant"], r["store"])
        for r in tickets_in_db(stack, namespace)
        if r["state"] != "resolved"
    )


def resources_by_id(stack: Stack, namespace: str) -> dict[int, dict[str, Any]]:
    return {int(t["status"]["ticketId"]): t for t in shown_tickets(stack, namespace)}


def events_of(stack: Stack, ticket_id: int) -> list[dict[str, Any]]:
    return pg_rows(
        stack, "SELECT kind, from_state, to_state, actor FROM ticket_events WHERE ticket_id = $1 ORDER BY id", ticket_id
    )


def refusal_policy(namespace: str, plural: str = "monitoredclusters") -> tuple[str, list[dict[str, Any]]]:
    """A ValidatingAdmissionPolicy (and its binding) that refuses every status change of ``plural`` in
    ``namespace``: the API server answers 422 Invalid, the reason VAP uses by default. MonitoredClusters have a
    status subresource (every write to it is refused); Tickets have none (an update that changes the status is
    refused, a spec-only edit passes)."""
    name = f"refuse-{plural}-status-{namespace}"
    subresource = plural == "monitoredclusters"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["operator-k8s.io"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": [f"{plural}/status" if subresource else plural],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "false"
                    if subresource
                    else (
                        "has(object.status) == has(oldObject.status) && (!has(object.status) || "
                        "object.status == oldObject.status)"
                    ),
                    "message": f"the test refuses {plural} status writes",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    return name, [policy, binding]


def patch_ticket(stack: Stack, namespace: str, name: str, spec: dict[str, Any]) -> None:
    stack.kubectl("patch", "ticket", name, "-n", namespace, "--type", "merge", "-p", json.dumps({"spec": spec}))


TIDB_CLUSTER_CRD = "tidbclusters.pingcap.com"


def tidb_cluster_crd() -> dict[str, Any]:
    """A minimal stand-in for TiDB Operator's TidbCluster CRD: only what the operator reads (``status.tikv.phase``,
    ``status.pd.phase``, ``status.conditions``), with a status subresource as the real one has. Not its schema."""
    text = {"type": "string"}
    phase = {"type": "object", "properties": {"phase": text}}
    condition = {"type": "object", "properties": {"type": text, "status": text, "lastTransitionTime": text}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": TIDB_CLUSTER_CRD},
        "spec": {
            "group": "pingcap.com",
            "scope": "Namespaced",
            "names": {"plural": "tidbclusters", "singular": "tidbcluster", "kind": "TidbCluster", "shortNames": ["tc"]},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "status": {"type": "object", "properties": {
                        "tikv": phase, "pd": phase, "conditions": {"type": "array", "items": condition}}},
                }}},
            }],
        },
    }  # fmt: skip


def install_tidb_cluster_crd(stack: Stack) -> None:
    apply(stack, tidb_cluster_crd())
    stack.kubectl("wait", "--for=condition=Established", f"crd/{TIDB_CLUSTER_CRD}", "--timeout=60s")


def set_tidb_phase(stack: Stack, namespace: str, name: str, tikv: str, *, ready_since: str | None = None) -> None:
    """What TiDB Operator writes while it rolls TiKV (``Upgrade``, ``Scale``) or after (``Normal``): the phases and
    the Ready condition, on the status subresource (created first if missing)."""
    apply(stack, {"apiVersion": "pingcap.com/v1alpha1", "kind": "TidbCluster",
                  "metadata": {"name": name, "namespace": namespace}, "spec": {}})  # fmt: skip
    ready = {"type": "Ready", "status": "True" if ready_since is None else "False",
             "lastTransitionTime": ready_since or "2020-01-01T00:00:00Z"}  # fmt: skip
    status = {"status": {"tikv": {"phase": tikv}, "pd": {"phase": "Normal"}, "conditions": [ready]}}
    stack.kubectl("patch", "tidbcluster", name, "-n", namespace, "--subresource=status", "--type", "merge",
                  "-p", json.dumps(status))  # fmt: skip
