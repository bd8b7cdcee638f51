"""The real API server: our CRDs' validation and printer columns, /version, RBAC and TokenRequest."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from devstack.builds import versions
from devstack.world.stack import Stack
from tests.stackutil import TICKET_COLUMNS, eventually, get_json

pytestmark = pytest.mark.stack

VALID: dict[str, Any] = {
    "apiVersion": "operator-k8s.io/v1alpha1",
    "kind": "MonitoredCluster",
    "metadata": {"name": "valid"},
    "spec": {
        "stores": {"selector": {"matchLabels": {"app": "tikv"}}, "expected": 3},
        "prometheus": {"url": "http://prometheus:9090"},
    },
}


def apply(stack: Stack, namespace: str, body: dict[str, Any]) -> tuple[int, str]:
    result = stack.kubectl("apply", "-n", namespace, "-f", "-", check=False, input_text=json.dumps(body))
    return result.returncode, result.stderr


def variant(path: list[str], value: Any, name: str) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    body["metadata"]["name"] = name
    node = body["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return body


def test_version_reports_the_built_release(stack: Stack) -> None:
    server = json.loads(stack.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == versions.KUBERNETES
    assert server["minor"] == versions.KUBERNETES.split(".")[1]


def test_valid_cluster_gets_defaults(stack: Stack, namespace: str) -> None:
    assert apply(stack, namespace, VALID)[0] == 0
    spec = get_json(stack, "mc", "valid", "-n", namespace)["spec"]
    assert spec["interval"] == "30s"
    assert spec["invariants"]["latency"]["quantile"] == 0.99
    assert spec["prometheus"]["storeLabel"] == "pod"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["invariants", "latency", "thresholdMs"], -5, "should be greater than 0"),
        (["invariants", "diskUsage", "thresholdPercent"], 150, "should be less than or equal to 100"),
        (["stores", "expected"], "three", "must be of type integer"),
        (["prometheus", "url"], "http://" + "p" * 2100, "may not be more than 2048"),
        (["interval"], "soon", "should match"),
        (["interval"], "2h", "interval must be between 1s and 1h"),
        (["invariants", "latency", "clearThresholdMs"], 900, "clearThresholdMs must not exceed thresholdMs"),
        (["invariants", "custom"], [{"name": "x", "query": "q", "comparator": "<", "threshold": 5, "clearThreshold": 1}],
         "clearThreshold must be on the safe side"),
        (["invariants", "custom"], [{"name": "Bad_Name", "query": "q", "comparator": ">", "threshold": 1}], "should match"),
        (["invariants", "custom"], [{"name": "x", "query": "q", "comparator": "=~", "threshold": 1}], "Unsupported value"),
        (["prometheus", "matchers"], {"bad key": "v"}, "matcher keys must be Prometheus label names"),
        (["preset"], "mysql", "Unsupported value"),
    ],
    ids=["negative-threshold", "percent-over-100", "wrong-type", "over-long-string", "bad-duration", "interval-too-long",
         "clear-above-threshold", "clear-wrong-side", "bad-custom-name", "unknown-comparator", "bad-matcher-key",
         "unknown-preset"],
)  # fmt: skip
def test_invalid_cluster_is_rejected_by_the_api_server(
    stack: Stack, namespace: str, path: list[str], value: Any, message: str
) -> None:
    code, error = apply(stack, namespace, variant(path, value, "invalid"))
    assert code != 0
    assert message in error
    assert stack.kubectl("get", "mc", "invalid", "-n", namespace, check=False).returncode != 0


def test_unknown_fields_are_pruned_or_refused(stack: Stack, namespace: str) -> None:
    body = variant(["surprise"], True, "strict")
    result = stack.kubectl(
        "apply", "--validate=strict", "-n", namespace, "-f", "-", check=False, input_text=json.dumps(body)
    )
    assert result.returncode != 0
    assert 'unknown field "spec.surprise"' in result.stderr


def _ticket(stack: Stack, namespace: str) -> None:
    body = {"apiVersion": "operator-k8s.io/v1alpha1", "kind": "Ticket", "metadata": {"name": "tikv-latency-tikv-1-1"}}
    stack.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(body))
    status = {"status": {"cluster": "tikv", "invariant": "latency", "store": "tikv-1", "severity": "warning",
                         "state": "open", "occurrences": 2, "lastSeen": "2026-01-01T00:00:00Z", "ticketId": 1}}  # fmt: skip
    # No status subresource on Tickets: the status is patched with the labels, in one request.
    stack.kubectl("patch", "ticket", "tikv-latency-tikv-1-1", "-n", namespace, "--type=merge", "-p", json.dumps(status))


def test_printer_columns(stack: Stack, namespace: str) -> None:
    assert apply(stack, namespace, VALID)[0] == 0
    status = {"status": {"openTickets": 1, "stores": {"summary": "2/3 ready"}, "lastCheckTime": "2026-01-01T00:00:00Z",
                         "conditions": [{"type": "Healthy", "status": "False", "reason": "InvariantsViolated",
                                         "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}  # fmt: skip
    stack.kubectl(
        "patch", "mc", "valid", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    _ticket(stack, namespace)

    mc = stack.kubectl("get", "mc", "-n", namespace).stdout.splitlines()
    assert mc[0].split() == ["NAME", "HEALTHY", "STORES", "OPEN-TICKETS", "LAST-CHECK", "AGE"]
    assert mc[1].split()[:5] == ["valid", "False", "2/3", "ready", "1"]

    tickets = stack.kubectl("get", "tickets", "-n", namespace).stdout.splitlines()
    assert tickets[0].split() == TICKET_COLUMNS
    assert tickets[1].split()[:7] == ["tikv-latency-tikv-1-1", "tikv", "latency", "tikv-1", "warning", "open", "2"]
    assert (
        stack.kubectl("get", "tk", "-n", namespace, "-o", "name").stdout.strip()
        == "ticket.operator-k8s.io/tikv-latency-tikv-1-1"
    )


def test_ticket_spec_is_bounded(stack: Stack, namespace: str) -> None:
    body = {
        "apiVersion": "operator-k8s.io/v1alpha1",
        "kind": "Ticket",
        "metadata": {"name": "t"},
        "spec": {"note": "n" * 2000},
    }
    code, error = apply(stack, namespace, body)
    assert code != 0
    assert "may not be more than 1024" in error


def test_token_request_and_rbac(stack: Stack, namespace: str) -> None:
    """A ServiceAccount's token from TokenRequest authenticates, and RBAC denies what is not granted."""
    stack.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    token = stack.kubectl("create", "token", "probe", "-n", namespace).stdout.strip()
    as_probe = ["--kubeconfig", str(stack.token_kubeconfig(token, f"probe-{namespace}")), "-n", namespace]
    denied = stack.kubectl("get", "pods", *as_probe, check=False)
    assert denied.returncode != 0
    assert f"system:serviceaccount:{namespace}:probe" in denied.stderr
    stack.kubectl("create", "role", "read-pods", "--verb=list", "--resource=pods", "-n", namespace)
    stack.kubectl(
        "create", "rolebinding", "probe", "--role=read-pods", f"--serviceaccount={namespace}:probe", "-n", namespace
    )
    # The authorizer learns of a new binding from its watch cache: granted a moment later, not in the same instant.
    eventually(lambda: stack.kubectl("auth", "can-i", "list", "pods", *as_probe, check=False).stdout.strip() == "yes",
               what="the new RoleBinding to take effect", timeout=30)  # fmt: skip
    assert stack.kubectl("auth", "can-i", "get", "secrets", *as_probe, check=False).stdout.strip() == "no"
