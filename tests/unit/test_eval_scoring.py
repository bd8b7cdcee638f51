"""The fault catalogue's shape and its scoring (devstack.jobs.faults, devstack.jobs.scoring): pure, no stack."""

from __future__ import annotations

import math

import pytest

from devstack.jobs import faults, scoring
from devstack.jobs.faults import CLUSTER, UNKNOWN, Action, Case, Expected
from devstack.jobs.scoring import ABSTAINED, MISSED, RIGHT, WRONG, Observed, judge, score_case, summarize
from devstack.storeworld.model import Fault
from operator_k8s.domain.specs import InvariantsSpec

OOM = Case("oom/seen", "oom", "seen", "oom", (Action("down"),),
           (Expected("storesReady", 1, "memory-limit"), Expected("pdStores", CLUSTER)))  # fmt: skip
OOM_HELD = Case("oom/store", "oom", "store", "oom", (Action("down", 2),),
                (Expected("storesReady", 2, "memory-limit"), Expected("pdStores", CLUSTER)))  # fmt: skip
DISK = Case("disk/seen", "disk", "seen", "disk", (Action("disk"),), (Expected("diskUsage", 1, UNKNOWN),))
CONTROL = Case("idle", "idle", "control", "idle", (Action("idle"),), control=True)


# -- the catalogue ---------------------------------------------------------------------------------------------------


def test_the_catalogue_has_what_the_issue_counts() -> None:
    shape = faults.listing()
    assert shape.faults >= 12
    assert min(shape.held_out_per_fault.values()) >= 3
    assert shape.controls >= 4
    names = [c.name for c in faults.CASES]
    assert len(names) == len(set(names))
    assert {"contention", "idle", "rolling-restart", "scale-out"} <= {c.name for c in faults.CASES if c.control}
    assert any(c.cross for c in faults.CASES), "faults whose symptom shows on another invariant than the cause"
    assert sum(1 for f in faults.FAULTS if len({a.store for a in f.inject(1, f.magnitude)}) > 1) >= 2, "combined"


def test_every_case_speaks_the_store_worlds_and_the_operators_vocabulary() -> None:
    invariants = {field.alias or name for name, field in InvariantsSpec.model_fields.items()} - {"custom"}
    kinds = {str(f) for f in Fault}
    for case in faults.CASES:
        assert all(a.fault in kinds for a in case.actions if a.fault), case.name
        assert {e.invariant for e in case.expected} <= invariants, case.name
        assert all(e.store is None or e.store < case.stores for e in case.expected), case.name
        if not case.control:
            assert any(e.cause for e in case.expected), f"{case.name} scores no cause"
        else:
            assert not case.expected


def test_held_out_variants_differ_from_the_seen_one() -> None:
    for fault in faults.FAULTS:
        seen, *held = [c for c in faults.CASES if c.fault == fault.name]
        assert seen.variant == "seen" and not seen.held_out
        for case in held:
            assert case.held_out and (case.actions, case.before_monitoring, case.stores) != (
                seen.actions, seen.before_monitoring, seen.stores), case.name  # fmt: skip


def test_a_selection_names_cases_or_whole_faults_and_refuses_unknown_names() -> None:
    assert [c.name for c in faults.select(["oom-kill/seen", "idle"])] == ["oom-kill/seen", "idle"]
    assert len(faults.select(["hung"])) == 5
    assert faults.select(list(faults.FAST_SUBSET))
    with pytest.raises(ValueError, match="nope"):
        faults.select(["nope"])


# -- scoring ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "observed", "outcome"),
    [
        ("memory-limit", Observed("storesReady", 1, ("memory-limit", "restart-loop")), RIGHT),
        ("memory-limit", Observed("storesReady", 1, ("restart-loop",)), WRONG),
        ("memory-limit", Observed("storesReady", 1, ()), ABSTAINED),
        ("memory-limit", None, MISSED),
        (UNKNOWN, Observed("diskUsage", 1, ()), RIGHT),
        (UNKNOWN, Observed("diskUsage", 1, ("disk-other",)), WRONG),
        (UNKNOWN, None, MISSED),
    ],
)
def test_a_cause_is_right_wrong_abstained_or_missed(expected: str, observed: Observed | None, outcome: str) -> None:
    assert judge(expected, observed) == outcome


