"""Prometheus through prometheus-api-client, which is synchronous: queries run in a bounded worker pool."""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from operator_k8s.domain.observations import QueryFailure, QueryResult, Sample


class PrometheusMetrics:
    """A MetricsSource with one client per Prometheus URL and at most ``concurrency`` queries in flight."""

    def __init__(self, *, concurrency: int = 8, observe: Any = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prometheus")
        self._clients: dict[str, PrometheusConnect] = {}
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

    def _query_blocking(self, url: str, promql: str, store_label: str, timeout: float) -> QueryResult:
        started = time.monotonic()
        try:
            data = self._client(url).custom_query(
                promql, params={"timeout": f"{round(timeout * 1000)}ms"}, timeout=timeout
            )
        except (requests.ConnectionError, requests.Timeout) as error:
            return QueryResult.failed(
                promql, QueryFailure.UNREACHABLE, f"Prometheus unreachable: {type(error).__name__}"
            )
        except (PrometheusApiClientException, requests.RequestException, ValueError, KeyError) as error:
            return QueryResult.failed(promql, QueryFailure.ERROR, str(error)[:500])
        finally:
            if self._observe is not None:
                self._observe(time.monotonic() - started)
        samples = []
        for series in data:
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            samples.append(Sample(store=series.get("metric", {}).get(store_label), value=value))
        return QueryResult(query=promql, samples=tuple(s for s in samples if not math.isinf(s.value) or True))

    async def query(self, url: str, promql: str, *, store_label: str, timeout: float) -> QueryResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._query_blocking, url, promql, store_label, timeout)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
