"""The receivers' HTTP: Alertmanager's v2 alerts API and Standard Webhooks, each call bounded by a total deadline,
no redirect followed (a credential or a signature never reaches another origin), and every answer turned into a
``SendOutcome`` (never an exception)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from operator_k8s.domain.notices import SendOutcome, parse_retry_after

USER_AGENT = "operator-k8s"
SILENCES_BYTES = 8 * 1024 * 1024
"""The most of Alertmanager's silence list read: a larger list is not read at all (no silence is then changed)."""
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


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None, headers: dict[str, str],
    timeout: float, *, read: int = ANSWER_BYTES,
) -> tuple[SendOutcome, bytes]:  # fmt: skip
    """One request within ``timeout`` (connect, headers and body together): its outcome and up to ``read`` bytes of
    the answer."""
    try:
        async with asyncio.timeout(timeout):
            async with session.request(method, url, data=body, headers=headers, allow_redirects=False) as answer:
                content = b""
                while len(content) < read and (chunk := await answer.content.read(read - len(content))):
                    content += chunk  # read() returns what is buffered: the body is read until its end or ``read``
                text = content[:ANSWER_BYTES].decode(errors="replace").strip()
                outcome = outcome_of(answer.status, text, answer.headers.get("Retry-After"), datetime.now(UTC))
                return outcome, content
    except TimeoutError:
        return SendOutcome(False, f"no answer within {timeout:g}s"), b""
    except (aiohttp.ClientError, OSError) as error:
        return SendOutcome(False, f"{type(error).__name__}: {error}"[:300]), b""


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> SendOutcome:
    return (await _call(session, "POST", url, body, headers, timeout))[0]


def outcome_of(status: int, text: str, retry_after: str | None, now: datetime) -> SendOutcome:
    """An HTTP answer as a delivery outcome: 2xx delivered; 410 gone; 429 and 5xx and 408 retried (429 no sooner
    than it asks); a redirect is refused, not followed; other 4xx can never succeed."""
    detail = f"HTTP {status}" + (f": {text[:200]}" if text else "")
    if 200 <= status < 300:
        return SendOutcome(True, detail, status=status)
    if status == 410:
        return SendOutcome(False, detail, gone=True, status=status)
    if status == 429:
        return SendOutcome(False, detail, retry_after=parse_retry_after(retry_after, now), status=status)
    if 300 <= status < 400:
        detail += " (a redirect: not followed, so nothing is sent to another origin)"
        return SendOutcome(False, detail, status=status)
    if status == 408 or status >= 500:
        return SendOutcome(False, detail, status=status)
    return SendOutcome(False, detail, permanent=True, status=status)


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

    async def _alertmanager(
        self, method: str, url: str, path: str, body: Any, timeout: float, token_file: str, *, read: int = ANSWER_BYTES
    ) -> tuple[SendOutcome, bytes]:
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        if token_file:
            try:
                headers["authorization"] = "Bearer " + (await asyncio.to_thread(Path(token_file).read_text)).strip()
            except OSError as error:
                return SendOutcome(False, f"bearer token file {token_file} cannot be read: {error.strerror}"), b""
        data = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        return await _call(self._get(), method, f"{url.rstrip('/')}{path}", data, headers, timeout, read=read)

    async def alerts(
        self, url: str, alerts: Sequence[dict[str, Any]], timeout: float, token_file: str = ""
    ) -> SendOutcome:
        """POST alerts to one Alertmanager's ``/api/v2/alerts``."""
        return (await self._alertmanager("POST", url, "/api/v2/alerts", list(alerts), timeout, token_file))[0]

    async def silences(self, url: str, timeout: float, token_file: str = "") -> list[dict[str, Any]] | None:
        """The silences an Alertmanager holds (None if it did not say: nothing is then created or expired)."""
        outcome, content = await self._alertmanager(
            "GET", url, "/api/v2/silences", None, timeout, token_file, read=SILENCES_BYTES
        )
        if not outcome.ok or len(content) >= SILENCES_BYTES:
            return None
        try:
            found = json.loads(content)
        except ValueError:
            return None
        return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else None

    async def create_silence(
        self, url: str, silence: dict[str, Any], timeout: float, token_file: str = ""
    ) -> SendOutcome:
        return (await self._alertmanager("POST", url, "/api/v2/silences", silence, timeout, token_file))[0]

    async def expire_silence(self, url: str, silence_id: str, timeout: float, token_file: str = "") -> SendOutcome:
        path = f"/api/v2/silence/{urllib.parse.quote(silence_id, safe='')}"
        return (await self._alertmanager("DELETE", url, path, None, timeout, token_file))[0]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
