"""The service's cycle as kopf runs it, against the fakes: one cluster, its spec and pods, and the cycle helpers."""

from __future__ import annotations

from typing import Any

from operator_k8s.domain.ledger import ClusterRef, CycleStats
from operator_k8s.domain.observations import StorePod
from operator_k8s.service import Monitor
from tests.unit.builders import at
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore, observed_cycle

REF = ClusterRef(uid="uid-1", name="tikv", namespace="ns", generation=1)
SPEC: dict[str, Any] = {
    "interval": "1s",
    "stores": {"selector": {"matchLabels": {"app": "tikv"}}, "expected": 2},
    "prometheus": {"url": "http://prometheus:9090"},
    "invariants": {"latency": {"thresholdMs": 100}, "diskUsage": {"enabled": False}},
}


TIKV = (("app", "tikv"),)
PODS = [StorePod("tikv-0", "Running", True, TIKV), StorePod("tikv-1", "Running", True, TIKV)]


Parts = tuple[Monitor, FakeStore, FakeMetrics, FakeMirror]


async def cycle(
    monitor: Monitor, seconds: float, status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None
) -> CycleStats:
    """One cycle as kopf runs it: the cluster's status and the Tickets as the watch observes them (``status`` in
    place of the observed status, when given)."""
    return await observed_cycle(monitor, REF, spec or SPEC, PODS, at(seconds), status)


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


async def run(parts: Parts, seconds: range | list[int], spec: dict[str, Any] | None = None) -> None:
    """Cycles at the given seconds, each seeing the status the previous one wrote (as kopf would hand it)."""
    monitor, _, _, mirror = parts
    for second in seconds:
        await cycle(monitor, second, mirror.status, spec)
