"""The Prometheus client bounded in time, size and trust, against real HTTP servers that misbehave (tests/hostile_http):
no byte rate holds a query past its deadline, no answer brings more than the caps into memory, nothing is sent to
another origin, and every answer shape is a reason. Needs no stack: every server runs in this process."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.host.pki import Pki, make_pki
from operator_k8s.adapters import prometheus_http
from operator_k8s.adapters.prometheus import PrometheusMetrics
from operator_k8s.adapters.prometheus_http import MIB, AnswerLimits
from operator_k8s.domain.observations import QueryFailure, QueryResult
from operator_k8s.domain.specs import PrometheusAuthSpec
from operator_k8s.service import Monitor
from tests.hostile_http import (
    Behaviour,
    Exchange,
    HostileServer,
    answering,
    dribbling_body,
    dribbling_headers,
    gzip_bomb,
    head,
    redirecting,
    reset_peak_memory,
    routed,
    serving,
    serving_many,
    silent,
    status_memory_kib,
    vector_chunks,
    vector_json,
)
from tests.stackutil import eventually_async
from tests.unit.builders import at
from tests.unit.cycles import PODS, REF, SPEC, condition
from tests.unit.fakes import FakeMirror, FakeStore

EPSILON = 0.25
"""How far past its timeout a query may end: the abort is immediate, this is scheduling on a loaded 2-core box."""
TOKEN = "bounds-test-token"
TENANT = "tenant-a"


@pytest.fixture
async def metrics() -> AsyncIterator[PrometheusMetrics]:
    adapter = PrometheusMetrics()
    yield adapter
    adapter.close()


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text(TOKEN)
    return tmp_path


async def ask(metrics: PrometheusMetrics, url: str, timeout: float = 2, **kwargs: Any) -> QueryResult:
    return await metrics.query(url, "up", store_label="pod", namespace_label="namespace", timeout=timeout, **kwargs)


async def released(metrics: PrometheusMetrics, server: HostileServer) -> None:
    """The worker thread is done with the query (its slot is back) and the server saw the connection end."""

    async def done() -> bool:
        return metrics.endpoint(server.url).in_flight == 0 and server.closed_by_client >= server.connections

    await eventually_async(done, timeout=1, interval=0.01, what="the worker thread to let go of the connection")


@pytest.mark.parametrize(
    "behaviour",
    [dribbling_headers(), dribbling_body(), silent],
    ids=["dribbling-headers", "dribbling-body", "silent"],
)
async def test_no_byte_rate_holds_a_query_past_its_deadline(metrics: PrometheusMetrics, behaviour: Behaviour) -> None:
    with serving(behaviour) as server:
        started = time.monotonic()
        result = await ask(metrics, server.url, timeout=2)
        elapsed = time.monotonic() - started
        assert (result.failure, result.error) == (QueryFailure.UNREACHABLE, "Prometheus did not answer within 2s")
        assert 2 <= elapsed < 2 + EPSILON, f"ended {elapsed - 2:+.3f}s from its deadline"
        print(f"{server.behaviour.__qualname__.split('.')[0]}: ended {(elapsed - 2) * 1000:+.1f} ms from its deadline")
        await released(metrics, server)
        assert len(server.requests) == 1


async def test_a_deadline_passing_after_the_body_was_read_leaves_the_pooled_connection_alone(
    metrics: PrometheusMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query reads its answer, its keep-alive connection goes back to the pool, and its parse outlasts its
    deadline; meanwhile another query took that connection. The late query's abort must not end the other's
    request."""
    answer_held, parse_held = threading.Event(), threading.Event()

    def behave(exchange: Exchange) -> None:
        if "query=held" in exchange.request.target:
            answer_held.wait(10)
        body = vector_json(2 if "query=late" in exchange.request.target else 3)
        exchange.send(head(200, {"Content-Type": "application/json"}, length=len(body)) + body)

    parse = prometheus_http.parse_answer

    def slow_parse(body: bytes | bytearray, content_type: str) -> object:
        if len(body) == len(vector_json(2)):  # the late query's answer: parsed after its deadline
            parse_held.wait(10)
        return parse(body, content_type)

    monkeypatch.setattr(prometheus_http, "parse_answer", slow_parse)

    async def named(query: str, timeout: float) -> QueryResult:
        return await metrics.query(server.url, query, store_label="pod", namespace_label="namespace", timeout=timeout)

    with serving(behave) as server:
        assert (await ask(metrics, server.url)).failure is None  # one keep-alive connection, now in the pool
        session = metrics._client(server.url, None)[0]._session
        pools = session.get_adapter(server.url).poolmanager.pools
        (pool,) = [pools[key] for key in pools.keys()]  # noqa: SIM118 (a RecentlyUsedContainer cannot be iterated)

        async def late_answer_read() -> bool:
            return len(server.requests) == 2 and pool.pool is not None and pool.pool.qsize() == pool.pool.maxsize

        async def held_sent() -> bool:
            return len(server.requests) == 3

        late = asyncio.create_task(named("late", 1))
        await eventually_async(late_answer_read, timeout=1, interval=0.005, what="the late query's body read")
        held = asyncio.create_task(named("held", 5))
        await eventually_async(held_sent, timeout=1, interval=0.005, what="the other query on that connection")
        assert (await late).error == "Prometheus did not answer within 1s"  # aborted while parsing
        parse_held.set()
        answer_held.set()
        result = await held
        assert server.connections == 1, "the other query used the late one's pooled connection"
    assert (result.failure, len(result.samples)) == (None, 3), result.error


