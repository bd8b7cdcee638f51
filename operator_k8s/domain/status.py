"""The MonitoredCluster status as a value, its wire form, and the decision whether to write it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from operator_k8s.domain.conditions import Condition, Status
from operator_k8s.domain.observations import StorePod

HEARTBEAT = timedelta(minutes=1)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime:
    """Any RFC 3339 time (fractions, ``Z`` or an offset), in UTC; ValueError for anything else.

    The operator writes whole seconds in UTC, but a status restored from a backup, written by a GitOps tool or by
    ``kubectl patch --subresource=status`` may carry any valid form, and must never stop a cycle."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    moment = datetime.fromisoformat(text.strip().upper())
    if moment.tzinfo is None:
        raise ValueError(f"an RFC 3339 time needs an offset: {text!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class StoreCounts:
    expected: int | None
    observed: int
    ready: int

    @classmethod
    def of(cls, pods: Sequence[StorePod], expected: int | None) -> StoreCounts:
        return cls(expected=expected, observed=len(pods), ready=sum(1 for p in pods if p.healthy))

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"observed": self.observed, "ready": self.ready}
        total = self.observed if self.expected is None else self.expected
        wire["summary"] = f"{self.ready}/{total} ready"
        if self.expected is not None:
            wire["expected"] = self.expected
        return wire


def condition_to_wire(condition: Condition) -> dict[str, Any]:
    return {
        "type": condition.type,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message[:32768],
        "observedGeneration": condition.observed_generation,
        "lastTransitionTime": format_time(condition.last_transition_time),
    }


def conditions_from_wire(items: object) -> list[Condition]:
    """Conditions as observed; entries that are not well formed (any value a status patch can carry) are dropped,
    and will be rewritten."""
    result = []
    for item in items if isinstance(items, list) else []:
        try:
            result.append(
                Condition(
                    type=str(item["type"]),
                    status=cast(Status, item["status"]),
                    reason=str(item.get("reason", "")),
                    message=str(item.get("message", "")),
                    observed_generation=int(item.get("observedGeneration", 0)),
                    last_transition_time=parse_time(item["lastTransitionTime"]),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError):
            continue
    return result


def status_body(
    conditions: Sequence[Condition],
    generation: int,
    stores: StoreCounts | None,
    open_tickets: int | None,
    checked_at: datetime,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": [condition_to_wire(c) for c in conditions],
        "lastCheckTime": format_time(checked_at),
    }
    if stores is not None:
        body["stores"] = stores.to_wire()
    if open_tickets is not None:
        body["openTickets"] = open_tickets
    return body


def merge_patch(
    observed: Mapping[str, Any], desired: Mapping[str, Any], *, keep: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``observed`` into ``desired``: changed keys with their new value,
    removed keys as null (a merge patch of the desired value alone cannot remove a key), nested objects diffed in
    turn. Keys in ``keep`` are someone else's and left alone."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        before = observed.get(key, _ABSENT)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before is _ABSENT or before != value or isinstance(before, bool) != isinstance(value, bool):
            patch[key] = value
    for key in observed:
        if key not in desired and key not in keep:
            patch[key] = None
    return patch


_ABSENT = object()
FOREIGN_STATUS_KEYS = frozenset({"kopf"})
"""Status keys the operator does not own (kopf's own progress storage may use ``status.kopf``)."""


def heartbeat_due(observed: Mapping[str, Any], now: datetime) -> bool:
    """Whether the status should be rewritten to show the check loop is alive; a time that cannot be read (any
    value someone else wrote) counts as due, so it is replaced."""
    try:
        age = now - parse_time(observed.get("lastCheckTime"))
    except (ValueError, TypeError, OverflowError):
        return True
    return age >= HEARTBEAT or age <= -HEARTBEAT  # a time a minute or more ahead is not a clock's skew: replace it


def rebased(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` with each condition's ``lastTransitionTime`` taken from ``observed`` where the condition's status
    is the same there: a status read again after a conflict may already show a transition (a peer's write, or our
    own not yet seen), which must keep its time."""
    seen = {c.type: c for c in conditions_from_wire(observed.get("conditions"))}
    conditions = []
    for wanted in desired.get("conditions") or []:
        old = seen.get(wanted["type"])
        if old is not None and old.status == wanted["status"]:
            wanted = {**wanted, "lastTransitionTime": format_time(old.last_transition_time)}  # noqa: PLW2901
        conditions.append(wanted)
    return {**desired, "conditions": conditions}


def status_patch(observed: Mapping[str, Any], desired: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The merge patch from the observed status to the desired one, or None when only the check time moved and
    the heartbeat is not yet due."""
    patch = merge_patch(observed, desired, keep=FOREIGN_STATUS_KEYS)
    if set(patch) <= {"lastCheckTime"} and not heartbeat_due(observed, now):
        return None
    patch.setdefault("lastCheckTime", desired["lastCheckTime"])
    return patch
