"""Small pure pieces: durations, query templating and escaping, status writes, ticket projections."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operator_k8s.adapters.kube import observed_ticket
from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.observations import QueryResult, Sample, StorePod, samples_of, scope_result, select_pods
from operator_k8s.domain.projections import (
    ObservedTicket,
    bounded_text,
    observed_edit,
    plan_tickets,
    ticket_body,
    ticket_id_of,
    ticket_labels,
    ticket_name,
    ticket_status,
)
from operator_k8s.domain.queries import builtin_query, custom_query, escape_label_value, fill_template
from operator_k8s.domain.status import StoreCounts, merge_patch, parse_time, status_patch
from operator_k8s.domain.tickets import TicketKey, TicketState
from operator_k8s.domain.vocabulary import INTENT_ANNOTATION, Invariant
from tests.unit.builders import at, pods, spec, ticket


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), ("1.5s", 1.5)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "1d", "-1s", "1m 30s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.text(max_size=40))
def test_escaped_label_value_cannot_end_the_string(value: str) -> None:
    escaped = escape_label_value(value)
    # Every double quote is escaped, so the PromQL string literal ends only where we end it.
    unescaped_quotes = [
        i for i, c in enumerate(escaped) if c == '"' and (len(escaped[:i]) - len(escaped[:i].rstrip("\\"))) % 2 == 0
    ]
    assert unescaped_quotes == []
    assert "\n" not in escaped


def test_hostile_matcher_value_stays_inside_its_string() -> None:
    hostile = 'x"} or vector(1) or up{a="'
    query = builtin_query(
        spec(prometheus={"url": "http://p", "matchers": {"job": hostile}}), Invariant.DISK_USAGE, "ns", ("tikv-0",)
    )
    assert 'job="x\\"} or vector(1) or up{a=\\""' in query


def test_namespace_and_stores_are_escaped() -> None:
    query = builtin_query(spec(), Invariant.LATENCY, 'n"s', ("a.b", "c"))
    assert 'namespace="n\\"s"' in query
    assert 'pod=~"a\\\\.b|c"' in query


def test_override_template_keeps_promql_braces() -> None:
    cluster = spec(queries={"latency": 'histogram_quantile({quantile}, rate(x_bucket{job="kv",{matchers}}[{window}]))'})
    assert (
        builtin_query(cluster, Invariant.LATENCY, "ns", ("tikv-0",))
        == 'histogram_quantile(0.99, rate(x_bucket{job="kv",namespace="ns",pod=~"tikv-0"}[1m]))'
    )


def test_the_store_matcher_is_never_dropped() -> None:
    with pytest.raises(ValueError, match="at least one store"):
        builtin_query(spec(), Invariant.LATENCY, "ns", ())


def test_custom_queries_get_scoping_placeholders() -> None:
    custom = {"name": "stall", "query": "max by (pod) (stall{namespace=\"{namespace}\",pod=~\"{stores}\"})",
              "comparator": ">", "threshold": 0}  # fmt: skip
    cluster = spec(invariants={"custom": [custom]})
    query = custom_query(cluster, cluster.invariants.custom[0], "ns", ("tikv-0", "tikv-1"))
    assert query == 'max by (pod) (stall{namespace="ns",pod=~"tikv-0|tikv-1"})'
    assert custom_query(cluster, cluster.invariants.custom[0], "ns", ()) is None, "no store to ask about"


def test_fill_template_ignores_unknown_braces() -> None:
    assert fill_template("{a}{b}", a="1") == "1{b}"


def test_status_patch_skips_unchanged_until_heartbeat() -> None:
    body = {"observedGeneration": 1, "conditions": [], "lastCheckTime": "2026-01-01T12:00:00Z"}
    assert status_patch(body, {**body, "lastCheckTime": "2026-01-01T12:00:30Z"}, at(30)) is None
    assert status_patch(body, {**body, "lastCheckTime": "2026-01-01T12:01:00Z"}, at(60)) is not None
    assert status_patch(body, {**body, "observedGeneration": 2}, at(1)) is not None
    assert status_patch({}, body, at(0)) == body


def test_store_counts_summary() -> None:
    assert StoreCounts.of(pods("ready", "notready"), 3).to_wire() == {
        "observed": 2,
        "ready": 1,
        "summary": "1/3 ready",
        "expected": 3,
    }
    assert StoreCounts.of(pods("ready"), None).to_wire()["summary"] == "1/1 ready"


def test_ticket_name_is_deterministic_and_dns_safe() -> None:
    current = ticket(TicketState.OPEN, key=TicketKey("u", "storesReady", "TiKV_0"), cluster_name="Prod.Cluster")
    assert ticket_name(current) == "prod-cluster-storesready-tikv-0-7"
    long = ticket(TicketState.OPEN, key=TicketKey("u", "latency", "s" * 300))
    assert len(ticket_name(long)) <= 253
    assert ticket_name(long) == ticket_name(long)


@pytest.mark.parametrize("store", ["tikv-0", "TiKV_0", "s" * 300, "x-17", "-"])
def test_the_ticket_id_is_read_back_from_any_ticket_name(store: str) -> None:
    current = ticket(TicketState.OPEN, key=TicketKey("u", "latency", store))
    assert ticket_id_of(ticket_name(current)) == current.id


@pytest.mark.parametrize("name", ["ticket", "-7", "a-", "a-7x", "a-\u0667"])
def test_a_name_that_does_not_end_in_an_id_has_none(name: str) -> None:
    assert ticket_id_of(name) is None


def test_ticket_labels_and_status() -> None:
    current = ticket(TicketState.OPEN, snapshot={"value": 812.5, "threshold": 500, "at": "t"})
    assert ticket_labels(current)["invariant"] == "latency"
    status = ticket_status(current)
    assert (status["state"], status["occurrences"], status["store"]) == ("open", 1, "tikv-0")
    assert status["snapshot"] == "value 812.5 (threshold 500) at t"


@pytest.mark.parametrize(
    ("selector", "want"),
    [({"app": "tikv"}, ["a", "b"]), ({"app": "tikv", "zone": "z1"}, ["a"]), ({"app": "pd"}, ["c"]), ({"x": "y"}, [])],
)
def test_select_pods(selector: dict[str, str], want: list[str]) -> None:
    pods = [
        StorePod("a", "Running", True, (("app", "tikv"), ("zone", "z1"))),
        StorePod("b", "Running", True, (("app", "tikv"), ("zone", "z2"))),
        StorePod("c", "Running", True, (("app", "pd"),)),
    ]
    assert [p.name for p in select_pods(pods, selector)] == want


@pytest.mark.parametrize(
    ("sample", "per_store", "kept"),
    [
        (Sample("tikv-0", 1.0, "ns"), True, True),
        (Sample("tikv-0", 1.0, None), True, True),  # no namespace label: this cluster's own query
        (Sample("tikv-0", 1.0, "other"), True, False),  # a same-named pod in another namespace
        (Sample("tikv-9", 1.0, "ns"), True, False),  # a neighbour's store
        (Sample(None, 1.0, "ns"), True, False),  # no store label in a per-store query
        (Sample(None, 1.0, "ns"), False, True),  # …but a cluster-wide value for a cluster-wide one
        (Sample("tikv-9", 1.0, "ns"), False, False),
    ],
)
def test_only_this_clusters_series_are_judged(sample: Sample, per_store: bool, kept: bool) -> None:
    scoped, ignored = scope_result(QueryResult("q", (sample,)), "ns", frozenset({"tikv-0"}), per_store=per_store)
    assert (len(scoped.samples), ignored) == ((1, 0) if kept else (0, 1))


@pytest.mark.parametrize("length", [1, 252, 253, 254, 1000])
def test_long_names_are_shortened_deterministically_and_stay_distinct(length: int) -> None:
    text = "s" * length
    shown = bounded_text(text, 253)
    assert len(shown) <= 253 and shown == bounded_text(text, 253)
    assert (shown == text) == (length <= 253)
    assert bounded_text(text + "x", 253) != shown


def test_an_unscoped_query_s_namespace_less_series_are_not_judged() -> None:
    """``max by (pod) (x)`` without a placeholder: a series naming no namespace may be any namespace's pod."""
    sample = Sample("tikv-0", 95.0, None)
    scoped, ignored = scope_result(
        QueryResult("q", (sample,)), "ns", frozenset({"tikv-0"}), per_store=True, namespace_scoped=False
    )
    assert (scoped.samples, ignored) == ((), 1)


