"""Prometheus through prometheus-api-client, which is synchronous: queries run in worker threads.

Every query ends by its deadline whatever the byte rate, brings at most a capped answer into memory, and is never
redirected to another origin (``prometheus_http``). Each Prometheus gets slots by what it last did
(``EndpointSlots``): one that does not answer holds one thread, never the other clusters' queries.

Authentication (``spec.prometheus.auth``) comes from files under one credentials directory, which the chart mounts
from a Secret: the operator never reads Secrets through the API, and a MonitoredCluster can name no file outside that
directory (symlinks are resolved first), so it cannot make the operator send, say, its own service-account token to
a URL of its author's choosing. Token and password files are read again only when they change (a rotated token), and
their contents never reach a message: a credential that cannot be used is a failed query naming the field and path.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import logging
import math
import os
import re
import stat
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from operator_k8s.adapters.prometheus_http import (
    MIB,
    AnswerLimits,
    AnswerRefused,
    BoundedSession,
    BufferBudget,
    DeadlineExceeded,
    NoBufferRoom,
    QueryDeadline,
    bounded_by,
    no_room_message,
    shown_origin,
)
from operator_k8s.domain.observations import QueryFailure, QueryResult, samples_of
from operator_k8s.domain.specs import PrometheusAuthSpec

log = logging.getLogger("operator_k8s.prometheus")
CONNECT_TIMEOUT = 3.0
DEFAULT_CREDENTIALS_DIR = "/etc/operator-k8s/prometheus"
MAX_SECRET_BYTES = 16 * 1024
MAX_CA_BYTES = 1024 * 1024
_HEADER_SAFE = re.compile(r"[!-~]+")
"""What a token may hold to go into a header as it is: printable ASCII, no space (a JWT, an opaque API token)."""
_STATUS = re.compile(r"HTTP Status Code (\d+) \((.*)\)", re.DOTALL)
REDACTED = "[redacted]"


class CredentialError(Exception):
    """A credential file that cannot be used. The message names the field and the path, never the file's content."""


