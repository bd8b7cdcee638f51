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
from operator_k8s.domain.specs import CustomInvariantSpec, InvariantSpec, MonitoredClusterSpec
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


def evaluate(spec: MonitoredClusterSpec, snapshot: Snapshot) -> list[Finding]:
    """All findings for one cycle, in a stable order (invariant, then store)."""
    findings: list[Finding] = []
    invariants = spec.invariants
    if invariants.stores_ready.enabled:
        findings += _stores_ready(spec, snapshot)
    pod_stores = [pod.name for pod in snapshot.pods]
    if invariants.latency.enabled:
        rule = Rule(">", invariants.latency.threshold_ms, invariants.latency.clear_threshold_ms, "ms")
        findings += _metric(Invariant.LATENCY, invariants.latency, rule, snapshot, pod_stores, per_store=True)
    if invariants.disk_usage.enabled:
        disk = invariants.disk_usage
        rule = Rule(">", disk.threshold_percent, disk.clear_threshold_percent, "%")
        findings += _metric(Invariant.DISK_USAGE, disk, rule, snapshot, pod_stores, per_store=True)
    for custom in invariants.custom:
        if custom.enabled:
            rule = Rule(custom.comparator, custom.threshold, custom.clear_threshold, "")
            findings += _metric(custom.name, custom, rule, snapshot, pod_stores, per_store=custom.scope == "store")
    return findings


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
    missing_count = 0 if expected is None else max(0, expected - len(snapshot.pods))
    for store in sorted(snapshot.tracked_stores.get(name, frozenset()) - present - {CLUSTER_STORE}):
        # A store with an active ticket whose pod vanished: still down while the cluster is short of pods.
        verdict = Verdict.VIOLATED if missing_count else Verdict.HOLDS
        findings.append(Finding(name, store, verdict, severity, f"Store pod {store} does not exist"))
    if expected is not None:
        observed = len(snapshot.pods)
        verdict = Verdict.VIOLATED if missing_count else Verdict.HOLDS
        message = f"{observed} of {expected} expected store pods exist"
        findings.append(Finding(name, CLUSTER_STORE, verdict, severity, message, float(observed), float(expected)))
    return findings


def _metric(
    name: str,
    invariant: InvariantSpec,
    rule: Rule,
    snapshot: Snapshot,
    pod_stores: Iterable[str],
    *,
    per_store: bool,
) -> list[Finding]:
    result = snapshot.results.get(name)
    tracked = snapshot.tracked_stores.get(name, frozenset())
    stores = sorted(set(pod_stores) | tracked) if per_store else [CLUSTER_STORE]
    if result is None or result.failure is not None:
        reason = Reason.PROMETHEUS_UNREACHABLE if result and result.failure == "unreachable" else Reason.QUERY_FAILED
        error = result.error if result else "not queried"
        return [_unknown(name, invariant, store, reason, f"Query failed: {error}", result) for store in stores]
    values = _values_by_store(result, per_store=per_store, comparator=rule.comparator)
    findings = []
    for store in stores:
        value = values.get(store)
        if value is None or math.isnan(value):
            message = f"No {name} series for store {store}" if per_store else f"No {name} series"
            findings.append(_unknown(name, invariant, store, Reason.NO_SERIES, message, result))
            continue
        verdict = rule.verdict(value)
        subject = f"store {store}" if per_store else "the cluster"
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
        if math.isnan(sample.value):
            continue
        store = sample.store if per_store else CLUSTER_STORE
        if store is not None:
            grouped.setdefault(store, []).append(sample.value)
    return {store: worst(values) for store, values in grouped.items()}


def _unknown(
    name: str, invariant: InvariantSpec, store: str, reason: Reason, message: str, result: QueryResult | None
) -> Finding:
    query = result.query if result else ""
    return Finding(name, store, Verdict.UNKNOWN, invariant.severity, message, query=query, unknown_reason=reason)


def invariant_names(spec: MonitoredClusterSpec) -> list[str]:
    """The enabled invariants, built-in first, in a stable order."""
    builtin: list[tuple[str, InvariantSpec]] = [
        (Invariant.STORES_READY, spec.invariants.stores_ready),
        (Invariant.LATENCY, spec.invariants.latency),
        (Invariant.DISK_USAGE, spec.invariants.disk_usage),
    ]
    custom: list[tuple[str, CustomInvariantSpec]] = [(c.name, c) for c in spec.invariants.custom]
    return [name for name, inv in [*builtin, *custom] if inv.enabled]


def invariant_spec(spec: MonitoredClusterSpec, name: str) -> InvariantSpec | None:
    """The settings of one invariant by name (None if it no longer exists)."""
    builtin: dict[str, InvariantSpec] = {
        Invariant.STORES_READY: spec.invariants.stores_ready,
        Invariant.LATENCY: spec.invariants.latency,
        Invariant.DISK_USAGE: spec.invariants.disk_usage,
    }
    if name in builtin:
        return builtin[name]
    return next((custom for custom in spec.invariants.custom if custom.name == name), None)
