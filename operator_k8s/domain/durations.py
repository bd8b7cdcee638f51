"""Go-style duration strings (``1m30s``) as the CRDs accept them, parsed to seconds."""

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``1m30s`` or ``250ms``; ValueError on anything else."""
    if not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r}: use a number and unit, e.g. 30s, 1m30s, 250ms")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
