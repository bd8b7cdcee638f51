"""Invariant evaluation, table-driven: values in, verdicts out."""

from __future__ import annotations

import math

import pytest

from operator_k8s.domain.invariants import Rule, Verdict, evaluate
from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample
from operator_k8s.domain.vocabulary import Reason
from tests.unit.builders import pods, result, snapshot, spec

NO_METRICS = {
    "latency": {"enabled": False},
    "diskUsage": {"enabled": False},
    "criticalErrors": {"enabled": False},
    "writeStall": {"enabled": False},
}


def verdicts(findings: list, invariant: str) -> dict[str, Verdict]:
    return {f.store: f.verdict for f in findings if f.invariant == invariant}


@pytest.mark.parametrize(
    ("states", "expected_count", "want"),
    [
        (("ready", "ready", "ready"), 3, {"tikv-0": "Holds", "tikv-1": "Holds", "tikv-2": "Holds", "cluster": "Holds"}),
        (
            ("ready", "notready", "ready"),
            3,
            {"tikv-0": "Holds", "tikv-1": "Violated", "tikv-2": "Holds", "cluster": "Holds"},
        ),
        (
            ("ready", "pending", "ready"),
            3,
            {"tikv-0": "Holds", "tikv-1": "Violated", "tikv-2": "Holds", "cluster": "Holds"},
        ),
        (("ready", "ready"), 3, {"tikv-0": "Holds", "tikv-1": "Holds", "cluster": "Violated"}),
        ((), 3, {"cluster": "Violated"}),
        ((), 0, {"cluster": "Holds"}),
    ],
    ids=["all-ready", "one-not-ready", "one-pending", "one-missing", "none-exist", "none-expected"],
)
def test_stores_ready(states: tuple[str, ...], expected_count: int, want: dict[str, str]) -> None:
    cluster = spec(invariants=NO_METRICS, stores={"selector": {"matchLabels": {"a": "b"}}, "expected": expected_count})
    assert verdicts(evaluate(cluster, snapshot(pods(*states))), "storesReady") == want


def test_stores_ready_without_expected_count_judges_only_pods() -> None:
    cluster = spec(invariants=NO_METRICS, stores={"selector": {"matchLabels": {"a": "b"}}})
    assert verdicts(evaluate(cluster, snapshot(pods("ready", "notready"))), "storesReady") == {
        "tikv-0": Verdict.HOLDS,
        "tikv-1": Verdict.VIOLATED,
    }


@pytest.mark.parametrize(
    ("short_of_pods", "want"), [(True, Verdict.VIOLATED), (False, Verdict.HOLDS)], ids=["still-missing", "replaced"]
)
def test_tracked_store_whose_pod_vanished(short_of_pods: bool, want: Verdict) -> None:
    """A store with a ticket but no pod stays violated while the cluster is short of pods: never Unknown."""
    present = pods("ready", "ready") if short_of_pods else pods("ready", "ready", "ready")
    found = evaluate(spec(invariants=NO_METRICS), snapshot(present, tracked={"storesReady": frozenset({"tikv-9"})}))
    assert verdicts(found, "storesReady")["tikv-9"] == want


@pytest.mark.parametrize(
    ("latency_ms", "clear_ms", "want"),
    [
        (100.0, None, Verdict.HOLDS),
        (500.0, None, Verdict.HOLDS),
        (500.1, None, Verdict.VIOLATED),
        (400.0, 300.0, Verdict.MARGINAL),
        (300.0, 300.0, Verdict.HOLDS),
        (299.0, 300.0, Verdict.HOLDS),
        (math.nan, None, Verdict.HOLDS),  # no traffic (an idle store): nothing slow, not missing data
    ],
    ids=["under", "at-threshold", "over", "hysteresis-band", "at-clear", "under-clear", "nan"],
)
def test_latency_against_threshold(latency_ms: float, clear_ms: float | None, want: Verdict) -> None:
    latency = {"thresholdMs": 500, **({"clearThresholdMs": clear_ms} if clear_ms else {})}
    cluster = spec(invariants={"latency": latency, "diskUsage": {"enabled": False}})
    found = evaluate(cluster, snapshot(pods("ready"), {"latency": result(**{"tikv-0": latency_ms})}))
    assert verdicts(found, "latency") == {"tikv-0": want}


def test_store_without_series_is_unknown_not_holds() -> None:
    cluster = spec(invariants={"diskUsage": {"enabled": False}})
    found = evaluate(cluster, snapshot(pods("ready", "ready"), {"latency": result(**{"tikv-0": 1.0})}))
    by_store = {f.store: f for f in found if f.invariant == "latency"}
    assert by_store["tikv-0"].verdict is Verdict.HOLDS
    assert by_store["tikv-1"].verdict is Verdict.UNKNOWN
    assert by_store["tikv-1"].unknown_reason is Reason.NO_SERIES


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(QueryFailure.UNREACHABLE, Reason.PROMETHEUS_UNREACHABLE), (QueryFailure.ERROR, Reason.QUERY_FAILED)],
)
def test_failed_query_makes_every_store_unknown(failure: QueryFailure, reason: Reason) -> None:
    cluster = spec(invariants={"diskUsage": {"enabled": False}})
    failed = QueryResult.failed("q", failure, "boom")
    found = [
        f for f in evaluate(cluster, snapshot(pods("ready", "ready"), {"latency": failed})) if f.invariant == "latency"
    ]
    assert [(f.store, f.verdict, f.unknown_reason) for f in found] == [
        ("tikv-0", Verdict.UNKNOWN, reason),
        ("tikv-1", Verdict.UNKNOWN, reason),
    ]


