"""TiKV's status port (``/config``), read when a store killed for its memory needs its block cache weighed, and PD's
client port (``/pd/api/v1/stores``), read for PD's view of the stores: one GET each, one total deadline, no redirect
followed, a bounded answer, and every failure a reason, never an exception. The port is the one Prometheus scrapes
(``domain.diagnosis.status_address``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp

from operator_k8s.domain.diagnosis import CONFIG_BYTES, tikv_config_evidence
from operator_k8s.domain.pd_api import PD_STORES_BYTES, PD_STORES_PATH, pd_stores_evidence

USER_AGENT = "operator-k8s"


class TikvStatusHttp:
    """One HTTP session for every store's status port (each call has its own deadline)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, force_close=True), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def _json(self, url: str, limit: int, timeout: float) -> object | str:
        """The JSON at ``url``, or why not (a string): HTTP status, timeout, connection, over ``limit`` bytes."""
        try:
            async with asyncio.timeout(timeout):
                async with self._get().get(url, allow_redirects=False, headers={"user-agent": USER_AGENT}) as answer:
                    if answer.status != 200:
                        return f"{url}: HTTP {answer.status}"
                    content = b""
                    while len(content) <= limit and (chunk := await answer.content.read(limit + 1)):
                        content += chunk
        except TimeoutError:
            return f"{url}: no answer within {timeout:.1f}s"
        except (aiohttp.ClientError, OSError) as error:
            return f"{url}: {type(error).__name__}: {error}"[:300]
        if len(content) > limit:
            return f"{url}: answer over {limit} bytes: refused"
        try:
            body: object = json.loads(content)
        except ValueError:
            return f"{url}: not JSON"
        return {"body": body}

    async def tikv_config(self, address: str, *, timeout: float) -> dict[str, Any]:
        found = await self._json(f"http://{address}/config", CONFIG_BYTES, timeout)
        if isinstance(found, str):
            return {"readable": False, "why": found}
        assert isinstance(found, dict)
        return tikv_config_evidence(found["body"])

    async def pd_stores(
        self, address: str, pods: Sequence[str], first: str | None, *, timeout: float
    ) -> dict[str, Any]:
        found = await self._json(f"http://{address}{PD_STORES_PATH}", PD_STORES_BYTES, timeout)
        if isinstance(found, str):
            return {"readable": False, "why": found}
        assert isinstance(found, dict)
        return {**pd_stores_evidence(found["body"], pods, first), "from": address}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
