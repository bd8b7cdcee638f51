"""``operator-k8s tickets list|show``: the ticket history from Postgres, which kubectl cannot show."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from operator_k8s.adapters.ticket_store import TicketFilter, TicketHistory, TicketRecord
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.tickets import Ticket
from operator_k8s.ports import TicketStoreUnavailable
from operator_k8s.settings import SettingsError, load_settings

STATES = ["pending", "open", "acknowledged", "diagnosed", "resolved"]


def _moment(text: str) -> datetime:
    """An RFC 3339 time, or a duration meaning that long ago (``2h``)."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (2h) nor a time (2026-01-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns sized to their content, like kubectl's."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]  # fmt: skip
    return "\n".join(lines)


def ticket_json(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id, "namespace": ticket.namespace, "cluster": ticket.cluster_name,
        "invariant": ticket.key.invariant, "store": ticket.key.store, "state": ticket.state.value,
        "severity": ticket.severity.value, "occurrences": ticket.occurrences, "message": ticket.message,
        "firstSeen": ticket.first_seen.isoformat(), "lastSeen": ticket.last_seen.isoformat(),
        "openedAt": ticket.opened_at.isoformat() if ticket.opened_at else None,
        "resolvedAt": ticket.resolved_at.isoformat() if ticket.resolved_at else None,
        "hold": ticket.hold, "acknowledged": ticket.acknowledged, "snapshot": ticket.snapshot,
        "causeTicketId": ticket.cause_id, "countedStores": ticket.counted_stores,
    }  # fmt: skip


def render_list(tickets: Sequence[Ticket]) -> str:
    if not tickets:
        return "No tickets match."
    headers = [
        "ID",
        "NAMESPACE",
        "CLUSTER",
        "INVARIANT",
        "STORE",
        "SEVERITY",
        "STATE",
        "COUNT",
        "FIRST-SEEN",
        "RESOLVED",
    ]
    rows = [[str(t.id), t.namespace, t.cluster_name, t.key.invariant, t.key.store, t.severity.value, t.state.value,
             str(t.occurrences), _time(t.first_seen), _time(t.resolved_at)] for t in tickets]  # fmt: skip
    return table(headers, rows)


