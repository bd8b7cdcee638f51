"""Invariant evaluation: a snapshot in, one finding per (invariant, store) out.

Three-valued on purpose: a store is VIOLATED, HOLDS, or UNKNOWN (no data, query error, Prometheus down). UNKNOWN
never opens and never resolves a ticket. MARGINAL is the hysteresis band: past the clear threshold but not past the
threshold, which keeps an open ticket open without opening a new one.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from operator_k8s.domain.observations import QueryResult, Snapshot
from operator_k8s.domain.queries import DISK_AVAILABLE
from operator_k8s.domain.specs import InvariantSpec, MonitoredClusterSpec
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Invariant, Reason, Severity


class Verdict(StrEnum):
    VIOLATED = "Violated"
    MARGINAL = "Marginal"
    HOLDS = "Holds"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Finding:
    """The verdict on one invariant for one store (or ``cluster``), with the evidence for the ticket snapshot."""

    invariant: str
    store: str
    verdict: Verdict
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None
    query: str = ""
    unknown_reason: Reason | None = None


@dataclass(frozen=True)
class Rule:
    """How to judge a value: ``value <comparator> threshold`` is a violation; hysteresis via ``clear_threshold``."""

    comparator: str
    threshold: float
    clear_threshold: float | None
    unit: str

    def verdict(self, value: float) -> Verdict:
        compare = _COMPARATORS[self.comparator]
        if compare(value, self.threshold):
            return Verdict.VIOLATED
        if self.clear_threshold is not None and _within_band(self.comparator, value, self.clear_threshold):
            return Verdict.MARGINAL
        return Verdict.HOLDS


_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _within_band(comparator: str, value: float, clear_threshold: float) -> bool:
    """Not yet on the safe side of the clear threshold (which must be strictly passed to clear)."""
    return value > clear_threshold if comparator in (">", ">=") else value < clear_threshold


@dataclass(frozen=True)
class MetricInvariant:
    """How one metric invariant is judged: its rule, per store or for the cluster, and what NaN means.

    ``idle_holds``: a NaN value is "no traffic" (a latency quantile over zero requests), which holds; otherwise NaN
    is missing data (Unknown).
    """

    name: str
    settings: InvariantSpec
    rule: Rule
    per_store: bool = True
    idle_holds: bool = False


def metric_invariants(spec: MonitoredClusterSpec) -> list[MetricInvariant]:
    """The metric invariants this spec enables and its preset can query, built-in first."""
    inv = spec.invariants
    found: list[MetricInvariant] = []
    if inv.latency.enabled:
        rule = Rule(">", inv.latency.threshold_ms, inv.latency.clear_threshold_ms, "ms")
        found.append(MetricInvariant(Invariant.LATENCY, inv.latency, rule, idle_holds=True))
    if inv.disk_usage.enabled:
        rule = Rule(">", inv.disk_usage.threshold_percent, inv.disk_usage.clear_threshold_percent, "%")
        found.append(MetricInvariant(Invariant.DISK_USAGE, inv.disk_usage, rule))
    if spec.preset == "tikv":
        if inv.critical_errors.enabled:
            found.append(MetricInvariant(Invariant.CRITICAL_ERRORS, inv.critical_errors, Rule(">", 0, None, "")))
        if inv.write_stall.enabled:
            found.append(MetricInvariant(Invariant.WRITE_STALL, inv.write_stall, Rule(">", 0, None, "µs")))
        if spec.pd is not None and inv.pd_stores.enabled:
            rule = Rule(">", 0, None, " stores")
            found.append(MetricInvariant(Invariant.PD_STORES, inv.pd_stores, rule, per_store=False))
        if spec.pd is not None and inv.pd_regions.enabled:
            rule = Rule(">", inv.pd_regions.threshold_regions, None, " regions")
            found.append(MetricInvariant(Invariant.PD_REGIONS, inv.pd_regions, rule, per_store=False))
    for custom in inv.custom:
        if custom.enabled:
            rule = Rule(custom.comparator, custom.threshold, custom.clear_threshold, "")
            found.append(MetricInvariant(custom.name, custom, rule, per_store=custom.scope == "store"))
    return found


def evaluate(spec: MonitoredClusterSpec, snapshot: Snapshot) -> list[Finding]:
    """All findings for one cycle, in a stable order (invariant, then store)."""
    findings: list[Finding] = []
    if spec.invariants.stores_ready.enabled:
        findings += _stores_ready(spec, snapshot)
    pod_stores = [pod.name for pod in snapshot.pods]
    for metric in metric_invariants(spec):
        judged = _metric(metric, snapshot, pod_stores)
        if metric.name == Invariant.DISK_USAGE and spec.invariants.disk_usage.min_available_bytes is not None:
            judged = [_below_floor(f, snapshot, spec.invariants.disk_usage.min_available_bytes) for f in judged]
        findings += judged
    return findings


def _below_floor(finding: Finding, snapshot: Snapshot, floor: int) -> Finding:
    """diskUsage also breaks when a store's available bytes fall under the absolute floor, whatever the percent."""
    result = snapshot.results.get(DISK_AVAILABLE)
    if result is None or result.failure is not None or finding.verdict is Verdict.VIOLATED:
        return finding
    available = [s.value for s in result.samples if s.store == finding.store and not math.isnan(s.value)]
    if not available or min(available) >= floor:
        return finding
    message = f"diskUsage of store {finding.store}: {min(available):.4g} bytes available, under the floor of {floor}"
    return Finding(finding.invariant, finding.store, Verdict.VIOLATED, finding.severity, message, min(available),
                   float(floor), result.query)  # fmt: skip


