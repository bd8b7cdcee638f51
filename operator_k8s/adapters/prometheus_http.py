"""The HTTP session prometheus-api-client is handed: every query bounded in time, size and trust.

requests bounds each socket operation, not a request: a server that sends one byte a second never trips a read
timeout, and one answer may bring any number of bytes (or a small gzip that inflates to any size) into memory. So:

- **Time.** A query carries a ``QueryDeadline`` (thread-local, set by the worker thread around the query). Our urllib3
  connections record the socket of the request in flight into it, and the waiting side calls ``abort()`` at the
  deadline: the socket is shut down, the blocked ``recv`` returns at once, and the worker thread is free again. The
  read timeout handed to requests is the time left, as a second guard.
- **Size.** The body is read as a stream, decoded (urllib3 ≥ 2.6 inflates at most the amount asked for per read),
  counting bytes and series as they arrive; past a cap the response is closed and the query fails with a reason. The
  bytes being buffered by all queries together are bounded too, those of one Prometheus to a share of them (a query
  that finds no room by its deadline fails without blaming its Prometheus), and JSON is parsed under one
  process-wide lock held until the caller has taken its samples out of the tree (parsing is GIL-bound, so this costs
  no throughput), so at most one parsed answer exists at a time.
- **Trust.** Redirects are followed only within the origin (scheme, host, port) of the configured URL, at most
  ``MAX_REDIRECTS`` hops: nothing, neither the Authorization header nor a configured header such as ``X-Scope-OrgID``,
  is ever sent to another origin.
- **Shape.** An answer that is not a successful instant vector (a scalar, a string, a matrix, HTML from a proxy,
  malformed JSON) is a reason naming what came back, never an exception that ends a cycle.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
ERROR_BODY_BYTES = 4096
"""What is read of an answer that is not a 200: enough for Prometheus's error message, which is all that is shown."""
SERIES_MARK = b'"metric"'
"""Every series of a vector answer is an object with a ``"metric"`` key. Counted as bytes arrive, so a label named or
valued ``metric`` counts once more: the series cap errs towards refusing, and the byte cap holds regardless."""
MIB = 1024 * 1024


class AnswerRefused(Exception):
    """An answer the operator will not use (too large, of an unexpected shape, redirected to another origin): the
    message is the reason shown on the cluster."""


class NoBufferRoom(Exception):
    """The answer could not be read for want of buffer room before the query's deadline: other answers (of this
    Prometheus, past its share, or of all of them) held the room. Says nothing about the Prometheus asked."""


class DeadlineExceeded(Exception):
    """The query's deadline passed while it was being sent, answered or read; a message, if any, says what held it
    (the deadline itself needs no words: the query "did not answer within" its timeout)."""


def _describe_bytes(count: int) -> str:
    return f"{count // MIB} MiB" if count % MIB == 0 else f"{count:,} bytes"


@dataclass(frozen=True)
class AnswerLimits:
    """What one answer may bring into memory: decoded bytes and series, each named by the setting that raises it."""

    max_bytes: int = 1 * MIB
    max_series: int = 5_000
    """A series as Prometheus writes it is about 130 bytes (tests/hostile_http.py): 5,000 of them, about 650 KB,
    fit the 1 MiB byte cap, 10,000 (1.3 MB) would not."""

    def too_large(self, read: int) -> str:
        return (
            f"Prometheus answered more than {_describe_bytes(self.max_bytes)} ({read:,} bytes read, decoded):"
            " refused while reading; narrow the query or raise OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_BYTES"
        )

    def too_many_series(self, read: int) -> str:
        return (
            f"Prometheus answered more than {self.max_series:,} series ({read:,} bytes read): refused while reading;"
            " narrow the query or raise OPERATOR_K8S_PROMETHEUS_MAX_ANSWER_SERIES"
        )


