"""The ticket CLI's pure parts: argument parsing and rendering."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from operator_k8s.adapters.ticket_store import DeliveryRecord, TicketHistoryEntry, TicketRecord
from operator_k8s.cli import _moment, parser, render_list, render_show, table, ticket_json
from operator_k8s.domain.tickets import TicketState
from tests.unit.builders import T0, at, ticket


def test_table_aligns_columns() -> None:
    assert table(["A", "LONGER"], [["xx", "y"], ["z", "w"]]).splitlines() == ["A    LONGER", "xx   y", "z    w"]


def test_render_list_and_empty() -> None:
    assert render_list([]) == "No tickets match."
    lines = render_list([ticket(TicketState.RESOLVED, resolved_at=at(90))]).splitlines()
    assert lines[0].split() == ["ID", "NAMESPACE", "CLUSTER", "INVARIANT", "STORE", "SEVERITY", "STATE", "COUNT",
                                "FIRST-SEEN", "RESOLVED"]  # fmt: skip
    assert lines[1].split()[:8] == ["7", "ns", "tikv", "latency", "tikv-0", "warning", "resolved", "1"]
    assert "2026-01-01 12:01:30" in lines[1]


def test_render_show_has_snapshot_history_and_who_was_told() -> None:
    current = ticket(TicketState.OPEN, snapshot={"value": 812.5, "threshold": 500})
    events = [TicketHistoryEntry(T0, "Opened", "pending", "open", "operator", "latency 812ms")]
    told = [DeliveryRecord("pager", "opened", "tkt_7_1_1", "delivered", 2, T0, at(3), "HTTP 204")]
    text = render_show(TicketRecord(current, events, told))
    assert "  value: 812.5" in text
    assert "Opened" in text
    assert "pending -> open" in text
    assert "pager" in text and "HTTP 204" in text
    assert "Notifications:\n  none" in render_show(TicketRecord(current, events, []))


def test_ticket_json_is_plain_data() -> None:
    body = ticket_json(ticket(TicketState.OPEN))
    assert (body["id"], body["state"], body["resolvedAt"]) == (7, "open", None)


def test_moment_accepts_durations_and_times() -> None:
    assert abs((datetime.now(UTC) - _moment("2h")) - timedelta(hours=2)) < timedelta(seconds=5)
    assert _moment("2026-01-01T12:00:00+00:00") == T0
    assert _moment("2026-01-01T12:00:00") == T0, "a time without zone is UTC"
    with pytest.raises(argparse.ArgumentTypeError, match="neither a duration"):
        _moment("yesterday")


def test_parser_rejects_unknown_state() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["list", "--state", "closed"])
    assert parser().parse_args(["-o", "json", "show", "3"]).id == 3