def _stores_ready(spec: MonitoredClusterSpec, snapshot: Snapshot) -> list[Finding]:
    """Every selected pod Running and Ready, and no fewer pods than expected (a missing store is a violation)."""
    severity = spec.invariants.stores_ready.severity
    name = Invariant.STORES_READY
    findings = []
    present = {pod.name for pod in snapshot.pods}
    for pod in sorted(snapshot.pods, key=lambda p: p.name):
        if pod.healthy:
            findings.append(
                Finding(name, pod.name, Verdict.HOLDS, severity, f"Store pod {pod.name} is Running and Ready")
            )
        else:
            state = f"phase {pod.phase}, {'Ready' if pod.ready else 'not Ready'}"
            findings.append(
                Finding(name, pod.name, Verdict.VIOLATED, severity, f"Store pod {pod.name} is down ({state})")
            )
    expected = spec.stores.expected
    tracked = snapshot.tracked_stores.get(name, frozenset())
    if expected is None and CLUSTER_STORE in tracked:
        # The count its ticket was about is no longer asked for: that ticket ends, with a reason that says so.
        message = "No expected store count is set any more"
        findings.append(Finding(name, CLUSTER_STORE, Verdict.HOLDS, severity, message))
    elif not snapshot.pods and expected is None:
        # Absence is never health: a selector that matches nothing (a typo, a wrong namespace) is said, not passed.
        message = f"The store selector {_selector_text(spec)} matches no pod in the cluster's namespace"
        findings.append(Finding(name, CLUSTER_STORE, Verdict.UNKNOWN, severity, message))
    missing_count = 0 if expected is None else max(0, expected - len(snapshot.pods))
    for store in sorted(tracked - present - {CLUSTER_STORE}):
        # A store with an active ticket that is no longer selected (its pod deleted, or relabelled out of the
        # selector): still down while the cluster is short of pods.
        verdict = Verdict.VIOLATED if missing_count else Verdict.HOLDS
        message = (
            f"Store pod {store} is not among the selected store pods (deleted, or no longer matching the selector)"
        )
        findings.append(Finding(name, store, verdict, severity, message))
    if expected is not None:
        observed = len(snapshot.pods)
        verdict = Verdict.VIOLATED if missing_count else Verdict.HOLDS
        message = f"{observed} of {expected} expected store pods exist"
        findings.append(Finding(name, CLUSTER_STORE, verdict, severity, message, float(observed), float(expected)))
    return findings


def _selector_text(spec: MonitoredClusterSpec) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(spec.stores.selector.match_labels.items()))


