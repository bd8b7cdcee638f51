"""The CRD YAML is the one source of truth: the pydantic models must agree with it, field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from operator_k8s.domain.specs import MaintenanceWindowSpec, MonitoredClusterSpec, TicketSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"


def crd_schema(filename: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / filename).read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref and unwrap Optional (anyOf with null) in a pydantic JSON schema."""
    if "$ref" in node:
        node = defs[node["$ref"].split("/")[-1]] | {k: v for k, v in node.items() if k != "$ref"}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            node = _resolve(options[0], defs) | {k: v for k, v in node.items() if k != "anyOf"}
    return node


def _bounds(node: dict[str, Any]) -> dict[str, Any]:
    """Normalised constraints: OpenAPI v3.0's boolean exclusiveMinimum and JSON Schema's numeric one compare equal."""
    out: dict[str, Any] = {}
    for key in ("maxLength", "minLength", "maxItems", "maxProperties", "pattern"):
        if key in node:
            out[key] = node[key]
    for side in ("Minimum", "Maximum"):
        exclusive = node.get("exclusive" + side)
        if isinstance(exclusive, bool):
            if exclusive:
                out["exclusive" + side] = node[side.lower()]
            elif side.lower() in node:
                out[side.lower()] = node[side.lower()]
        elif exclusive is not None:
            out["exclusive" + side] = exclusive
        elif side.lower() in node:
            out[side.lower()] = node[side.lower()]
    if "enum" in node:
        out["enum"] = sorted(node["enum"])
    if "const" in node:
        out["enum"] = [node["const"]]
    return out


def compare(crd: dict[str, Any], model: dict[str, Any], defs: dict[str, Any], path: str, problems: list[str]) -> None:
    model = _resolve(model, defs)
    if crd.get("type") == "object" and "properties" in crd:
        crd_props, model_props = set(crd["properties"]), set(model.get("properties", {}))
        if crd_props != model_props:
            problems.append(
                f"{path}: CRD has {sorted(crd_props - model_props)}, model has {sorted(model_props - crd_props)}"
            )
        for name in crd_props & model_props:
            compare(crd["properties"][name], model["properties"][name], defs, f"{path}.{name}", problems)
        return
    if crd.get("type") == "array":
        if crd.get("maxItems") != model.get("maxItems"):
            problems.append(f"{path}: maxItems {crd.get('maxItems')} != {model.get('maxItems')}")
        compare(crd["items"], model["items"], defs, f"{path}[]", problems)
        return
    if crd.get("type") == "object" and "additionalProperties" in crd:
        if crd.get("maxProperties") != model.get("maxProperties"):
            problems.append(f"{path}: maxProperties {crd.get('maxProperties')} != {model.get('maxProperties')}")
        values = model.get("additionalProperties") or next(iter(model.get("patternProperties", {}).values()), {})
        compare(crd["additionalProperties"], values, defs, f"{path}{{}}", problems)
        return
    crd_bounds, model_bounds = _bounds(crd), _bounds(model)
    if crd_bounds != model_bounds:
        problems.append(f"{path}: CRD {crd_bounds} != model {model_bounds}")
    if "default" in crd and crd["default"] != {} and crd["default"] != model.get("default"):
        problems.append(f"{path}: default {crd['default']!r} != {model.get('default')!r}")


@pytest.mark.parametrize(
    ("filename", "model"),
    [
        ("monitoredclusters.operator-k8s.io.yaml", MonitoredClusterSpec),
        ("tickets.operator-k8s.io.yaml", TicketSpec),
        ("maintenancewindows.operator-k8s.io.yaml", MaintenanceWindowSpec),
    ],
)
def test_models_mirror_the_crd_schema(filename: str, model: type[BaseModel]) -> None:
    schema = model.model_json_schema(by_alias=True)
    problems: list[str] = []
    compare(crd_schema(filename)["properties"]["spec"], schema, schema.get("$defs", {}), "spec", problems)
    assert problems == []


def _all_nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "type" in node:
            found.append((path, node))
        for key, value in node.items():
            found += _all_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _all_nodes(value, f"{path}[{index}]")
    return found


@pytest.mark.parametrize(
    "filename",
    [
        "monitoredclusters.operator-k8s.io.yaml",
        "tickets.operator-k8s.io.yaml",
        "maintenancewindows.operator-k8s.io.yaml",
    ],
)
def test_every_string_and_array_is_bounded(filename: str) -> None:
    unbounded = [
        path
        for part in ("spec", "status")
        for path, node in _all_nodes(crd_schema(filename)["properties"][part], part)
        if (node["type"] == "string" and "maxLength" not in node and "enum" not in node)
        or (node["type"] == "array" and "maxItems" not in node)
    ]
    assert unbounded == []


BASE = {"stores": {"selector": {"matchLabels": {"app": "tikv"}}}, "prometheus": {"url": "http://p:9090"}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"interval": "0s"}, "interval must be between"),
        ({"interval": "5x"}, "String should match pattern"),
        ({"invariants": {"latency": {"thresholdMs": -1}}}, "greater than 0"),
        ({"invariants": {"latency": {"thresholdMs": 100, "clearThresholdMs": 200}}}, "must not exceed"),
        (
            {
                "invariants": {
                    "custom": [{"name": "a", "query": "q", "comparator": "<", "threshold": 5, "clearThreshold": 1}]
                }
            },
            "safe side",
        ),
        ({"invariants": {"custom": [{"name": "a", "query": "q", "comparator": ">", "threshold": 1}] * 2}}, "unique"),
        ({"unknownField": 1}, "Extra inputs are not permitted"),
        ({"prometheus": {"url": "ftp://p"}}, "String should match pattern"),
        ({"prometheus": {"url": "http://p", "matchers": {"bad key": "v"}}}, "String should match pattern"),
    ],
)
def test_model_rejects_what_the_operator_cannot_use(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MonitoredClusterSpec.model_validate(BASE | patch)


def test_model_defaults() -> None:
    spec = MonitoredClusterSpec.model_validate(BASE)
    assert (spec.interval_seconds, spec.preset, spec.prometheus.store_label) == (30, "tikv", "pod")
    assert spec.invariants.latency.quantile == 0.99
    assert spec.invariants.stores_ready.severity == "critical"


def test_comparison_catches_a_drift() -> None:
    """The mirror test itself can fail: a changed bound or a missing field in the CRD is reported."""
    drifted = crd_schema("monitoredclusters.operator-k8s.io.yaml")["properties"]["spec"]
    drifted["properties"]["interval"]["maxLength"] = 99
    del drifted["properties"]["preset"]
    schema = MonitoredClusterSpec.model_json_schema(by_alias=True)
    problems: list[str] = []
    compare(drifted, schema, schema["$defs"], "spec", problems)
    assert any("preset" in p for p in problems)
    assert any("spec.interval" in p and "99" in p for p in problems)


def test_comparison_catches_a_drift_in_a_nested_list() -> None:
    """The same for the MaintenanceWindow: a bound inside the selector's expressions, and a field the CRD lacks."""
    drifted = crd_schema("maintenancewindows.operator-k8s.io.yaml")["properties"]["spec"]
    selector = drifted["properties"]["clusterSelector"]["properties"]
    selector["matchExpressions"]["items"]["properties"]["values"]["items"]["maxLength"] = 64
    del drifted["properties"]["until"]
    schema = MaintenanceWindowSpec.model_json_schema(by_alias=True)
    problems: list[str] = []
    compare(drifted, schema, schema["$defs"], "spec", problems)
    assert any("until" in p for p in problems)
    assert any("spec.clusterSelector.matchExpressions[].values[]" in p and "64" in p for p in problems)
