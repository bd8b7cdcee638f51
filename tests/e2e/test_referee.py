"""The referee (issue 9, item 5): for every fault and control, in both label worlds, the operator's verdict per store
agrees with alerting rules written from TiKV's and PD's own, evaluated by the stack's real Prometheus on the same data;
controls stay silent on both sides. ``make referee`` runs the same on a stack of its own and writes the README's table.
"""

from __future__ import annotations

import pytest

from devstack.jobs import referee
from devstack.world.stack import Stack

pytestmark = pytest.mark.stack


@pytest.mark.level("low")  # every fault case in both worlds: the full run (make referee runs it alone)
def test_operator_and_upstream_rules_agree_on_every_fault_in_both_worlds(stack: Stack) -> None:
    referee.load_rules(stack, referee.referee_rules())
    report = referee.run(stack)
    print("\n" + report.markdown() + report.summary(), flush=True)
    assert len(report.outcomes) == len(referee.CASES)
    assert {o.case.name for o in report.outcomes} >= {"none", "contention", "idle", "rolling-restart"}
    assert report.disagreements == 0, report.markdown()
    assert report.unexpected == 0, report.markdown()