@pytest.mark.parametrize(
    ("observed", "desired", "patch"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),  # a key the desired value lacks is removed
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
        ({"a": [1, 2]}, {"a": [1]}, {"a": [1]}),  # lists replace
        ({"a": 1}, {"a": True}, {"a": True}),  # 1 == True in Python, not on the wire
        ({"a": "x"}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({}, {}, {}),
    ],
)
def test_merge_patch_is_the_exact_difference(observed: dict[str, Any], desired: dict[str, Any], patch: Any) -> None:
    assert merge_patch(observed, desired) == patch


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-01-01T12:00:00Z", "2026-01-01T12:00:00+00:00"),
        ("2026-01-01T12:00:00.5Z", "2026-01-01T12:00:00.500000+00:00"),
        ("2026-01-01T13:00:00+01:00", "2026-01-01T12:00:00+00:00"),
        ("2026-01-01t12:00:00z", "2026-01-01T12:00:00+00:00"),
    ],
)
def test_any_rfc_3339_time_is_read(text: str, iso: str) -> None:
    assert parse_time(text).isoformat() == iso


@pytest.mark.parametrize("text", ["2026-01-01", "2026-01-01T12:00:00", "noon", 5, None])
def test_a_time_that_is_not_rfc_3339_is_a_value_error(text: Any) -> None:
    with pytest.raises(ValueError, match=r"isoformat|RFC 3339"):
        parse_time(text)