CAP = 256 * 1024
"""The answer cap of the buffer tests: 16 answers stalled at it fill a budget of 16 caps (as 16 slots of 4 MiB
filled the old 64 MiB)."""


def stalling(exchange: Exchange) -> None:
    """Answers a query named warm; to any other, sends the start of a vector as long as the cap allows, and holds."""
    if "query=warm" in exchange.request.target:
        body = vector_json(1)
        exchange.send(head(200, {"Content-Type": "application/json"}, length=len(body)) + body)
        return
    start = b'{"status":"success","data":{"resultType":"vector","result":['
    exchange.send(head(200, {"Content-Type": "application/json"}) + start + b" " * (CAP - len(start)))
    exchange.gone_within(60)


@pytest.mark.parametrize("greedy", [1, 4])
async def test_stalled_answers_of_other_endpoints_never_fail_a_healthy_one(greedy: int) -> None:
    """Prometheus servers that each fill all their 16 slots with answers stalled at the cap. One holds at
    most its share (a quarter of the budget): the healthy endpoint's queries answer. Four fill the budget: the
    healthy endpoint's queries fail for want of room, say so, and do not mark it failing."""
    metrics = PrometheusMetrics(limits=AnswerLimits(max_bytes=CAP), buffered_bytes=16 * CAP)
    memory = metrics._memory
    stalls: list[asyncio.Task[QueryResult]] = []

    async def named(url: str, query: str, timeout: float) -> QueryResult:
        return await metrics.query(url, query, store_label="pod", namespace_label="namespace", timeout=timeout)

    try:
        with serving_many(stalling, greedy) as hostile, serving(answering(vector_json(3))) as healthy:
            for _ in range(3):  # four slots for its four queries
                assert (await named(healthy.url, "warm", 2)).failure is None
            for server in hostile:
                for _ in range(16):  # its slots open one per answer
                    assert (await named(server.url, "warm", 2)).failure is None
                assert metrics.endpoint(server.url).limit == 16
                stalls += [asyncio.create_task(named(server.url, f"stall{i}", 10)) for i in range(16)]

            async def filled() -> bool:
                return memory.used == min(memory.limit, greedy * memory.share)  # each read all its share lets it

            await eventually_async(filled, timeout=5, interval=0.01, what="the stalled answers to fill their shares")
            before = metrics.endpoint(healthy.url).limit
            results = await asyncio.gather(*(named(healthy.url, f"b{i}", 1) for i in range(4)))
            slots = metrics.endpoint(healthy.url)

            async def settled() -> bool:
                return slots.in_flight == 0

            await eventually_async(settled, timeout=2, interval=0.01, what="the healthy queries' threads to end")
            if greedy == 1:
                assert [(r.failure, len(r.samples)) for r in results] == [(None, 3)] * 4, [r.error for r in results]
            else:
                for result in results:
                    assert result.failure is QueryFailure.ERROR, result.error
                    assert result.error.startswith("Prometheus answer not read: no buffer room"), result.error
                    assert "did not answer" not in result.error
                assert (slots.failure, slots.limit) == (None, before), "not its Prometheus's failure"
            assert max(memory.held.values()) <= memory.share == 4 * CAP
            for stall in stalls:
                stall.cancel()
            await asyncio.gather(*stalls, return_exceptions=True)
            assert (await named(healthy.url, "after", 2)).failure is None
    finally:
        metrics.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_an_https_answer_dribbling_its_body_ends_at_the_deadline(pki: Pki, tmp_path: Path) -> None:
    """Over TLS the socket in flight is wrapped; the abort ends it all the same."""
    shutil.copy(pki.ca_cert, tmp_path / "ca.crt")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.serving_cert, pki.serving_key)
    metrics = PrometheusMetrics(credentials_dir=str(tmp_path))
    try:
        with serving(answering(vector_json(1)), tls=context) as healthy:
            answered = await ask(metrics, healthy.url, auth=PrometheusAuthSpec(ca_file="ca.crt"))
            assert (answered.failure, len(answered.samples)) == (None, 1), answered.error
        with serving(dribbling_body(), tls=context) as server:
            started = time.monotonic()
            result = await ask(metrics, server.url, timeout=2, auth=PrometheusAuthSpec(ca_file="ca.crt"))
            elapsed = time.monotonic() - started
            assert result.error == "Prometheus did not answer within 2s"
            assert elapsed < 2 + EPSILON, f"ended {elapsed - 2:+.3f}s from its deadline"
            await released(metrics, server)
    finally:
        metrics.close()


