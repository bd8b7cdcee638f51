"""The real API server refuses every hostile spec of tests/hostile_specs.py, naming the field, and what it accepts at
the bounds the models accept too: nothing the API server stores can break the operator's spec parsing."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from devstack.world.stack import Stack
from operator_k8s.domain.specs import MonitoredClusterSpec
from operator_k8s.domain.vocabulary import API_VERSION, CLUSTER_KIND, CLUSTER_PLURAL, GROUP, VERSION
from tests.hostile_specs import ACCEPTED, HOSTILE, Accepted, Hostile
from tests.stackutil import get_json

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def namespace(stack: Stack) -> str:
    """One namespace for the whole table: every row has its own object name."""
    stack.kubectl("create", "namespace", "crd-validation")
    return "crd-validation"


def _body(name: str, spec: dict[str, Any]) -> str:
    """The object as JSON; an infinity as ``1e999``, the spelling JSON's grammar allows, NaN as ``NaN``."""
    body = {"apiVersion": API_VERSION, "kind": CLUSTER_KIND, "metadata": {"name": name}, "spec": spec}
    return re.sub(r"(?<=: )(-?)Infinity\b", r"\g<1>1e999", json.dumps(body))


def _create(stack: Stack, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, str]:
    """POST the object as raw JSON, so no client-side check or conversion stands between it and the API server."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{CLUSTER_PLURAL}"
    result = stack.kubectl("create", "--raw", path, "-f", "-", check=False, input_text=_body(name, spec))
    return result.returncode, result.stderr


@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
def test_api_server_refuses_hostile_specs_naming_the_field(stack: Stack, namespace: str, case: Hostile) -> None:
    code, error = _create(stack, namespace, case.id, case.spec)
    assert code != 0
    assert stack.kubectl("get", "mc", case.id, "-n", namespace, check=False).returncode != 0
    assert case.server_message in error, error
    if case.json_safe:  # otherwise the body is refused whole, before any field is looked at
        assert case.field in error, error


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
def test_what_the_api_server_accepts_the_models_accept(stack: Stack, namespace: str, case: Accepted) -> None:
    code, error = _create(stack, namespace, case.id, case.spec)
    assert code == 0, error
    stored = get_json(stack, "mc", case.id, "-n", namespace)["spec"]
    MonitoredClusterSpec.model_validate(stored)
