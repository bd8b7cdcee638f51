"""Start-up logs one line per index, not one per indexed object: kopf's per-object indexing lines are lowered to
DEBUG, and the operator logs a summary of each index once, when the indexes are complete."""

from __future__ import annotations

import logging
from typing import cast

import kopf
import pytest

from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.domain.observations import StorePod
from operator_k8s.handlers import INDEXES, IndexSummary, index_summaries, register
from operator_k8s.maintenance_handlers import register_maintenance
from operator_k8s.service import Monitor
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore


def pod(name: str, *labels: tuple[str, str]) -> StorePod:
    return StorePod(name, "Running", True, labels)


def pod_index() -> dict[tuple[str, str, str], list[StorePod]]:
    """Three pods in two namespaces; each sits in the index once per label, as kopf's index holds them."""
    a = pod("tikv-0", ("app", "tikv"), ("zone", "z1"))
    b = pod("tikv-1", ("app", "tikv"), ("zone", "z2"))
    c = pod("tikv-0", ("app", "tikv"))
    return {("prod", "app", "tikv"): [a, b], ("prod", "zone", "z1"): [a], ("prod", "zone", "z2"): [b],
            ("test", "app", "tikv"): [c]}  # fmt: skip


def test_a_summary_counts_each_object_once_and_its_namespaces() -> None:
    tickets = {"prod": ["t-1", "t-2"], "test": ["t-3"], "gone": []}
    assert index_summaries(pod_index(), tickets) == [
        ("Indexed Pods", {"index": "store_pods", "pods": 3, "namespaces": 2}),
        ("Indexed Tickets", {"index": "tickets_shown", "tickets": 3, "namespaces": 2}),
    ]
    assert index_summaries({}, {}) == [
        ("Indexed Pods", {"index": "store_pods", "pods": 0, "namespaces": 0}),
        ("Indexed Tickets", {"index": "tickets_shown", "tickets": 0, "namespaces": 0}),
    ]


def test_the_summary_is_one_info_line_per_index_once(caplog: pytest.LogCaptureFixture) -> None:
    summary = IndexSummary()
    with caplog.at_level(logging.INFO, logger="operator_k8s"):
        for _ in range(3):  # every tick of every cluster calls it
            summary.log_once(pod_index(), {"prod": ["t-1"]})
    lines = [
        (r.levelname, r.getMessage(), getattr(r, "pods", None) or getattr(r, "tickets", None)) for r in caplog.records
    ]
    assert lines == [("INFO", "Indexed Pods", 3), ("INFO", "Indexed Tickets", 1)]


def registered_indexes() -> set[str]:
    telemetry = Telemetry()
    monitor = Monitor(store=FakeStore(), metrics=FakeMetrics(), mirror=FakeMirror())
    registry = kopf.OperatorRegistry()
    register(registry, monitor, telemetry, tick_seconds=5)
    register_maintenance(registry)
    return {str(handler) for handler in registry._indexing.get_all_handlers()}


def test_the_filter_knows_every_index_by_kopfs_own_name_for_it() -> None:
    """kopf logs ``f"{handler} succeeded."``: the filter must match the names kopf gives the registered indexers."""
    assert registered_indexes() == {f"Indexer {index!r}" for index in INDEXES}


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        (logging.INFO, [("INFO", "Timer 'check' succeeded.")]),
        (
            logging.DEBUG,
            [
                ("DEBUG", "Indexer 'store_pods' succeeded."),
                ("DEBUG", "Indexer 'tickets_shown' succeeded."),
                ("INFO", "Timer 'check' succeeded."),
            ],
        ),
    ],
)
def test_kopfs_per_object_indexing_lines_are_debug(
    caplog: pytest.LogCaptureFixture, level: int, shown: list[tuple[str, str]]
) -> None:
    IndexSummary()  # registering the handlers installs the filter
    objects = logging.getLogger("kopf.objects")
    with caplog.at_level(level, logger="kopf.objects"):
        for handler in ("Indexer 'store_pods'", "Indexer 'tickets_shown'", "Timer 'check'"):
            objects.info(f"{handler} succeeded.")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == shown


def test_a_failed_indexer_is_still_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    IndexSummary()
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        logging.getLogger("kopf.objects").warning("Indexer 'store_pods' failed with an exception. Will ignore.")
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_kopfs_own_indexing_logger_yields_debug_records(caplog: pytest.LogCaptureFixture) -> None:
    """kopf's indexers log through its TerseObjectLogger, which speaks its INFO lines only at DEBUG."""
    from kopf._core.actions.loggers import TerseObjectLogger  # noqa: PLC0415 - kopf's own, to test against it

    IndexSummary()
    pod = cast(kopf.RawBody, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tikv-0", "uid": "u"}})
    terse = TerseObjectLogger(body=kopf.Body(pod), settings=kopf.OperatorSettings())
    for level in (logging.INFO, logging.DEBUG):
        with caplog.at_level(level, logger="kopf.objects"):
            terse.info("Indexer 'store_pods' succeeded.")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", "Indexer 'store_pods' succeeded.")]
