"""Pure builders of what Kubernetes shows for a ticket, and the plan that turns what is observed into it.

What the operator shows is a diff of what Postgres wants shown against what the watch observes, never against what
it remembers writing: a Ticket someone changed, deleted or stripped of its ownerReference is corrected, and an
unchanged one costs nothing (after a restart too).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from operator_k8s.domain.status import format_time, merge_patch, parse_time
from operator_k8s.domain.tickets import HumanEdit, Ticket
from operator_k8s.domain.vocabulary import API_VERSION, CLUSTER_KIND, INTENT_ANNOTATION, MANAGER, TICKET_KIND, Label

MAX_NAME = 253


def _dns_part(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"


def ticket_name(ticket: Ticket) -> str:
    """``<cluster>-<invariant>-<store>-<id>``: deterministic, so a crash or restart never makes a second one."""
    assert ticket.id is not None, "only stored tickets have names"
    return resource_name(ticket.cluster_name, ticket.key.invariant, ticket.key.store, ticket.id)


def resource_name(cluster: str, invariant: str, store: str, ticket_id: int) -> str:
    """The Ticket resource's name of a stored ticket (see ``ticket_name``)."""
    base = "-".join(_dns_part(p) for p in (cluster, invariant, store))
    suffix = f"-{ticket_id}"
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
        Label.CLUSTER_UID: _label_value(ticket.key.cluster_uid),
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
    if ticket.flapping:
        status["flapping"] = True
    if ticket.last_notification:
        status["lastNotification"] = ticket.last_notification[:512]
    if ticket.evidence_summary:
        status["evidence"] = ticket.evidence_summary[:512]
    if ticket.diagnosis:
        status["diagnosis"] = ticket.diagnosis[:512]
    if ticket.cause_id is not None:
        status["causeTicketId"] = ticket.cause_id
    if ticket.counted_stores:
        counted = ", ".join(f"{store} {'/'.join(states)}" for store, states in sorted(ticket.counted_stores.items()))
        status["countedStores"] = counted[:512]
    return status


LAST_SEEN_RESOLUTION_SECONDS = 60
VOLATILE_STATUS = ("lastSeen", "message")
"""Status fields that move every cycle while a violation lasts (the time, the value in the message): refreshed on
the Ticket once a minute, or with any other change; Postgres keeps them exact."""


