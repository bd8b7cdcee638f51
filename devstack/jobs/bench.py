"""``make bench``: scale, cost and detection latency of operator-k8s on the real stack, beside Prometheus alerting.

Phases (each optional):

1. latency — for each built-in invariant, faults injected at recorded instants into ``--trials`` clusters; when the
   ticket opens (Postgres), when the condition turns False (API watch), when the equivalent Prometheus alerting rule
   fires, and when Alertmanager (default grouping) delivers it to a local webhook; the same for the heal.
2. scale — MonitoredClusters of 3 simulated stores each, all built-in invariants on, ramped through ``--sizes``,
   each step held for ``--hold`` intervals after warm-up. Per step: the operator's CPU and RSS (from /proc), cycle
   duration, timer lag, skipped intervals, and per-cycle Prometheus queries, Postgres round trips and Kubernetes
   requests by verb — from the operator's own counters, cross-checked with Prometheus', Postgres' and the API
   server's own statistics.
3. restart (at the step given by ``--restart-at``) — time from operator start to all timers scheduled, and the
   spread of first runs; before it, if asked (``--profile``, needs py-spy), a profile of 60 s of steady state.
4. evidence — the check cycle with evidence and diagnosis off, then on: ``--evidence-clusters`` clusters checked
   every ``--evidence-interval``, ``--evidence-faulty`` of them given a disk and a latency fault per run (tickets
   open, evidence is gathered, they heal); cycle p50/p99, CPU and evidence delay per run, side by side.

Beside the operator's CPU, each step reports the environment's own (simulator, Prometheus, Postgres, PgBouncer, the
API server, etcd, Alertmanager: their process trees, read from /proc), so a saturated machine shows as such.

Results are printed as tables and written as JSON with the machine's description.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process, free_port
from devstack.world.operator import operator_process
from devstack.world.stack import Stack

LATENCY_THRESHOLD_MS = 500
ENVIRONMENT = ("simulator", "prometheus", "postgres", "pgbouncer", "kube-apiserver", "etcd", "alertmanager")
"""The stack's processes whose own CPU a scale step reports beside the operator's: the environment is shown not to
be the bottleneck (or to be it)."""
DISK_THRESHOLD = 85
FAULTS = {
    "storesReady": ("down", None),
    "latency": ("latency", {"seconds": 0.8}),
    "diskUsage": ("disk", {"percent": 95}),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- plumbing ------------------------------------------------------------------------------------------------------


def http_json(method: str, url: str, body: Any = None, context: ssl.SSLContext | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60, context=context) as response:
        return json.loads(response.read() or b"null")


def http_text(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=30, context=context) as response:
        return str(response.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def total(samples: dict[str, float], pattern: str) -> float:
    regex = re.compile(pattern)
    return sum(v for k, v in samples.items() if regex.fullmatch(k))


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float:
    """The q-quantile of a Prometheus histogram's (cumulative, already differenced) buckets, interpolated."""
    edges = sorted(buckets)
    count = buckets[edges[-1]] if edges else 0
    if count <= 0:
        return float("nan")
    rank = q * count
    previous_edge, previous_count = 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if edge == float("inf"):
                return previous_edge
            span = buckets[edge] - previous_count
            return previous_edge + (edge - previous_edge) * ((rank - previous_count) / span if span else 1)
        previous_edge, previous_count = edge, buckets[edge]
    return previous_edge


def histogram(before: dict[str, float], after: dict[str, float], name: str) -> dict[float, float]:
    result = {}
    for key, value in after.items():
        match = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if match:
            result[float(match.group(1))] = value - before.get(key, 0.0)
    return result


def _at_least(probe: Callable[[], float], target: float) -> bool:
    return probe() >= target


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


SIGNING_KEY = "whsec_" + "YmVuY2gtc2lnbmluZy1rZXktb3BlcmF0b3ItazhzLTA="
"""The key the bench's operator signs its webhooks with (a test value, not a secret)."""
OPERATOR_ALERT = "OperatorK8sTicket"