@pytest.mark.parametrize(
    ("series", "kept", "malformed"),
    [
        ({"metric": {"pod": "a", "namespace": "ns"}, "value": [0, "1"]}, 1, 0),
        ({"metric": {"pod": ["a"]}, "value": [0, "1"]}, 0, 1),
        ({"metric": {"pod": "a", "namespace": 3}, "value": [0, "1"]}, 0, 1),
        ({"metric": {"pod": "a"}, "value": [0, "NaN"]}, 1, 0),
        ({"metric": {"pod": "a"}, "value": "1"}, 0, 1),
        ({"metric": "pod=a", "value": [0, "1"]}, 0, 1),
        ("a series", 0, 1),
    ],
)
def test_answers_of_any_shape_are_read_or_counted(series: Any, kept: int, malformed: int) -> None:
    samples, bad = samples_of([series], "pod", "namespace")
    assert (len(samples), bad) == (kept, malformed)


def test_the_plan_costs_nothing_when_the_ticket_shows_what_postgres_holds() -> None:
    current = ticket(TicketState.OPEN)
    body = ticket_body(current)
    observed = observed_ticket(body | {"metadata": body["metadata"] | {"resourceVersion": "9"}})
    assert len(plan_tickets(current.key.cluster_uid, [body], [observed])) == 0
    later = ticket_body(replace(current, last_seen=at(59)))
    assert len(plan_tickets(current.key.cluster_uid, [later], [observed])) == 0, "lastSeen is shown to the minute"
    resolved = ticket_body(replace(current, state=TicketState.RESOLVED, resolved_at=at(60)))
    plan = plan_tickets(current.key.cluster_uid, [resolved], [observed])
    assert [p.patch["metadata"] for p in plan.patches] == [{"labels": {"state": "resolved"}}]
    assert len(plan) == 1 and plan.patches[0].resource_version == "9"


def test_the_plan_deletes_only_this_clusters_unwanted_tickets() -> None:
    mine = observed_ticket(ticket_body(ticket(TicketState.RESOLVED)) | {"metadata": {"name": "t-7", "labels": {}}})
    mine = replace(mine, owner_uids=("uid",))
    theirs = replace(mine, name="t-8", owner_uids=("other",))
    assert plan_tickets("uid", [], [mine, theirs]).deletes == ("t-7",)


@pytest.mark.parametrize(
    ("shown", "spec", "actor", "edit"),
    [
        ({"hold": False, "acknowledged": False}, {"hold": True, "acknowledged": False}, "kubectl", True),
        ({"hold": False, "acknowledged": False}, {"hold": False, "acknowledged": False}, "kubectl", None),
        (None, {"hold": True, "acknowledged": False}, "kubectl", True),  # annotation gone: judged against Postgres
        (None, {"hold": True, "acknowledged": False}, "operator-k8s", None),  # …unless the operator wrote it last
    ],
)
def test_an_edit_is_the_spec_against_what_was_last_shown(
    shown: dict[str, Any] | None, spec: dict[str, Any], actor: str, edit: bool | None
) -> None:
    current = ticket(TicketState.OPEN)
    annotations = {} if shown is None else {INTENT_ANNOTATION: json.dumps(shown)}
    observed = ObservedTicket("ns", "t-7", "1", annotations=annotations, spec=spec, spec_actor=f"kubernetes:{actor}")
    found = observed_edit(current, observed)
    assert (found.edit.hold if found else None) == edit


def test_merge_patch_compares_wire_values_not_python_types() -> None:
    """A StrEnum the operator holds equals the string the API server returns (the contract suite found this)."""
    assert merge_patch({"invariant": "latency"}, {"invariant": Invariant.LATENCY}) == {}
