"""The referee: the operator's verdicts against alerting rules written from TiKV's and PD's own, on the same data.

``python -m devstack referee`` (``make referee``) starts the stack with the rules of ``referee_rules()`` loaded into
its real Prometheus (evaluated every scrape interval, ``for: 0s``), creates TidbClusters in two namespaces, one per
label world (``referee-a``: prometheus-operator's ``namespace``/``pod``; ``referee-b``: TidbMonitor's
``kubernetes_namespace``/``instance``/``tidb_cluster``), and for every case (a fault on one store or on the cluster,
or a control that must stay silent) injects it into both worlds' clusters at once and compares, per invariant:

- the **operator**: the service's own ``gather`` (the function every check cycle calls: ``cycle_queries`` →
  ``PrometheusMetrics.query`` → ``scope_result`` → ``evaluate``) against the real Prometheus, with pods from the API
  server through the operator's own ``store_pod``: the stores whose verdict is ``Violated`` (``cluster`` for
  PD-level invariants);
- the **referee**: ``ALERTS{alertstate="firing"}`` of the rule for that invariant and world, mapped to stores.

A fault case polls until both sides agree with the expected verdicts (or a timeout) and records what it saw; a silent
case waits for evidence that the fault is in the data, then keeps sampling for a few rate windows and records every
violation either side reported meanwhile. Then it heals and polls until both sides are quiet (no violation, no
Unknown) before the next case. Cases run in parallel lanes, each lane with a TidbCluster of its own per world; a
free lane takes the next case, longest first.

The rules are written from the upstream rule files, not from the operator's presets (which this module never
imports): ``referee_rules`` cites, for each, the rule it follows and how it differs (shortened windows, the label
world's own labels). Windows are ``WINDOW`` (5 s, 5 scrapes) instead of upstream's 1 m/10 m so that a healed fault
clears in seconds; the operator's ``rateWindow`` and ``writeStall.window`` are set to the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from devstack.host.paths import REPO_ROOT
from devstack.world.stack import Stack
from operator_k8s.adapters.kube import store_pod
from operator_k8s.adapters.prometheus import PrometheusMetrics
from operator_k8s.domain.invariants import Verdict
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.service import gather

WINDOW = "5s"
"""Every rate/increase/delta window, on both sides (5 scrapes of 1 s)."""
LATENCY_THRESHOLD_SECONDS = 0.5
"""The operator's default ``latency.thresholdMs`` (500): no upstream rule alerts on the gRPC p99."""
LOW_SPACE_AVAILABLE_RATIO = 0.2
MISSING_PEER_REGIONS = 100
TIMINGS = {"storeHeartbeatSeconds": 1, "storeDisconnectSeconds": 3, "maxStoreDownSeconds": 3600}
"""PD's store timings, shortened: a silent store is disconnected after 3 s (upstream 20 s), never down."""
SETTLE_SECONDS = 60.0
QUIET_SECONDS = 60.0
OBSERVE_SECONDS = 8.0
"""How long a silent case keeps sampling once its fault is in the data: the 5 s window and a few evaluations."""
POLL_SECONDS = 0.5
INVARIANTS = ("storesReady", "latency", "diskUsage", "criticalErrors", "writeStall", "pdStores", "pdRegions")
CLUSTER = "cluster"
DEFAULT_OUT = REPO_ROOT / ".referee" / "table.md"

POINT_TYPES = (
    "kv_get", "kv_batch_get", "kv_batch_get_command", "kv_prewrite", "kv_commit", "kv_cleanup",
    "kv_check_txn_status", "raw_get", "raw_batch_get", "raw_put", "raw_batch_put", "raw_delete",
)  # fmt: skip
"""TiKV's point reads and writes, as ``type`` values of ``tikv_grpc_msg_duration_seconds`` (tikv/tikv:
src/server/metrics.rs ``GrpcTypeKind``): what a user's point query waits on. Lock waits, scans, coprocessor and GC are
slow by design."""


