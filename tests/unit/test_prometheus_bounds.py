"""The pure parts of the bounded Prometheus client, as tables: series counted across chunk boundaries, what each
answer shape reads as, which redirects stay in the origin, and how a Prometheus's slots open and close. No network
(tests/integration/test_prometheus_bounds.py has the real servers)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Iterator

import pytest

from operator_k8s.adapters.prometheus import EndpointSlots, PrometheusMetrics
from operator_k8s.adapters.prometheus_http import (
    MIB,
    AnswerLimits,
    AnswerRefused,
    BoundedSession,
    BufferBudget,
    NoBufferRoom,
    QueryDeadline,
    SeriesCounter,
    answer_problem,
    parse_answer,
    same_origin,
    shown_origin,
)
from operator_k8s.domain.observations import QueryResult
from operator_k8s.settings import SettingsError, load_settings
from tests.hostile_http import vector_json

ANSWER = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1,"1"]},{"metric":{"pod":"b"},"value":[1,"2"]},{"metric":{},"value":[1,"3"]}]}}'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 13, 64, len(ANSWER)])
def test_series_are_counted_across_chunk_boundaries(size: int) -> None:
    counter = SeriesCounter()
    for start in range(0, len(ANSWER), size):
        counter.feed(ANSWER[start : start + size])
    assert counter.count == 3


@pytest.mark.parametrize(
    ("chunks", "count"),
    [
        ([b'"metr', b'ic"'], 1),
        ([b'"', b"metric", b'"'], 1),
        ([b'"metric', b'"', b'"metric"'], 2),
        ([b"metric", b'"metric'], 0),
        ([b'\\"metric\\"'], 0),  # escaped inside a label value: not a key
        ([b""], 0),
    ],
)
def test_series_marks_split_anywhere_count_once(chunks: list[bytes], count: int) -> None:
    counter = SeriesCounter()
    for chunk in chunks:
        counter.feed(chunk)
    assert counter.count == count


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, None),
        ({"status": "success", "data": {"resultType": "vector", "result": []}, "warnings": ["w"]}, None),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}, "a scalar where an instant"),
        ({"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}, "a string where an instant"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "a matrix (a range vector)"),
        ({"status": "success", "data": {"resultType": "histogram"}}, "resultType 'histogram'"),
        ({"status": "success", "data": {"resultType": "vector", "result": {}}}, "result is not a list"),
        ({"status": "success", "data": None}, "without data.resultType"),
        ({"status": "success"}, "without data.resultType"),
        ({"status": "error", "error": "bad"}, "status 'error': bad"),
        ({}, "status None: no error given"),
        ([], "not an object (a list)"),
        ("x", "not an object (a str)"),
    ],
)
def test_every_answer_shape_reads_as_an_answer_or_a_reason(value: object, problem: str | None) -> None:
    found = answer_problem(value)
    assert found == problem if problem is None else problem in (found or ""), found


@pytest.mark.parametrize(
    ("body", "content_type", "shown"),
    [
        (
            b"<html>\n<body>Log   in</body></html>",
            "text/html",
            "(Content-Type 'text/html', 35 bytes): '<html> <body>Log in",
        ),
        (b'{"status":', "application/json", "(Content-Type 'application/json', 10 bytes): '{\"status\":'"),
        (b"\xff\xfe", "", "(Content-Type 'none', 2 bytes)"),
        (b"", "application/json", "(Content-Type 'application/json', 0 bytes): ''"),
    ],
)
def test_what_is_not_json_is_shown_by_its_type_and_first_characters(body: bytes, content_type: str, shown: str) -> None:
    with pytest.raises(AnswerRefused, match="Prometheus answered something that is not JSON") as caught:
        parse_answer(body, content_type)
    assert shown in str(caught.value)


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("http://p:9090/api/v1/query", "http://p:9090/prometheus/api/v1/query?query=up", True),
        ("http://P:9090", "http://p:9090/x", True),
        ("HTTP://p:9090", "http://p:9090", True),
        ("http://p", "http://p:80/x", True),
        ("https://p", "https://p:443/x", True),
        ("http://p:9090", "https://p:9090", False),
        ("http://p:9090", "http://p:9091", False),
        ("http://p:9090", "http://q:9090", False),
        ("http://127.0.0.1:9090", "http://localhost:9090", False),
        ("http://p", "http://p:443", False),
        ("http://user@p:9090", "http://p:9090", True),
        ("http://p:9090", "//other:9090/x", False),
        ("http://p:9090", "http://p.evil:9090", False),
    ],
)
def test_only_the_same_scheme_host_and_port_are_the_same_origin(first: str, second: str, same: bool) -> None:
    assert same_origin(first, second) is same
    assert same_origin(second, first) is same


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://other:9090/api/v1/query?query=secret", "https://other:9090"),
        ("http://Other/x", "http://other:80"),
        ("https://user:pw@other/x", "https://other:443"),
    ],
)
def test_a_redirect_target_is_shown_by_its_origin_only(url: str, shown: str) -> None:
    assert shown_origin(url) == shown


@pytest.mark.parametrize(
    ("limits", "read", "message"),
    [
        (AnswerLimits(), 1 * MIB + 1, "more than 1 MiB (1,048,577 bytes read, decoded)"),
        (AnswerLimits(max_bytes=1000), 1500, "more than 1,000 bytes (1,500 bytes read, decoded)"),
    ],
)
def test_a_too_large_answer_names_its_cap_and_setting(limits: AnswerLimits, read: int, message: str) -> None:
    text = limits.too_large(read)
    assert message in text and text.endswith("raise OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_BYTES")
    assert limits.too_many_series(read).endswith("raise OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_SERIES")


@pytest.mark.parametrize(
    ("series", "fits"),
    [(AnswerLimits().max_series, True), (10_000, False)],
    ids=["the-default-series-cap", "ten-thousand"],
)
def test_an_answer_of_the_default_series_cap_fits_the_default_byte_cap(series: int, fits: bool) -> None:
    """Series as Prometheus writes them (about 130 bytes each): the series cap, not the byte cap, refuses first."""
    assert (len(vector_json(series)) <= AnswerLimits().max_bytes) is fits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_is_over_when_its_time_passed_or_it_was_aborted() -> None:
    clock = Clock()
    deadline = QueryDeadline(5, clock=clock)
    assert (deadline.remaining(), deadline.over) == (5, False)
    clock.now += 5
    assert (deadline.remaining(), deadline.over) == (0, True)
    aborted = QueryDeadline(5, clock=clock)
    aborted.abort()
    assert aborted.over


def test_an_abort_shuts_the_recorded_socket_and_a_finished_query_is_left_alone() -> None:
    ours, theirs = socket.socketpair()
    try:
        deadline = QueryDeadline(5)
        deadline.attach(ours)
        deadline.abort()
        assert ours.recv(1) == b"", "shut down: a blocked recv returns at once"
        later = QueryDeadline(5)
        pooled, peer = socket.socketpair()
        later.attach(pooled)
        later.finish()
        later.abort()  # a connection back in the pool is never touched
        peer.sendall(b"x")
        assert pooled.recv(1) == b"x"
        pooled.close()
        peer.close()
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("then_finish", [False, True], ids=["detached", "detached-then-finished"])
def test_an_abort_after_the_body_was_read_touches_nothing(then_finish: bool) -> None:
    """Detached when the body is read (its connection may be another query's by now): the abort leaves it alone,
    and it is late all the same."""
    pooled, peer = socket.socketpair()
    try:
        deadline = QueryDeadline(5)
        deadline.attach(pooled)
        deadline.detach()
        if then_finish:
            deadline.finish()
        deadline.abort()
        peer.sendall(b"x")
        assert pooled.recv(1) == b"x", "still open: another query's request goes on"
        assert deadline.over is not then_finish
    finally:
        pooled.close()
        peer.close()


def test_a_deadline_detached_then_attached_again_ends_the_new_socket() -> None:
    """A redirect: the first hop's connection goes back to the pool, the next hop's is the one an abort ends."""
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    try:
        deadline = QueryDeadline(5)
        deadline.attach(first)
        deadline.detach()
        deadline.attach(second)
        deadline.abort()
        assert second.recv(1) == b""
        first_peer.sendall(b"x")
        assert first.recv(1) == b"x"
    finally:
        for sock in (first, first_peer, second, second_peer):
            sock.close()


def test_a_connection_made_after_the_abort_is_ended_at_once() -> None:
    ours, theirs = socket.socketpair()
    try:
        deadline = QueryDeadline(5)
        deadline.abort()
        deadline.attach(ours)
        assert ours.recv(1) == b""
    finally:
        ours.close()
        theirs.close()


def test_the_buffer_budget_waits_for_room_until_the_deadline() -> None:
    budget = BufferBudget(100)
    budget.reserve(80, QueryDeadline(5))
    starved = QueryDeadline(0.01)
    with pytest.raises(NoBufferRoom, match="already hold 80 bytes of the 100 bytes"):
        budget.reserve(30, starved)
    assert starved.room_wanted is not None and "80 bytes of the 100 bytes" in starved.room_wanted
    budget.release(80)
    roomy = QueryDeadline(5)
    budget.reserve(100, roomy)
    assert (budget.used, roomy.room_wanted) == (100, None)


@pytest.mark.parametrize(
    ("held", "endpoint", "count", "lacking"),
    [
        ({}, "a", 40, None),
        ({"a": 40}, "a", 1, "from this Prometheus already hold 40 bytes, its share of"),
        ({"a": 40}, "b", 40, None),
        ({"a": 40, "b": 40}, "c", 20, None),
        ({"a": 40, "b": 40, "c": 20}, "d", 1, "already hold 100 bytes of the 100 bytes"),
        ({"a": 40, "b": 40, "c": 20}, "c", 1, "already hold 100 bytes of the 100 bytes"),
        ({"a": 30, "b": 40, "c": 20}, "a", 10, None),
    ],
    ids=["first", "past-its-share", "another-endpoint", "the-rest", "all-taken", "all-taken-within-share", "fits"],
)
def test_one_endpoint_holds_at_most_its_share_of_the_buffer_budget(
    held: dict[str, int], endpoint: str, count: int, lacking: str | None
) -> None:
    budget = BufferBudget(100, share=40)
    for name, amount in held.items():
        budget.reserve(amount, QueryDeadline(5), name)
    deadline = QueryDeadline(0.01)
    if lacking is None:
        budget.reserve(count, deadline, endpoint)
        assert budget.held[endpoint] == held.get(endpoint, 0) + count
    else:
        with pytest.raises(NoBufferRoom, match=lacking):
            budget.reserve(count, deadline, endpoint)
        assert budget.held.get(endpoint, 0) == held.get(endpoint, 0)
    for name, amount in held.items():
        budget.release(amount, name)
    assert (budget.used, budget.held) == (
        (count if lacking is None else 0),
        ({endpoint: count} if lacking is None else {}),
    )


@pytest.mark.parametrize(
    ("limits", "buffered", "total", "share"),
    [
        (AnswerLimits(), 16 * MIB, 16 * MIB, 4 * MIB),
        (AnswerLimits(max_bytes=4 * MIB), 64 * MIB, 64 * MIB, 16 * MIB),
        (AnswerLimits(max_bytes=4 * MIB), 8 * MIB, 8 * MIB, 4 * MIB),
        (AnswerLimits(max_bytes=4 * MIB), 2 * MIB, 4 * MIB, 4 * MIB),
    ],
    ids=["defaults", "a-quarter", "at-least-one-answer", "never-below-one-answer"],
)
def test_an_endpoint_share_is_a_quarter_but_at_least_one_answer(
    limits: AnswerLimits, buffered: int, total: int, share: int
) -> None:
    metrics = PrometheusMetrics(limits=limits, buffered_bytes=buffered)
    try:
        assert (metrics._memory.limit, metrics._memory.share) == (total, share)
    finally:
        metrics.close()


async def test_an_endpoint_gains_a_slot_per_answer() -> None:
    slots = EndpointSlots(3)
    assert await slots.acquire(1) is None
    waiting = [asyncio.create_task(slots.acquire(1)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiting), "one query at a time until it has answered"
    slots.release(None)
    await asyncio.sleep(0)
    assert [w.done() for w in waiting] == [True, True, False], "two slots after one answer"
    slots.release(None)
    assert await asyncio.gather(*waiting) == [None, None, None]
    assert (slots.limit, slots.in_flight) == (3, 2)
    slots.release(None)
    assert slots.limit == 3, "never past the configured number"


TIMED_OUT = "Prometheus did not answer within 5s"


@pytest.mark.parametrize(
    ("limit", "events", "expected"),
    [
        (1, ["answer"] * 20, (16, None)),
        (16, ["slow"], (8, None)),
        (16, ["slow"] * 3, (2, None)),
        (16, ["slow"] * 6, (1, None)),
        (16, ["slow", "answer", "answer"], (10, None)),
        (16, ["down"], (1, TIMED_OUT)),
        (16, ["down", "answer"], (2, None)),
        (8, ["unused"], (8, None)),
        (4, ["down", "unused"], (1, TIMED_OUT)),
    ],
    ids=[
        "answers-add-one-up-to-the-max",
        "a-slow-query-halves",
        "three-slow-queries",
        "never-below-one",
        "then-answers-add-one-each",
        "nothing-answered-since-it-was-sent-fails",
        "the-probe-answered",
        "a-query-that-never-asked-changes-nothing",
        "nor-while-failing",
    ],
)
def test_slots_grow_by_one_per_answer_and_halve_per_timeout(
    limit: int, events: list[str], expected: tuple[int, str | None]
) -> None:
    """ "slow": timed out while the endpoint answered another query since it was sent; "down": it answered
    nothing since."""
    slots = EndpointSlots(16)
    slots.limit = limit
    slots.answered_at = time.monotonic()
    for event in events:
        slots.in_flight += 1
        if event == "answer":
            slots.release(None)
        elif event == "slow":
            slots.release(TIMED_OUT, since=slots.answered_at - 1)
        elif event == "down":
            slots.release(TIMED_OUT, since=slots.answered_at + 1)
        else:
            slots.release(TIMED_OUT, used=False)
    assert (slots.limit, slots.failure) == expected
    assert slots.in_flight == 0


async def test_one_slow_query_does_not_mark_an_answering_endpoint_failing() -> None:
    """An expensive query times out while its Prometheus answers the others: it fails alone, and its Prometheus
    keeps half its slots."""
    slots = EndpointSlots(3)
    for _ in range(3):
        assert await slots.acquire(1) is None
        slots.release(None)
    assert await slots.acquire(1) is None and await slots.acquire(1) is None
    slow_sent = time.monotonic()
    slots.release(None)  # another query, sent after the slow one, answered
    slots.release("Prometheus did not answer within 5s", since=slow_sent)
    assert (slots.limit, slots.failure) == (1, None)
    assert await slots.acquire(1) is None, "other clusters' queries go on"


async def test_a_timed_out_endpoint_gets_one_probe_and_the_rest_fail_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="operator_k8s.prometheus")
    slots = EndpointSlots(3, "http://p:9090")
    for _ in range(2):
        assert await slots.acquire(1) is None
        slots.release(None)
    for _ in range(3):
        assert await slots.acquire(1) is None
    queued = asyncio.create_task(slots.acquire(1))
    await asyncio.sleep(0)
    slots.release("Prometheus did not answer within 5s")
    assert (
        await queued
        == "Prometheus did not answer within 5s (its next query waits for the one checking whether it is back)"
    )
    assert (slots.limit, slots.in_flight) == (1, 2)
    assert (await slots.acquire(1) or "").startswith("Prometheus did not answer within 5s")
    slots.release("Prometheus did not answer within 5s")
    slots.release("Prometheus did not answer within 5s")
    assert await slots.acquire(1) is None, "with nothing in flight, the next query is the probe"
    assert (await slots.acquire(1) or "").startswith("Prometheus did not answer")
    slots.release(None)
    assert (slots.limit, slots.failure) == (2, None), "one more slot per answer from there"
    assert [(r.getMessage(), r.__dict__["prometheus"]) for r in caplog.records] == [
        ("Prometheus stopped answering; one query at a time checks whether it is back", "http://p:9090"),
        ("Prometheus answered again; its query slots grow by one per answer", "http://p:9090"),
    ], "logged once per change, not per query"


async def test_a_query_that_waited_out_its_deadline_leaves_the_endpoint_as_it_was() -> None:
    slots = EndpointSlots(1)
    assert await slots.acquire(1) is None
    assert (
        await slots.acquire(0.01)
        == "Prometheus did not answer within 0.01s: every one of its 1 query slots stayed busy"
    )
    assert (slots.in_flight, slots.failure) == (1, None)
    slots.release(None)
    assert slots.in_flight == 0


def test_the_caps_are_settings() -> None:
    defaults = load_settings({"OPERATOR_K8S_DATABASE_DSN": "x"})
    assert (
        defaults.prometheus_max_answer_bytes,
        defaults.prometheus_max_answer_series,
        defaults.prometheus_max_buffered_bytes,
        defaults.prometheus_query_threads,
        defaults.prometheus_slots_per_endpoint,
    ) == (1 * MIB, 5_000, 16 * MIB, 256, 16)
    raised = load_settings({"OPERATOR_K8S_DATABASE_DSN": "x", "OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_SERIES": "50000"})
    assert raised.prometheus_max_answer_series == 50_000
    with pytest.raises(SettingsError, match="PROMETHEUS_MAX_ANSWER_BYTES"):
        load_settings({"OPERATOR_K8S_DATABASE_DSN": "x", "OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_BYTES": "10"})


class _Streamed:
    """An answer streamed in chunks, noting how much of the buffer budget is held as each chunk is handed over."""

    def __init__(self, chunks: list[bytes], budget: BufferBudget, headers: dict[str, str] | None = None) -> None:
        self.chunks, self.budget, self.headers = chunks, budget, headers or {}
        self.held: list[int] = []

    def iter_content(self, _: int) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.held.append(self.budget.used)
            yield chunk


@pytest.mark.parametrize(
    ("headers", "room"),
    [
        ({}, MIB),
        ({"content-length": str(len(ANSWER) * 2)}, len(ANSWER) * 2),
        ({"content-length": "9", "content-encoding": "gzip"}, MIB),
    ],
)
def test_a_read_holds_room_for_its_whole_answer_from_the_first_byte(headers: dict[str, str], room: int) -> None:
    """So answers read at once never each hold part of the room and starve one another; the unused room is given
    back once the answer is read."""
    budget = BufferBudget(4 * MIB)
    session = BoundedSession(limits=AnswerLimits(MIB, 5000), memory=budget, pool_size=1, connect_timeout=1)
    answer = _Streamed([ANSWER, ANSWER], budget, headers)
    body, kept = session._read(answer, QueryDeadline(5))  # type: ignore[arg-type]
    assert answer.held == [room, room]
    assert (len(body), kept, budget.used) == (2 * len(ANSWER), 2 * len(ANSWER), 2 * len(ANSWER))


async def test_prometheus_servers_that_timed_out_lately_share_half_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many of them answer cheap queries and hang the others, the servers that answer keep half the
    threads."""
    metrics = PrometheusMetrics(concurrency=4, per_endpoint=16)
    hung = threading.Event()

    def blocking(url: str, promql: str, *_: object) -> QueryResult:
        if "hanging" in url:
            hung.wait(5)
        return QueryResult(query=promql, samples=())

    monkeypatch.setattr(metrics, "_query_blocking", blocking)
    hanging = [f"http://hanging-{i}:9090" for i in range(3)]
    for url in hanging:
        slots = metrics.endpoint(url)
        slots.limit, slots.timed_out_at = 16, time.monotonic()  # they answered, then timed out a moment ago

    def ask(url: str, timeout: float) -> Awaitable[QueryResult]:
        return metrics.query(url, "up", store_label="pod", namespace_label="namespace", timeout=timeout)

    try:
        holding = [asyncio.create_task(ask(url, 5)) for url in hanging[:2]]
        await asyncio.sleep(0.05)  # let them take their threads
        refused = await ask(hanging[2], 0.2)
        assert "threads kept for such Prometheus servers stayed busy" in (refused.error or "")
        healthy = await ask("http://healthy:9090", 1)
        assert healthy.failure is None, "a Prometheus that answers is never short of a thread"
    finally:
        hung.set()
        await asyncio.gather(*holding)
        metrics.close()