async def test_a_tls_handshake_that_never_completes_ends_at_the_deadline(metrics: PrometheusMetrics) -> None:
    with serving(silent) as server:
        started = time.monotonic()
        result = await ask(metrics, server.url.replace("http://", "https://"), timeout=2)
        elapsed = time.monotonic() - started
        assert result.error == "Prometheus did not answer within 2s"
        assert elapsed < 2 + EPSILON, f"ended {elapsed - 2:+.3f}s from its deadline"

        async def done() -> bool:
            return server.closed_by_client == server.connections == 1

        await eventually_async(done, timeout=1, interval=0.01, what="the handshake's connection to end")


async def test_a_failing_endpoint_gets_one_probe_and_its_other_queries_fail_at_once(metrics: PrometheusMetrics) -> None:
    with serving(silent) as server:
        first = await ask(metrics, server.url, timeout=1)
        assert first.error == "Prometheus did not answer within 1s"
        probe = asyncio.create_task(ask(metrics, server.url, timeout=1))

        async def probing() -> bool:
            return len(server.requests) == 2

        await eventually_async(probing, timeout=1, interval=0.01, what="the probe to reach the endpoint")
        started = time.monotonic()
        others = await asyncio.gather(*(ask(metrics, server.url, timeout=1) for _ in range(8)))
        assert time.monotonic() - started < 0.1, "a query to a failing endpoint fails at once"
        assert {o.error for o in others} == {
            "Prometheus did not answer within 1s (its next query waits for the one checking whether it is back)"
        }
        assert (await probe).failure is QueryFailure.UNREACHABLE
        assert len(server.requests) == 2, "only the probe reached it"


