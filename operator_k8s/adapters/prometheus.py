"""Prometheus through prometheus-api-client, which is synchronous: queries run in worker threads.

Every query has a deadline, and each Prometheus gets at most ``per_endpoint`` of the threads: one endpoint that
accepts connections and never answers holds only its own share, never the other clusters' queries.

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
import os
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.auth import AuthBase
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from operator_k8s.domain.observations import QueryFailure, QueryResult, samples_of
from operator_k8s.domain.specs import PrometheusAuthSpec

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


def _read_timed_out(error: requests.RequestException) -> bool:
    """A connection that was accepted but never answered (with retries off, urllib3 reports a read timeout as a
    ConnectionError wrapping MaxRetryError)."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(error, requests.ReadTimeout) or isinstance(reason, ReadTimeoutError)


class PrometheusMetrics:
    """A MetricsSource with one client per (Prometheus URL, auth) and at most ``per_endpoint`` queries in flight to
    each URL, whatever the credentials."""

    def __init__(
        self,
        *,
        concurrency: int = 16,
        per_endpoint: int = 4,
        observe: Any = None,
        credentials_dir: str = DEFAULT_CREDENTIALS_DIR,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prometheus")
        self._clients: dict[tuple[str, str], tuple[PrometheusConnect, PrometheusCredentials]] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._per_endpoint = max(1, min(per_endpoint, concurrency - 1)) if concurrency > 1 else 1
        self._observe = observe
        self._files = CredentialFiles(credentials_dir)

    def _client(self, url: str, auth: PrometheusAuthSpec | None) -> tuple[PrometheusConnect, PrometheusCredentials]:
        """One session per (URL, auth): its headers, CA bundle and Authorization are the spec's."""
        key = (url, _auth_key(auth))
        client = self._clients.get(key)
        if client is None:
            credentials = PrometheusCredentials(auth, self._files)
            verify = credentials.verify()
            # No retries here: the next cycle is the retry, and a stalled query must not stall the cycle.
            # trust_env off: requests would otherwise look up proxies and ~/.netrc on disk for every query.
            session = requests.Session()
            session.trust_env = False
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
        timeout: float,
        auth: PrometheusAuthSpec | None = None,
    ) -> QueryResult:
        started = time.monotonic()
        authorization = Authorization(None)
        try:
            client, credentials = self._client(url, auth)
            credentials.verify()  # a caFile removed since the session was made fails here, by name
            authorization = credentials.authorization()
            data = client.custom_query(
                promql,
                params={"timeout": f"{max(1, round(timeout * 1000))}ms"},
                timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
            )
        except CredentialError as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, str(error))
        except requests.exceptions.SSLError as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, authorization.redact(_tls_message(error)))
        except (requests.ConnectionError, requests.Timeout) as error:
            if _read_timed_out(error):
                message = f"Prometheus did not answer within {timeout:g}s"
            else:
                message = f"Prometheus unreachable: {type(error).__name__}"
            return QueryResult.failed(promql, QueryFailure.UNREACHABLE, message)
        except PrometheusApiClientException as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, authorization.redact(_status_message(error)))
        except (requests.RequestException, ValueError, KeyError) as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, authorization.redact(str(error)[:500]))
        finally:
            if self._observe is not None:
                self._observe(time.monotonic() - started)
        samples, malformed = samples_of(data, store_label, namespace_label)
        return QueryResult(query=promql, samples=samples, malformed=malformed)

    async def query(
        self,
        url: str,
        promql: str,
        *,
        store_label: str,
        namespace_label: str,
        timeout: float,
        auth: PrometheusAuthSpec | None = None,
    ) -> QueryResult:
        gate = self._gates.setdefault(url, asyncio.Semaphore(self._per_endpoint))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(gate.acquire(), timeout)
        except TimeoutError:
            return QueryResult.failed(
                promql, QueryFailure.UNREACHABLE, f"Prometheus busy: {self._per_endpoint} queries still waiting on it"
            )
        future = loop.run_in_executor(
            self._pool, self._query_blocking, url, promql, store_label, namespace_label, timeout, auth
        )
        future.add_done_callback(lambda _: gate.release())  # the thread's slot is freed only when it really ends
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout + CONNECT_TIMEOUT)
        except TimeoutError:
            return QueryResult.failed(
                promql, QueryFailure.UNREACHABLE, f"Prometheus did not answer within {timeout:g}s"
            )

    def close(self) -> None:
        for client, _ in self._clients.values():
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