class QueryDeadline:
    """One query's deadline, and the socket its request is using right now, so another thread can end the wait.

    The socket is kept as a duplicate of its descriptor: ``shutdown`` acts on the connection, not the descriptor, so it
    interrupts a ``recv`` on the original whether it is plain or wrapped in TLS (an ``SSLSocket`` cannot be dup'ed,
    and a plain socket handed to TLS is detached from its object).
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.expires = clock() + seconds
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._aborted = False
        self._finished = False
        self.holds_parse_lock = False
        self.room_wanted: str | None = None
        """Why the query waits, or gave up waiting, for buffer room (None once it has room): a query that ends
        this way is not its Prometheus's failure."""

    def remaining(self) -> float:
        return max(0.0, self.expires - self._clock())

    @property
    def over(self) -> bool:
        """Aborted, or past its time: whatever the request met after this, the query did not answer in time."""
        return self._aborted or self.remaining() <= 0

    def attach(self, sock: socket.socket) -> None:
        """Called by our connections (in the worker thread) for each request's socket."""
        if sock.fileno() < 0:  # closed already: nothing to end
            return
        duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self._lock:
            previous, self._socket = self._socket, duplicate
            aborted = self._aborted
        if previous is not None:
            previous.close()
        if aborted:  # ended before this connection existed: end it too
            _shut(duplicate)

    def abort(self) -> None:
        """End the request in flight now (from any thread); the worker sees a closed connection at once. Shut under
        the lock: a ``detach`` racing with it waits, so a connection is never shut once it is back in the pool."""
        with self._lock:
            if self._finished:
                return
            self._aborted = True
            if self._socket is not None:
                _shut(self._socket)

    def detach(self) -> None:
        """The request no longer uses its socket (its body is read, its connection goes back to the pool, where
        another query may take it): an abort from now on touches nothing until another socket is attached."""
        with self._lock:
            current, self._socket = self._socket, None
            if current is not None:
                current.close()

    def finish(self) -> None:
        """The worker is done with this query: an abort from now on must not touch a connection back in the pool."""
        with self._lock:
            self._finished = True
        self.detach()


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # already closed by its peer or by the worker: nothing left to end
        sock.shutdown(socket.SHUT_RDWR)


_local = threading.local()


def current_deadline() -> QueryDeadline | None:
    deadline: QueryDeadline | None = getattr(_local, "deadline", None)
    return deadline


_PARSING = threading.Lock()
"""Held from parsing an answer until its samples are taken out (``bounded_by`` releases it): one parsed tree at a
time."""


@contextmanager
def bounded_by(deadline: QueryDeadline) -> Iterator[QueryDeadline]:
    """Run a query in this thread under ``deadline``; on exit, the parse lock (if this query took it) is released."""
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = None
        if deadline.holds_parse_lock:
            deadline.holds_parse_lock = False
            _PARSING.release()
        deadline.finish()


def _track(sock: socket.socket | None) -> None:
    deadline = current_deadline()
    if sock is not None and deadline is not None:
        deadline.attach(sock)