def _log(message: str) -> None:
    print(f"[referee] {message}", flush=True)


# -- the two label worlds --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    key: str
    title: str
    namespace: str
    store_label: str
    namespace_label: str
    by: str
    """The labels naming one pod's series in this world (what upstream's ``by (instance)`` becomes)."""

    @property
    def own(self) -> str:
        """A matcher keeping this world's series only (both worlds scrape the same pods into one Prometheus)."""
        return f'{self.namespace_label}!=""'

    def matchers(self, tc: str) -> dict[str, str]:
        return {"tidb_cluster": f"{self.namespace}-{tc}"} if self.key == "B" else {}

    def series(self, tc: str, pod: str) -> str:
        """Matchers (without braces) for one pod's series in this world."""
        pairs = {self.namespace_label: self.namespace, **self.matchers(tc), self.store_label: pod}
        return ",".join(f'{k}="{v}"' for k, v in pairs.items())

    def spec(self, prometheus_url: str, tc: str) -> dict[str, Any]:
        """The MonitoredCluster spec for TidbCluster ``tc`` in this world (as deploy/examples has it)."""
        quick = {"for": "0s", "clearFor": "0s"}
        return {
            "interval": "1s",
            "stores": {"selector": {"matchLabels": {"app.kubernetes.io/component": "tikv",
                                                    "app.kubernetes.io/instance": tc}}, "expected": 3},
            "pd": {"selector": {"matchLabels": {"app.kubernetes.io/component": "pd",
                                                "app.kubernetes.io/instance": tc}}},
            "prometheus": {"url": prometheus_url, "timeout": "5s", "rateWindow": WINDOW,
                           "storeLabel": self.store_label, "namespaceLabel": self.namespace_label,
                           "matchers": self.matchers(tc)},
            "invariants": {"writeStall": {"window": WINDOW, **quick}},
        }  # fmt: skip


WORLDS = (
    World("A", "prometheus-operator", "referee-a", "pod", "namespace", "namespace, pod"),
    World("B", "TidbMonitor", "referee-b", "instance", "kubernetes_namespace", "kubernetes_namespace, tidb_cluster, "
          "instance"),
)  # fmt: skip


# -- the rules -------------------------------------------------------------------------------------------------------


