"""The ticket state machine, table-driven: (ticket, finding, time, policy) → (ticket, effects)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from operator_k8s.domain.invariants import Verdict
from operator_k8s.domain.notices import with_notices
from operator_k8s.domain.tickets import (
    EffectKind,
    HumanEdit,
    Ticket,
    TicketState,
    Transition,
    apply_human_intent,
    flap_percent,
    retire,
    transition,
)
from operator_k8s.domain.vocabulary import Severity
from tests.unit.builders import KEY, at, finding, policy, ticket

V, M, H, U = Verdict.VIOLATED, Verdict.MARGINAL, Verdict.HOLDS, Verdict.UNKNOWN


def step(current, verdict, seconds, pol=None, severity=Severity.WARNING):  # type: ignore[no-untyped-def]
    return transition(
        current, finding(verdict, severity), at(seconds), pol or policy(), key=KEY, namespace="ns", cluster_name="tikv"
    )


def kinds(result) -> list[EffectKind]:  # type: ignore[no-untyped-def]
    return [e.kind for e in result.effects]


@pytest.mark.parametrize("verdict", [H, M, U])
def test_no_ticket_and_no_violation_does_nothing(verdict: Verdict) -> None:
    result = step(None, verdict, 0)
    assert result.after is None
    assert not result.changed


def test_violation_without_grace_opens_at_once() -> None:
    result = step(None, V, 0)
    assert result.after is not None
    assert result.after.state is TicketState.OPEN
    assert result.after.occurrences == 1
    assert result.after.snapshot["value"] == 1.0
    assert kinds(result) == [EffectKind.PENDING, EffectKind.OPENED]


@pytest.mark.parametrize(
    ("seconds", "state"), [(0, TicketState.PENDING), (29.9, TicketState.PENDING), (30, TicketState.OPEN)]
)
def test_onset_grace(seconds: float, state: TicketState) -> None:
    pending = step(None, V, 0, policy(onset=30)).after
    assert pending is not None and pending.state is TicketState.PENDING
    result = step(pending, V, seconds, policy(onset=30))
    assert result.after is not None
    assert result.after.state is state
    assert result.after.violating_since == at(0), "the countdown starts at the first violation, not at each cycle"


@pytest.mark.parametrize(("verdict", "cancelled"), [(H, True), (M, True), (U, False)])
def test_pending_cancelled_only_by_known_recovery(verdict: Verdict, cancelled: bool) -> None:
    pending = step(None, V, 0, policy(onset=30)).after
    result = step(pending, verdict, 10, policy(onset=30))
    assert (result.after is None) is cancelled
    if cancelled:
        assert kinds(result) == [EffectKind.CANCELLED]
    else:
        assert result.after == pending, "Unknown keeps the countdown untouched"


@pytest.mark.parametrize(
    ("sequence", "final_state"),
    [
        ([(H, 0)], TicketState.RESOLVED),
        ([(H, 0), (H, 59)], TicketState.OPEN),
        ([(H, 0), (H, 60)], TicketState.RESOLVED),
        ([(H, 0), (U, 30), (H, 60)], TicketState.OPEN),
        ([(H, 0), (M, 30), (H, 60)], TicketState.OPEN),
        ([(H, 0), (M, 30), (H, 60), (H, 120)], TicketState.RESOLVED),
        ([(U, 0), (U, 1000)], TicketState.OPEN),
    ],
    ids=[
        "no-grace",
        "grace-not-elapsed",
        "grace-elapsed",
        "unknown-resets",
        "band-resets",
        "band-then-clear",
        "unknown-never-resolves",
    ],
)
def test_clear_grace(sequence: list[tuple[Verdict, float]], final_state: TicketState) -> None:
    pol = policy(clear=60) if len(sequence) > 1 or sequence[0][0] is not H else policy()
    current = ticket(TicketState.OPEN)
    for verdict, seconds in sequence:
        current = step(current, verdict, seconds, pol).after
    assert current.state is final_state


def test_resolution_records_time_and_effect() -> None:
    result = step(ticket(TicketState.OPEN), H, 5)
    assert result.after is not None
    assert result.after.resolved_at == at(5)
    assert kinds(result) == [EffectKind.RESOLVED]


@pytest.mark.parametrize("state", [TicketState.OPEN, TicketState.ACKNOWLEDGED])
def test_hold_prevents_auto_resolve(state: TicketState) -> None:
    result = step(ticket(state, hold=True), H, 1000)
    assert result.after is not None
    assert result.after.state is state
    assert not result.effects


def test_violation_again_before_clear_grace_is_a_new_occurrence() -> None:
    clearing = step(ticket(TicketState.OPEN), H, 0, policy(clear=60)).after
    result = step(clearing, V, 10, policy(clear=60))
    assert result.after is not None
    assert result.after.occurrences == 2
    assert result.after.clearing_since is None
    assert kinds(result) == [EffectKind.RECURRED]


def test_steady_violation_only_moves_last_seen() -> None:
    result = step(ticket(TicketState.OPEN), V, 10)
    assert result.after == replace(ticket(TicketState.OPEN), last_seen=at(10), message=finding(V).message)
    assert not result.effects


def test_severity_rise_escalates_with_a_new_snapshot() -> None:
    result = step(ticket(TicketState.OPEN), V, 10, severity=Severity.CRITICAL)
    assert result.after is not None
    assert result.after.severity is Severity.CRITICAL
    assert result.after.snapshot["at"] == at(10).isoformat()
    assert kinds(result) == [EffectKind.ESCALATED]


@pytest.mark.parametrize(
    ("resolved_ago", "reopens"), [(60, True), (600, True), (601, False)], ids=["soon", "at-window", "later"]
)
def test_recurrence_after_resolution(resolved_ago: float, reopens: bool) -> None:
    resolved = ticket(TicketState.RESOLVED, resolved_at=at(0))
    result = step(resolved, V, resolved_ago)
    assert result.after is not None
    assert result.after.state is TicketState.OPEN
    if reopens:
        assert result.after.id == resolved.id
        assert result.after.occurrences == 2
        assert kinds(result) == [EffectKind.REOPENED]
    else:
        assert result.after.id is None, "a later recurrence is a new ticket"
        assert result.after.occurrences == 1
        assert kinds(result) == [EffectKind.PENDING, EffectKind.OPENED]


def test_reopen_respects_onset_grace() -> None:
    resolved = ticket(TicketState.RESOLVED, resolved_at=at(0))
    waiting = step(resolved, V, 10, policy(onset=30)).after
    assert waiting is not None
    assert waiting.state is TicketState.RESOLVED
    assert waiting.violating_since == at(10)
    assert step(waiting, V, 40, policy(onset=30)).after.state is TicketState.OPEN
    assert step(waiting, H, 20, policy(onset=30)).after.violating_since is None


@pytest.mark.parametrize(
    ("state", "held", "edit", "want_state", "want_hold", "want_kinds"),
    [
        (TicketState.OPEN, False, HumanEdit(acknowledged=True), TicketState.ACKNOWLEDGED, False,
         [EffectKind.ACKNOWLEDGED]),
        (TicketState.ACKNOWLEDGED, False, HumanEdit(acknowledged=False), TicketState.OPEN, False,
         [EffectKind.ACKNOWLEDGED]),
        (TicketState.OPEN, False, HumanEdit(hold=True), TicketState.OPEN, True, [EffectKind.HELD]),
        (TicketState.RESOLVED, False, HumanEdit(acknowledged=True), TicketState.RESOLVED, False, []),
        # Acknowledging never touches a hold, and releasing never touches an acknowledgement.
        (TicketState.OPEN, True, HumanEdit(acknowledged=True), TicketState.ACKNOWLEDGED, True,
         [EffectKind.ACKNOWLEDGED]),
        (TicketState.ACKNOWLEDGED, True, HumanEdit(hold=False), TicketState.ACKNOWLEDGED, False,
         [EffectKind.RELEASED]),
        (TicketState.OPEN, True, HumanEdit(), TicketState.OPEN, True, []),
        # A probable cause found is not a human taking the ticket: a diagnosed one is still acknowledged.
        (TicketState.DIAGNOSED, False, HumanEdit(acknowledged=True), TicketState.ACKNOWLEDGED, False,
         [EffectKind.ACKNOWLEDGED]),
        (TicketState.OPEN, False, HumanEdit(note="paging db team", note_changed=True), TicketState.OPEN, False,
         [EffectKind.NOTED]),
    ],
)  # fmt: skip
def test_human_intent(
    state: TicketState,
    held: bool,
    edit: HumanEdit,
    want_state: TicketState,
    want_hold: bool,
    want_kinds: list[EffectKind],
) -> None:
    current = ticket(state, acknowledged=state is TicketState.ACKNOWLEDGED, hold=held)
    result = apply_human_intent(current, edit, actor="kubernetes:kubectl-patch")
    assert result.after is not None
    assert (result.after.state, result.after.hold) == (want_state, want_hold)
    assert [e.kind for e in result.effects] == want_kinds
    assert all(e.actor == "kubernetes:kubectl-patch" for e in result.effects)


def test_withdrawing_an_acknowledgement_returns_to_the_diagnosis_it_had() -> None:
    acknowledged = ticket(TicketState.ACKNOWLEDGED, acknowledged=True, diagnosis="disk filled by other files: …")
    result = apply_human_intent(acknowledged, HumanEdit(acknowledged=False), actor="me")
    assert result.after is not None and result.after.state is TicketState.DIAGNOSED
    plain = apply_human_intent(replace(acknowledged, diagnosis=None), HumanEdit(acknowledged=False), actor="me")
    assert plain.after is not None and plain.after.state is TicketState.OPEN


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ({"hold": False, "acknowledged": False}, {"hold": False, "acknowledged": True}, HumanEdit(acknowledged=True)),
        ({"hold": True}, {"hold": False}, HumanEdit(hold=False)),
        ({"hold": True}, {"hold": True, "note": "x"}, HumanEdit(note="x", note_changed=True)),
        ({"note": "x"}, {}, HumanEdit(note=None, note_changed=True)),
        ({"hold": True}, {"hold": True}, HumanEdit()),
    ],
)
def test_an_edit_is_only_what_changed(old: dict[str, object], new: dict[str, object], want: HumanEdit) -> None:
    assert HumanEdit.between(old, new) == want


def test_releasing_a_hold_lets_the_next_cycle_resolve() -> None:
    held = ticket(TicketState.OPEN, hold=True)
    result = apply_human_intent(held, HumanEdit(hold=False), actor="me")
    released = result.after
    assert [e.kind for e in result.effects] == [EffectKind.RELEASED]
    assert step(released, H, 1).after.state is TicketState.RESOLVED


@pytest.mark.parametrize(
    ("state", "after_state"),
    [
        (TicketState.OPEN, TicketState.RESOLVED),
        (TicketState.PENDING, None),
        (TicketState.RESOLVED, TicketState.RESOLVED),
    ],
)
def test_retire(state: TicketState, after_state: TicketState | None) -> None:
    result = retire(ticket(state), at(5), "ClusterDeleted")
    assert (result.after.state if result.after else None) is after_state
    assert all(e.reason == "ClusterDeleted" for e in result.effects)


# -- Flapping ------------------------------------------------------------------------------------------------------


def _flap(verdicts: str, *, clear: float = 0, interval: float = 5) -> list[Transition]:
    """Run a ticket through one verdict per check (``V`` violated, ``H`` holds), ``interval`` seconds apart."""
    rules = replace(policy(clear=clear), interval=timedelta(seconds=interval))
    current: Ticket | None = None
    decided = []
    for i, letter in enumerate(verdicts):
        verdict = Verdict.VIOLATED if letter == "V" else Verdict.HOLDS
        result = transition(current, finding(verdict), at(i * interval), rules, key=KEY, namespace="ns",
                            cluster_name="tikv")  # fmt: skip
        decided.append(result)
        current = result.after if result.after is not None else current
    return decided


def _kinds(decided: list[Transition]) -> list[str]:
    return [effect.kind.value for item in decided for effect in item.effects]


@pytest.mark.parametrize(
    ("verdicts", "started", "stopped"),
    [
        ("V" + "H" * 20, 0, 0),  # one fault and its heal: two changes, no flapping
        ("VHVHVHVH" + "H" * 30, 1, 1),  # four flaps, then quiet for 30 checks
        ("VVVHHHVVVHHH" + "V" * 30, 1, 1),  # slower flaps, then a steady violation: stops, still open
        ("VHVHVHVHVHVHVHVHVHVHVHVH", 1, 0),  # flapping throughout
    ],
)
def test_flapping_starts_and_stops_once(verdicts: str, started: int, stopped: int) -> None:
    kinds = _kinds(_flap(verdicts))
    assert (kinds.count("FlappingStarted"), kinds.count("FlappingStopped")) == (started, stopped)


def test_a_flapping_ticket_tells_receivers_once_instead_of_a_pair_per_flap() -> None:
    decided = [with_notices(item, at(0)) for item in _flap("VHVHVHVHVHVH" + "H" * 30)]
    told = [e.notice.kind for item in decided for e in item.effects if e.notice is not None]
    assert told[0] == "opened"
    assert told.count("flapping_started") == told.count("flapping_stopped") == 1
    assert len(told) <= 5, f"a pair of notices per flap: {told}"
    (stopped,) = [
        e.notice for item in decided for e in item.effects if e.notice and e.notice.kind == "flapping_stopped"
    ]
    assert stopped.status == "resolved", "it stopped flapping resolved, and receivers resolve with it"
    occurrences = [item.after.occurrences for item in decided if item.after is not None]
    assert max(occurrences) == 6, "occurrences keep counting while it flaps"


@pytest.mark.parametrize(
    ("ages", "percent"),
    [((), 0.0), ((0,), 6.0), ((19,), 4.0), ((20,), 0.0), (tuple(range(20)), 100.0)],
)
def test_flap_percent_weighs_recent_changes_more(ages: tuple[int, ...], percent: float) -> None:
    now = at(1000)
    changes = tuple(now - timedelta(seconds=5 * age) for age in ages)
    assert flap_percent(changes, now, timedelta(seconds=5)) == pytest.approx(percent)


def test_a_flapping_ticket_retired_stops_flapping_and_its_receivers_hear_it_resolved() -> None:
    flapping = replace(ticket(TicketState.OPEN), flapping=True)
    item = with_notices(retire(flapping, at(0), "ClusterDeleted"), at(0))
    assert item.after is not None and not item.after.flapping
    told = [(e.notice.kind, e.notice.status) for e in item.effects if e.notice is not None]
    assert told == [("flapping_stopped", "resolved")], "one message, and it says resolved"


def test_a_resolved_flapping_ticket_past_its_reopen_window_stops_flapping() -> None:
    resolved = replace(ticket(TicketState.RESOLVED, resolved_at=at(0)), flapping=True)
    item = transition(resolved, finding(Verdict.HOLDS), at(700), policy(reopen=600), key=KEY, namespace="ns",
                      cluster_name="tikv")  # fmt: skip
    assert item.after is not None and not item.after.flapping
    assert [e.kind for e in item.effects] == [EffectKind.FLAPPING_STOPPED]
