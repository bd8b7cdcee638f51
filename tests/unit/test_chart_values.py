"""The chart's values.schema.json: a bad value is rejected naming that value, as helm reports it.

helm validates with santhosh-tekuri/jsonschema, which reports a failed allOf/anyOf/oneOf/not at the instance holding
the combinator: a rule between two values written as a root ``allOf`` failed as ``at '': allOf failed``, naming
nothing. Here the schema is checked with python-jsonschema (same draft 7), and every error must come from a path of
keywords with no combinator on it, at the location of the offending value. The install tier runs the same values
through the real helm (tests/e2e/test_install.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import ValidationError

from operator_k8s.domain.receivers import NotificationsConfig

CHART = Path(__file__).resolve().parents[2] / "charts" / "operator-k8s"
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
COMBINATORS = {"allOf", "anyOf", "oneOf", "not"}


def values(**overrides: Any) -> dict[str, Any]:
    """values.yaml with ``--set``-style overrides (``database__existingSecret="db"`` is ``database.existingSecret``),
    merged as helm merges them before it validates."""
    merged = copy.deepcopy(DEFAULTS)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = merged
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return merged


def errors(instance: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(where, message, the schema keywords on the way) of each error, as helm would locate them."""
    found = Draft7Validator(SCHEMA).iter_errors(instance)
    return sorted(
        ("/" + "/".join(str(p) for p in e.absolute_path), e.message, [str(k) for k in e.absolute_schema_path])
        for e in found
    )


def test_the_schema_is_a_valid_draft_7_schema() -> None:
    Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"].rstrip("#").endswith("draft-07/schema")


def combinators(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {k for k in node if k in COMBINATORS}.union(*(combinators(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(combinators(v) for v in node))
    return set()


def test_no_rule_is_written_with_a_combinator() -> None:
    """helm would report a failed one at its holder, not at the value: there is none in the schema."""
    assert combinators(SCHEMA) == set()


@pytest.mark.parametrize(
    "good",
    [
        values(database__existingSecret="db"),
        values(postgres__enabled=True),
        values(database__existingSecret="db", replicaCount=2, peering__enabled=True),
        values(postgres__enabled=True, replicaCount=3, peering__enabled=True),
        values(database__existingSecret="db", replicaCount=4, sharding__enabled=True),
    ],
    ids=[
        "existing-secret",
        "quick-start-postgres",
        "two-replicas-with-peering",
        "quick-start-three-replicas",
        "four-sharded-replicas",
    ],
)
def test_good_values_pass(good: dict[str, Any]) -> None:
    assert errors(good) == []


@pytest.mark.parametrize(
    ("bad", "where", "message"),
    [
        (values(), "/database/existingSecret", "should be non-empty"),
        (values(database__existingSecret=""), "/database/existingSecret", "should be non-empty"),
        (values(database__existingSecret="db", replicaCount=2), "/peering/enabled", "True was expected"),
        (
            values(database__existingSecret="db", replicaCount=5, peering__enabled=False),
            "/peering/enabled",
            "True was expected",
        ),
        (values(database__existingSecret="db", replicaCount=0), "/replicaCount", "less than the minimum of 1"),
        (
            values(database__existingSecret="db", replicaCount=2, sharding__enabled=True, peering__enabled=True),
            "/peering/enabled",
            "False was expected",
        ),
        (values(database__existingSecret="db", settings__logLevel="LOUD"), "/settings/logLevel", "is not one of"),
        (values(database__existingSecret="db", image__tag="a b"), "/image/tag", "does not match"),
    ],
    ids=[
        "no-database",
        "empty-database-secret",
        "replicas-without-peering",
        "replicas-with-peering-off",
        "no-replica",
        "sharding-with-peering",
        "bad-log-level",
        "bad-image-tag",
    ],
)
def test_a_bad_value_is_reported_at_that_value_alone(bad: dict[str, Any], where: str, message: str) -> None:
    [(found_at, found, keywords)] = errors(bad)
    assert (found_at, message in found) == (where, True), found
    assert COMBINATORS.isdisjoint(keywords), f"helm would report this at the root: {keywords}"


def test_two_broken_rules_are_two_errors_each_at_its_value() -> None:
    assert [(where, message) for where, message, _ in errors(values(replicaCount=2))] == [
        ("/database/existingSecret", "'' should be non-empty"),
        ("/peering/enabled", "True was expected"),
    ]


README_NOTIFICATIONS = {
    "receivers": [
        {"name": "alertmanager", "alertmanager": {"urls": ["http://alertmanager-operated.monitoring:9093"],
                                                  "resendSeconds": 30}},
        {"name": "oncall", "webhook": {"url": "https://oncall.example/integrations/v1/webhook/abc/",
                                       "keyFiles": ["/etc/operator-k8s/webhook-keys/current"]}},
    ],
    "routes": [{"receivers": ["alertmanager"]},
               {"receivers": ["oncall"], "namespaces": ["tikv-prod"], "severities": ["critical"]},
               {"receivers": ["oncall"], "clusterSelector": {
                   "matchLabels": {"team": "payments"},
                   "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]},
                                        {"key": "example.com/canary", "operator": "DoesNotExist"}]}}],
    "watchdog": ["alertmanager"],
}  # fmt: skip


@pytest.mark.parametrize(
    "notifications", [DEFAULTS["notifications"], {**DEFAULTS["notifications"], **README_NOTIFICATIONS}]
)
def test_the_notifications_value_is_what_the_operator_reads(notifications: dict[str, Any]) -> None:
    """The chart mounts the value as the operator's notifications file: what the schema lets through, it accepts."""
    assert errors(values(database__existingSecret="db", notifications=notifications)) == []
    NotificationsConfig.model_validate(notifications)


def test_a_bad_receiver_is_refused_at_that_value() -> None:
    bad = {**DEFAULTS["notifications"], "receivers": [{"name": "x", "webhook": {"url": "ftp://x", "keyFiles": ["k"]}}]}
    found = errors(values(database__existingSecret="db", notifications=bad))
    assert [where for where, _, _ in found] == ["/notifications/receivers/0/webhook/url"]


@pytest.mark.parametrize(
    ("selector", "where"),
    [
        ({"matchLabel": {"team": "payments"}}, "/notifications/routes/0/clusterSelector"),
        ({"matchLabels": {"bad key!": "x"}}, "/notifications/routes/0/clusterSelector/matchLabels"),
        ({"matchLabels": {"team": "not a value"}}, "/notifications/routes/0/clusterSelector/matchLabels/team"),
        ({"matchExpressions": [{"key": "tier", "operator": "Equals"}]},
         "/notifications/routes/0/clusterSelector/matchExpressions/0/operator"),
        ({"matchExpressions": [{"key": "tier", "operator": "In"}]},
         "/notifications/routes/0/clusterSelector/matchExpressions/0"),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]},
         "/notifications/routes/0/clusterSelector/matchExpressions/0/values"),
    ],
)  # fmt: skip
def test_a_bad_cluster_selector_is_refused_at_that_value_by_the_chart_and_by_the_operator(
    selector: dict[str, Any], where: str
) -> None:
    route = {"receivers": ["oncall"], "clusterSelector": selector}
    bad = {**DEFAULTS["notifications"], **README_NOTIFICATIONS, "routes": [route]}
    found = errors(values(database__existingSecret="db", notifications=bad))
    assert [at for at, _, _ in found] == [where], found
    with pytest.raises(ValidationError, match=r"routes\.0\.clusterSelector"):
        NotificationsConfig.model_validate(bad)
