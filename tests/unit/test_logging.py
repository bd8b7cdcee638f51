"""The operator's JSON log lines: what a log pipeline parses without configuration."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import SecretStr

from operator_k8s.__main__ import PEERING_LOGGER, JsonFormatter, TextFormatter, configure_logging
from operator_k8s.settings import Settings


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


@pytest.mark.parametrize(
    ("level", "peering"), [("WARNING", logging.INFO), ("INFO", logging.INFO), ("DEBUG", logging.DEBUG)]
)
def test_peering_decisions_are_logged_whatever_the_level(level: str, peering: int) -> None:
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in ("", "kopf", "operator_k8s", PEERING_LOGGER)]
    handlers, levels = root.handlers[:], [logger.level for logger in loggers]
    try:
        configure_logging(Settings(database_dsn=SecretStr("postgresql://x"), log_level=level))
        assert logging.getLogger(PEERING_LOGGER).getEffectiveLevel() == peering
        assert logging.getLogger("kopf").getEffectiveLevel() == (logging.DEBUG if level == "DEBUG" else logging.WARNING)
    finally:
        root.handlers[:] = handlers
        for logger, saved in zip(loggers, levels, strict=True):
            logger.setLevel(saved)


def test_a_text_line_keeps_the_structured_fields() -> None:
    record = logging.LogRecord("operator_k8s.handlers", logging.WARNING, "", 0, "Ignored an edit of a Ticket", (), None)
    record.ticket, record.namespace, record.ticket_id, record.error = "zz-2", "demo", 2, 'said "no" twice'
    line = TextFormatter().format(record)
    assert line.endswith(
        "WARNING operator_k8s.handlers Ignored an edit of a Ticket ticket=zz-2 namespace=demo ticket_id=2 "
        'error="said \\"no\\" twice"'
    )
