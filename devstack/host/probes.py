"""Readiness probes the components share."""

from __future__ import annotations

import ssl
import urllib.request


def http_ok(url: str, context: ssl.SSLContext | None = None, expect: str | None = None) -> bool:
    """``url`` answers 200 (and its body contains ``expect``, when given); raises when it cannot be reached."""
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        body: str = response.read().decode()
        return response.status == 200 and (expect is None or expect in body)