class Webhook:
    """A local receiver that records when each alert was first delivered firing/resolved: at ``/alerts`` from
    Alertmanager (the rules' alerts and the operator's, told apart by ``alertname``), at ``/hook`` the operator's
    signed webhooks (each signature verified). Keys are (invariant, namespace, store pod)."""

    def __init__(self) -> None:
        self.firing: dict[tuple[str, str, str], float] = {}
        self.resolved: dict[tuple[str, str, str], float] = {}
        self.operator_firing: dict[tuple[str, str, str], float] = {}
        self.operator_resolved: dict[tuple[str, str, str], float] = {}
        self.hook_firing: dict[tuple[str, str, str], float] = {}
        self.hook_resolved: dict[tuple[str, str, str], float] = {}
        self.unverified = 0
        verifier = StandardWebhook(SIGNING_KEY)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.time()
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/hook":
                    try:
                        payload = verifier.verify(raw, dict(self.headers))
                    except WebhookVerificationError:
                        receiver.unverified += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                    ticket = payload["ticket"]
                    key = (ticket["invariant"], ticket["namespace"], ticket["store"])
                    target = receiver.hook_resolved if payload["status"] == "resolved" else receiver.hook_firing
                    target.setdefault(key, arrived)
                for alert in json.loads(raw).get("alerts", []) if self.path != "/hook" else []:
                    labels = alert["labels"]
                    ours = labels.get("alertname") == OPERATOR_ALERT
                    key = (labels.get("invariant", ""), labels.get("namespace", ""),
                           labels.get("store" if ours else "pod", ""))  # fmt: skip
                    if ours:
                        target = (
                            receiver.operator_resolved if alert["status"] == "resolved" else receiver.operator_firing
                        )
                    else:
                        target = receiver.resolved if alert["status"] == "resolved" else receiver.firing
                    target.setdefault(key, arrived)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url, self.hook_url = f"{base}/alerts", f"{base}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notifications(self, directory: Path, namespace: str, alertmanager: str) -> Path:
        """The operator's notifications file: Alertmanager (the rules' route) and this signed webhook."""
        key = directory / "bench-signing-key"
        key.write_text(SIGNING_KEY)
        path = directory / "bench-notifications.json"
        path.write_text(json.dumps({
            "receivers": [
                {"name": "alertmanager", "alertmanager": {"urls": [alertmanager]}},
                {"name": "webhook", "webhook": {"url": self.hook_url, "keyFiles": [str(key)]}},
            ],
            "routes": [{"receivers": ["alertmanager", "webhook"], "namespaces": [namespace]}],
        }))  # fmt: skip
        return path

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Bench:
    stack: Stack
    args: argparse.Namespace
    results: dict[str, Any] = field(default_factory=dict)
    operator: Process | None = None
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))

    # -- helpers ---------------------------------------------------------------------------------------------------

    @property
    def api_context(self) -> ssl.SSLContext:
        assert self.stack.pki is not None
        context = ssl.create_default_context(cafile=str(self.stack.pki.ca_cert))
        context.load_cert_chain(str(self.stack.pki.admin_cert), str(self.stack.pki.admin_key))
        return context

    def simulate(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(method, self.stack.simulator_url + path, body)

    def apply(self, objects: list[dict[str, Any]]) -> None:
        for start in range(0, len(objects), 250):
            chunk = {"apiVersion": "v1", "kind": "List", "items": objects[start : start + 250]}
            self.stack.kubectl("apply", "-f", "-", input_text=json.dumps(chunk))

    def cluster(self, name: str, namespace: str, interval: str) -> dict[str, Any]:
        return {
            "apiVersion": "operator-k8s.io/v1alpha1",
            "kind": "MonitoredCluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "interval": interval,
                "stores": {"selector": {"matchLabels": {"cluster": name}}, "expected": 3},
                "prometheus": {"url": self.stack.prometheus_url, "timeout": "5s", "rateWindow": self.args.rate_window},
                "invariants": {
                    "latency": {"thresholdMs": LATENCY_THRESHOLD_MS},
                    "diskUsage": {"thresholdPercent": DISK_THRESHOLD},
                },
            },
        }

    def create_clusters(self, namespace: str, names: list[str], interval: str) -> None:
        if self.stack.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            self.stack.kubectl("create", "namespace", namespace)
        started = time.monotonic()
        list(
            self.pool.map(
                lambda n: self.simulate("PUT", f"/clusters/{namespace}/{n}", {"stores": 3, "labels": {"cluster": n}}),
                names,
            )
        )
        self.apply([self.cluster(n, namespace, interval) for n in names])
        log(
            f"Created {len(names)} MonitoredClusters and {3 * len(names)} store pods in {time.monotonic() - started:.0f}s"
        )

    def start_operator(
        self,
        name: str,
        profile: Path | None = None,
        tick: float | None = None,
        notifications: Path | None = None,
        evidence: str = "true",
    ) -> Process:
        env = {
            "OPERATOR_K8S_TICK_SECONDS": str(tick or self.args.tick),
            "OPERATOR_K8S_LOG_LEVEL": self.args.operator_log_level,
            "OPERATOR_K8S_PROMETHEUS_QUERY_THREADS": "64",  # as the chart sets it
            "OPERATOR_K8S_DB_POOL_SIZE": "4",
            "OPERATOR_K8S_NOTIFICATIONS_FILE": str(notifications or ""),
            "OPERATOR_K8S_EVIDENCE": evidence,
        }
        process = operator_process(self.stack, f"{name}.log", kubeconfig=None, **env)
        if profile is not None:
            process.stop()
            process.argv = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(profile),
                "-m",
                "operator_k8s",
                "--kubeconfig",
                str(self.stack.kubeconfig),
            ]
            process.start()
        self.operator = process
        return process

    def operator_metrics(self) -> dict[str, float]:
        assert self.operator is not None
        assert self.operator.env is not None
        return parse_metrics(http_text(f"http://127.0.0.1:{self.operator.env['OPERATOR_K8S_METRICS_PORT']}/metrics"))

    def operator_cpu_seconds(self) -> float:
        assert self.operator is not None
        return self.operator.cpu_seconds()

    def operator_rss_mib(self) -> float:
        assert self.operator is not None
        for line in Path(f"/proc/{self.operator.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def apiserver_requests(self) -> dict[tuple[str, str], float]:
        text = http_text(f"{self.stack.apiserver_url}/metrics", self.api_context)
        counts: dict[tuple[str, str], float] = {}
        for key, value in parse_metrics(text).items():
            if key.startswith("apiserver_request_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
                if labels.get("resource") in ("pods", "monitoredclusters", "tickets", "events"):
                    verb = labels["verb"] + ("/status" if labels.get("subresource") == "status" else "")
                    index = (verb, labels["resource"])
                    counts[index] = counts.get(index, 0.0) + value
        return counts

    def prometheus_queries(self) -> float:
        return total(
            parse_metrics(http_text(f"{self.stack.prometheus_url}/metrics")),
            r'prometheus_http_requests_total\{.*handler="/api/v1/query".*\}',
        )

    def postgres_transactions(self) -> float:
        async def fetch() -> float:
            connection = await asyncpg.connect(self.stack.postgres_dsn)
            try:
                await connection.execute("SELECT pg_stat_clear_snapshot()")
                return float(
                    await connection.fetchval(
                        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                    )
                )
            finally:
                await connection.close()

        return asyncio.run(fetch())

    def wait_for(self, what: str, probe: Callable[[], bool], timeout: float) -> float:
        started = time.monotonic()
        while not probe():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"Timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)
        return time.monotonic() - started

    # -- phase 1: detection and resolution latency, side by side -----------------------------------------------------

    def latency_phase(self, webhook: Webhook) -> None:
        namespace, trials, interval = "bench-latency", self.args.trials, f"{self.args.check_interval}s"
        names = [f"lat-{i}" for i in range(trials)]
        self.create_clusters(namespace, names, interval)
        notifications = webhook.notifications(self.stack.workdir, namespace, self.stack.alertmanager_url)
        operator = self.start_operator("operator-latency", tick=1.0, notifications=notifications)
        self.wait_for("every latency cluster to be Healthy", lambda: self._all_healthy(namespace, names), 180)
        stores = {"storesReady": 0, "latency": 1, "diskUsage": 2}
        injected: dict[tuple[str, str], float] = {}
        watcher = ConditionWatcher(self.stack, namespace)
        log(f"Injecting {3 * trials} faults ({trials} trials of each built-in invariant)")
        for name in names:
            for invariant, (kind, body) in FAULTS.items():
                pod = f"{name}-{stores[invariant]}"
                injected[(invariant, pod)] = self.simulate(
                    "PUT", f"/clusters/{namespace}/{name}/stores/{pod}/faults/{kind}", body
                )["at"]
        opened = self._wait_tickets(namespace, injected, state="open")
        self.wait_for("Alertmanager to deliver every alert", lambda: len(webhook.firing) >= len(injected), 180)
        self.wait_for(
            "the operator's notices to arrive through Alertmanager and the webhook",
            lambda: min(len(webhook.operator_firing), len(webhook.hook_firing)) >= len(injected), 180,
        )  # fmt: skip
        prom_fired = self._prometheus_alert_times()
        log("Healing every fault")
        healed: dict[tuple[str, str], float] = {}
        for invariant, pod in injected:
            kind = FAULTS[invariant][0]
            cluster = pod.rsplit("-", 1)[0]
            healed[(invariant, pod)] = self.simulate(
                "DELETE", f"/clusters/{namespace}/{cluster}/stores/{pod}/faults/{kind}"
            )["at"]
        resolved = self._wait_tickets(namespace, healed, state="resolved")
        prom_cleared = self._wait_prometheus_cleared(healed)
        self.wait_for(
            "Alertmanager to deliver every resolution (group_interval 5m)",
            lambda: (
                min(len(webhook.resolved), len(webhook.operator_resolved), len(webhook.hook_resolved)) >= len(healed)
            ),
            420,
        )
        watcher.stop()
        rows = {}
        for invariant in FAULTS:
            keys = [k for k in injected if k[0] == invariant]
            detect = self._delays(keys, injected, opened, watcher.first_false, prom_fired, namespace,
                                  webhook.firing, webhook.operator_firing, webhook.hook_firing)  # fmt: skip
            resolve = self._delays(keys, healed, resolved, watcher.first_true, prom_cleared, namespace,
                                   webhook.resolved, webhook.operator_resolved, webhook.hook_resolved)  # fmt: skip
            rows[invariant] = {
                "detection": {
                    system: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)} for system, v in detect.items()
                },
                "resolution": {
                    system: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)} for system, v in resolve.items()
                },
            }
        detections = {k: self._delays(list(injected), injected, opened, watcher.first_false, prom_fired, namespace,
                                      webhook.firing, webhook.operator_firing, webhook.hook_firing)[k]
                      for k in ("alertmanager", "operator_alertmanager", "operator_webhook")}  # fmt: skip
        budget = float(self.args.scrape_interval.rstrip("s")) + self.args.check_interval + 2
        self.results["latency"] = {
            "trials": trials,
            "check_interval_s": self.args.check_interval,
            "scrape_interval": self.args.scrape_interval,
            "budget_s": budget,
            "invariants": rows,
            "to_receiver": {
                system: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)} for system, v in detections.items()
            },
            "unverified_webhooks": webhook.unverified,
        }
        operator.stop()
        self.stack.processes.remove(operator)
        # Their finalizers need an operator; without one, take them off so the scale phase measures only its own.
        self.stack.kubectl(
            "patch", "mc", *names, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
        )
        self.stack.kubectl("delete", "mc", "--all", "-n", namespace, "--wait=true", "--timeout=60s")

    @staticmethod
    def _delays(
        keys: list[tuple[str, str]],
        started: dict[tuple[str, str], float],
        tickets: dict[tuple[str, str], float],
        condition: Callable[[str, str, float], float],
        rule: dict[tuple[str, str], float],
        namespace: str,
        delivered: dict[tuple[str, str, str], float],
        operator_delivered: dict[tuple[str, str, str], float],
        hook_delivered: dict[tuple[str, str, str], float],
    ) -> dict[str, list[float]]:
        """Seconds from each fault (or heal) to what each system did about it: the rule's alert and the operator's
        through the same Alertmanager and route to the same receiver, and the operator's signed webhook."""
        return {
            "operator_ticket": [tickets[k] - started[k] for k in keys],
            "operator_condition": [condition(k[1].rsplit("-", 1)[0], k[0], started[k]) - started[k] for k in keys],
            "prometheus_rule": [rule[k] - started[k] for k in keys],
            "alertmanager": [delivered[(k[0], namespace, k[1])] - started[k] for k in keys],
            "operator_alertmanager": [operator_delivered[(k[0], namespace, k[1])] - started[k] for k in keys],
            "operator_webhook": [hook_delivered[(k[0], namespace, k[1])] - started[k] for k in keys],
        }

    def _all_healthy(self, namespace: str, names: list[str]) -> bool:
        items = json.loads(self.stack.kubectl("get", "mc", "-n", namespace, "-o", "json").stdout)["items"]
        healthy = {
            i["metadata"]["name"]
            for i in items
            for c in (i.get("status") or {}).get("conditions") or []
            if c["type"] == "Healthy" and c["status"] == "True"
        }
        return healthy >= set(names)

    def _wait_tickets(
        self, namespace: str, expected: dict[tuple[str, str], float], state: str
    ) -> dict[tuple[str, str], float]:
        """When each (invariant, store) ticket reached ``state``, by the operator's own Postgres timestamps."""
        column = "opened_at" if state == "open" else "resolved_at"

        async def fetch() -> dict[tuple[str, str], float]:
            connection = await asyncpg.connect(self.stack.postgres_dsn)
            try:
                rows = await connection.fetch(
                    f"SELECT invariant, store, max({column}) AS at FROM tickets WHERE namespace = $1 AND {column} IS NOT NULL"
                    " GROUP BY invariant, store",
                    namespace,
                )
            finally:
                await connection.close()
            return {(r["invariant"], r["store"]): r["at"].timestamp() for r in rows}

        found: dict[tuple[str, str], float] = {}

        def done() -> bool:
            nonlocal found
            found = asyncio.run(fetch())
            return all(k in found and found[k] >= expected[k] - 1 for k in expected)

        self.wait_for(f"every ticket to be {state}", done, 180)
        return found

    def _prometheus_alert_times(self) -> dict[tuple[str, str], float]:
        alerts = http_json("GET", f"{self.stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        times = {}
        for alert in alerts:
            labels = alert["labels"]
            active = alert["activeAt"].replace("Z", "+00:00")
            times[(labels["invariant"], labels["pod"])] = datetime.fromisoformat(active).timestamp()
        return times

    def _wait_prometheus_cleared(self, healed: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
        cleared: dict[tuple[str, str], float] = {}
        deadline = time.monotonic() + 180
        while len(cleared) < len(healed) and time.monotonic() < deadline:
            firing = {
                (a["labels"]["invariant"], a["labels"]["pod"])
                for a in http_json("GET", f"{self.stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
            }
            now = time.time()
            for key in healed:
                if key not in firing:
                    cleared.setdefault(key, now)
            time.sleep(0.25)
        return cleared

    # -- phase 2: scale ramp ------------------------------------------------------------------------------------------

    def scale_phase(self) -> None:
        interval = self.args.interval
        namespace = "bench-scale"
        created = 0
        steps: list[dict[str, Any]] = []
        self.results["scale"] = steps  # filled step by step, so a later failure keeps what was measured
        operator = self.start_operator("operator-scale")
        for size in self.args.sizes:
            names = [f"c{i:05d}" for i in range(created, size)]
            self.create_clusters(namespace, names, f"{interval}s")
            created = size
            log(f"Step {size}: warming up until every cluster has a timer and has been checked once")
            self.wait_for(f"{size} timers", partial(_at_least, self._scheduled, size), 4 * interval + 300)
            time.sleep(interval + self.args.tick)
            steps.append(self.measure(size, interval))
            if size == self.args.restart_at:
                if self.args.profile:
                    self.results["profile"] = self.profile(operator, size)
                operator.stop()
                self.stack.processes.remove(operator)
                self.results["restart"] = self.restart(size, interval)
                if size == self.args.sizes[-1]:
                    return
                operator = self.start_operator("operator-scale-after")
                self.wait_for("the operator to be back", partial(_at_least, self._cycles, size), 4 * interval + 300)
        operator.stop()

    def _cycles(self) -> float:
        try:
            return total(self.operator_metrics(), r"operator_k8s_check_cycles_total\{.*\}")
        except OSError:
            return 0.0

    def _scheduled(self) -> float:
        try:
            return total(self.operator_metrics(), "operator_k8s_scheduled_clusters")
        except OSError:
            return 0.0

    def environment_cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each process of the environment has used (``ENVIRONMENT``, those this stack runs)."""
        running = {p.name: p for p in self.stack.processes}
        return {name: running[name].cpu_seconds() for name in ENVIRONMENT if name in running}

    def _snapshot(
        self,
    ) -> tuple[dict[str, float], float, float, dict[tuple[str, str], float], float, float, dict[str, float]]:
        """Every counter a step compares: operator metrics, its CPU seconds, the time, API server, Prometheus and
        Postgres statistics, and the environment's CPU seconds."""
        return (
            self.operator_metrics(),
            self.operator_cpu_seconds(),
            time.monotonic(),
            self.apiserver_requests(),
            self.prometheus_queries(),
            self.postgres_transactions(),
            self.environment_cpu_seconds(),
        )

    def measure(self, size: int, interval: int) -> dict[str, Any]:
        hold = self.args.hold * interval
        log(f"Step {size}: measuring for {hold}s ({self.args.hold} intervals of {interval}s)")
        before = self._snapshot()
        time.sleep(hold)
        after = self._snapshot()
        m0, m1 = before[0], after[0]

        def delta(pattern: str) -> float:
            return total(m1, pattern) - total(m0, pattern)

        cycles = delta(r"operator_k8s_check_cycles_total\{.*\}")
        durations = histogram(m0, m1, "operator_k8s_check_duration_seconds")
        lags = histogram(m0, m1, "operator_k8s_check_start_lag_seconds")
        queries = histogram(m0, m1, "operator_k8s_prometheus_query_duration_seconds")
        round_trips = histogram(m0, m1, "operator_k8s_postgres_round_trip_seconds")
        verbs = {
            v: delta(rf'operator_k8s_kubernetes_requests_total\{{verb="{v}"\}}') for v in ("create", "patch", "delete")
        }
        api = {
            f"{verb} {resource}": after[3].get((verb, resource), 0) - before[3].get((verb, resource), 0)
            for verb, resource in set(after[3]) | set(before[3])
        }
        api = {k: v for k, v in sorted(api.items()) if v}

        def per_cycle(value: float) -> float:
            return value / cycles if cycles else float("nan")

        step = {
            "clusters": size,
            "stores": 3 * size,
            "cycles": cycles,
            "cycles_expected": size * hold / interval,
            "cpu_cores": (after[1] - before[1]) / (after[2] - before[2]),
            "environment_cpu_cores": {
                name: (after[6][name] - before[6].get(name, 0.0)) / (after[2] - before[2]) for name in after[6]
            },
            "rss_mib": self.operator_rss_mib(),
            "cycle_p50_ms": 1000 * quantile_from_buckets(durations, 0.5),
            "cycle_p99_ms": 1000 * quantile_from_buckets(durations, 0.99),
            "start_lag_p99_ms": 1000 * quantile_from_buckets(lags, 0.99),
            "prometheus_query_p50_p99_ms": [1000 * quantile_from_buckets(queries, q) for q in (0.5, 0.99)],
            "postgres_round_trip_p50_p99_ms": [1000 * quantile_from_buckets(round_trips, q) for q in (0.5, 0.99)],
            "machine_load_1m": os.getloadavg()[0],
            "skipped_intervals": delta(r"operator_k8s_skipped_intervals_total"),
            "prometheus_queries_per_cycle": per_cycle(delta(r"operator_k8s_prometheus_query_duration_seconds_count")),
            "prometheus_queries_per_cycle_by_prometheus": per_cycle(after[4] - before[4]),
            "postgres_round_trips_per_cycle": per_cycle(delta(r"operator_k8s_postgres_round_trip_seconds_count")),
            "postgres_transactions_per_cycle_by_postgres": per_cycle(after[5] - before[5]),
            "status_patches_per_cycle": per_cycle(delta(r"operator_k8s_status_writes_total")),
            "heartbeat_patches_per_cycle_expected": min(1.0, interval / 60),
            "operator_k8s_writes_per_cycle": {verb: per_cycle(count) for verb, count in verbs.items()},
            "apiserver_requests_per_cycle": {k: per_cycle(v) for k, v in api.items()},
            "pod_lists": api.get("LIST pods", 0),
        }
        log(f"Step {size}: {json.dumps({k: v for k, v in step.items() if not isinstance(v, dict)}, default=str)}")
        return step

    # -- phase 3: restart and profile -------------------------------------------------------------------------------

    def restart(self, size: int, interval: int) -> dict[str, Any]:
        log(f"Restart at {size} clusters")
        started = time.monotonic()
        self.start_operator("operator-restart")
        scheduled_at = None
        first_runs: list[float] = []
        last = 0.0
        while time.monotonic() - started < 4 * interval + 120:
            try:
                metrics = self.operator_metrics()
            except OSError:
                time.sleep(0.2)
                continue
            now = time.monotonic() - started
            if scheduled_at is None and total(metrics, "operator_k8s_scheduled_clusters") >= size:
                scheduled_at = now
            cycles = total(metrics, r"operator_k8s_check_cycles_total\{.*\}")
            if cycles > last:
                first_runs.append(now)
                last = cycles
            if cycles >= size and scheduled_at is not None:
                break
            time.sleep(0.2)
        assert self.operator is not None
        self.operator.stop()
        self.stack.processes.remove(self.operator)
        return {
            "clusters": size,
            "all_timers_scheduled_s": scheduled_at,
            "first_run_s": first_runs[0] if first_runs else None,
            "all_first_runs_done_s": first_runs[-1] if first_runs else None,
            "first_run_spread_s": (first_runs[-1] - first_runs[0]) if first_runs else None,
        }

    def profile(self, operator: Process, size: int, seconds: int = 60) -> dict[str, Any]:
        """Sample the running operator with py-spy (low overhead, all threads) during steady state."""
        path = self.stack.workdir / "operator.pyspy"
        log(f"Profiling {seconds}s of steady state at {size} clusters with py-spy")
        spy = Path(sys.executable).with_name("py-spy")
        subprocess.run(
            [
                str(spy),
                "record",
                "--pid",
                str(operator.pid),
                "--duration",
                str(seconds),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(path),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
        )
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        samples = 0
        for line in path.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [_frame(f) for f in stack_text.split(";")]
            samples += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count

        def top(table: dict[str, int], keep: Callable[[str], bool], n: int) -> list[dict[str, Any]]:
            rows = sorted(((k, v) for k, v in table.items() if keep(k)), key=lambda kv: kv[1], reverse=True)[:n]
            return [{"function": k, "share": round(v / samples, 4)} for k, v in rows]

        idle = ("select", "poll", "wait", "_worker", "sleep", "acquire")
        return {
            "clusters": size,
            "seconds": seconds,
            "samples": samples,
            "top_own": top(own, lambda f: not any(word in f for word in idle), 12),
            "top_inclusive_operator_k8s": top(inclusive, lambda f: "operator_k8s/" in f, 10),
            "top_inclusive_kopf": top(inclusive, lambda f: "kopf/" in f, 10),
        }

    # -- phase 4: evidence on and off -------------------------------------------------------------------------------

    def evidence_phase(self) -> None:
        """The check cycle with evidence off and on, alternated ``--evidence-rounds`` times over the same clusters
        and the same faults (alternation spreads whatever else the machine does over both): each run opens and heals
        tickets on a share of the clusters (evidence is gathered as they open) while every cluster is checked. Each
        run faults its own clusters, so no ticket reopens; every run checks all of them."""
        namespace, interval = "bench-evidence", self.args.evidence_interval
        size, faulty = self.args.evidence_clusters, self.args.evidence_faulty
        names = [f"ev{i:04d}" for i in range(size)]
        self.create_clusters(namespace, names, f"{interval}s")
        runs: list[dict[str, Any]] = []
        merged: dict[str, dict[float, float]] = {}
        self.results["evidence"] = {
            "clusters": size, "faulty_per_run": faulty, "interval_s": interval, "runs": runs, "by_mode": {},
        }  # fmt: skip
        modes = [mode for _ in range(self.args.evidence_rounds) for mode in ("false", "true")]
        for run, evidence in enumerate(modes):
            chosen = names[run * faulty : (run + 1) * faulty]
            operator = self.start_operator(f"operator-evidence-{run}-{evidence}", tick=1.0, evidence=evidence)
            self.wait_for("every evidence cluster to be Healthy", lambda: self._all_healthy(namespace, names), 300)
            time.sleep(interval)  # one whole interval of steady state before the window opens
            before = self._snapshot()
            injected: dict[tuple[str, str], float] = {}
            for name in chosen:
                for invariant, store in (("diskUsage", 2), ("latency", 1)):
                    kind, body = FAULTS[invariant]
                    pod = f"{name}-{store}"
                    injected[(invariant, pod)] = self.simulate(
                        "PUT", f"/clusters/{namespace}/{name}/stores/{pod}/faults/{kind}", body
                    )["at"]
            opened = self._wait_tickets(namespace, injected, state="open")
            healed = {
                key: self.simulate(
                    "DELETE",
                    f"/clusters/{namespace}/{key[1].rsplit('-', 1)[0]}/stores/{key[1]}/faults/{FAULTS[key[0]][0]}",
                )["at"]
                for key in injected
            }
            self._wait_tickets(namespace, healed, state="resolved")
            after = self._snapshot()
            durations = histogram(before[0], after[0], "operator_k8s_check_duration_seconds")
            mode = merged.setdefault(evidence, {})
            for bound, count in durations.items():
                mode[bound] = mode.get(bound, 0.0) + count
            gathered = self._evidence_seconds(namespace, set(injected))
            seconds = after[2] - before[2]
            runs.append({
                "evidence": evidence == "true",
                "tickets": len(injected),
                "seconds": seconds,
                "cycles": total(after[0], r"operator_k8s_check_cycles_total\{.*\}")
                - total(before[0], r"operator_k8s_check_cycles_total\{.*\}"),
                "cycle_p50_ms": 1000 * quantile_from_buckets(durations, 0.5),
                "cycle_p99_ms": 1000 * quantile_from_buckets(durations, 0.99),
                "cpu_cores": (after[1] - before[1]) / seconds,
                "environment_cpu_cores": {k: (v - before[6].get(k, 0.0)) / seconds for k, v in after[6].items()},
                "machine_load_1m": os.getloadavg()[0],
                "skipped_intervals": total(after[0], "operator_k8s_skipped_intervals_total")
                - total(before[0], "operator_k8s_skipped_intervals_total"),
                "opened_after_fault_p50_s": percentile([opened[k] - injected[k] for k in injected], 0.5),
                "evidence_gathered": len(gathered),
                "evidence_after_opening_p95_s": percentile(gathered, 0.95) if gathered else None,
            })  # fmt: skip
            log(f"Evidence {evidence}: {json.dumps(runs[-1])}")
            operator.stop()
            self.stack.processes.remove(operator)
        self.results["evidence"]["by_mode"] = {
            mode: {"cycle_p50_ms": 1000 * quantile_from_buckets(buckets, 0.5),
                   "cycle_p99_ms": 1000 * quantile_from_buckets(buckets, 0.99)}
            for mode, buckets in merged.items()
        }  # fmt: skip

    def _evidence_seconds(self, namespace: str, keys: set[tuple[str, str]]) -> list[float]:
        """Seconds from each ticket's opening to its stored evidence (the operator's own Postgres timestamps)."""

        async def fetch() -> list[float]:
            connection = await asyncpg.connect(self.stack.postgres_dsn)
            try:
                rows = await connection.fetch(
                    "SELECT t.invariant, t.store, extract(epoch FROM e.gathered_at - t.opened_at) AS seconds"
                    " FROM tickets t JOIN ticket_evidence e ON e.ticket_id = t.id WHERE t.namespace = $1",
                    namespace,
                )
            finally:
                await connection.close()
            return [float(r["seconds"]) for r in rows if (r["invariant"], r["store"]) in keys]

        return asyncio.run(fetch())


def _frame(text: str) -> str:
    """``function (/…/site-packages/kopf/x/y.py:123)`` shortened to ``function (kopf/x/y.py)``."""
    match = re.match(r"(.*) \((.*):\d+\)$", text)
    if not match:
        return text
    function, path = match.groups()
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "operator_k8s/" in path:
        path = "operator_k8s/" + path.split("operator_k8s/", 1)[1]
    elif path.startswith("/"):
        path = "/".join(Path(path).parts[-2:])
    return f"{function} ({path})"


class ConditionWatcher:
    """Records when each cluster's invariant condition changed status, from a kubectl watch of MonitoredClusters."""

    TYPES: ClassVar[dict[str, str]] = {
        "storesReady": "StoresReady",
        "latency": "LatencyWithinBudget",
        "diskUsage": "DiskSpaceAvailable",
    }

    def __init__(self, stack: Stack, namespace: str) -> None:
        self.changes: list[tuple[float, str, str, str]] = []
        self.process = subprocess.Popen(
            [
                str(stack.binaries.kubectl),
                "--kubeconfig",
                str(stack.kubeconfig),
                "get",
                "mc",
                "-n",
                namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """kubectl prints one watch event per line, as compact JSON."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            arrived = time.time()
            try:
                body = json.loads(line).get("object", {})
            except json.JSONDecodeError:
                continue
            for item in (body.get("status") or {}).get("conditions") or []:
                self.changes.append((arrived, body["metadata"]["name"], item["type"], item["status"]))

    def _first(self, cluster: str, invariant: str, since: float, status: str) -> float:
        ctype = self.TYPES[invariant]
        return min(
            (
                t
                for t, name, kind, s in self.changes
                if name == cluster and kind == ctype and s == status and t >= since
            ),
            default=float("nan"),
        )

    def first_false(self, cluster: str, invariant: str, since: float) -> float:
        return self._first(cluster, invariant, since, "False")

    def first_true(self, cluster: str, invariant: str, since: float) -> float:
        return self._first(cluster, invariant, since, "True")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def alert_rules(rate_window: str) -> list[dict[str, Any]]:
    """Prometheus alerting rules with the same expressions and thresholds as the operator's invariants (for: 0)."""
    ns = 'namespace="bench-latency"'
    latency = (
        f"histogram_quantile(0.99, sum by (le, namespace, pod) "
        f"(rate(tikv_grpc_msg_duration_seconds_bucket{{{ns}}}[{rate_window}]))) * 1000 > {LATENCY_THRESHOLD_MS}"
    )
    disk = (
        f'sum by (namespace, pod) (tikv_store_size_bytes{{type="used",{ns}}}) / '
        f'sum by (namespace, pod) (tikv_store_size_bytes{{type="capacity",{ns}}}) * 100 > {DISK_THRESHOLD}'
    )
    ready = f'kube_pod_status_ready{{condition="true",{ns}}} == 0'
    return [
        {"alert": "StoreNotReady", "expr": ready, "labels": {"invariant": "storesReady"}},
        {"alert": "StoreLatencyHigh", "expr": latency, "labels": {"invariant": "latency"}},
        {"alert": "StoreDiskFull", "expr": disk, "labels": {"invariant": "diskUsage"}},
    ]


def machine() -> dict[str, Any]:
    memory = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(int(memory.split()[1]) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cell(cell: dict[str, float]) -> str:
    return f"{cell['p50']:.1f} / {cell['p99']:.1f}"


LATENCY_SYSTEMS = (
    "operator_ticket", "operator_condition", "prometheus_rule", "alertmanager", "operator_alertmanager",
    "operator_webhook",
)  # fmt: skip
LATENCY_SYSTEM_NAMES = {
    "alertmanager": "Prometheus rule → Alertmanager",
    "operator_alertmanager": "operator → Alertmanager",
    "operator_webhook": "operator → signed webhook",
}


def _evidence_report(ev: dict[str, Any]) -> list[str]:
    """The evidence phase's table: each run, then every run of a mode together."""
    if not ev.get("runs"):
        return []
    lines = [
        "",
        f"Evidence off and on, alternated ({ev['clusters']} clusters checked every {ev['interval_s']}s; each run "
        f"gives {ev['faulty_per_run']} of them a disk and a latency fault, which open and heal)",
        "",
        "evidence | tickets | cycle p50/p99 ms | cpu cores | load 1m | skipped | evidence after opening p95 s",
    ]
    for run in ev["runs"]:
        p95 = run["evidence_after_opening_p95_s"]
        lines.append(
            f"{'on' if run['evidence'] else 'off'} | {run['tickets']} | {run['cycle_p50_ms']:.1f} / "
            f"{run['cycle_p99_ms']:.1f} | {run['cpu_cores']:.2f} | {run['machine_load_1m']:.1f} | "
            f"{run['skipped_intervals']:.0f} | "
            + ("—" if p95 is None else f"{p95:.2f} ({run['evidence_gathered']} gathered)")
        )
    for mode, cell in ev.get("by_mode", {}).items():
        lines.append(
            f"all runs with evidence {'on' if mode == 'true' else 'off'}: cycle p50 / p99 "
            f"{cell['cycle_p50_ms']:.1f} / {cell['cycle_p99_ms']:.1f} ms"
        )
    return lines


def report(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), "
        f"{results['machine']['memory_gib']} GiB, Python {results['machine']['python']}"
    ]
    if "latency" in results:
        lat = results["latency"]
        lines += [
            "",
            f"Detection and resolution latency, seconds (p50 / p99 over {lat['trials']} trials; check interval "
            f"{lat['check_interval_s']}s, scrape {lat['scrape_interval']}, budget {lat['budget_s']:.0f}s)",
            "",
        ]
        lines.append(
            f"{'invariant':<12}{'phase':<11}{'ticket':>14}{'condition':>14}{'prom rule':>14}{'rule → AM':>14}"
            f"{'ours → AM':>14}{'ours webhook':>14}"
        )
        for invariant, row in lat["invariants"].items():
            for phase in ("detection", "resolution"):
                cells = row[phase]
                lines.append(
                    f"{invariant:<12}{phase:<11}"
                    + "".join(f"{_cell(cells[system]):>14}" for system in LATENCY_SYSTEMS if system in cells)
                )
        lines += [
            "",
            "Fault to the people on call (every invariant's trials together), seconds p50 / p99: the rule and the "
            "operator through the same Alertmanager and route (default grouping), and the operator's signed webhook",
        ]
        for system in ("alertmanager", "operator_alertmanager", "operator_webhook"):
            values = lat.get("to_receiver", {}).get(system)
            if values:
                lines.append(f"  {LATENCY_SYSTEM_NAMES[system]:<28}{_cell(values):>14}")
    if "scale" in results:
        lines += [
            "",
            "Scale (interval 30s unless stated; per-cycle figures from the operator, [their own counters])",
            "",
        ]
        header = [
            "clusters",
            "cpu cores",
            "RSS MiB",
            "cycle p50/p99 ms",
            "lag p99 ms",
            "skipped",
            "PQ/cycle",
            "PG/cycle",
            "status PATCH/cycle",
            "pod LISTs",
        ]
        lines.append(" | ".join(header))
        for step in results["scale"]:
            lines.append(
                " | ".join(
                    [
                        str(step["clusters"]),
                        f"{step['cpu_cores']:.2f}",
                        f"{step['rss_mib']:.0f}",
                        f"{step['cycle_p50_ms']:.1f} / {step['cycle_p99_ms']:.1f}",
                        f"{step['start_lag_p99_ms']:.0f}",
                        f"{step['skipped_intervals']:.0f}",
                        f"{step['prometheus_queries_per_cycle']:.2f} [{step['prometheus_queries_per_cycle_by_prometheus']:.2f}]",
                        f"{step['postgres_round_trips_per_cycle']:.2f} [{step['postgres_transactions_per_cycle_by_postgres']:.2f}]",
                        f"{step['status_patches_per_cycle']:.2f} (heartbeat {step['heartbeat_patches_per_cycle_expected']:.2f})",
                        f"{step['pod_lists']:.0f}",
                    ]
                )
            )
            lines.append(
                f"    CPU cores beside the operator's {step['cpu_cores']:.2f}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in step.get("environment_cpu_cores", {}).items())
                + f"; machine load (1 min) {step['machine_load_1m']:.1f} on {os.cpu_count()} CPUs"
            )
            lines.append(
                "    API server requests per cycle: "
                + ", ".join(f"{k} {v:.3f}" for k, v in step["apiserver_requests_per_cycle"].items())
            )
    lines += _evidence_report(results.get("evidence", {}))
    if results.get("restart"):
        r = results["restart"]
        lines += [
            "",
            f"Restart at {r['clusters']} clusters: all timers scheduled after {r['all_timers_scheduled_s']:.1f}s; "
            f"first runs from {r['first_run_s']:.1f}s to {r['all_first_runs_done_s']:.1f}s (spread {r['first_run_spread_s']:.1f}s)",
        ]
    if results.get("profile"):
        profile = results["profile"]
        lines += [
            "",
            f"Profile (py-spy, {profile['seconds']}s at {profile['clusters']} clusters, {profile['samples']} samples, all threads)",
        ]
        sections = (
            ("own time, idle waits left out", "top_own"),
            ("inclusive, operator_k8s", "top_inclusive_operator_k8s"),
            ("inclusive, kopf", "top_inclusive_kopf"),
        )
        for title, key in sections:
            lines.append(f"  {title}:")
            lines += [f"    {100 * row['share']:5.1f}%  {row['function']}" for row in profile[key]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 3000])
    parser.add_argument("--interval", type=int, default=30, help="check interval of the scale clusters (s)")
    parser.add_argument("--hold", type=int, default=3, help="intervals measured per step")
    parser.add_argument("--tick", type=float, default=5.0, help="the operator's base timer period (s)")
    parser.add_argument("--trials", type=int, default=5, help="latency trials per invariant (run concurrently)")
    parser.add_argument("--check-interval", type=int, default=5, help="check interval of the latency clusters (s)")
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--rate-window", default="20s")
    parser.add_argument("--restart-at", type=int, default=1000)
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="sample 60 s of steady state with py-spy before the restart (opt-in: `pip install py-spy` first)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the stack's directory (its logs) at the end")
    parser.add_argument(
        "--operator-log-level", default="WARNING", help="the operator's log level (its log: the stack's)"
    )
    parser.add_argument("--evidence-clusters", type=int, default=200, help="clusters of the evidence phase")
    parser.add_argument(
        "--evidence-faulty", type=int, default=20, help="clusters faulted per evidence run (2 tickets each)"
    )
    parser.add_argument("--evidence-rounds", type=int, default=2, help="evidence off/on pairs, alternated")
    parser.add_argument("--evidence-interval", type=int, default=5, help="check interval of the evidence clusters (s)")
    parser.add_argument("--phases", default="latency,scale,evidence", help="any of latency, scale, evidence")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / ".bench" / "results.json")
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    started = time.monotonic()
    webhook = Webhook()
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy in the virtualenv (.venv/bin/pip install py-spy)")
    stack = Stack.start(
        scrape_interval=args.scrape_interval,
        alert_rules=alert_rules(args.rate_window),
        alert_webhook=webhook.url,
        keep_workdir=args.keep_workdir,
    )
    bench = Bench(stack, args)
    bench.results["machine"] = machine()
    bench.results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    try:
        if "latency" in phases:
            bench.latency_phase(webhook)
        if "scale" in phases:
            bench.scale_phase()
        if "evidence" in phases:
            bench.evidence_phase()
    except BaseException:
        print(stack.logs(), flush=True)
        raise
    finally:
        bench.results["duration_s"] = round(time.monotonic() - started)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(bench.results, indent=2, default=str))
        stack.stop()
        webhook.close()
    print("\n" + report(bench.results), flush=True)
    print(f"\nWrote {args.output} ({bench.results['duration_s']}s)", flush=True)
    return 0
