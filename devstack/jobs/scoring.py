"""Scoring the fault catalogue: what the operator did on each case against what the case expects. Pure: no I/O.

Per case, tickets are compared as (invariant, store) pairs; each expected ticket that names a cause is judged on its
diagnosis's top-1 rule:

- **right**: the rule the case expects (or no rule, where the case expects ``unknown``);
- **wrong**: a rule, but not the expected one (confident and wrong: the outcome that sends people the wrong way);
- **abstained**: no rule (Unknown) where one was expected: honest, but no help;
- **missed**: the ticket never opened, so there was nothing to diagnose.

Over the run: ticket precision (opened tickets that were expected, controls included) and recall (expected tickets
that opened); top-1 accuracy for seen and held-out variants apart; wrong-cause and abstention rates apart; and the
tickets and diagnoses on controls, which must both be 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from devstack.jobs.faults import UNKNOWN, Case

RIGHT, WRONG, ABSTAINED, MISSED = "right", "wrong", "abstained", "missed"
TARGETS = {"recall": 1.0, "seen": 0.9, "held_out": 0.8, "wrong": 0.05}
"""The issue's targets: every expected ticket, top-1 ≥ 90 % seen and ≥ 80 % held-out, wrong-cause ≤ 5 %, and 0
tickets and 0 diagnoses on controls."""

Key = tuple[str, int | None]


@dataclass(frozen=True)
class Observed:
    """A ticket the operator opened during a case: its invariant, its store (index; ``None`` for ``cluster``), its
    diagnosis's rules in order (empty: Unknown), and how long its evidence took after it opened (if gathered)."""

    invariant: str
    store: int | None
    rules: tuple[str, ...] = ()
    evidence_seconds: float | None = None

    @property
    def key(self) -> Key:
        return (self.invariant, self.store)

    @property
    def top(self) -> str:
        return self.rules[0] if self.rules else UNKNOWN


@dataclass(frozen=True)
class Judged:
    invariant: str
    store: int | None
    expected: str
    top: str | None
    outcome: str


@dataclass(frozen=True)
class CaseScore:
    name: str
    fault: str
    variant: str
    control: bool
    held_out: bool
    expected: list[Key]
    opened: list[Key]
    true_positives: int
    false_positives: int
    missed: int
    judged: list[Judged]
    diagnoses: int
    """Opened tickets whose diagnosis named a rule (on a control, each is one too many)."""
    settled: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _label(key: Key) -> str:
    return f"{key[0]}/{'cluster' if key[1] is None else key[1]}"


def judge(expected: str, observed: Observed | None) -> str:
    """One expected cause against the ticket that opened for it (``None``: it did not)."""
    if observed is None:
        return MISSED
    if observed.top == expected:
        return RIGHT
    return ABSTAINED if observed.top == UNKNOWN else WRONG


def score_case(case: Case, observed: Sequence[Observed], *, settled: bool = True, seconds: float = 0.0) -> CaseScore:
    """How the operator did on one case."""
    expected = {(e.invariant, e.store) for e in case.expected}
    by_key = {o.key: o for o in observed}
    opened = set(by_key)
    judged = []
    for e in case.expected:
        if e.cause is None:
            continue
        seen = by_key.get((e.invariant, e.store))
        judged.append(Judged(e.invariant, e.store, e.cause, seen.top if seen else None, judge(e.cause, seen)))
    return CaseScore(
        case.name, case.fault, case.variant, case.control, case.held_out,
        sorted(expected, key=_label), sorted(opened, key=_label),
        len(opened & expected), len(opened - expected), len(expected - opened), judged,
        sum(1 for o in observed if o.rules), settled, seconds,
    )  # fmt: skip


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


@dataclass(frozen=True)
class Split:
    right: int = 0
    wrong: int = 0
    abstained: int = 0
    missed: int = 0

    @property
    def total(self) -> int:
        return self.right + self.wrong + self.abstained + self.missed

    def rate(self, outcome: str) -> float:
        return _ratio(getattr(self, outcome), self.total)

    def __add__(self, other: Split) -> Split:
        return Split(self.right + other.right, self.wrong + other.wrong, self.abstained + other.abstained,
                     self.missed + other.missed)  # fmt: skip


def _split(scores: Sequence[CaseScore]) -> Split:
    counts = {RIGHT: 0, WRONG: 0, ABSTAINED: 0, MISSED: 0}
    for score in scores:
        for j in score.judged:
            counts[j.outcome] += 1
    return Split(counts[RIGHT], counts[WRONG], counts[ABSTAINED], counts[MISSED])


