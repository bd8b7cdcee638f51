"""Every hostile spec meets a clear refusal from the models, and every spec at a bound is one the operator can use.

The table is shared with the stack tier (tests/integration/test_crd_validation.py), which applies it to the real API
server; here, the models' side, and the check that every CEL rule of the CRD is exercised by some row.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from operator_k8s.domain.durations import MAX_NANOS, parse_duration
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.vocabulary import custom_condition_type
from tests.hostile_specs import ACCEPTED, HOSTILE, Accepted, Hostile, cel_messages

CRD = Path(__file__).resolve().parents[2] / "crds" / "monitoredclusters.operator-k8s.io.yaml"


def api_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location written as the API server writes field paths: ``spec.a.b[0].c``."""
    return "spec" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
def test_models_refuse_hostile_specs_naming_the_field(case: Hostile) -> None:
    with pytest.raises(ValidationError) as caught:
        MonitoredClusterSpec.model_validate(case.spec)
    errors = [(api_path(error["loc"]), error["msg"]) for error in caught.value.errors()]
    assert any(path.startswith(case.field) and case.message in message for path, message in errors), errors


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
def test_models_accept_specs_at_the_bounds_and_the_operator_can_use_them(case: Accepted) -> None:
    spec = MonitoredClusterSpec.model_validate(case.spec)
    invariants = spec.invariants
    for settings in (invariants.stores_ready, invariants.latency, invariants.disk_usage, *invariants.custom):
        timedelta(seconds=settings.for_seconds) + timedelta(seconds=settings.clear_for_seconds)
    assert 1 <= spec.interval_seconds <= 3600
    assert 0 < parse_duration(spec.prometheus.timeout) <= 60
    conditions = [custom_condition_type(item.name) for item in invariants.custom]
    assert len(conditions) == len(set(conditions))


def test_every_cel_rule_is_in_the_table() -> None:
    """Each rule of the CRD has a hostile row that breaks it, so both tiers check that rule and its wording."""
    spec = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows = {case.server_message for case in HOSTILE}
    untested = {message for message in cel_messages(spec) if not any(message in row for row in rows)}
    assert untested == set()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1m30s", 90),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("84h84h", 604800),
        ("0000000000000000000000001s", 1),
        ("0.0000000001s", 0),  # below a nanosecond: truncated, as Go does
        ("1.0000000001s", 1),
        ("2562047h", 2562047 * 3600),
    ],
)
def test_durations_parse_as_go_does(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["2562048h", "99999999999h", "9" * 5000 + "h", "2562047h2562047h", str(MAX_NANOS // 10**6 + 1) + "ms"]
)
def test_too_long_durations_are_a_value_error_never_an_overflow(text: str) -> None:
    with pytest.raises(ValueError, match="is too long"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["", "5", "5x", "-1s", "1e3s", "1 s", "inf", "nans"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
