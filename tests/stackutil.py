"""Helpers for tests on the real stack: waiting on conditions, driving the simulator, reading objects."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg

from devstack.stack import Stack

T = TypeVar("T")
TICKET_COLUMNS = ["NAME", "CLUSTER", "INVARIANT", "STORE", "SEVERITY", "STATE", "COUNT", "LAST-SEEN", "AGE"]
"""What ``kubectl get tickets`` must print, as the issue and the CRD's printer columns say."""


def eventually(probe: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.5, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}; last value: {last!r}")


def simulator(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(
        stack.simulator_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def get_json(stack: Stack, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stack.kubectl("get", *args, "-o", "json").stdout)
    return result


def condition(stack: Stack, namespace: str, name: str, ctype: str) -> dict[str, Any] | None:
    body = get_json(stack, "monitoredcluster", name, "-n", namespace)
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == ctype:
            return dict(item)
    return None


def condition_status(stack: Stack, namespace: str, name: str, ctype: str) -> str | None:
    item = condition(stack, namespace, name, ctype)
    return None if item is None else str(item["status"])


def prometheus_query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    url = stack.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.loads(response.read())["data"]["result"]
        return result


def monitored_cluster(name: str, namespace: str, stack: Stack, *, expected: int = 3, **spec: Any) -> dict[str, Any]:
    """A MonitoredCluster manifest for simulator stores labelled ``app=<name>``, checked every second."""
    body: dict[str, Any] = {
        "apiVersion": "operator-k8s.io/v1alpha1",
        "kind": "MonitoredCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "interval": "1s",
            "stores": {"selector": {"matchLabels": {"app": name}}, "expected": expected},
            "prometheus": {"url": stack.prometheus_url, "timeout": "2s", "rateWindow": "5s"},
        },
    }
    body["spec"].update(spec)
    return body


def pg_rows(stack: Stack, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows from the stack's Postgres (the operator's system of record), for assertions."""

    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(stack.postgres_dsn)
        try:
            return [dict(r) for r in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def tickets_in_db(stack: Stack, namespace: str, invariant: str | None = None) -> list[dict[str, Any]]:
    rows = pg_rows(stack, "SELECT * FROM tickets WHERE namespace = $1 ORDER BY id", namespace)
    return [r for r in rows if invariant is None or r["invariant"] == invariant]


def ticket_resources(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(stack, "tickets", "-n", namespace)["items"]
    return items
