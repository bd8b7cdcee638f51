"""HTTP servers that misbehave as production endpoints do, started in-process on 127.0.0.1 (one thread per
connection) for tests of the Prometheus client: silent, dribbling headers or body, huge or inflating answers,
redirects, HTML from a proxy. Each records the requests it received, so a test can show what reached it.

A behaviour is a function of one ``Exchange`` (a request read off a connection) that writes the answer; the server
handles further requests on the same connection (keep-alive) until the client closes it or the server stops.
"""

from __future__ import annotations

import gzip
import json
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field

Behaviour = Callable[["Exchange"], None]


@dataclass(frozen=True)
class Request:
    """What the client sent: request line and headers (names lower-cased)."""

    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Exchange:
    """One request on one connection, and the means to answer it."""

    connection: socket.socket
    request: Request
    stopping: threading.Event

    def send(self, data: bytes) -> bool:
        """False once the client is gone (it closed or shut down its end)."""
        try:
            self.connection.sendall(data)
        except OSError:
            return False
        return True

    def dribble(self, data: bytes, every: float) -> bool:
        """``data`` one byte at a time, ``every`` seconds apart (the byte rate is the behaviour, not a wait); stops as
        soon as the client goes away."""
        return all(self.send(data[index : index + 1]) and not self.gone_within(every) for index in range(len(data)))

    def gone_within(self, seconds: float) -> bool:
        """Whether the client closed (or the server stopped) within ``seconds``; what the client sends meanwhile is
        read and ignored."""
        ends = time.monotonic() + seconds
        while not self.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], max(0.0, ends - time.monotonic()))
            if not readable:
                return False
            try:
                if not self.connection.recv(65536):
                    return True
            except OSError:
                return True
        return True