@dataclass(frozen=True)
class Summary:
    cases: int
    faults: int
    true_positives: int
    false_positives: int
    missed_tickets: int
    seen: Split
    held_out: Split
    control_cases: int
    control_tickets: int
    control_diagnoses: int
    unsettled: list[str] = field(default_factory=list)
    evidence_p95_seconds: float | None = None

    @property
    def precision(self) -> float:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> float:
        return _ratio(self.true_positives, self.true_positives + self.missed_tickets)

    @property
    def all(self) -> Split:
        return self.seen + self.held_out

    def targets(self) -> dict[str, bool]:
        """Each of the issue's targets, met or not (a rate over nothing is not met)."""
        return {
            "every expected ticket opened": self.missed_tickets == 0 and self.true_positives > 0,
            "0 tickets and 0 diagnoses on controls": self.control_cases > 0
            and self.control_tickets == 0
            and self.control_diagnoses == 0,
            "top-1 right on >= 90 % of seen": self.seen.rate(RIGHT) >= TARGETS["seen"],
            "top-1 right on >= 80 % of held-out": self.held_out.rate(RIGHT) >= TARGETS["held_out"],
            "wrong cause <= 5 %": self.all.rate(WRONG) <= TARGETS["wrong"],
        }

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(precision=self.precision, recall=self.recall, targets=self.targets())
        for name in ("seen", "held_out", "all"):
            split: Split = getattr(self, name)
            body[name] = {**asdict(split), "total": split.total,
                          **{f"{o}_rate": split.rate(o) for o in (RIGHT, WRONG, ABSTAINED, MISSED)}}  # fmt: skip
        return body


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile (nearest rank) of ``values``, ``None`` of none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(scores: Sequence[CaseScore], evidence_seconds: Sequence[float] = ()) -> Summary:
    """The run's figures from its cases' scores."""
    faults = [s for s in scores if not s.control]
    controls = [s for s in scores if s.control]
    return Summary(
        cases=len(scores),
        faults=len({s.fault for s in faults}),
        true_positives=sum(s.true_positives for s in scores),
        false_positives=sum(s.false_positives for s in scores),
        missed_tickets=sum(s.missed for s in scores),
        seen=_split([s for s in faults if not s.held_out]),
        held_out=_split([s for s in faults if s.held_out]),
        control_cases=len(controls),
        control_tickets=sum(len(s.opened) for s in controls),
        control_diagnoses=sum(s.diagnoses for s in controls),
        unsettled=[s.name for s in scores if not s.settled],
        evidence_p95_seconds=p95(evidence_seconds),
    )


# -- the table -------------------------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.0f} %"


def _of(split: Split, outcome: str) -> str:
    return f"{_percent(split.rate(outcome))} ({getattr(split, outcome)}/{split.total})"


def summary_markdown(summary: Summary) -> str:
    """The headline table: tickets, causes (seen and held-out apart), controls, and each target met or not."""
    s = summary
    rows = [
        ("ticket precision", f"{_percent(s.precision)} ({s.true_positives}/{s.true_positives + s.false_positives})",
         "", ""),
        ("ticket recall", f"{_percent(s.recall)} ({s.true_positives}/{s.true_positives + s.missed_tickets})", "",
         "100 %"),
        ("top-1 cause right", _of(s.seen, RIGHT), _of(s.held_out, RIGHT), "≥ 90 % seen, ≥ 80 % held-out"),
        ("wrong cause (confident and wrong)", _of(s.seen, WRONG), _of(s.held_out, WRONG), "≤ 5 %"),
        ("abstained (Unknown)", _of(s.seen, ABSTAINED), _of(s.held_out, ABSTAINED), "reported apart"),
        ("no ticket to diagnose", _of(s.seen, MISSED), _of(s.held_out, MISSED), "0"),
        ("tickets / diagnoses on controls", f"{s.control_tickets} / {s.control_diagnoses} "
         f"({s.control_cases} controls)", "", "0 / 0"),
    ]  # fmt: skip
    if s.evidence_p95_seconds is not None:
        rows.append(("evidence stored after opening, p95", f"{s.evidence_p95_seconds:.1f} s", "", "≤ 5 s"))
    lines = ["| measure | seen | held-out | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    met = s.targets()
    lines.append("")
    lines.append("Targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in met.items()))
    return "\n".join(lines) + "\n"


def cases_markdown(scores: Sequence[CaseScore]) -> str:
    """One row per case: the tickets expected and opened, each scored cause and its outcome."""
    lines = ["| case | expected tickets | opened | cause expected → top-1 | outcome | s |", "|---|---|---|---|---|---|"]
    for score in scores:
        expected = ", ".join(_label(k) for k in score.expected) or "none"
        opened = ", ".join(_label(k) for k in score.opened) or "none"
        causes = "; ".join(f"{j.expected} → {j.top or 'no ticket'}" for j in score.judged) or "—"
        outcomes = ", ".join(j.outcome for j in score.judged)
        if score.control:
            outcomes = "silent" if not score.opened and not score.diagnoses else "NOT silent"
        elif score.false_positives:
            outcomes += f", {score.false_positives} unexpected ticket(s)"
        if not score.settled:
            outcomes += " (timed out)"
        lines.append(f"| {score.name} | {expected} | {opened} | {causes} | {outcomes} | {score.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def by_fault_markdown(scores: Sequence[CaseScore]) -> str:
    """Per fault: the seen variant's outcome and the held-out variants' right answers."""
    faults: dict[str, list[CaseScore]] = {}
    for score in scores:
        if not score.control:
            faults.setdefault(score.fault, []).append(score)
    lines = ["| fault | tickets opened | seen: top-1 | held-out: top-1 right |", "|---|---|---|---|"]
    for fault, group in faults.items():
        tickets = sum(s.true_positives for s in group)
        wanted = tickets + sum(s.missed for s in group)
        held = _split([s for s in group if s.held_out])
        seen_text = ", ".join(j.outcome for s in group if not s.held_out for j in s.judged)
        lines.append(f"| {fault} | {tickets}/{wanted} | {seen_text} | {held.right}/{held.total} |")
    return "\n".join(lines) + "\n"