def referee_rules(window: str = WINDOW) -> list[dict[str, Any]]:
    """One alerting rule (or, for pdStores, one per PD store state) per built-in invariant and label world.

    Each follows an upstream rule, rewritten only in its grouping labels (the world's own instead of ``instance``)
    and its window (``window`` instead of 1 m / 10 m); deviations are said where they are.
    """
    rules: list[dict[str, Any]] = []

    def rule(world: World, invariant: str, alert: str, expr: str, source: str) -> None:
        rules.append({
            "alert": alert, "expr": expr, "for": "0s",
            "labels": {"referee_world": world.key, "referee_invariant": invariant},
            "annotations": {"source": source},
        })  # fmt: skip

    types = "|".join(POINT_TYPES)
    for w in WORLDS:
        # storesReady. kube-state-metrics' Ready condition of the pod (kubernetes-monitoring/kubernetes-mixin
        # KubePodNotReady alerts on pods that are not ready; it reads kube_pod_status_phase, which the simulator's
        # kube-state-metrics does not serve, so this reads kube_pod_status_ready). kube-state-metrics labels its series
        # namespace/pod in both worlds (TidbMonitor has no kube-state-metrics of its own).
        rule(
            w,
            "storesReady",
            "KubePodNotReady",
            'kube_pod_status_ready{condition="true"} == 0',
            "kubernetes-mixin KubePodNotReady (via kube_pod_status_ready)",
        )
        # latency. No upstream alert reads the gRPC p99; TiKV's own recording rule
        # (tikv/tikv:metrics/alertmanager/tikv.accelerate.rules.yml: histogram_quantile(0.99,
        # sum(rate(tikv_grpc_msg_duration_seconds_bucket{type!="kv_gc"}[1m])) by (le, type))) and its dashboards
        # (metrics/grafana/performance_read.json: type=~"kv_get|kv_batch_get|coprocessor") always pick request types.
        # Here: the p99 of the point operations per store, against the operator's documented 500 ms default. NaN (no
        # traffic) is not > 0.5, so an idle store does not fire.
        rule(
            w,
            "latency",
            "TiKV_point_op_p99_high",
            f"histogram_quantile(0.99, sum by ({w.by}, le) (rate(tikv_grpc_msg_duration_seconds_bucket"
            f'{{{w.own},type=~"{types}"}}[{window}]))) > {LATENCY_THRESHOLD_SECONDS}',
            "tikv/tikv:metrics/alertmanager/tikv.accelerate.rules.yml (gRPC p99 by type)",
        )
        # diskUsage. tikv/tikv:metrics/alertmanager/tikv.rules.yml TiKV_low_space, as upstream writes it:
        # sum(tikv_store_size_bytes{type="available"}) by (instance) / sum(...{type="capacity"}) by (instance) < 0.2.
        # Unreadable disk stats (capacity 0) give NaN or +Inf, neither < 0.2.
        rule(
            w,
            "diskUsage",
            "TiKV_low_space",
            f'sum by ({w.by}) (tikv_store_size_bytes{{{w.own},type="available"}}) / '
            f'sum by ({w.by}) (tikv_store_size_bytes{{{w.own},type="capacity"}}) < {LOW_SPACE_AVAILABLE_RATIO}',
            "tikv/tikv:metrics/alertmanager/tikv.rules.yml TiKV_low_space",
        )
        # criticalErrors. tikv.rules.yml TiKV_critical_error:
        # sum(rate(tikv_critical_error_total[1m])) BY (type, instance) > 0 (no for clause).
        rule(
            w,
            "criticalErrors",
            "TiKV_critical_error",
            f"sum by (type, {w.by}) (rate(tikv_critical_error_total{{{w.own}}}[{window}])) > 0",
            "tikv/tikv:metrics/alertmanager/tikv.rules.yml TiKV_critical_error",
        )
        # writeStall. tikv.rules.yml TiKV_write_stall: delta( tikv_engine_write_stall[10m]) > 0, ungrouped.
        rule(
            w,
            "writeStall",
            "TiKV_write_stall",
            f"delta(tikv_engine_write_stall{{{w.own}}}[{window}]) > 0",
            "tikv/tikv:metrics/alertmanager/tikv.rules.yml TiKV_write_stall",
        )
        # pdStores. tikv/pd:metrics/alertmanager/pd.rules.yml, four rules of one shape, the PD leader's count:
        # (sum(pd_cluster_status{type="<state>"}) by (instance) > 0) and (sum(etcd_server_is_leader) by (instance) > 0)
        for alert, state in (
            ("PD_cluster_offline_tikv_nums", "store_down_count"),
            ("PD_cluster_lost_connect_tikv_nums", "store_disconnected_count"),
            ("PD_cluster_low_space", "store_low_space_count"),
            ("PD_cluster_slow_tikv_nums", "store_slow_count"),
        ):
            rule(
                w,
                "pdStores",
                alert,
                f'(sum by ({w.by}) (pd_cluster_status{{{w.own},type="{state}"}}) > 0) and '
                f"(sum by ({w.by}) (etcd_server_is_leader{{{w.own}}}) > 0)",
                f"tikv/pd:metrics/alertmanager/pd.rules.yml {alert}",
            )
        # pdRegions. pd.rules.yml PD_miss_peer_region_count:
        # (sum(pd_regions_status{type="miss_peer_region_count"}) by (instance) > 100) and (…is_leader… > 0).
        # Upstream spells the type with underscores, which PD never emits (tikv/pd:pkg/statistics/
        # region_collection.go: "miss-peer-region-count"), so upstream's rule can never fire; this one uses PD's.
        rule(
            w,
            "pdRegions",
            "PD_miss_peer_region_count",
            f'(sum by ({w.by}) (pd_regions_status{{{w.own},type="miss-peer-region-count"}}) > {MISSING_PEER_REGIONS}) '
            "and "
            f"(sum by ({w.by}) (etcd_server_is_leader{{{w.own}}}) > 0)",
            "tikv/pd:metrics/alertmanager/pd.rules.yml PD_miss_peer_region_count (PD's hyphenated type)",
        )
    return rules