class CredentialFiles:
    """Files under one directory, named by relative paths; nothing outside it is ever opened.

    A read costs a realpath and a stat; the content is read again only when the file changed (modification time,
    size or inode): a projected token rotated in place, or a Secret volume whose ``..data`` link the kubelet swapped.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._cache: dict[tuple[str, str], tuple[tuple[int, int, int, int], str]] = {}

    def resolve(self, field: str, relative: str) -> str:
        """The real path of ``relative`` (symlinks resolved), refused unless it is inside the directory."""
        if relative.startswith("/") or ".." in relative.split("/"):
            raise CredentialError(f"{field} {relative!r} must be a relative path without .. segments")
        root = os.path.realpath(self.directory)
        full = os.path.realpath(os.path.join(root, relative))
        if full == root:
            raise CredentialError(f"{field} {relative!r} names the credentials directory itself, not a file in it")
        if os.path.commonpath([root, full]) != root:
            raise CredentialError(
                f"{field} {relative!r} resolves outside the credentials directory {self.directory}: refused"
            )
        return full

    def read(self, field: str, relative: str, *, limit: int = MAX_SECRET_BYTES) -> str:
        """The file's text, stripped of surrounding whitespace (as Prometheus reads its own credential files)."""
        full = self.resolve(field, relative)
        where = f"{field} {relative!r} (in {self.directory})"
        try:
            info = os.stat(full)
        except OSError as error:
            raise CredentialError(f"{where} cannot be read: {error.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise CredentialError(f"{where} is not a regular file")
        version = (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)
        cached = self._cache.get((field, relative))
        if cached is not None and cached[0] == version:
            return cached[1]
        if info.st_size > limit:
            raise CredentialError(f"{where} is larger than {limit} bytes")
        try:
            with open(full, "rb") as handle:
                text = handle.read(limit + 1).decode("utf-8").strip()
        except OSError as error:
            raise CredentialError(f"{where} cannot be read: {error.strerror}") from None
        except UnicodeDecodeError:
            raise CredentialError(f"{where} is not UTF-8 text") from None
        if not text:
            raise CredentialError(f"{where} is empty")
        self._cache[(field, relative)] = (version, text)
        return text


def basic_authorization(username: str, password: str) -> str:
    """The Authorization value of HTTP basic auth (RFC 7617, UTF-8), as Prometheus's own web config checks it."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class Authorization:
    """One request's Authorization header value (or None) and the secrets no message may show."""

    value: str | None
    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            for form in sorted({secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}, key=len, reverse=True):
                text = text.replace(form, REDACTED)
        return text


class PrometheusCredentials(AuthBase):
    """The ``auth`` block of a spec, made usable: CA bundle path, static headers, and an Authorization header read
    from its file on each request (cheaply: the file is read again only when it changed)."""

    def __init__(self, auth: PrometheusAuthSpec | None, files: CredentialFiles) -> None:
        self._auth = auth
        self._files = files

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._auth.headers) if self._auth else {}

    def verify(self) -> str | bool:
        """What requests verifies an https certificate with: the caFile (its path in the directory, so a rotated
        bundle is read by the next connection), or the system's CAs."""
        if self._auth is None or self._auth.ca_file is None:
            return True
        if "-----BEGIN CERTIFICATE-----" not in self._files.read("caFile", self._auth.ca_file, limit=MAX_CA_BYTES):
            raise CredentialError(
                f"caFile {self._auth.ca_file!r} (in {self._files.directory}) holds no PEM certificate"
            )
        return os.path.join(os.path.realpath(self._files.directory), self._auth.ca_file)

    def authorization(self) -> Authorization:
        auth = self._auth
        if auth is not None and auth.bearer_token_file is not None:
            token = self._files.read("bearerTokenFile", auth.bearer_token_file)
            if not _HEADER_SAFE.fullmatch(token):
                raise CredentialError(
                    f"bearerTokenFile {auth.bearer_token_file!r} (in {self._files.directory}) holds characters a"
                    " bearer token cannot carry (spaces, line breaks or non-ASCII)"
                )
            return Authorization(f"Bearer {token}", (token,))
        if auth is not None and auth.basic_auth is not None:
            password = self._files.read("basicAuth.passwordFile", auth.basic_auth.password_file)
            value = basic_authorization(auth.basic_auth.username, password)
            return Authorization(value, (password, value.removeprefix("Basic ")))
        return Authorization(None)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        value = self.authorization().value
        if value is not None:
            request.headers["Authorization"] = value
        return request

    def __repr__(self) -> str:
        return f"PrometheusCredentials({self._auth!r})"  # paths and header names only: the spec holds no secret


def _auth_key(auth: PrometheusAuthSpec | None) -> str:
    return "" if auth is None else auth.model_dump_json()


def _status_message(error: PrometheusApiClientException) -> str:
    """A readable message for an HTTP error answer; 401 and 403 point at the credentials."""
    text = str(error)
    found = _STATUS.fullmatch(text)
    if found is None:
        return text[:500]
    code, body = int(found.group(1)), found.group(2)
    try:  # the client shows the body as a bytes literal
        shown = ast.literal_eval(body).decode("utf-8", "replace").strip()
    except (ValueError, SyntaxError, AttributeError):
        shown = body
    shown = " ".join(shown.split())[:300]
    if code in (401, 403):
        meaning = "Unauthorized" if code == 401 else "Forbidden"
        reason = shown or "no reason given"
        return f"Prometheus refused the query with HTTP {code} {meaning}: {reason} (check spec.prometheus.auth)"
    return f"Prometheus answered HTTP {code}: {shown}"


def _tls_message(error: requests.exceptions.SSLError) -> str:
    reason: Any = error
    for _ in range(5):  # urllib3 wraps the ssl module's error in MaxRetryError and its own SSLError
        inner = getattr(reason, "reason", None) or (reason.args[0] if getattr(reason, "args", None) else None)
        if not isinstance(inner, BaseException):
            break
        reason = inner
    detail = getattr(reason, "verify_message", None) or str(reason)
    hint = " (spec.prometheus.auth.caFile names the CA that signed it)" if "verify failed" in str(reason) else ""
    return f"Prometheus's TLS certificate was refused: {detail}{hint}"[:500]