class _Tracking:
    """Records a connection's socket in the query's deadline: on a new connection as soon as TCP connects (so a TLS
    handshake is covered too), and on a reused one when a request starts. Mixed into urllib3's connection classes."""

    sock: Any

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _track(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _track(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_Tracking, HTTPConnection):
    """urllib3's HTTP connection, tracked."""


class _TrackedHTTPSConnection(_Tracking, HTTPSConnection):
    """urllib3's HTTPS connection, tracked."""


def _untrack() -> None:
    deadline = current_deadline()
    if deadline is not None:
        deadline.detach()


class _TrackedHTTPPool(HTTPConnectionPool):
    """Detaches the query's deadline from a connection as it comes back (in the worker thread that read the body to
    its end), before another query can take it: a deadline passing later must not shut that query's socket."""

    ConnectionCls = _TrackedHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        _untrack()
        super()._put_conn(conn)


class _TrackedHTTPSPool(HTTPSConnectionPool):
    """As ``_TrackedHTTPPool``, for https."""

    ConnectionCls = _TrackedHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        _untrack()
        super()._put_conn(conn)


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections record their sockets in the current query's deadline. No retries: the next
    cycle is the retry."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class BufferBudget:
    """The bytes all queries together may hold while reading answers, and each Prometheus at most ``share`` of them:
    a query waits (until its deadline) for room rather than take the process past the limit, and one Prometheus
    stalling its answers cannot take the room every other one needs."""

    def __init__(self, limit: int, *, share: int | None = None) -> None:
        self.limit = limit
        self.share = limit if share is None else min(share, limit)
        self.used = 0
        self.held: dict[str, int] = {}
        """Bytes held per endpoint (its URL); an endpoint holding none is not kept."""
        self._changed = threading.Condition()

    def _lacking(self, count: int, endpoint: str) -> str | None:
        if self.used + count > self.limit:
            return (
                f"answers being read already hold {_describe_bytes(self.used)} of the"
                f" {_describe_bytes(self.limit)} OPERATOR_K8S_PROMETHEUS_MAX_BUFFERED_BYTES allows"
            )
        mine = self.held.get(endpoint, 0)
        if mine + count > self.share:
            return (
                f"answers being read from this Prometheus already hold {_describe_bytes(mine)}, its share of"
                f" OPERATOR_K8S_PROMETHEUS_MAX_BUFFERED_BYTES ({_describe_bytes(self.share)})"
            )
        return None

    def reserve(self, count: int, deadline: QueryDeadline, endpoint: str = "") -> None:
        with self._changed:
            while (lacking := self._lacking(count, endpoint)) is not None:
                deadline.room_wanted = lacking
                if deadline.over or not self._changed.wait(deadline.remaining()):
                    raise NoBufferRoom(lacking)
            deadline.room_wanted = None
            self.used += count
            self.held[endpoint] = self.held.get(endpoint, 0) + count

    def release(self, count: int, endpoint: str = "") -> None:
        if count:
            with self._changed:
                self.used -= count
                left = self.held.get(endpoint, 0) - count
                if left > 0:
                    self.held[endpoint] = left
                else:
                    self.held.pop(endpoint, None)
                self._changed.notify_all()


def no_room_message(reason: str) -> str:
    """A query that found no buffer room by its deadline: its Prometheus is not blamed (it may well have answered)."""
    return f"Prometheus answer not read: no buffer room by the query's deadline ({reason})"


class SeriesCounter:
    """Counts ``SERIES_MARK`` in a byte stream fed in chunks of any size, a mark split across chunks included."""

    def __init__(self) -> None:
        self.count = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> int:
        data = self._tail + chunk
        self.count += data.count(SERIES_MARK)
        self._tail = data[-(len(SERIES_MARK) - 1) :]  # shorter than a mark: never counted twice
        return self.count


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the scheme's default when none is written), as browsers compare origins."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def shown_origin(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def same_origin(first: str, second: str) -> bool:
    return origin(first) == origin(second)


def _preview(body: bytes | bytearray) -> str:
    text = bytes(body[:200]).decode("utf-8", "replace")
    return " ".join(text.split())[:120]


def answer_problem(value: object) -> str | None:
    """Why a parsed answer is not a successful instant vector, or None if it is. Warnings are accepted: the series
    are still the answer."""
    if not isinstance(value, dict):
        return f"Prometheus answered JSON that is not an object (a {type(value).__name__})"
    status = value.get("status")
    if status != "success":
        error = str(value.get("error") or "no error given")[:300]
        return f"Prometheus answered status {status!r}: {error}"
    data = value.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    if not isinstance(data, dict) or kind is None:
        return "Prometheus answered success without data.resultType: not a query answer"
    if kind == "scalar":
        return "Prometheus answered a scalar where an instant vector was expected: wrap the query in vector(…)"
    if kind == "string":
        return "Prometheus answered a string where an instant vector was expected"
    if kind == "matrix":
        return (
            "Prometheus answered a matrix (a range vector) where an instant vector was expected: apply a function"
            " such as rate(…) or last_over_time(…) to the [range] selector"
        )
    if kind != "vector":
        return f"Prometheus answered resultType {str(kind)[:40]!r} where an instant vector was expected"
    if not isinstance(data.get("result"), list):
        return "Prometheus answered a vector whose result is not a list"
    return None


def parse_answer(body: bytes | bytearray, content_type: str) -> object:
    """The JSON value of an answer; anything else (an HTML page from a proxy, a truncated body) is a reason that
    shows the content type and how the body starts."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AnswerRefused(
            f"Prometheus answered something that is not JSON (Content-Type {content_type or 'none'!r},"
            f" {len(body):,} bytes): {_preview(body)!r}"
        ) from None


class ParsedAnswer(requests.Response):
    """A Response whose ``json()`` is the already parsed (and shape-checked) answer; its bytes are gone."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self._value = value
        self._content = b""
        self._content_consumed = True

    def json(self, **_: Any) -> Any:
        return self._value


class BoundedSession(requests.Session):
    """A requests Session for one Prometheus: each request bounded by the calling thread's ``QueryDeadline``, its
    answer by ``limits`` and the process-wide ``memory``, its redirects by the origin of the first URL."""

    def __init__(
        self,
        *,
        limits: AnswerLimits,
        memory: BufferBudget,
        pool_size: int,
        connect_timeout: float,
        endpoint: str = "",
    ) -> None:
        super().__init__()
        self.endpoint = endpoint
        """Whose share of ``memory`` this session's answers are counted in (the Prometheus URL)."""
        self.trust_env = False  # requests would otherwise look up proxies and ~/.netrc on disk for every query
        self.limits = limits
        self.memory = memory
        self.connect_timeout = connect_timeout
        self._adapter = DeadlineAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)

    def get_adapter(self, url: str) -> BaseAdapter:
        """Ours for every URL, whatever the client mounted (prometheus-api-client mounts its own retrying one)."""
        return self._adapter

    def close(self) -> None:
        super().close()
        self._adapter.close()

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        deadline = current_deadline()
        if deadline is None:
            raise RuntimeError("BoundedSession.request outside bounded_by(): the query would have no deadline")
        kwargs.update(stream=True, allow_redirects=False)
        first = str(url)
        for hop in range(MAX_REDIRECTS + 1):
            if deadline.over:
                raise DeadlineExceeded
            left = deadline.remaining()
            kwargs["timeout"] = (min(self.connect_timeout, left), left)
            response = super().request(method, url, *args, **kwargs)
            if not response.is_redirect:
                return self._answer(response, deadline)
            target = urljoin(response.url, response.headers["location"])
            response.close()
            if not same_origin(first, target):
                raise AnswerRefused(
                    f"Prometheus redirected to {shown_origin(target)}: not followed, so no credential or header is"
                    " sent there; set spec.prometheus.url to that address"
                )
            if hop == MAX_REDIRECTS:
                break
            url, kwargs["params"] = target, None  # the Location carries the query it wants
        raise AnswerRefused(f"Prometheus redirected more than {MAX_REDIRECTS} times: not followed further")

    def _answer(self, response: requests.Response, deadline: QueryDeadline) -> requests.Response:
        try:
            if response.status_code != 200:
                response._content = _read_some(response, ERROR_BODY_BYTES)
                response._content_consumed = True
                return response
            body, reserved = self._read(response, deadline)
        finally:
            deadline.detach()  # the body is read: parsing it needs no socket, and the connection may be another's
            response.close()  # back to the pool if read to the end, closed otherwise
        try:
            value = self._parse(body, response.headers.get("content-type", ""), deadline)
        finally:
            del body
            self.memory.release(reserved, self.endpoint)
        answer = ParsedAnswer(value)
        answer.status_code, answer.headers, answer.url = response.status_code, response.headers, response.url
        return answer

    def _read(self, response: requests.Response, deadline: QueryDeadline) -> tuple[bytearray, int]:
        limits = self.limits
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and not response.headers.get("content-encoding") and int(declared) > limits.max_bytes:
            raise AnswerRefused(limits.too_large(0) + f" (it declared {int(declared):,} bytes)")
        # The room for the whole answer is taken before the first byte is read (what it declared, else the cap): a
        # read that started always finishes, so many answers read at once can never each hold part of the room and
        # starve one another; what the answer did not use is given back once it is read.
        exact = declared.isdigit() and not response.headers.get("content-encoding")
        reserved = max(int(declared) if exact else limits.max_bytes, 1)
        self.memory.reserve(reserved, deadline, self.endpoint)
        body, series = bytearray(), SeriesCounter()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                if len(body) + len(chunk) > limits.max_bytes:
                    raise AnswerRefused(limits.too_large(len(body) + len(chunk)))
                if len(body) + len(chunk) > reserved:
                    raise AnswerRefused(f"Prometheus sent more than the {reserved:,} bytes it declared")
                body += chunk
                if series.feed(chunk) > limits.max_series:
                    raise AnswerRefused(limits.too_many_series(len(body)))
        except BaseException:
            self.memory.release(reserved, self.endpoint)
            raise
        self.memory.release(reserved - len(body), self.endpoint)
        return body, len(body)

    def _parse(self, body: bytearray, content_type: str, deadline: QueryDeadline) -> object:
        if not _PARSING.acquire(timeout=max(deadline.remaining(), 0.001)):
            raise DeadlineExceeded
        deadline.holds_parse_lock = True
        try:
            value = parse_answer(body, content_type)
            problem = answer_problem(value)
        except BaseException:
            deadline.holds_parse_lock = False
            _PARSING.release()
            raise
        if problem is not None:
            del value
            deadline.holds_parse_lock = False
            _PARSING.release()
            raise AnswerRefused(problem)
        return value


def _read_some(response: requests.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a body: an error answer is shown, never kept whole."""
    kept = bytearray()
    for chunk in response.iter_content(min(limit, CHUNK_BYTES)):
        kept += chunk[: limit - len(kept)]
        if len(kept) >= limit:
            break
    return bytes(kept)