# -- observing both sides --------------------------------------------------------------------------------------------

Sets = dict[str, frozenset[str]]


@dataclass
class Observation:
    operator: Sets
    referee: Sets
    unknown: Sets


def _empty() -> Sets:
    return dict.fromkeys(INVARIANTS, frozenset())


class Sides:
    """Reads both verdicts for one lane's TidbCluster in every world."""

    def __init__(self, stack: Stack, tc: str) -> None:
        self.stack = stack
        self.tc = tc
        self.loop = asyncio.new_event_loop()
        self.metrics = PrometheusMetrics(concurrency=8, per_endpoint=7)

    def close(self) -> None:
        self.metrics.close()
        self.loop.close()

    def pods(self, world: World) -> list[str]:
        return [f"{self.tc}-tikv-{i}" for i in range(3)]

    def observe(self) -> dict[str, Observation]:
        alerts = prometheus(self.stack, 'ALERTS{alertstate="firing"}')
        result = {}
        for world in WORLDS:
            operator, unknown = self.loop.run_until_complete(self._operator(world))
            result[world.key] = Observation(operator, self._referee(world, alerts), unknown)
        return result

    async def _operator(self, world: World) -> tuple[Sets, Sets]:
        """One check cycle's judgement, by the service's own ``gather`` (minus tickets: none are tracked)."""
        spec = MonitoredClusterSpec.model_validate(world.spec(self.stack.prometheus_url, self.tc))
        listed = json.loads(self.stack.kubectl("get", "pods", "-n", world.namespace, "-o", "json").stdout)
        gathered = await gather(self.metrics, spec, world.namespace, [store_pod(i) for i in listed["items"]], {})
        violated, unknown = _empty(), _empty()
        for f in gathered.findings:
            if f.invariant in violated and f.verdict is Verdict.VIOLATED:
                violated[f.invariant] |= {f.store}
            if f.invariant in unknown and f.verdict is Verdict.UNKNOWN:
                unknown[f.invariant] |= {f.store}
        return violated, unknown

    def _referee(self, world: World, alerts: list[dict[str, Any]]) -> Sets:
        """The firing alerts of this world's rules about this lane's TidbCluster, by invariant and store."""
        stores = set(self.pods(world))
        pd = {f"{self.tc}-pd-{i}" for i in range(3)}
        found = _empty()
        for alert in alerts:
            labels = alert["metric"]
            if labels.get("referee_world") != world.key:
                continue
            invariant = labels["referee_invariant"]
            if invariant == "storesReady":  # kube-state-metrics' own labels, in both worlds
                namespace, pod = labels.get("namespace"), labels.get("pod")
            else:
                namespace, pod = labels.get(world.namespace_label), labels.get(world.store_label)
                if any(labels.get(k) != v for k, v in world.matchers(self.tc).items()):
                    continue
            if namespace != world.namespace:
                continue
            if invariant.startswith("pd") and pod in pd:
                found[invariant] |= {CLUSTER}
            elif pod in stores:
                found[invariant] |= {pod}
        return found


