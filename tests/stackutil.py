"""Helpers for tests on the real stack: waiting on conditions, driving the simulator, reading objects."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process
from devstack.world.stack import Stack
from operator_k8s.__main__ import Operator

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
    raise _timed_out(timeout, what, last)


async def eventually_async(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 60, interval: float = 0.5, what: str = ""
) -> T:
    """``eventually`` for a coroutine probe, in a test's own event loop."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise _timed_out(timeout, what, last)


def _timed_out(timeout: float, what: str, last: object) -> AssertionError:
    return AssertionError(f"Timed out after {timeout}s waiting for {what}; last value: {last!r}")


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


def apply_tikv_example(stack: Stack, namespace: str, interval: str) -> None:
    """deploy/examples/tikv-cluster.yaml as a user applies it, pointed at the stack's Prometheus, with its store pods
    (``tikv-prod-0..2``) in the simulator."""
    example: dict[str, Any] = yaml.safe_load((REPO_ROOT / "deploy/examples/tikv-cluster.yaml").read_text())
    example["metadata"]["namespace"] = namespace
    example["spec"]["prometheus"].update(url=stack.prometheus_url, rateWindow="5s")
    example["spec"]["interval"] = interval
    labels = example["spec"]["stores"]["selector"]["matchLabels"]
    simulator(stack, "PUT", f"/clusters/{namespace}/tikv-prod", {"stores": 3, "labels": labels})
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(example))


def pg_rows(stack: Stack, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows from the stack's Postgres (the operator's system of record), for assertions."""

    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(stack.postgres_dsn)
        try:
            return [dict(r) for r in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


async def create_database(stack: Stack, name: str, *, pooled: bool = False) -> str:
    """A fresh, empty database on the stack's Postgres; its DSN, direct or (``pooled``) through PgBouncer in
    transaction pooling."""
    admin = await asyncpg.connect(stack.postgres_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return stack.pooled_dsn(name) if pooled else stack.postgres_dsn.rsplit("/", 1)[0] + "/" + name


def tickets_in_db(stack: Stack, namespace: str, invariant: str | None = None) -> list[dict[str, Any]]:
    rows = pg_rows(stack, "SELECT * FROM tickets WHERE namespace = $1 ORDER BY id", namespace)
    return [r for r in rows if invariant is None or r["invariant"] == invariant]


def ticket_resources(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(stack, "tickets", "-n", namespace)["items"]
    return items


def shown_tickets(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    """Tickets that show a status (the operator creates each with its status; one someone else made may have none)."""
    return [t for t in ticket_resources(stack, namespace) if t.get("status")]


def apply(stack: Stack, *bodies: dict[str, Any]) -> None:
    """``kubectl apply`` of manifests given as dicts."""
    stack.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": bodies}))


def store_fault(
    stack: Stack,
    namespace: str,
    cluster: str,
    store: str,
    kind: str,
    body: dict[str, Any] | None = None,
    *,
    heal: bool = False,
) -> None:
    """Inject (or heal) a simulator fault on one store: ``down``, ``latency`` ({"seconds"}), ``disk`` ({"percent"})."""
    simulator(stack, "DELETE" if heal else "PUT", f"/clusters/{namespace}/{cluster}/stores/{store}/faults/{kind}", body)


def scrape_metrics(process: Process) -> dict[str, float]:
    """The samples an operator process serves on its metrics port, by series (name with labels)."""
    assert process.env is not None
    url = f"http://127.0.0.1:{process.env['OPERATOR_K8S_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        f"{sample.name}{{{','.join(f'{k}={json.dumps(v)}' for k, v in sample.labels.items())}}}"
        if sample.labels
        else sample.name: sample.value
        for sample in metric_samples(text)
    }


def metric_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, read by prometheus_client's own parser (the one parser here)."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_sum(text: str, name: str, **labels: str | tuple[str, ...]) -> float:
    """The sum of ``name``'s samples whose labels match (a value, or any of a tuple of values)."""

    def matches(sample: Sample) -> bool:
        return all(sample.labels.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in labels.items())

    return sum(s.value for s in metric_samples(text) if s.name == name and matches(s))


def metric_value(samples: dict[str, float], pattern: str) -> float:
    """The sum of the series whose name with labels fully matches the regex ``pattern``."""
    return sum(v for k, v in samples.items() if re.fullmatch(pattern, k))


def scraped_last_check(process: Process, namespace: str, name: str) -> float:
    """When an operator process last ended a check cycle of the cluster, whatever its outcome (unix time, 0 if never)."""
    pattern = rf'operator_k8s_last_check_timestamp_seconds\{{cluster="{name}",namespace="{namespace}"\}}'
    return metric_value(scrape_metrics(process), pattern)