@dataclass
class HostileServer:
    """A listening socket on 127.0.0.1 serving ``behaviour``; ``requests`` is every request it read."""

    behaviour: Behaviour
    tls: ssl.SSLContext | None = None
    """Serve https with this context (the handshake is done in the connection's thread)."""
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0
    """Connections whose client closed or shut down its end (the server read end-of-file or a reset)."""
    busy: int = 0
    most_busy: int = 0
    """The most requests it was answering at once."""

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            with self._lock:
                self._open.append(connection)
                self.connections += 1
            self._start(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        if self.tls is not None:
            try:
                connection = self.tls.wrap_socket(connection, server_side=True)
            except OSError:
                return  # the client gave up during the handshake
            with self._lock:
                self._open.append(connection)  # the plain socket is detached now: close() ends this one
        pending = b""
        while not self._stopping.is_set():
            try:
                while b"\r\n\r\n" not in pending:
                    data = connection.recv(65536)
                    if not data:
                        raise ConnectionResetError
                    pending += data
            except OSError:
                if not self._stopping.is_set():
                    with self._lock:
                        self.closed_by_client += 1
                return
            head, pending = pending.split(b"\r\n\r\n", 1)
            request = _parse_request(head)
            with self._lock:
                self.requests.append(request)
                self.busy += 1
                self.most_busy = max(self.most_busy, self.busy)
            try:
                self.behaviour(Exchange(connection, request, self._stopping))
            finally:
                with self._lock:
                    self.busy -= 1

    def close(self) -> None:
        self._stopping.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (closing alone does not)
        self._listener.close()
        with self._lock:
            opened, threads = list(self._open), list(self._threads)
        for connection in opened:
            with suppress(OSError):  # the client closed it already
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        for thread in threads:
            thread.join(timeout=5)
            assert not thread.is_alive(), "a hostile server's thread did not stop"


@contextmanager
def serving(behaviour: Behaviour, *, tls: ssl.SSLContext | None = None) -> Iterator[HostileServer]:
    server = HostileServer(behaviour, tls)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def serving_many(behaviour: Behaviour, count: int) -> Iterator[list[HostileServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(serving(behaviour)) for _ in range(count)]


def _parse_request(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers)


def head(status: int = 200, headers: dict[str, str] | None = None, *, length: int | None = None) -> bytes:
    """A response's status line and headers; without ``length`` the body runs until the connection closes."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
    merged = dict(headers or {})
    if length is not None:
        merged["Content-Length"] = str(length)
    else:
        merged["Connection"] = "close"
    lines += [f"{name}: {value}" for name, value in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS = {200: "OK", 301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect", 502: "Bad Gateway"}


def silent(exchange: Exchange) -> None:
    """Accepts, reads the request, never answers: waits until the client goes away or the server stops."""
    try:
        while exchange.connection.recv(65536):
            pass
    except OSError:
        pass


def dribbling_headers(every: float = 1.0) -> Behaviour:
    """Sends its status line and headers one byte per ``every`` seconds: each read succeeds, the answer never ends."""
    answer = head(200, {"Content-Type": "application/json", "X-Padding": "p" * 4096}, length=2) + b"{}"

    def behave(exchange: Exchange) -> None:
        exchange.dribble(answer, every)

    return behave


def dribbling_body(every: float = 1.0) -> Behaviour:
    """Sends its headers at once, then the body one byte per ``every`` seconds."""
    body = vector_json(100)

    def behave(exchange: Exchange) -> None:
        if exchange.send(head(200, {"Content-Type": "application/json"}, length=len(body))):
            exchange.dribble(body, every)

    return behave


def answering(
    body: bytes | Callable[[], Iterable[bytes]],
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """Answers every request with ``body`` (or the chunks a callable yields, streamed until the connection closes:
    the server never holds a huge answer in memory)."""

    def behave(exchange: Exchange) -> None:
        merged = {"Content-Type": content_type, **(headers or {})}
        if isinstance(body, bytes):
            exchange.send(head(status, merged, length=len(body)) + body)
            return
        if exchange.send(head(status, merged)):
            for chunk in body():
                if not exchange.send(chunk):
                    return
        exchange.connection.shutdown(socket.SHUT_WR)

    return behave


def redirecting(location: str, status: int = 302) -> Behaviour:
    """Answers with a redirect to ``location`` (absolute, or a path on the same server)."""

    def behave(exchange: Exchange) -> None:
        exchange.send(head(status, {"Location": location}, length=0))

    return behave


def routed(routes: dict[str, Behaviour]) -> Behaviour:
    """By the request path's first matching prefix: one server playing both ends of a same-origin redirect."""

    def behave(exchange: Exchange) -> None:
        path = exchange.request.target.split("?", 1)[0]
        for prefix, behaviour in routes.items():
            if path.startswith(prefix):
                behaviour(exchange)
                return
        exchange.send(head(404, length=0))

    return behave


def series_json(index: int) -> bytes:
    """One series as Prometheus writes it (about 115 bytes: a 150,000-series answer is about 17 MB)."""
    return (
        b'{"metric":{"__name__":"tikv_store_size_bytes","namespace":"tikv","pod":"tikv-%06d","type":"used"},'
        b'"value":[1700000000.123,"%d"]}' % (index, index)
    )


def vector_json(series: int, *, warnings: list[str] | None = None) -> bytes:
    """A whole instant-vector answer (small ones: the huge ones are streamed by ``vector_chunks``)."""
    return b"".join(vector_chunks(series, warnings=warnings))


def vector_chunks(series: int, *, per_chunk: int = 500, warnings: list[str] | None = None) -> Iterator[bytes]:
    yield b'{"status":"success","data":{"resultType":"vector","result":['
    for start in range(0, series, per_chunk):
        yield b",".join(series_json(i) for i in range(start, min(series, start + per_chunk))) + (
            b"," if start + per_chunk < series else b""
        )
    tail = b"]}"
    if warnings is not None:
        tail += b',"warnings":' + json.dumps(warnings).encode()
    yield tail + b"}"


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body that inflates to ``inflated`` bytes of a never-ending series list (about 1,000:1), compressed a
    chunk at a time so neither side ever holds the inflated text."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    parts = [compressor.compress(b'{"status":"success","data":{"resultType":"vector","result":[')]
    filler = b" " * (1024 * 1024)  # JSON whitespace: the answer stays valid as far as it goes
    for _ in range(inflated // len(filler)):
        parts.append(compressor.compress(filler))
    parts.append(compressor.compress(b"]}}") + compressor.flush())
    return b"".join(parts)


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body)


def status_memory_kib(field_name: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as status:
        found = re.search(rf"^{field_name}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert found, field_name
    return int(found.group(1))


def reset_peak_memory() -> int:
    """Resets VmHWM to the current RSS (Linux's clear_refs "5"), so a peak measured next is this test's own; returns
    the RSS it starts from."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return status_memory_kib("VmRSS")
