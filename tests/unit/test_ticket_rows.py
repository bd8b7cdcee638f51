"""What the ticket store sends Postgres: JSON it accepts for every write (no NaN, no Infinity, no NUL)."""

from __future__ import annotations

import json

from operator_k8s.adapters.ticket_store import _write_json
from operator_k8s.domain.outbox import TicketWrite
from operator_k8s.domain.tickets import TicketState
from tests.unit.builders import ticket


def test_values_postgres_would_refuse_for_the_whole_payload_are_made_acceptable() -> None:
    hostile = ticket(TicketState.OPEN, id=None, message="bad\x00byte",
                     snapshot={"value": float("inf"), "threshold": float("nan"), "query": "up # \x00"})  # fmt: skip
    body = _write_json(TicketWrite(None, hostile))
    text = json.dumps(body, allow_nan=False)
    assert "\\u0000" not in text
    assert body["ticket"]["snapshot"]["value"] == "+Inf" and body["ticket"]["snapshot"]["threshold"] == "NaN"
    assert body["ticket"]["message"] == "bad\ufffdbyte"
