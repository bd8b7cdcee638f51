"""Prometheus through prometheus-api-client, which is synchronous: queries run in worker threads.

Every query has a deadline, and each Prometheus gets at most ``per_endpoint`` of the threads: one endpoint that
accepts connections and never answers holds only its own share, never the other clusters' queries.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample

CONNECT_TIMEOUT = 3.0


def _read_timed_out(error: requests.RequestException) -> bool:
    """A connection that was accepted but never answered (with retries off, urllib3 reports a read timeout as a
    ConnectionError wrapping MaxRetryError)."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(error, requests.ReadTimeout) or isinstance(reason, ReadTimeoutError)


class PrometheusMetrics:
    """A MetricsSource with one client per Prometheus URL and at most ``per_endpoint`` queries in flight to each."""

    def __init__(self, *, concurrency: int = 16, per_endpoint: int = 4, observe: Any = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prometheus")
        self._clients: dict[str, PrometheusConnect] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._per_endpoint = max(1, min(per_endpoint, concurrency - 1)) if concurrency > 1 else 1
        self._observe = observe

    def _client(self, url: str) -> PrometheusConnect:
        client = self._clients.get(url)
        if client is None:
            # No retries here: the next cycle is the retry, and a stalled query must not stall the cycle.
            # trust_env off: requests would otherwise look up proxies and ~/.netrc on disk for every query.
            session = requests.Session()
            session.trust_env = False
            client = PrometheusConnect(url=url, disable_ssl=False, retry=Retry(total=0), session=session)
            self._clients[url] = client
        return client

    def _query_blocking(
        self, url: str, promql: str, store_label: str, namespace_label: str, timeout: float
    ) -> QueryResult:
        started = time.monotonic()
        try:
            data = self._client(url).custom_query(
                promql,
                params={"timeout": f"{max(1, round(timeout * 1000))}ms"},
                timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
            )
        except (requests.ConnectionError, requests.Timeout) as error:
            if _read_timed_out(error):
                message = f"Prometheus did not answer within {timeout:g}s"
            else:
                message = f"Prometheus unreachable: {type(error).__name__}"
            return QueryResult.failed(promql, QueryFailure.UNREACHABLE, message)
        except (PrometheusApiClientException, requests.RequestException, ValueError, KeyError) as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, str(error)[:500])
        finally:
            if self._observe is not None:
                self._observe(time.monotonic() - started)
        samples = []
        for series in data if isinstance(data, list) else []:
            try:
                value = float(series["value"][1])  # NaN and ±Inf included: the invariants judge them
                labels = series.get("metric") or {}
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                continue
            samples.append(Sample(store=labels.get(store_label), value=value, namespace=labels.get(namespace_label)))
        return QueryResult(query=promql, samples=tuple(samples))

    async def query(
        self, url: str, promql: str, *, store_label: str, namespace_label: str, timeout: float
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
            self._pool, self._query_blocking, url, promql, store_label, namespace_label, timeout
        )
        future.add_done_callback(lambda _: gate.release())  # the thread's slot is freed only when it really ends
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout + CONNECT_TIMEOUT)
        except TimeoutError:
            return QueryResult.failed(
                promql, QueryFailure.UNREACHABLE, f"Prometheus did not answer within {timeout:g}s"
            )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