def render_show(record: TicketRecord) -> str:
    ticket, events = record.ticket, record.events
    fields = [
        ("Ticket", str(ticket.id)), ("Cluster", f"{ticket.namespace}/{ticket.cluster_name}"),
        ("Invariant", ticket.key.invariant), ("Store", ticket.key.store), ("State", ticket.state.value),
        ("Severity", ticket.severity.value), ("Occurrences", str(ticket.occurrences)),
        ("First seen", _time(ticket.first_seen)), ("Last seen", _time(ticket.last_seen)),
        ("Resolved", _time(ticket.resolved_at)), ("Hold", str(ticket.hold)), ("Message", ticket.message),
    ]  # fmt: skip
    if ticket.cause_id is not None:
        fields.append(("Cause", f"ticket {ticket.cause_id} (one incident: notified with it)"))
    if record.explains:
        fields.append(("Explains", ", ".join(f"ticket {i}" for i in record.explains)))
    if ticket.counted_stores:
        fields.append(("PD counts", ", ".join(f"{s} {'/'.join(v)}" for s, v in sorted(ticket.counted_stores.items()))))
    out = [f"{name + ':':<13}{value}" for name, value in fields]
    out += ["", "Metric snapshot:"] + [f"  {k}: {v}" for k, v in ticket.snapshot.items()]
    out += ["", "History:"]
    rows = [[_time(e.at), e.kind, f"{e.from_state or '-'} -> {e.to_state or '-'}", e.actor, e.reason] for e in events]
    out += ["  " + line for line in table(["AT", "EVENT", "STATE", "ACTOR", "REASON"], rows).splitlines()]
    out += ["", "Diagnosis:"]
    for finding in record.findings:
        out += [f"  [{finding['severity']}] {finding['item']} ({finding['rule']}): {finding['details']}",
                f"    value {finding['value']}, reference {finding['reference']}",
                f"    next: {finding['next_step']}", f"    runbook: {finding['runbook']}"]  # fmt: skip
    if not record.findings:
        out += ["  unknown" if record.evidence else "  no evidence gathered"]
    if record.evidence:
        out += ["", "Evidence:", "  " + (record.ticket.evidence_summary or "(none)")]
        for event in record.evidence.get("events", [])[:5]:
            out.append(f"  event {event['type']} {event['reason']} x{event['count']}: {event['message'][:160]}")
        for item in (record.evidence.get("prometheus") or {}).get("items") or []:
            out += [f"  prometheus {item['name']}: {item['status']}", f"    graph: {item['graph']}"]
    out += ["", "Notifications:"]
    told = [[_time(d.created_at), d.receiver, d.kind, d.state, str(d.attempts), _time(d.finished_at), d.result or ""]
            for d in record.deliveries]  # fmt: skip
    headers = ["QUEUED", "RECEIVER", "NOTICE", "DELIVERY", "ATTEMPTS", "FINISHED", "RESULT"]
    out += ["  " + line for line in table(headers, told).splitlines()] if told else ["  none"]
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="operator-k8s tickets", description=__doc__)
    root.add_argument("--dsn", help="Postgres DSN (default: OPERATOR_K8S_DATABASE_DSN or _DSN_FILE)")
    root.add_argument("-o", "--output", choices=["table", "json"], default="table")
    commands = root.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="tickets, newest first")
    listing.add_argument("-n", "--namespace")
    listing.add_argument("--cluster", help="MonitoredCluster name")
    listing.add_argument("--invariant")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--since", type=_moment, help="last seen at or after: a time or a duration ago (2h)")
    listing.add_argument("--until", type=_moment, help="first seen at or before: a time or a duration ago")
    listing.add_argument("--limit", type=int, default=100)
    show = commands.add_parser("show", help="one ticket with its full history and metric snapshot")
    show.add_argument("id", type=int)
    return root


async def _run(args: argparse.Namespace, dsn: str) -> tuple[int, str]:
    history = TicketHistory(dsn)
    if args.command == "list":
        where = TicketFilter(
            args.namespace, args.cluster, args.invariant, args.state, args.since, args.until, args.limit
        )
        tickets = await history.find(where)
        if args.output == "json":
            return 0, json.dumps([ticket_json(t) for t in tickets], indent=2)
        return 0, render_list(tickets)
    found = await history.show(args.id)
    if found is None:
        return 1, f"operator-k8s: no ticket with id {args.id}"
    if args.output == "json":
        entries = [{"at": e.at.isoformat(), "kind": e.kind, "from": e.from_state, "to": e.to_state, "actor": e.actor,
                    "reason": e.reason} for e in found.events]  # fmt: skip
        told = [{"receiver": d.receiver, "notice": d.kind, "id": d.idempotency_key, "state": d.state,
                 "attempts": d.attempts, "queued": d.created_at.isoformat(),
                 "finished": d.finished_at.isoformat() if d.finished_at else None, "result": d.result}
                for d in found.deliveries]  # fmt: skip
        body = {**ticket_json(found.ticket), "history": entries, "notifications": told, "diagnosis": found.findings,
                "evidence": found.evidence, "explains": found.explains}  # fmt: skip
        return 0, json.dumps(body, indent=2)
    return 0, render_show(found)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    dsn = args.dsn
    if not dsn:
        try:
            dsn = load_settings(os.environ).database_dsn.get_secret_value()
        except SettingsError as error:
            print(f"operator-k8s: {error}", file=sys.stderr)
            return 2
    try:
        code, text = asyncio.run(_run(args, dsn))
    except TicketStoreUnavailable as error:
        print(
            f"operator-k8s: cannot read tickets: {error}. Check the DSN and that Postgres is running.", file=sys.stderr
        )
        return 1
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code