async def test_hostile_endpoints_cost_a_healthy_one_nothing(metrics: PrometheusMetrics) -> None:
    """20 silent and 20 dribbling endpoints at timeout 5 s, four queries each per 0.5 s cycle, while a healthy
    endpoint's four queries per cycle go on answering."""
    with (
        serving(answering(vector_json(3))) as healthy,
        serving_many(silent, 20) as silents,
        serving_many(dribbling_headers(), 10) as slow_heads,
        serving_many(dribbling_body(), 10) as slow_bodies,
    ):
        hostile = [s.url for s in silents + slow_heads + slow_bodies]
        pending: list[asyncio.Task[QueryResult]] = []
        latencies: list[float] = []

        async def timed() -> QueryResult:
            started = time.monotonic()
            result = await ask(metrics, healthy.url, timeout=5)
            latencies.append(time.monotonic() - started)
            return result

        cycles, ends = 0, time.monotonic() + 7  # past one whole timeout: every hostile probe has ended once
        while time.monotonic() < ends:
            cycles += 1
            pending += [asyncio.create_task(ask(metrics, url, timeout=5)) for url in hostile for _ in range(4)]
            answers = await asyncio.gather(*(timed() for _ in range(4)))
            assert all(a.failure is None and len(a.samples) == 3 for a in answers), [a.error for a in answers]
            await asyncio.sleep(0.5)  # the cycle's cadence
        failed = await asyncio.gather(*pending)
    assert {f.failure for f in failed} == {QueryFailure.UNREACHABLE}
    latencies.sort()
    p50, worst = latencies[len(latencies) // 2], latencies[-1]
    assert worst < 0.5, f"healthy queries: p50 {p50 * 1000:.0f} ms, worst {worst * 1000:.0f} ms over {cycles} cycles"
    held = [s.most_busy for s in silents + slow_heads + slow_bodies]
    assert max(held) == 1, f"each hostile endpoint held one query (one thread) at a time: {held}"
    print(f"healthy queries beside 40 hostile endpoints: p50 {p50 * 1000:.1f} ms, worst {worst * 1000:.1f} ms")


HUGE = {
    "150,000 series": (answering(lambda: vector_chunks(150_000)), "more than 5,000 series"),
    "gzip to 128 MiB": (
        answering(gzip_bomb(128 * MIB), headers={"Content-Encoding": "gzip"}),
        "more than 1 MiB",
    ),
}


@pytest.mark.parametrize("name", list(HUGE))
async def test_a_huge_answer_is_refused_while_reading(metrics: PrometheusMetrics, name: str) -> None:
    """Every query of two cycles (four each, concurrently) meets the huge answer; the peak RSS of the process grows
    by far less than the chart's memory limit."""
    behaviour, message = HUGE[name]
    with serving(behaviour) as server:
        await ask(metrics, server.url)  # the endpoint gains slots as it answers
        before = reset_peak_memory()
        for _ in range(2):
            results = await asyncio.gather(*(ask(metrics, server.url, timeout=10) for _ in range(4)))
            for result in results:
                assert result.failure is QueryFailure.ERROR
                assert message in result.error and "refused while reading" in result.error, result.error
                assert "OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_" in result.error
        growth = (status_memory_kib("VmHWM") - before) / 1024
    assert growth < 64, f"peak RSS grew by {growth:.1f} MiB"
    print(f"{name}: peak RSS grew by {growth:.1f} MiB")


async def test_the_memory_probe_sees_an_unbounded_answer() -> None:
    """Negative control: with the caps raised, the same gzip answer does show in the peak RSS."""
    unbounded = PrometheusMetrics(limits=AnswerLimits(max_bytes=256 * MIB), buffered_bytes=512 * MIB)
    try:
        with serving(answering(gzip_bomb(128 * MIB), headers={"Content-Encoding": "gzip"})) as server:
            before = reset_peak_memory()
            result = await ask(unbounded, server.url, timeout=20)
            growth = (status_memory_kib("VmHWM") - before) / 1024
    finally:
        unbounded.close()
    assert result.failure is None, result.error
    assert growth > 100, f"peak RSS grew by only {growth:.1f} MiB"
    print(f"gzip to 128 MiB, caps raised: peak RSS grew by {growth:.1f} MiB")


SHAPES = {
    "scalar": (b'{"status":"success","data":{"resultType":"scalar","result":[1700000000,"1"]}}', "a scalar where"),
    "string": (b'{"status":"success","data":{"resultType":"string","result":[1700000000,"x"]}}', "a string where"),
    "matrix": (
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}',
        "a matrix (a range vector) where",
    ),
    "html": (
        b"<html><body><h1>Sign in</h1></body></html>",
        "not JSON (Content-Type 'text/html', 42 bytes): '<html><body><h1>Sign in",
    ),
    "malformed": (
        b'{"status":"success","data":{"resultType":"vector","res',
        "not JSON (Content-Type 'application/json'",
    ),
    "error status": (b'{"status":"error","errorType":"timeout","error":"query timed out"}', "status 'error': query"),
    "not an object": (b"[1, 2]", "JSON that is not an object (a list)"),
    "no result type": (b'{"status":"success","data":{}}', "without data.resultType"),
}


@pytest.mark.parametrize("name", list(SHAPES))
async def test_an_answer_of_another_shape_is_a_reason(metrics: PrometheusMetrics, name: str) -> None:
    body, message = SHAPES[name]
    content_type = "text/html" if name == "html" else "application/json"
    with serving(answering(body, content_type=content_type)) as server:
        result = await ask(metrics, server.url)
    assert result.failure is QueryFailure.ERROR and message in result.error, result.error