def _last_seen_moved(observed: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``lastSeen`` moved enough to be shown: it moves every cycle while a violation lasts, and writing it
    each time would cost a Kubernetes write per cycle per open ticket, so the resource shows it to the minute
    (Postgres keeps it exact). A value that cannot be read is replaced."""
    old, new = observed.get("lastSeen"), desired.get("lastSeen")
    if old == new:
        return False
    try:
        return abs((parse_time(new) - parse_time(old)).total_seconds()) >= LAST_SEEN_RESOLUTION_SECONDS
    except (ValueError, TypeError, OverflowError):
        return True


@dataclass(frozen=True)
class ObservedTicket:
    """A Ticket resource as the watch last saw it: only what the plan compares."""

    namespace: str
    name: str
    resource_version: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    owner_uids: tuple[str, ...] = ()
    """The uids of its controlling MonitoredCluster ownerReferences."""
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    spec_actor: str = f"kubernetes:{MANAGER}"
    """Who last changed its spec other than the operator, from managedFields (the operator: nobody else did)."""

    def belongs_to(self, cluster_uid: str) -> bool:
        """Shows a ticket of this cluster: by its cluster-uid label (restored if removed) or its ownerReference."""
        if self.labels.get(Label.CLUSTER_UID) == _label_value(cluster_uid):
            return self.labels.get(Label.MANAGED_BY) == MANAGER
        return cluster_uid in self.owner_uids

    @property
    def cluster_uid(self) -> str | None:
        """The MonitoredCluster it shows a ticket of: its ownerReference, else its cluster-uid label if the operator
        manages it (the human who removed one rarely removes both; the cycle restores them)."""
        if self.owner_uids:
            return self.owner_uids[0]
        return self.labels.get(Label.CLUSTER_UID) if self.labels.get(Label.MANAGED_BY) == MANAGER else None

    @property
    def shown_intent(self) -> dict[str, Any] | None:
        """The intent the operator last showed on it (None if the annotation is missing or not ours to read)."""
        try:
            value = json.loads(self.annotations.get(INTENT_ANNOTATION, ""))
        except ValueError:
            return None
        return normal_intent(value) if isinstance(value, dict) else None


def normal_intent(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec in the form ``ticket_spec`` writes it, with the CRD's defaults, so equal intents compare equal."""
    intent: dict[str, Any] = {"hold": spec.get("hold") is True, "acknowledged": spec.get("acknowledged") is True}
    if isinstance(spec.get("note"), str):
        intent["note"] = spec["note"][:1024]
    return intent


def owner_reference(cluster_uid: str, cluster_name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": CLUSTER_KIND,
        "name": cluster_name,
        "uid": cluster_uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def ticket_body(ticket: Ticket) -> dict[str, Any]:
    """The whole Ticket resource Postgres wants shown for one ticket (labels, ownerReference, spec, status)."""
    spec = ticket_spec(ticket)
    return {
        "apiVersion": API_VERSION,
        "kind": TICKET_KIND,
        "metadata": {
            "name": ticket_name(ticket),
            "namespace": ticket.namespace,
            "labels": ticket_labels(ticket),
            "annotations": {INTENT_ANNOTATION: json.dumps(spec, sort_keys=True)},
            "ownerReferences": [owner_reference(ticket.key.cluster_uid, ticket.cluster_name)],
        },
        "spec": spec,
        "status": ticket_status(ticket),
    }


@dataclass(frozen=True)
class TicketPatch:
    name: str
    resource_version: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class ObservedEdit:
    """A human's change of a Ticket's spec, seen as observed spec ≠ the intent the operator last showed there."""

    ticket_id: int
    edit: HumanEdit
    actor: str


@dataclass(frozen=True)
class TicketPlan:
    """What to write so that Kubernetes shows what Postgres holds: each an exact diff, nothing when nothing differs."""

    creates: tuple[dict[str, Any], ...] = ()
    patches: tuple[TicketPatch, ...] = ()
    deletes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.creates) + len(self.patches) + len(self.deletes)


def observed_edit(ticket: Ticket, observed: ObservedTicket) -> ObservedEdit | None:
    """The human edit a Ticket shows of its ticket, if any.

    The spec is compared with the intent the operator last showed (its annotation), so an intent changed elsewhere
    (the CLI, another replica) is never mistaken for an edit; if the annotation is gone, a spec last written by
    someone other than the operator that differs from Postgres is the edit."""
    assert ticket.id is not None
    shown = observed.shown_intent
    spec = normal_intent(observed.spec)
    if shown is None:
        if observed.spec_actor == f"kubernetes:{MANAGER}":
            return None  # nobody else ever wrote the spec: a drift the projection corrects
        shown = ticket_spec(ticket)
    if spec == shown:
        return None
    edit = HumanEdit.between(shown, spec)
    return ObservedEdit(ticket.id, edit, observed.spec_actor)


def _metadata_patch(observed: ObservedTicket, desired: Mapping[str, Any]) -> dict[str, Any]:
    """Our labels and annotation back as they should be (others' labels left alone), and our ownerReference."""
    patch: dict[str, Any] = {}
    labels = {k: v for k, v in desired["labels"].items() if observed.labels.get(k) != v}
    if labels:
        patch["labels"] = labels
    annotations = {k: v for k, v in desired["annotations"].items() if observed.annotations.get(k) != v}
    if annotations:
        patch["annotations"] = annotations
    owner = desired["ownerReferences"][0]
    if owner["uid"] not in observed.owner_uids:
        # A merge patch replaces the whole list: the operator's reference is the only controller it sets.
        patch["ownerReferences"] = [owner]
    return patch


def ticket_patch(observed: ObservedTicket, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch from an observed Ticket to the desired body ({} when it shows what it should)."""
    patch: dict[str, Any] = {}
    metadata = _metadata_patch(observed, desired["metadata"])
    if metadata:
        patch["metadata"] = metadata
    if normal_intent(observed.spec) != desired["spec"]:
        patch["spec"] = merge_patch(observed.spec, desired["spec"])
    status_wanted = dict(desired["status"])
    steady = all(observed.status.get(k) == v for k, v in status_wanted.items() if k not in VOLATILE_STATUS)
    if steady and not _last_seen_moved(observed.status, status_wanted):
        # Only the figures of a lasting violation moved: shown to the minute, not written every cycle.
        status_wanted.update({k: observed.status[k] for k in VOLATILE_STATUS if k in observed.status})
    status = merge_patch(observed.status, status_wanted)
    if status:
        patch["status"] = status
    return patch


def plan_tickets(cluster_uid: str, desired: Sequence[dict[str, Any]], observed: Sequence[ObservedTicket]) -> TicketPlan:
    """Create what is absent, patch exactly what differs, delete what shows this cluster's tickets and is unwanted."""
    wanted = {body["metadata"]["name"]: body for body in desired}
    seen = {ticket.name: ticket for ticket in observed}
    creates = tuple(body for name, body in wanted.items() if name not in seen)
    patches = []
    for name, body in wanted.items():
        current = seen.get(name)
        if current is None:
            continue
        patch = ticket_patch(current, body)
        if patch:
            patches.append(TicketPatch(name, current.resource_version, patch))
    deletes = tuple(
        sorted(name for name, ticket in seen.items() if name not in wanted and ticket.belongs_to(cluster_uid))
    )
    return TicketPlan(creates, tuple(patches), deletes)