def cycles_past(last_check: Callable[[], float], seconds: float, what: str, timeout: float = 60) -> None:
    """Wait until a check cycle of ``what`` ends ``seconds`` from now or later: the cycles in between have run.

    ``last_check`` reads the operator's last-check timestamp for the cluster. This is the condition tests mean by
    "a few more cycles", where a fixed sleep would hide a stalled timer.
    """
    moment = time.time() + seconds
    eventually(
        lambda: last_check() >= moment,
        what=f"a check cycle of {what} ending {seconds:g}s from now",
        timeout=timeout,
        interval=0.2,
    )


@dataclass(frozen=True)
class InProcessOperator:
    """The operator run by KopfRunner in this test process (tests/conftest.py), its telemetry read directly."""

    operator: Operator

    def last_check(self, namespace: str, name: str) -> float:
        """When the cluster's last check cycle ended, whatever its outcome (unix time, 0 if never)."""
        labels = {"namespace": namespace, "cluster": name}
        value = self.operator.telemetry.registry.get_sample_value("operator_k8s_last_check_timestamp_seconds", labels)
        return value or 0.0

    def checked_after(self, namespace: str, name: str, seconds: float) -> None:
        """Wait until a check cycle of the cluster ends ``seconds`` from now or later."""
        cycles_past(partial(self.last_check, namespace, name), seconds, f"MonitoredCluster {namespace}/{name}")


def health_url(process: Process) -> str:
    """An operator process's liveness endpoint (kopf's /healthz)."""
    assert process.env is not None
    return f"http://127.0.0.1:{process.env['OPERATOR_K8S_HEALTH_PORT']}/healthz"


def http_status(url: str, timeout: float = 5) -> int | str:
    """The HTTP status of a GET, or why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, urllib.error.URLError) as error:
        return type(error).__name__


class Poller:
    """Call ``probe`` every ``period`` seconds in a thread and keep (unix time, result) of every call."""

    def __init__(self, probe: Callable[[], Any], period: float = 1.0) -> None:
        self._probe = probe
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.results: list[tuple[float, Any]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append((time.time(), self._probe()))
            self._stop.wait(self._period)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _logged_at(record: dict[str, Any], read_at: float) -> float:
    """A JSON log record's own time (unix seconds), or when it was read if it has none that parses."""
    logged = record.get("time")
    try:
        return datetime.fromisoformat(logged).timestamp() if isinstance(logged, str) else read_at
    except ValueError:
        return read_at


class LogFollower:
    """Follow a JSON-lines log from its current end, each record with the unix time it was logged (the operator's
    own millisecond ``time``; the time it was read for a line without one)."""

    def __init__(self, path: Path, period: float = 0.1) -> None:
        self._path = path
        self._period = period
        self._offset = path.stat().st_size if path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.records: list[tuple[float, dict[str, Any]]] = []
        self._pending = b""

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self._period)
        self._read()  # what was logged before the follower stopped

    def _read(self) -> None:
        with self._path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        now = time.time()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.records.append((_logged_at(record, now), record))

    def __enter__(self) -> LogFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


STORE_LATENCY = {
    "name": "slow-stores",
    "query": 'sum by (pod) (rate(tikv_grpc_msg_duration_seconds_sum{{matchers},type="kv_get"}[5s])) / '
    'sum by (pod) (rate(tikv_grpc_msg_duration_seconds_count{{matchers},type="kv_get"}[5s])) * 1000',
    "comparator": ">",
    "threshold": 250,
}
"""A custom invariant over the simulator's latency series (the e2e tier's default)."""


def start_cluster(stack: Stack, namespace: str, name: str = "tikv", **spec: Any) -> None:
    """Three simulator stores labelled ``app=<name>`` and a MonitoredCluster for them, once it reports Healthy."""
    simulator(stack, "PUT", f"/clusters/{namespace}/{name}", {"stores": 3, "labels": {"app": name}})
    invariants = spec.pop("invariants", {"custom": [STORE_LATENCY]})
    body = monitored_cluster(name, namespace, stack, invariants=invariants, **spec)
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(body))
    eventually(lambda: condition_status(stack, namespace, name, "Healthy") == "True", what="Healthy=True", timeout=90)


OPEN_STATES = ("open", "diagnosed")
"""A ticket open and not yet a human's: a probable cause found (``diagnosed``) leaves it as open as before."""


def open_in_db(stack: Stack, namespace: str, invariant: str) -> list[dict[str, Any]]:
    """The open tickets of one invariant in a namespace, as Postgres holds them (diagnosed ones included)."""
    return [r for r in tickets_in_db(stack, namespace, invariant) if r["state"] in OPEN_STATES]


def report(test: str, **numbers: Any) -> None:
    """Print the measured numbers of a scenario (pytest -s shows them; a failing test shows them too)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
    print(f"\n[measured] {test}: {shown}", flush=True)