def prometheus(stack: Stack, promql: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.loads(response.read())["data"]["result"]
        return result


def simulator(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(stack.simulator_url + path, data=json.dumps(body or {}).encode(), method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


# -- cases -----------------------------------------------------------------------------------------------------------

FAULT_STORE = 1
"""Faults go to ``<tc>-tikv-1``."""


@dataclass(frozen=True)
class Step:
    """Something done to both worlds' clusters, then a condition (PromQL over one world's series, ``{sel}`` the faulty
    store's matchers, ``{since}`` when the step began) that shows it is in the data."""

    method: str
    fault: str
    body: dict[str, Any] | None = None
    store: int | None = FAULT_STORE
    evidence: str = ""
    pd_leader: int | None = None


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    steps: tuple[Step, ...]
    expected: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Violations per invariant: store indexes as ``"store"`` (the faulty one) or ``"cluster"``."""
    control: bool = False

    @property
    def silent(self) -> bool:
        return not self.expected

    def expected_sets(self, tc: str) -> Sets:
        sets = _empty()
        for invariant, subjects in self.expected.items():
            sets[invariant] = frozenset(CLUSTER if s == CLUSTER else f"{tc}-tikv-{FAULT_STORE}" for s in subjects)
        return sets


TRAFFIC = "sum(rate(tikv_grpc_msg_duration_seconds_count{{{sel}}}[" + WINDOW + "]))"
RESTARTED = "process_start_time_seconds{{{sel}}} > {since}"


def _fault(name: str, title: str, expected: dict[str, tuple[str, ...]], body: dict[str, Any] | None = None,
           evidence: str = "", store: int | None = FAULT_STORE) -> Case:  # fmt: skip
    return Case(name, title, (Step("PUT", name, body, store, evidence),), expected)


def _rolling_restart() -> Case:
    """What TiDB Operator does to each store in turn, minus the NotReady seconds (storesReady's ``down`` case and the
    operator's ``for`` grace cover those): evict its leaders (no traffic), restart the process (counters from zero,
    a new start time), give it traffic back; and move PD leadership away and back."""
    steps = [Step("PUT", "pd-leader", store=None, pd_leader=1, evidence="etcd_server_is_leader{{{pd1}}} == 1")]
    for index in range(3):
        steps += [
            Step("PUT", "idle", store=index, evidence=TRAFFIC + " == 0"),
            Step("PUT", "restart-loop", {"seconds": 1}, store=index, evidence=RESTARTED),
            Step("DELETE", "restart-loop", store=index),
            Step("DELETE", "idle", store=index, evidence=TRAFFIC + " > 0"),
        ]
    steps.append(Step("PUT", "pd-leader", store=None, pd_leader=0, evidence="etcd_server_is_leader{{{pd0}}} == 1"))
    title = "rolling restart: leaders evicted, process restarted, PD leader moved, each store in turn"
    return Case("rolling-restart", title, tuple(steps), control=True)


CASES: tuple[Case, ...] = (
    _fault("down", "store down (NotReady, target gone)", {"storesReady": ("store",), "pdStores": (CLUSTER,)}),
    _fault("hung", "hung store (Ready, no answers)", {"pdStores": (CLUSTER,)}),
    _fault("latency", "point operations at 800 ms", {"latency": ("store",)}, {"seconds": 0.8}),
    _fault("disk", "disk 95 % filled by TiKV", {"diskUsage": ("store",), "pdStores": (CLUSTER,)}, {"percent": 95}),
    _fault(
        "disk-other",
        "disk filled by other files (90 % used)",
        {"diskUsage": ("store",), "pdStores": (CLUSTER,)},
        {"percent": 50},
    ),
    _fault(
        "disk-unreadable",
        "disk stats unreadable (capacity 0)",
        {},
        evidence='tikv_store_size_bytes{{{sel},type="capacity"}} == 0',
    ),
    _fault("restart-loop", "restart loop (every 2 s, pod stays Ready)", {}, {"seconds": 2}, evidence=RESTARTED),
    _fault("critical-error", "critical error", {"criticalErrors": ("store",)}),
    _fault("write-stall", "write stall", {"writeStall": ("store",)}),
    _fault("missing-peers", "150 regions missing a peer", {"pdRegions": (CLUSTER,)}, store=None),
    Case("none", "healthy (no fault)", (Step("", "", evidence=TRAFFIC + " > 0"),), control=True),
    Case(
        "contention",
        "lock contention (lock waits up to 1 s)",
        (
            Step(
                "PUT",
                "contention",
                evidence="histogram_quantile(0.99, sum by (le) (rate(tikv_grpc_msg_duration_seconds_bucket"
                '{{{sel},type="kv_pessimistic_lock"}}[' + WINDOW + "]))) > 0.5",
            ),
        ),
        control=True,
    ),
    Case("idle", "idle store (no traffic)", (Step("PUT", "idle", evidence=TRAFFIC + " == 0"),), control=True),
    _rolling_restart(),
)


@dataclass
class Outcome:
    case: Case
    tc: str
    seen: dict[str, Observation]
    seconds: float
    settled: bool
    expected: Sets

    def disagreements(self) -> list[str]:
        return [f"{w}/{i}" for w, o in self.seen.items() for i in INVARIANTS if o.operator[i] != o.referee[i]]

    def unexpected(self) -> list[str]:
        found = []
        for w, o in self.seen.items():
            for i in INVARIANTS:
                if o.operator[i] != self.expected[i]:
                    found.append(f"{w}/{i}/operator")
                if o.referee[i] != self.expected[i]:
                    found.append(f"{w}/{i}/referee")
        return found


class Lane:
    """One TidbCluster per world (same name, each world's own namespace), running cases one after another."""

    def __init__(self, stack: Stack, tc: str) -> None:
        self.stack = stack
        self.tc = tc
        self.sides = Sides(stack, tc)

    def _do(self, step: Step, since: float) -> None:
        for world in WORLDS:
            base = f"/tidbclusters/{world.namespace}/{self.tc}"
            if step.pd_leader is not None:
                simulator(self.stack, "PUT", f"{base}/pd-leader", {"pod": f"{self.tc}-pd-{step.pd_leader}"})
            elif step.method and step.store is None:
                simulator(self.stack, step.method, f"{base}/faults/{step.fault}", step.body)
            elif step.method:
                simulator(self.stack, step.method, f"{base}/stores/{self.tc}-tikv-{step.store}/faults/{step.fault}",
                          step.body)  # fmt: skip
        del since

    def _evident(self, step: Step, since: float) -> bool:
        if not step.evidence:
            return True
        for world in WORLDS:
            store = step.store if step.store is not None else FAULT_STORE
            promql = step.evidence.format(
                sel=world.series(self.tc, f"{self.tc}-tikv-{store}"), since=f"{since:.3f}",
                pd0=world.series(self.tc, f"{self.tc}-pd-0"), pd1=world.series(self.tc, f"{self.tc}-pd-1"),
            )  # fmt: skip
            if not prometheus(self.stack, promql):
                return False
        return True

    def settle_quiet(self, timeout: float = QUIET_SECONDS) -> bool:
        """Poll until neither side reports a violation and the operator has no Unknown, in every world."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.sides.observe()
            if all(not any(o.operator.values()) and not any(o.referee.values()) and not any(o.unknown.values())
                   for o in seen.values()):  # fmt: skip
                return True
            time.sleep(POLL_SECONDS)
        return False

    def run(self, case: Case) -> Outcome:
        started = time.monotonic()
        expected = case.expected_sets(self.tc)
        union = {w.key: Observation(_empty(), _empty(), _empty()) for w in WORLDS}

        def sample() -> dict[str, Observation]:
            seen = self.sides.observe()
            for key, o in seen.items():
                for i in INVARIANTS:
                    union[key].operator[i] |= o.operator[i]
                    union[key].referee[i] |= o.referee[i]
                    union[key].unknown[i] |= o.unknown[i]
            return seen

        settled = True
        if case.silent:
            for step in case.steps:
                since = time.time()
                self._do(step, since)
                settled &= _poll(partial(self._evident, step, since), SETTLE_SECONDS, sample)
            observed_until = time.monotonic() + OBSERVE_SECONDS
            _poll(lambda: time.monotonic() >= observed_until, OBSERVE_SECONDS + 5, sample)
            seen = union
        else:
            self._do(case.steps[0], time.time())
            last: dict[str, dict[str, Observation]] = {}

            def agreed() -> bool:
                last["seen"] = self.sides.observe()
                return all(o.operator == expected and o.referee == expected for o in last["seen"].values())

            settled = _poll(agreed, SETTLE_SECONDS)
            seen = last["seen"]
        seconds = time.monotonic() - started
        for step in reversed(case.steps):
            if step.method == "PUT" and step.pd_leader is None:
                self._do(Step("DELETE", step.fault, store=step.store), time.time())
        if not self.settle_quiet():
            _log(f"{self.tc}: {case.name} did not go quiet after healing within {QUIET_SECONDS:.0f}s")
        return Outcome(case, self.tc, seen, seconds, settled, expected)


def _poll(probe: Callable[[], bool], timeout: float, between: Callable[[], object] | None = None) -> bool:
    """Poll ``probe`` until it holds (True) or ``timeout`` passes (False), calling ``between`` after each miss."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        if between is not None:
            between()
        time.sleep(POLL_SECONDS)
    return False


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    outcomes: list[Outcome]
    seconds: float

    @property
    def disagreements(self) -> int:
        return sum(len(o.disagreements()) for o in self.outcomes)

    @property
    def unexpected(self) -> int:
        return sum(len(o.unexpected()) for o in self.outcomes)

    def summary(self) -> str:
        return (f"cases run {len(self.outcomes)}, disagreements {self.disagreements}, "
                f"unexpected {self.unexpected} (in {self.seconds:.0f}s)")  # fmt: skip

    def markdown(self) -> str:
        head = ["case", "invariant", "expected"] + [
            f"{side} {w.key}" for w in WORLDS for side in ("operator", "referee")
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        order = {c.name: n for n, c in enumerate(CASES)}
        for outcome in sorted(self.outcomes, key=lambda o: order[o.case.name]):
            tc = outcome.tc
            shown = [i for i in INVARIANTS if outcome.expected[i]
                     or any(o.operator[i] or o.referee[i] for o in outcome.seen.values())]  # fmt: skip
            label = f"{outcome.case.name}: {outcome.case.title}" + (" (control)" if outcome.case.control else "")
            if not shown:
                cells = [label, "all 7", "none"]
                for o in outcome.seen.values():
                    cells += [
                        _cell(set().union(*o.operator.values()), tc, _unknowns(o, tc)),
                        _cell(set().union(*o.referee.values()), tc),
                    ]
                lines.append("| " + " | ".join(cells) + " |")
            for invariant in shown:
                cells = [label, invariant, _cell(outcome.expected[invariant], tc)]
                for o in outcome.seen.values():
                    cells += [_cell(o.operator[invariant], tc), _cell(o.referee[invariant], tc)]
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _unknowns(o: Observation, tc: str) -> str:
    stores = sorted({s.removeprefix(f"{tc}-") for v in o.unknown.values() for s in v})
    return f" (Unknown: {', '.join(stores)})" if stores else ""


def _cell(stores: frozenset[str] | set[str], tc: str, extra: str = "") -> str:
    names = sorted(s.removeprefix(f"{tc}-") for s in stores)
    return (", ".join(names) if names else "—") + extra


def load_rules(stack: Stack, rules: list[dict[str, Any]]) -> None:
    """Add ``rules`` to a running stack's Prometheus (a reload) and wait until it evaluates them."""
    config_path = stack.workdir / "prometheus.yml"
    config = json.loads(config_path.read_text())
    rules_path = stack.workdir / "referee-rules.yml"
    rules_path.write_text(json.dumps({"groups": [{"name": "referee", "rules": rules}]}))
    config["rule_files"] = [*config.get("rule_files", []), str(rules_path)]
    config_path.write_text(json.dumps(config))
    urllib.request.urlopen(urllib.request.Request(f"{stack.prometheus_url}/-/reload", method="POST"), timeout=30)

    def loaded() -> bool:
        with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/rules", timeout=10) as response:
            groups = json.loads(response.read())["data"]["groups"]
        return any(g["name"] == "referee" and g.get("lastEvaluation", "").startswith("2") for g in groups)

    if not _poll(loaded, 60):
        raise RuntimeError("Prometheus did not load the referee's rules")


DEFAULT_LANES = 3
"""Lanes running cases at once: the rolling restart (about 36 s) on one, the other cases (about as long together
again) on the other two; two lanes left the rolling restart to start last, after half the rest."""


def _cost(case: Case) -> tuple[int, bool]:
    """How long a case roughly runs, to start the longest first: its steps, then whether it observes a while."""
    return len(case.steps), case.silent


def run(stack: Stack, *, lanes: int = DEFAULT_LANES, cases: tuple[Case, ...] = CASES) -> Report:
    """Every case on ``stack`` (whose Prometheus evaluates ``referee_rules()``), spread over ``lanes``: each lane takes
    the next case when it is free, longest first, so that no long case starts last."""
    started = time.monotonic()
    names = [f"tc{n}" for n in range(lanes)]
    for world in WORLDS:
        if stack.kubectl("get", "namespace", world.namespace, check=False).returncode != 0:
            stack.kubectl("create", "namespace", world.namespace)
        for tc in names:
            simulator(stack, "PUT", f"/tidbclusters/{world.namespace}/{tc}", {"stores": 3, "pd": 3, "timings": TIMINGS})
    workers = [Lane(stack, tc) for tc in names]
    try:
        with ThreadPoolExecutor(max_workers=lanes) as pool:
            ready = list(pool.map(Lane.settle_quiet, workers))
            if not all(ready):
                raise RuntimeError("the TidbClusters never looked healthy to both sides")
            _log(f"{len(names)} TidbClusters per world healthy to both sides; running {len(cases)} cases")
            queue = deque(sorted(cases, key=_cost, reverse=True))
            taking = threading.Lock()

            def next_case() -> Case | None:
                with taking:
                    return queue.popleft() if queue else None

            def drain(lane: Lane) -> list[Outcome]:
                done = []
                while (case := next_case()) is not None:
                    outcome = lane.run(case)
                    verdict = "agree" if not outcome.disagreements() else f"DISAGREE {outcome.disagreements()}"
                    extra = f", unexpected {outcome.unexpected()}" if outcome.unexpected() else ""
                    _log(f"{lane.tc}: {case.name}: {verdict}{extra} ({outcome.seconds:.1f}s)")
                    done.append(outcome)
                return done

            outcomes = [o for done in pool.map(drain, workers) for o in done]
    finally:
        for lane in workers:
            lane.sides.close()
        for world in WORLDS:  # a shared stack (the test's) goes on without these pods
            for tc in names:
                simulator(stack, "DELETE", f"/tidbclusters/{world.namespace}/{tc}")
    return Report(outcomes, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack referee", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--lanes", type=int, default=DEFAULT_LANES, help="TidbClusters per world running cases in parallel"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the markdown table")
    args = parser.parse_args(argv)
    with Stack.start(alert_rules=referee_rules()) as stack:
        try:
            report = run(stack, lanes=args.lanes)
        except BaseException:
            print(stack.logs())
            raise
    table = report.markdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n" + report.summary() + "\n")
    print(table)
    print(report.summary())
    print(f"Written to {args.out}")
    return 1 if report.disagreements or report.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