def test_a_case_counts_expected_unexpected_and_missing_tickets() -> None:
    score = score_case(OOM, [Observed("storesReady", 1, ("memory-limit",)), Observed("latency", 0)])
    assert (score.true_positives, score.false_positives, score.missed) == (1, 1, 1)
    assert [(j.invariant, j.outcome) for j in score.judged] == [("storesReady", RIGHT)]
    assert score.diagnoses == 1
    assert score.opened == [("latency", 0), ("storesReady", 1)]


def test_a_companion_ticket_is_counted_but_its_cause_is_not_scored() -> None:
    score = score_case(OOM, [Observed("storesReady", 1, ("memory-limit",)), Observed("pdStores", None)])
    assert (score.true_positives, score.false_positives, score.missed) == (2, 0, 0)
    assert len(score.judged) == 1


def test_the_summary_keeps_seen_held_out_and_controls_apart() -> None:
    scores = [
        score_case(OOM, [Observed("storesReady", 1, ("memory-limit",)), Observed("pdStores", None)]),
        score_case(OOM_HELD, [Observed("storesReady", 2, ()), Observed("pdStores", None)]),
        score_case(DISK, [Observed("diskUsage", 1, ("disk-other",))]),
        score_case(CONTROL, [Observed("latency", 1, ("slow-store",))], settled=False),
    ]
    summary = summarize(scores, [1.0, 2.0, 9.0])
    assert (summary.seen.right, summary.seen.wrong, summary.seen.total) == (1, 1, 2)
    assert (summary.held_out.abstained, summary.held_out.total) == (1, 1)
    assert summary.all.rate(WRONG) == pytest.approx(1 / 3)
    assert (summary.control_tickets, summary.control_diagnoses, summary.control_cases) == (1, 1, 1)
    assert summary.precision == pytest.approx(5 / 6) and summary.recall == 1.0
    assert summary.unsettled == ["idle"]
    assert summary.evidence_p95_seconds == 9.0
    targets = summary.targets()
    assert targets["every expected ticket opened"]
    assert not targets["0 tickets and 0 diagnoses on controls"]
    assert not targets["top-1 right on >= 90 % of seen"] and not targets["wrong cause <= 5 %"]


def test_targets_are_met_only_by_a_run_that_meets_them() -> None:
    perfect = summarize([score_case(OOM, [Observed("storesReady", 1, ("memory-limit",)), Observed("pdStores", None)]),
                         score_case(OOM_HELD, [Observed("storesReady", 2, ("memory-limit",)),
                                               Observed("pdStores", None)]),
                         score_case(CONTROL, [])])  # fmt: skip
    assert all(perfect.targets().values())
    empty = summarize([])
    assert math.isnan(empty.precision) and not any(empty.targets().values())


def test_the_tables_show_every_case_and_the_targets() -> None:
    scores = [score_case(OOM, [Observed("storesReady", 1, ())]), score_case(CONTROL, [])]
    summary = summarize(scores)
    table = scoring.summary_markdown(summary)
    assert "| abstained (Unknown) | 100 % (1/1) |" in table
    assert "0 tickets and 0 diagnoses on controls: met" in table
    rows = scoring.cases_markdown(scores)
    assert "| oom/seen | pdStores/cluster, storesReady/1 | storesReady/1 | memory-limit → unknown | abstained |" in rows
    assert "| idle | none | none | — | silent |" in rows
    assert "| oom | 1/2 | abstained | 0/0 |" in scoring.by_fault_markdown(scores)
    assert summary.to_json()["seen"]["abstained_rate"] == 1.0