SUSPECT_SECONDS = 300.0
"""How long a Prometheus counts as one that times out after its last timeout."""


class EndpointSlots:
    """How many queries may be in flight to one Prometheus, from what it did (additive increase, multiplicative
    decrease).

    A Prometheus starts with one slot; each query to it that answers in time adds one, up to ``opened``; queries
    that find every slot taken wait (up to their own deadline) for one. Each query that does not answer in time
    halves its slots (at least one), even while it answers others (an expensive query that never comes back): a
    Prometheus that answers some queries and hangs the rest keeps few threads, not ``opened`` each. A query that
    times out or cannot reach it while it answered nothing since that query was sent also marks it failing: while
    one query (the probe) is in flight, every other query to it fails at once, naming the last failure, instead of
    holding a thread for its whole timeout. A query is only ever given up because of its own Prometheus.
    """

    def __init__(self, opened: int, name: str = "") -> None:
        self.name = name
        self.opened = max(1, opened)
        self.limit = 1
        self.in_flight = 0
        self.failure: str | None = None
        self.answered_at = -math.inf
        """When a query to it last answered in time (monotonic seconds)."""
        self.timed_out_at = -math.inf
        """When a query to it last did not answer in time (monotonic seconds)."""
        self._waiters: deque[asyncio.Future[str | None]] = deque()

    async def acquire(self, within: float) -> str | None:
        """None when a slot is the caller's (release it with ``release``), else why the query fails now."""
        if self.failure is not None and self.in_flight > 0:
            return self._failing()
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return None
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                return await waiter
        except (TimeoutError, asyncio.CancelledError) as error:
            if waiter.done() and not waiter.cancelled() and waiter.result() is None:
                self.release(None, used=False)  # granted as the deadline passed: give the slot back untouched
            if isinstance(error, asyncio.CancelledError):
                raise
            return (
                f"Prometheus did not answer within {within:g}s: every one of its {self.limit} query slots stayed busy"
            )
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, failure: str | None, *, used: bool = True, since: float = math.inf) -> None:
        """A slot back; ``failure`` is why the query, sent at ``since``, did not reach it in time (None: it
        answered). ``used=False``: the query says nothing about its Prometheus (it never asked, or it found no
        buffer room for the answer)."""
        self.in_flight -= 1
        if not used:
            pass
        elif failure is None:
            self.answered_at = time.monotonic()
            if self.failure is not None:
                log.info(
                    "Prometheus answered again; its query slots grow by one per answer",
                    extra={"prometheus": self.name},
                )
            self.failure, self.limit = None, min(self.opened, self.limit + 1)
        elif self.answered_at > since:  # it answered another query meanwhile: slow, not down; fewer slots all the same
            self.limit = max(1, self.limit // 2)
            self.timed_out_at = time.monotonic()
        else:
            self.timed_out_at = time.monotonic()
            if self.failure is None:
                log.warning(
                    "Prometheus stopped answering; one query at a time checks whether it is back",
                    extra={"prometheus": self.name, "error": failure},
                )
            self.failure, self.limit = failure, 1
        self._wake()

    def suspect(self, now: float) -> bool:
        """Whether a query to it timed out within ``SUSPECT_SECONDS``: its queries then share the threads kept for
        such Prometheus servers (``PrometheusMetrics``), so together they can never hold every thread."""
        return now - self.timed_out_at < SUSPECT_SECONDS

    def _failing(self) -> str:
        return f"{self.failure} (its next query waits for the one checking whether it is back)"

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
            elif self.in_flight < self.limit:
                self._waiters.popleft()
                self.in_flight += 1
                waiter.set_result(None)
            elif self.failure is not None:
                self._waiters.popleft()
                waiter.set_result(self._failing())
            else:
                return


def _failure_of(future: asyncio.Future[QueryResult]) -> str | None:
    """What a finished query says about its Prometheus: None if it answered (even with an error), else why not."""
    if future.cancelled():
        return "Prometheus query cancelled"
    error = future.exception()
    if error is not None:
        return f"Prometheus query failed: {type(error).__name__}"
    result = future.result()
    return result.error if result.failure is QueryFailure.UNREACHABLE else None


class PrometheusMetrics:
    """A MetricsSource with one client per (Prometheus URL, auth) and ``EndpointSlots`` per URL, whatever the
    credentials. Every query ends by its deadline (``prometheus_http``), so a thread is held at most that long."""

    def __init__(
        self,
        *,
        concurrency: int = 256,
        per_endpoint: int = 16,
        observe: Any = None,
        credentials_dir: str = DEFAULT_CREDENTIALS_DIR,
        limits: AnswerLimits | None = None,
        buffered_bytes: int = 16 * MIB,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prometheus")  # grown as needed
        self._clients: dict[tuple[str, str], tuple[PrometheusConnect, PrometheusCredentials]] = {}
        self._endpoints: dict[str, EndpointSlots] = {}
        self._per_endpoint = max(1, per_endpoint)
        self._observe = observe
        self._files = CredentialFiles(credentials_dir)
        self._limits = limits or AnswerLimits()
        total = max(buffered_bytes, self._limits.max_bytes)  # room for the largest answer
        self._memory = BufferBudget(total, share=max(total // 4, self._limits.max_bytes))  # a quarter per endpoint
        self._suspect_threads = max(1, concurrency // 2)
        self._suspect_limit = asyncio.Semaphore(self._suspect_threads)
        """Threads the Prometheus servers that timed out lately may hold together: the other half is always there
        for those that answer, however many servers answer cheap queries and hang the others."""

    def endpoint(self, url: str) -> EndpointSlots:
        slots = self._endpoints.get(url)
        if slots is None:
            slots = self._endpoints[url] = EndpointSlots(self._per_endpoint, shown_origin(url))
        return slots

    def _client(self, url: str, auth: PrometheusAuthSpec | None) -> tuple[PrometheusConnect, PrometheusCredentials]:
        """One session per (URL, auth): its headers, CA bundle and Authorization are the spec's."""
        key = (url, _auth_key(auth))
        client = self._clients.get(key)
        if client is None:
            credentials = PrometheusCredentials(auth, self._files)
            verify = credentials.verify()
            session = BoundedSession(
                limits=self._limits,
                memory=self._memory,
                pool_size=self._per_endpoint,
                connect_timeout=CONNECT_TIMEOUT,
                endpoint=url,
            )
            session.verify = verify
            connect = PrometheusConnect(
                url=url, headers=credentials.headers, retry=Retry(total=0), session=session, auth=credentials
            )
            client = self._clients[key] = (connect, credentials)
        return client

    def _query_blocking(
        self,
        url: str,
        promql: str,
        store_label: str,
        namespace_label: str,
        deadline: QueryDeadline,
        auth: PrometheusAuthSpec | None = None,
        keep: tuple[str, ...] = (),
    ) -> QueryResult:
        started = time.monotonic()
        with bounded_by(deadline):
            try:
                return self._query_bounded(url, promql, store_label, namespace_label, deadline, auth, keep)
            finally:
                if self._observe is not None:
                    self._observe(time.monotonic() - started)

    def _query_bounded(
        self,
        url: str,
        promql: str,
        store_label: str,
        namespace_label: str,
        deadline: QueryDeadline,
        auth: PrometheusAuthSpec | None,
        keep: tuple[str, ...] = (),
    ) -> QueryResult:
        """The query in this thread, under ``deadline``: every way it can end is a QueryResult."""
        late = f"Prometheus did not answer within {deadline.seconds:g}s"
        if deadline.over:  # waited for a thread past its deadline
            return QueryResult.failed(promql, QueryFailure.UNREACHABLE, late)
        authorization = Authorization(None)
        try:
            client, credentials = self._client(url, auth)
            credentials.verify()  # a caFile removed since the session was made fails here, by name
            authorization = credentials.authorization()
            left = deadline.remaining()
            data = client.custom_query(
                promql,
                params={"timeout": f"{max(1, int(left * 1000))}ms"},
                timeout=(min(CONNECT_TIMEOUT, left), left),
            )
        except CredentialError as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, str(error))
        except NoBufferRoom as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, no_room_message(str(error)))
        except Exception as error:
            timed_out = isinstance(error, requests.Timeout) and not isinstance(error, requests.ConnectTimeout)
            if deadline.over or timed_out or isinstance(error, DeadlineExceeded):
                detail = f" ({error})" if isinstance(error, DeadlineExceeded) and str(error) else ""
                return QueryResult.failed(promql, QueryFailure.UNREACHABLE, late + detail)
            return self._failed(promql, error, authorization)
        samples, malformed = samples_of(data, store_label, namespace_label, keep)
        return QueryResult(query=promql, samples=samples, malformed=malformed)

    @staticmethod
    def _failed(promql: str, error: Exception, authorization: Authorization) -> QueryResult:
        if isinstance(error, AnswerRefused):
            return QueryResult.failed(promql, QueryFailure.ERROR, authorization.redact(str(error)))
        if isinstance(error, requests.exceptions.SSLError):
            return QueryResult.failed(promql, QueryFailure.ERROR, authorization.redact(_tls_message(error)))
        if isinstance(error, requests.ConnectionError):
            return QueryResult.failed(
                promql, QueryFailure.UNREACHABLE, f"Prometheus unreachable: {type(error).__name__}"
            )
        if isinstance(error, PrometheusApiClientException):
            return QueryResult.failed(promql, QueryFailure.ERROR, authorization.redact(_status_message(error)))
        return QueryResult.failed(
            promql, QueryFailure.ERROR, authorization.redact(f"{type(error).__name__}: {str(error)[:500]}")
        )

    async def query(
        self,
        url: str,
        promql: str,
        *,
        store_label: str,
        namespace_label: str,
        timeout: float,
        auth: PrometheusAuthSpec | None = None,
        keep: tuple[str, ...] = (),
    ) -> QueryResult:
        """One instant query, answered or failed within ``timeout`` (waiting for a slot and a thread included);
        the labels named in ``keep`` are kept with each sample."""
        deadline = QueryDeadline(timeout)
        slots = self.endpoint(url)
        refused = await slots.acquire(timeout)
        if refused is not None:
            return QueryResult.failed(promql, QueryFailure.UNREACHABLE, refused)
        shared = slots.suspect(time.monotonic())
        if shared:
            try:
                await asyncio.wait_for(self._suspect_limit.acquire(), deadline.remaining())
            except TimeoutError:
                slots.release(None, used=False)
                return QueryResult.failed(
                    promql, QueryFailure.UNREACHABLE,
                    f"Prometheus did not answer within {timeout:g}s: it timed out lately, and the"
                    f" {self._suspect_threads} threads kept for such Prometheus servers stayed busy",
                )  # fmt: skip
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._pool, self._query_blocking, url, promql, store_label, namespace_label, deadline, auth, keep
        )
        sent = time.monotonic()

        def done(finished: asyncio.Future[QueryResult]) -> None:  # when the thread ends
            # a query that found no buffer room says nothing about its Prometheus: neither answered nor failing
            slots.release(_failure_of(finished), used=deadline.room_wanted is None, since=sent)
            if shared:
                self._suspect_limit.release()

        future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), deadline.remaining())
        except TimeoutError:
            deadline.abort()
            if deadline.room_wanted is not None:
                return QueryResult.failed(promql, QueryFailure.ERROR, no_room_message(deadline.room_wanted))
            return QueryResult.failed(
                promql, QueryFailure.UNREACHABLE, f"Prometheus did not answer within {timeout:g}s"
            )
        except asyncio.CancelledError:
            deadline.abort()
            raise

    def close(self) -> None:
        for client, _ in self._clients.values():
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
