"""Pure builders of what Kubernetes shows for a ticket: its resource name, labels and status."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from operator_k8s.domain.status import format_time, parse_time
from operator_k8s.domain.tickets import Ticket
from operator_k8s.domain.vocabulary import MANAGER, Label

MAX_NAME = 253


def _dns_part(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"


def ticket_name(ticket: Ticket) -> str:
    """``<cluster>-<invariant>-<store>-<id>``: deterministic, so a crash or restart never makes a second one."""
    assert ticket.id is not None, "only stored tickets have names"
    base = "-".join(_dns_part(p) for p in (ticket.cluster_name, ticket.key.invariant, ticket.key.store))
    suffix = f"-{ticket.id}"
    if len(base) + len(suffix) > MAX_NAME:
        digest = hashlib.sha256(base.encode()).hexdigest()[:8]
        base = base[: MAX_NAME - len(suffix) - 9].rstrip("-") + "-" + digest
    return base + suffix


def ticket_id_of(name: str) -> int | None:
    """The ticket id a Ticket resource's name ends with (see ``ticket_name``): a human may edit a new Ticket before
    the second request, its status (``ticketId``), lands, and that edit must not be lost."""
    head, _, tail = name.rpartition("-")
    return int(tail) if head and tail.isdecimal() and tail.isascii() else None


def bounded_text(text: str, limit: int) -> str:
    """``text`` if it fits, else a deterministic shortening that stays unique: a prefix and a hash of the whole."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 12]}~{digest}"


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return value.strip("-._")


def ticket_labels(ticket: Ticket) -> dict[str, str]:
    return {
        Label.CLUSTER: _label_value(ticket.cluster_name),
        Label.INVARIANT: _label_value(ticket.key.invariant),
        Label.SEVERITY: ticket.severity.value,
        Label.STATE: ticket.state.value,
        Label.MANAGED_BY: MANAGER,
    }


def ticket_spec(ticket: Ticket) -> dict[str, Any]:
    """The human intent Postgres holds, shown on the resource's spec (so a rebuilt Ticket keeps a hold)."""
    spec: dict[str, Any] = {"hold": ticket.hold, "acknowledged": ticket.acknowledged}
    if ticket.note is not None:
        spec["note"] = ticket.note[:1024]
    return spec


def snapshot_summary(snapshot: dict[str, Any]) -> str:
    value, threshold = snapshot.get("value"), snapshot.get("threshold")
    if value is None:
        return str(snapshot.get("message", ""))[:1024]
    shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)  # "+Inf", "NaN" as stored
    limit = f" (threshold {threshold:g})" if isinstance(threshold, int | float) else ""
    return f"value {shown}{limit} at {snapshot.get('at', '?')}"[:1024]


def ticket_status(ticket: Ticket) -> dict[str, Any]:
    assert ticket.id is not None
    status: dict[str, Any] = {
        "ticketId": ticket.id,
        "cluster": bounded_text(ticket.cluster_name, 253),
        "invariant": bounded_text(ticket.key.invariant, 63),
        "store": bounded_text(ticket.key.store, 253),
        "severity": ticket.severity.value,
        "state": ticket.state.value,
        "message": ticket.message[:4096],
        "occurrences": ticket.occurrences,
        "firstSeen": format_time(ticket.first_seen),
        "lastSeen": format_time(ticket.last_seen),
        "snapshot": snapshot_summary(ticket.snapshot),
    }
    if ticket.resolved_at is not None:
        status["resolvedAt"] = format_time(ticket.resolved_at)
    return status


LAST_SEEN_RESOLUTION_SECONDS = 60


def projection_differs(written: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether the Ticket resource needs a write: any field changed, or lastSeen moved by a minute or more.

    ``lastSeen`` moves every cycle while a violation lasts; writing it each time would cost a Kubernetes write per
    cycle per open ticket, so the resource shows it to the minute (Postgres keeps it exact).
    """
    if written is None:
        return True
    if any(written.get(k) != v for k, v in desired.items() if k != "lastSeen"):
        return True
    old, new = written.get("lastSeen"), desired.get("lastSeen")
    if old is None or new is None:
        return old != new
    return (parse_time(new) - parse_time(old)).total_seconds() >= LAST_SEEN_RESOLUTION_SECONDS
