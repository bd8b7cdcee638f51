"""What one check cycle leaves in the per-cluster timestamps: an SRE tells a stalled timer from a failing dependency."""

from __future__ import annotations

import pytest

from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.domain.ledger import ClusterRef, CycleStats

REF = ClusterRef(uid="u", name="tikv", namespace="ns", generation=1)
LABELS = {"namespace": "ns", "cluster": "tikv"}


def stamps(telemetry: Telemetry) -> tuple[float | None, float | None]:
    read = telemetry.registry.get_sample_value
    return (
        read("operator_k8s_last_check_timestamp_seconds", LABELS),
        read("operator_k8s_last_successful_check_timestamp_seconds", LABELS),
    )


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([], (200.0, 200.0)),
        (["prometheus_unreachable"], (200.0, 100.0)),
        (["postgres_unavailable", "kubernetes_rejected"], (200.0, 100.0)),
        (["cycle_failed"], (200.0, 100.0)),
        (["cycle_timeout"], (200.0, 100.0)),
    ],
)
def test_a_cycle_moves_last_check_and_only_a_clean_one_moves_last_success(
    errors: list[str], expected: tuple[float, float]
) -> None:
    telemetry = Telemetry()
    telemetry.record_cycle(REF, 0.1, CycleStats(), 100.0)
    telemetry.record_cycle(REF, 0.1, CycleStats(errors=errors), 200.0)
    assert stamps(telemetry) == expected


@pytest.mark.parametrize(
    ("errors", "outcome"),
    [([], "ok"), (["prometheus_unreachable"], "degraded"), (["cycle_failed"], "error"), (["cycle_timeout"], "error")],
)
def test_a_cycle_is_counted_by_its_outcome(errors: list[str], outcome: str) -> None:
    telemetry = Telemetry()
    telemetry.record_cycle(REF, 0.1, CycleStats(errors=errors), 100.0)
    read = telemetry.registry.get_sample_value
    counted = {o: read("operator_k8s_check_cycles_total", {"outcome": o}) for o in ("ok", "degraded", "error")}
    assert counted == {o: 1.0 if o == outcome else 0.0 for o in counted}


def test_a_forgotten_cluster_has_neither_timestamp() -> None:
    telemetry = Telemetry()
    telemetry.record_cycle(REF, 0.1, CycleStats(), 100.0)
    telemetry.forget(REF)
    assert stamps(telemetry) == (None, None)
