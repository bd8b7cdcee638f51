"""TiKV's status port (``/config``), read when a store killed for its memory needs its block cache weighed: one GET,
one total deadline, no redirect followed, at most ``CONFIG_BYTES`` read, and every failure a reason, never an
exception. The port is the one Prometheus scrapes (``domain.diagnosis.status_address``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from operator_k8s.domain.diagnosis import CONFIG_BYTES, tikv_config_evidence

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

    async def tikv_config(self, address: str, *, timeout: float) -> dict[str, Any]:
        url = f"http://{address}/config"
        try:
            async with asyncio.timeout(timeout):
                async with self._get().get(url, allow_redirects=False, headers={"user-agent": USER_AGENT}) as answer:
                    if answer.status != 200:
                        return {"readable": False, "why": f"{url}: HTTP {answer.status}"}
                    content = b""
                    while len(content) <= CONFIG_BYTES and (chunk := await answer.content.read(CONFIG_BYTES + 1)):
                        content += chunk
        except TimeoutError:
            return {"readable": False, "why": f"{url}: no answer within {timeout:.1f}s"}
        except (aiohttp.ClientError, OSError) as error:
            return {"readable": False, "why": f"{url}: {type(error).__name__}: {error}"[:300]}
        if len(content) > CONFIG_BYTES:
            return {"readable": False, "why": f"{url}: answer over {CONFIG_BYTES} bytes: refused"}
        try:
            body = json.loads(content)
        except ValueError:
            return {"readable": False, "why": f"{url}: not JSON"}
        return tikv_config_evidence(body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
