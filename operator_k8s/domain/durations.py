"""Go-style duration strings (``1m30s``) as the CRDs accept them, parsed to seconds.

Parsed as Go's ``time.ParseDuration`` (and so the API server's CEL ``duration()``) parses them: whole nanoseconds,
and nothing beyond int64 nanoseconds (about 292 years). The operator thus refuses exactly what the API server cannot
read, and no parsed duration can overflow a ``timedelta``.
"""

import re

_UNIT_NANOS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")
MAX_NANOS = 2**63 - 1
"""Go's largest duration: about 2562047h."""
_FRACTION_DIGITS = 15
"""Fraction digits beyond these are worth less than a nanosecond even in hours, so they are ignored (as Go does)."""


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``1m30s`` or ``250ms``; ValueError on anything else, or on a duration
    longer than Go can represent (never OverflowError)."""
    if not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r}: use a number and unit, e.g. 30s, 1m30s, 250ms")
    nanos = 0
    for whole, fraction, unit in _PART.findall(text):
        digits = whole.lstrip("0")
        if len(digits) > len(str(MAX_NANOS)):  # checked before int(): Python refuses very long digit strings
            raise ValueError(f"duration {text!r} is too long")
        scale = _UNIT_NANOS[unit]
        kept = fraction[:_FRACTION_DIGITS]
        nanos += int(digits or "0") * scale + (int(kept) * scale // 10 ** len(kept) if kept else 0)
        if nanos > MAX_NANOS:
            raise ValueError(f"duration {text!r} is too long")
    return nanos / 1e9