def _metric(metric: MetricInvariant, snapshot: Snapshot, pod_stores: Iterable[str]) -> list[Finding]:
    name, invariant, rule, per_store = metric.name, metric.settings, metric.rule, metric.per_store
    result = snapshot.results.get(name)
    tracked = snapshot.tracked_stores.get(name, frozenset())
    pod_names = set(pod_stores)
    stores = sorted(pod_names | tracked) if per_store else [CLUSTER_STORE]
    if result is None or result.failure is not None:
        reason = Reason.PROMETHEUS_UNREACHABLE if result and result.failure == "unreachable" else Reason.QUERY_FAILED
        error = result.error if result else "not queried"
        return [_unknown(name, invariant, store, reason, f"Query failed: {error}", result) for store in stores]
    values = _values_by_store(result, per_store=per_store, comparator=rule.comparator)
    findings = []
    for store in stores:
        value = values.get(store)
        subject = f"store {store}" if per_store else "the cluster"
        if value is not None and math.isnan(value) and metric.idle_holds:
            message = f"{name} of {subject}: no traffic (idle), nothing to judge against {rule.threshold:g}{rule.unit}"
            findings.append(Finding(name, store, Verdict.HOLDS, invariant.severity, message, None, rule.threshold,
                                    result.query))  # fmt: skip
            continue
        if per_store and store not in pod_names:
            # A store with a ticket that the selector no longer picks (scaled away, or relabelled out of the
            # cluster): it is no longer this cluster's to judge, whatever its series still say. storesReady judges a
            # missing pod; this invariant lets its ticket resolve (after clearFor) with a reason that says why.
            message = f"{name}: store {store} is no longer one of the cluster's selected store pods"
            findings.append(Finding(name, store, Verdict.HOLDS, invariant.severity, message, None, rule.threshold,
                                    result.query))  # fmt: skip
            continue
        if value is None or math.isnan(value):
            message = f"No {name} series for store {store}" if per_store else f"No {name} series"
            findings.append(_unknown(name, invariant, store, Reason.NO_SERIES, message, result))
            continue
        verdict = rule.verdict(value)
        relation = {Verdict.VIOLATED: "breaks", Verdict.MARGINAL: "is recovering within", Verdict.HOLDS: "is within"}
        limit = f"{rule.comparator} {rule.threshold:g}{rule.unit}"
        message = f"{name} of {subject} is {value:.4g}{rule.unit}, {relation[verdict]} threshold {limit}"
        findings.append(Finding(name, store, verdict, invariant.severity, message, value, rule.threshold, result.query))
    return findings


def _values_by_store(result: QueryResult, *, per_store: bool, comparator: str) -> dict[str, float]:
    """Per-store values; for a cluster-scoped invariant, the worst value of any series. Several series for one store
    (a query that does not aggregate) count by their worst value, never by whichever came last."""
    worst = max if comparator in (">", ">=") else min
    grouped: dict[str, list[float]] = {}
    for sample in result.samples:
        store = sample.store if per_store else CLUSTER_STORE
        if store is not None:
            grouped.setdefault(store, []).append(sample.value)
    return {store: _worst(values, worst) for store, values in grouped.items()}


def _worst(values: list[float], worst: Callable[[list[float]], float]) -> float:
    """The worst number; NaN only if every value is NaN (a store with no traffic, or a series with no data)."""
    numbers = [value for value in values if not math.isnan(value)]
    return worst(numbers) if numbers else math.nan


def _unknown(
    name: str, invariant: InvariantSpec, store: str, reason: Reason, message: str, result: QueryResult | None
) -> Finding:
    query = result.query if result else ""
    return Finding(name, store, Verdict.UNKNOWN, invariant.severity, message, query=query, unknown_reason=reason)


def invariant_names(spec: MonitoredClusterSpec) -> list[str]:
    """The invariants this spec checks, built-in first, in a stable order (each has a condition)."""
    ready = [Invariant.STORES_READY.value] if spec.invariants.stores_ready.enabled else []
    return ready + [metric.name for metric in metric_invariants(spec)]


def invariant_spec(spec: MonitoredClusterSpec, name: str) -> InvariantSpec | None:
    """The settings of one invariant by name (None if it no longer exists)."""
    inv = spec.invariants
    builtin: dict[str, InvariantSpec] = {
        Invariant.STORES_READY: inv.stores_ready,
        Invariant.LATENCY: inv.latency,
        Invariant.DISK_USAGE: inv.disk_usage,
        Invariant.CRITICAL_ERRORS: inv.critical_errors,
        Invariant.WRITE_STALL: inv.write_stall,
        Invariant.PD_STORES: inv.pd_stores,
        Invariant.PD_REGIONS: inv.pd_regions,
    }
    if name in builtin:
        return builtin[name]
    return next((custom for custom in inv.custom if custom.name == name), None)