def test_series_for_a_store_that_is_not_ours_is_never_judged() -> None:
    cluster = spec(invariants={"diskUsage": {"enabled": False}})
    found = evaluate(cluster, snapshot(pods("ready"), {"latency": result(**{"tikv-0": 1.0, "tikv-7": 900.0})}))
    assert verdicts(found, "latency") == {"tikv-0": Verdict.HOLDS}


def test_a_tracked_store_that_left_the_selection_is_no_longer_judged_on_its_series() -> None:
    """Its ticket ends (after clearFor) with a reason that says why, instead of waiting for the store to heal."""
    cluster = spec(invariants={"diskUsage": {"enabled": False}})
    tracked = {"latency": frozenset({"tikv-7"})}
    found = evaluate(cluster, snapshot(pods("ready"), {"latency": result(**{"tikv-0": 1.0, "tikv-7": 900.0})}, tracked))
    assert verdicts(found, "latency") == {"tikv-0": Verdict.HOLDS, "tikv-7": Verdict.HOLDS}
    left = next(f for f in found if f.store == "tikv-7")
    assert "no longer one of the cluster's selected store pods" in left.message


def test_several_series_for_one_store_count_by_their_worst_value() -> None:
    cluster = spec(invariants={"diskUsage": {"enabled": False}})
    twice = QueryResult("q", (Sample("tikv-0", 900.0), Sample("tikv-0", 1.0)))
    assert verdicts(evaluate(cluster, snapshot(pods("ready"), {"latency": twice})), "latency") == {
        "tikv-0": Verdict.VIOLATED
    }


def test_disk_usage_percent() -> None:
    cluster = spec(invariants={"latency": {"enabled": False}, "diskUsage": {"thresholdPercent": 85}})
    found = evaluate(
        cluster, snapshot(pods("ready", "ready"), {"diskUsage": result(**{"tikv-0": 40.0, "tikv-1": 95.0})})
    )
    assert verdicts(found, "diskUsage") == {"tikv-0": Verdict.HOLDS, "tikv-1": Verdict.VIOLATED}


@pytest.mark.parametrize(
    ("comparator", "value", "clear", "want"),
    [
        (">", 2.0, None, Verdict.VIOLATED),
        (">", 1.0, None, Verdict.HOLDS),
        (">=", 1.0, None, Verdict.VIOLATED),
        ("<", 0.5, None, Verdict.VIOLATED),
        ("<", 1.0, None, Verdict.HOLDS),
        ("<=", 1.0, None, Verdict.VIOLATED),
        ("<", 1.5, 2.0, Verdict.MARGINAL),
        ("<", 2.5, 2.0, Verdict.HOLDS),
        (">", 0.8, 0.5, Verdict.MARGINAL),
    ],
)
def test_rule_comparators(comparator: str, value: float, clear: float | None, want: Verdict) -> None:
    assert Rule(comparator, 1.0, clear, "").verdict(value) is want


def test_custom_cluster_scope_takes_the_worst_series() -> None:
    custom = [{"name": "lag", "query": "max(lag)", "comparator": ">", "threshold": 10, "scope": "cluster"}]
    cluster = spec(invariants={**NO_METRICS, "custom": custom})
    found = evaluate(cluster, snapshot(pods("ready"), {"lag": result(**{"a": 3.0, "b": 12.0})}))
    assert verdicts(found, "lag") == {"cluster": Verdict.VIOLATED}


def test_custom_cluster_scope_without_series_is_unknown() -> None:
    custom = [{"name": "lag", "query": "max(lag)", "comparator": ">", "threshold": 10, "scope": "cluster"}]
    found = evaluate(spec(invariants={**NO_METRICS, "custom": custom}), snapshot(pods("ready"), {"lag": result()}))
    assert verdicts(found, "lag") == {"cluster": Verdict.UNKNOWN}


def test_disabled_invariants_produce_no_findings() -> None:
    cluster = spec(invariants={**NO_METRICS, "storesReady": {"enabled": False}})
    assert evaluate(cluster, snapshot(pods("notready"))) == []


def test_a_tracked_store_whose_pod_is_gone_holds_when_it_reports_nothing() -> None:
    """Scaled away: its latency ticket resolves instead of staying Unknown for ever."""
    cluster = spec(invariants={"diskUsage": {"enabled": False}})
    found = evaluate(cluster, snapshot(pods("ready"), {"latency": result(**{"tikv-0": 1.0})},
                                       {"latency": frozenset({"tikv-7"})}))  # fmt: skip
    assert verdicts(found, "latency") == {"tikv-0": Verdict.HOLDS, "tikv-7": Verdict.HOLDS}
