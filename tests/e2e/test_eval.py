"""The fault catalogue's fast subset on the real stack (issue 18, item 4): ``make eval`` runs every case; this runs
``faults.FAST_SUBSET`` with the module's operator process and asserts what the rules of today can honestly meet.

What is asserted follows from the catalogue, not from a recorded run: every expected ticket opens and nothing else
does; a control stays silent (no ticket, no diagnosis); a cause whose rule exists is named first; a cause whose rule
does not exist yet (``faults.FUTURE_RULES``, empty today) is Unknown or, once the rule lands, right: never a confident
wrong one.
"""

from __future__ import annotations

import pytest

from devstack.jobs import eval as evaluation
from devstack.jobs import faults
from devstack.jobs.scoring import ABSTAINED, RIGHT
from devstack.world.stack import Stack
from tests.e2e.support import SharedOperator
from tests.stackutil import report

pytestmark = pytest.mark.stack


@pytest.mark.level("medium")
def test_the_fast_subset_of_the_fault_catalogue_opens_every_ticket_and_names_every_cause_a_rule_exists_for(
    stack: Stack, shared: SharedOperator
) -> None:
    cases = faults.select(faults.FAST_SUBSET)
    result = evaluation.run(stack, shared.running(), cases, lanes=3)
    table = result.markdown()
    print("\n" + table, flush=True)
    summary = result.summary
    assert [s.name for s in result.scores] == [c.name for c in cases]
    assert summary.unsettled == [], table
    assert summary.missed_tickets == 0 and summary.false_positives == 0, table
    assert summary.control_cases >= 1 and summary.control_tickets == 0 and summary.control_diagnoses == 0, table
    judged = [(s.name, j) for s in result.scores for j in s.judged]
    for name, j in judged:
        allowed = {RIGHT, ABSTAINED} if j.expected in faults.FUTURE_RULES else {RIGHT}
        assert j.outcome in allowed, f"{name}: {j.expected} → {j.top} ({j.outcome})\n{table}"
    assert summary.evidence_p95_seconds is not None and summary.evidence_p95_seconds <= 5, table
    report("eval-subset", cases=len(cases), seconds=result.seconds, evidence_p95_s=summary.evidence_p95_seconds)
