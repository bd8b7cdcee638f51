"""The MonitoredCluster status as a value, its wire form, and the decision whether to write it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from operator_k8s.domain.conditions import Condition, Status
from operator_k8s.domain.observations import StorePod

HEARTBEAT = timedelta(minutes=1)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


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


def conditions_from_wire(items: Sequence[dict[str, Any]] | None) -> list[Condition]:
    """Conditions as last written; entries that are not well formed are dropped (they will be rewritten)."""
    result = []
    for item in items or []:
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
        except (KeyError, ValueError, TypeError):
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


def status_patch(previous: dict[str, Any], desired: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The status to write, or None when only the check time moved and the heartbeat is not yet due."""
    relevant = [key for key in desired if key != "lastCheckTime"]
    changed = any(previous.get(key) != desired[key] for key in relevant)
    last = previous.get("lastCheckTime")
    heartbeat_due = last is None or now - parse_time(last) >= HEARTBEAT
    if not changed and not heartbeat_due:
        return None
    return desired
