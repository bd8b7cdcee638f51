"""The Prometheus adapter against the real Prometheus scraping the store simulator."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

from devstack.host.processes import free_port
from devstack.world.stack import Stack
from operator_k8s.adapters.prometheus import PrometheusMetrics
from operator_k8s.domain.observations import QueryFailure
from operator_k8s.domain.queries import builtin_query
from operator_k8s.domain.vocabulary import Invariant
from tests.hostile_http import serving, silent
from tests.stackutil import eventually, eventually_async, prometheus_query, simulator
from tests.unit.builders import spec

pytestmark = pytest.mark.stack
_clusters = itertools.count()
STORES = ("prom-0", "prom-1", "prom-2")


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    adapter = PrometheusMetrics(concurrency=2)
    yield adapter
    adapter.close()


@pytest.fixture
def simulated(stack: Stack, namespace: str) -> str:
    simulator(stack, "PUT", f"/clusters/{namespace}/prom", {"stores": 3, "labels": {"app": "prom"}})
    eventually(
        lambda: len(prometheus_query(stack, f'tikv_store_size_bytes{{namespace="{namespace}",type="used"}}')) == 3,
        what="Prometheus to scrape the simulated stores",
    )
    return namespace


def test_prometheus_serves_the_simulator_series(stack: Stack, simulated: str) -> None:
    series = prometheus_query(stack, f'tikv_grpc_msg_duration_seconds_count{{namespace="{simulated}"}}')
    assert sorted({s["metric"]["pod"] for s in series}) == list(STORES), (
        "one series per request type, all of its own pods"
    )


async def test_preset_queries_return_one_sample_per_store(
    stack: Stack, simulated: str, metrics: PrometheusMetrics
) -> None:
    cluster = spec(prometheus={"url": stack.prometheus_url, "rateWindow": "5s"})
    for invariant in (Invariant.LATENCY, Invariant.DISK_USAGE):
        query = builtin_query(cluster, invariant, simulated, STORES)

        async def all_stores(q: str = query) -> dict[str, float] | None:
            result = await metrics.query(
                stack.prometheus_url, q, store_label="pod", namespace_label="namespace", timeout=2
            )
            assert result.failure is None, result.error
            values = {s.store: s.value for s in result.samples if s.store}
            return values if len(values) == len(STORES) else None  # a rate needs two scrapes of every store

        values = await eventually_async(all_stores, timeout=30, what=f"{invariant} of every store")
        assert sorted(values) == list(STORES), (invariant, values)
    disk = await metrics.query(stack.prometheus_url, builtin_query(cluster, Invariant.DISK_USAGE, simulated, STORES),
                               store_label="pod", namespace_label="namespace", timeout=2)  # fmt: skip
    assert {round(s.value) for s in disk.samples} == {40}


async def test_injected_disk_fill_shows_in_the_query(stack: Stack, simulated: str, metrics: PrometheusMetrics) -> None:
    query = builtin_query(spec(prometheus={"url": stack.prometheus_url}), Invariant.DISK_USAGE, simulated, STORES)
    simulator(stack, "PUT", f"/clusters/{simulated}/prom/stores/prom-1/faults/disk", {"percent": 93})

    async def filled() -> bool:
        result = await metrics.query(
            stack.prometheus_url, query, store_label="pod", namespace_label="namespace", timeout=2
        )
        # The filesystem's view: TiKV's 93 % plus the other files on the volume (1 - available/capacity).
        return {s.store: s.value for s in result.samples}.get("prom-1", 0) >= 93

    await eventually_async(filled, timeout=30, what="prom-1's disk at 93 % or more")


async def test_bad_query_is_an_error_not_an_exception(stack: Stack, metrics: PrometheusMetrics) -> None:
    result = await metrics.query(
        stack.prometheus_url, "sum(", store_label="pod", namespace_label="namespace", timeout=2
    )
    assert result.failure is QueryFailure.ERROR
    assert "parse error" in result.error


async def test_unreachable_prometheus_is_reported_as_such(metrics: PrometheusMetrics) -> None:
    result = await metrics.query(
        f"http://127.0.0.1:{free_port()}", "up", store_label="pod", namespace_label="namespace", timeout=1
    )
    assert result.failure is QueryFailure.UNREACHABLE


async def test_a_hung_prometheus_starves_no_other_endpoint(stack: Stack) -> None:
    adapter = PrometheusMetrics(concurrency=4, per_endpoint=2)
    try:
        with serving(silent) as hung:
            stuck = [
                asyncio.create_task(
                    adapter.query(hung.url, "up", store_label="pod", namespace_label="namespace", timeout=3)
                )
                for _ in range(6)
            ]

            # An endpoint that has never answered gets one query at a time: the others wait for it.
            async def holding() -> bool:
                return len(hung.requests) >= 1

            await eventually_async(holding, timeout=5, interval=0.05, what="the hung query")
            started = time.monotonic()
            healthy = await adapter.query(
                stack.prometheus_url, "up", store_label="pod", namespace_label="namespace", timeout=2
            )
            elapsed = time.monotonic() - started
            failures = await asyncio.gather(*stuck)
        assert healthy.failure is None and elapsed < 2, f"the other Prometheus answered in {elapsed:.2f}s"
        assert {f.failure for f in failures} == {QueryFailure.UNREACHABLE}
        assert all("within 3s" in f.error for f in failures), [f.error for f in failures]
        assert hung.most_busy == 1, "it held one thread, never the other endpoint's"
    finally:
        adapter.close()


async def test_a_non_finite_value_reaches_the_invariants(stack: Stack, metrics: PrometheusMetrics) -> None:
    result = await metrics.query(
        stack.prometheus_url, "vector(1) / vector(0)", store_label="pod", namespace_label="namespace", timeout=2
    )
    assert [s.value for s in result.samples] == [float("inf")]