async def test_an_html_error_page_from_a_proxy_is_a_reason(metrics: PrometheusMetrics) -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>" + b" " * 100_000
    with serving(answering(page, status=502, content_type="text/html")) as server:
        result = await ask(metrics, server.url)
    assert result.failure is QueryFailure.ERROR
    assert result.error.startswith("Prometheus answered HTTP 502: <html><head><title>502 Bad Gateway"), result.error


@pytest.mark.parametrize(
    ("body", "samples"),
    [
        (b'{"status":"success","data":{"resultType":"vector","result":[]}}', 0),
        (vector_json(2, warnings=["PromQL info: metric might not be a counter"]), 2),
    ],
    ids=["empty", "warnings"],
)
async def test_empty_answers_and_warnings_are_answers(metrics: PrometheusMetrics, body: bytes, samples: int) -> None:
    with serving(answering(body)) as server:
        result = await ask(metrics, server.url)
    assert (result.failure, len(result.samples)) == (None, samples), result.error


async def test_an_over_large_answer_shows_on_metrics_available_never_check_failed(tmp_path: Path) -> None:
    """The real adapter and the service: the reason reaches MetricsAvailable, the cycle goes on."""
    mirror = FakeMirror()
    metrics = PrometheusMetrics(limits=AnswerLimits(max_series=100))
    try:
        with serving(answering(vector_json(500))) as server:
            monitor = Monitor(store=FakeStore(), metrics=metrics, mirror=mirror)
            await monitor.check_cluster(REF, {**SPEC, "prometheus": {"url": server.url}}, PODS, {}, at(0))
    finally:
        metrics.close()
    available = condition(mirror.status, "MetricsAvailable")
    assert (available["status"], available["reason"]) == ("False", "QueryFailed"), available
    assert "more than 100 series" in available["message"]
    assert condition(mirror.status, "Healthy")["reason"] != "CheckFailed"


def auth_spec() -> PrometheusAuthSpec:
    return PrometheusAuthSpec(bearer_token_file="token", headers={"X-Scope-OrgID": TENANT})


@pytest.fixture
def authed(credentials: Path) -> Iterator[PrometheusMetrics]:
    adapter = PrometheusMetrics(credentials_dir=str(credentials))
    yield adapter
    adapter.close()


async def test_a_cross_origin_redirect_is_not_followed(authed: PrometheusMetrics) -> None:
    with serving(answering(vector_json(1))) as elsewhere:
        with serving(redirecting(f"{elsewhere.url}/api/v1/query?query=up")) as configured:
            result = await ask(authed, configured.url, auth=auth_spec())
        assert (result.failure, result.error) == (
            QueryFailure.ERROR,
            f"Prometheus redirected to {elsewhere.url}: not followed, so no credential or header is sent there;"
            " set spec.prometheus.url to that address",
        )
        assert elsewhere.requests == [], "nothing reached the other origin"
    sent = configured.requests[0].headers
    assert (sent["authorization"], sent["x-scope-orgid"]) == (f"Bearer {TOKEN}", TENANT), "the configured one had both"


async def test_another_host_on_the_same_port_is_another_origin(authed: PrometheusMetrics) -> None:
    with serving(answering(vector_json(1))) as target:
        moved = target.url.replace("127.0.0.1", "localhost")
        with serving(routed({"/api": redirecting(f"{moved}/api/v1/query?query=up")})) as configured:
            result = await ask(authed, configured.url, auth=auth_spec())
        assert "not followed" in result.error and target.requests == []


async def test_a_same_origin_redirect_is_followed_with_its_credentials(authed: PrometheusMetrics) -> None:
    routes = {
        "/prometheus/api/v1/query": answering(vector_json(2)),
        "/api/v1/query": redirecting("/prometheus/api/v1/query?query=up", status=307),
    }
    with serving(routed(routes)) as server:
        result = await ask(authed, server.url, auth=auth_spec())
    assert (result.failure, len(result.samples)) == (None, 2), result.error
    assert [r.target.split("?")[0] for r in server.requests] == ["/api/v1/query", "/prometheus/api/v1/query"]
    assert all(r.headers.get("x-scope-orgid") == TENANT for r in server.requests)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)


async def test_redirects_stop_after_three_hops(metrics: PrometheusMetrics) -> None:
    with serving(redirecting("/api/v1/query?query=up")) as server:
        result = await ask(metrics, server.url)
    assert result.error == "Prometheus redirected more than 3 times: not followed further"
    assert len(server.requests) == 4
