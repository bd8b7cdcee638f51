"""The operator's JSON log lines: what a log pipeline parses without configuration."""

from __future__ import annotations

import json
import logging

from operator_k8s.__main__ import JsonFormatter


def test_a_line_has_a_utc_millisecond_time_and_the_structured_fields() -> None:
    record = logging.LogRecord("operator_k8s", logging.WARNING, "", 0, "Marked the ticket store unavailable", (), None)
    record.created = 1_764_180_000.25
    record.cluster, record.namespace = "tikv", "prod"
    line = json.loads(JsonFormatter().format(record))
    assert line == {
        "time": "2025-11-26T18:00:00.250Z",
        "level": "WARNING",
        "logger": "operator_k8s",
        "message": "Marked the ticket store unavailable",
        "cluster": "tikv",
        "namespace": "prod",
    }
