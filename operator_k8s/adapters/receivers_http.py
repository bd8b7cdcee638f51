"""The receivers' HTTP: Alertmanager's v2 alerts API and Standard Webhooks, each call bounded by a total deadline,
no redirect followed (a credential or a signature never reaches another origin), and every answer turned into a
``SendOutcome`` (never an exception)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from operator_k8s.domain.notices import SendOutcome, parse_retry_after

USER_AGENT = "operator-k8s"
ANSWER_BYTES = 4096
"""How much of a receiver's answer is read (for the reason shown in the history); the rest is discarded."""


class KeyFileError(Exception):
    """A signing key file cannot be used; the message names the file, never its content."""


def signing_keys(paths: Sequence[str]) -> list[Webhook]:
    """The webhook's keys, read again for every send: a key rotated in the mounted Secret is used at once."""
    keys = []
    for path in paths:
        try:
            text = Path(path).read_text().strip()
            keys.append(Webhook(text))
        except (OSError, ValueError) as error:
            raise KeyFileError(f"signing key {path} cannot be used: {type(error).__name__}") from None
        except Exception as error:  # the library's own errors (an empty key) are not ValueErrors
            raise KeyFileError(f"signing key {path} cannot be used: {error}") from None
    return keys


def signed_headers(keys: Sequence[Webhook], message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers: one ``v1,`` signature per key, space-separated, so a receiver holding either
    key during a rotation verifies."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(key.sign(message_id, now, body) for key in keys),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> SendOutcome:
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
                text = (await answer.content.read(ANSWER_BYTES)).decode(errors="replace").strip()
                return outcome_of(answer.status, text, answer.headers.get("Retry-After"), datetime.now(UTC))
    except TimeoutError:
        return SendOutcome(False, f"no answer within {timeout:g}s")
    except aiohttp.ClientError as error:
        return SendOutcome(False, f"{type(error).__name__}: {error}"[:300])
    except OSError as error:
        return SendOutcome(False, f"{type(error).__name__}: {error}"[:300])


def outcome_of(status: int, text: str, retry_after: str | None, now: datetime) -> SendOutcome:
    """An HTTP answer as a delivery outcome: 2xx delivered; 410 gone; 429 and 5xx and 408 retried (429 no sooner
    than it asks); a redirect is refused, not followed; other 4xx can never succeed."""
    detail = f"HTTP {status}" + (f": {text[:200]}" if text else "")
    if 200 <= status < 300:
        return SendOutcome(True, detail)
    if status == 410:
        return SendOutcome(False, detail, gone=True)
    if status == 429:
        return SendOutcome(False, detail, retry_after=parse_retry_after(retry_after, now))
    if 300 <= status < 400:
        return SendOutcome(False, f"{detail} (a redirect: not followed, so nothing is sent to another origin)")
    if status == 408 or status >= 500:
        return SendOutcome(False, detail)
    return SendOutcome(False, detail, permanent=True)


class ReceiversHttp:
    """One HTTP session for every receiver (connections are reused; each call has its own deadline)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def webhook(
        self, url: str, key_files: Sequence[str], message_id: str, payload: dict[str, Any], timeout: float
    ) -> SendOutcome:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        try:
            keys = await asyncio.to_thread(signing_keys, key_files)
            headers = signed_headers(keys, message_id, body, datetime.now(UTC))
        except KeyFileError as error:
            return SendOutcome(False, str(error))
        return await _post(self._get(), url, body, headers, timeout)

    async def alerts(
        self, url: str, alerts: Sequence[dict[str, Any]], timeout: float, token_file: str = ""
    ) -> SendOutcome:
        """POST alerts to one Alertmanager's ``/api/v2/alerts``."""
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        if token_file:
            try:
                headers["authorization"] = "Bearer " + (await asyncio.to_thread(Path(token_file).read_text)).strip()
            except OSError as error:
                return SendOutcome(False, f"bearer token file {token_file} cannot be read: {error.strerror}")
        body = json.dumps(list(alerts), separators=(",", ":"), allow_nan=False).encode()
        return await _post(self._get(), f"{url.rstrip('/')}/api/v2/alerts", body, headers, timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
