"""What the people on call are told, and how each receiver hears it: pure decisions, table-driven."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from operator_k8s.adapters.receivers_http import outcome_of, signed_headers
from operator_k8s.domain.diagnosis import Finding as Cause
from operator_k8s.domain.diagnosis import diagnosed
from operator_k8s.domain.invariants import Verdict
from operator_k8s.domain.notices import (
    AlertLinks,
    ClaimedDelivery,
    Notice,
    QueuedNotice,
    RetryPolicy,
    SendOutcome,
    firing_alert,
    next_attempt,
    notice_of,
    parse_retry_after,
    plan_deliveries,
    plan_silences,
    released,
    resolved_alerts,
    settle,
    still_firing,
    watchdog_alert,
    webhook_payload,
    with_notices,
    worth_sending,
)
from operator_k8s.domain.receivers import NotificationsConfig, receivers_for
from operator_k8s.domain.tickets import Effect, EffectKind, TicketState, Transition, transition
from operator_k8s.domain.vocabulary import Severity
from tests.unit.builders import KEY, T0, at, finding, policy, ticket

LINKS = AlertLinks("https://prometheus.example", "https://runbooks.example/tikv")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def opened_notice(**fields: Any) -> Notice:
    base = Notice(
        kind="opened", status="firing", at=at(10), namespace="prod", cluster="tikv-a", invariant="latency",
        store="tikv-0", severity=Severity.WARNING, summary="p99 is 1019 ms", occurrences=1, opened_at=at(10),
        value=1.019, threshold=0.5, query="histogram_quantile(0.99, ...)",
    )  # fmt: skip
    return replace(base, **fields)


@pytest.mark.parametrize(
    ("kind", "to_state", "expected"),
    [
        (EffectKind.OPENED, TicketState.OPEN, "opened"),
        (EffectKind.REOPENED, TicketState.OPEN, "reopened"),
        (EffectKind.ESCALATED, TicketState.OPEN, "escalated"),
        (EffectKind.RESOLVED, TicketState.RESOLVED, "resolved"),
        (EffectKind.ACKNOWLEDGED, TicketState.ACKNOWLEDGED, "acknowledged"),
        (EffectKind.ACKNOWLEDGED, TicketState.OPEN, "unacknowledged"),
        (EffectKind.FLAPPING_STARTED, TicketState.OPEN, "flapping_started"),
        (EffectKind.PENDING, TicketState.PENDING, None),
        (EffectKind.RECURRED, TicketState.OPEN, None),
        (EffectKind.NOTED, TicketState.OPEN, None),
        (EffectKind.HELD, TicketState.OPEN, None),
    ],
)
def test_only_transitions_someone_must_hear_of_make_a_notice(
    kind: EffectKind, to_state: TicketState, expected: str | None
) -> None:
    after = ticket(to_state, opened_at=T0, resolved_at=T0 if to_state is TicketState.RESOLVED else None)
    notice = notice_of(None, after, Effect(kind, TicketState.OPEN, to_state, "why"), at(5))
    assert (notice.kind if notice else None) == expected
    if notice is not None:
        assert notice.status == ("resolved" if to_state is TicketState.RESOLVED else "firing")
        assert notice.at == at(5)


def test_an_escalation_remembers_the_severity_it_left() -> None:
    before = ticket(TicketState.OPEN, severity=Severity.WARNING, opened_at=T0)
    decided = transition(before, finding(Verdict.VIOLATED, Severity.CRITICAL), at(30), policy(), key=KEY,
                         namespace="default", cluster_name="c")  # fmt: skip
    noticed = with_notices(decided, at(30))
    (escalation,) = [e for e in noticed.effects if e.kind is EffectKind.ESCALATED]
    assert escalation.notice is not None
    assert (escalation.notice.severity, escalation.notice.previous_severity) == (Severity.CRITICAL, Severity.WARNING)


def test_a_transition_that_deletes_carries_no_notice() -> None:
    item = Transition(
        ticket(TicketState.PENDING), None, (Effect(EffectKind.CANCELLED, TicketState.PENDING, None, "x"),)
    )
    assert with_notices(item, T0) == item
    assert item.effects[0].notice is None


def test_a_notice_survives_its_round_trip_through_json() -> None:
    notice = opened_notice(previous_severity=Severity.INFO, value="+Inf")
    assert Notice.from_json(notice.to_json()) == notice


# -- Alertmanager's contract -------------------------------------------------------------------------------------


def assert_valid_alert(alert: dict[str, Any]) -> None:
    """What Alertmanager 0.25's ``Alert.Validate`` and its v2 schema refuse."""
    assert alert["labels"], "an alert needs labels"
    for name, value in alert["labels"].items():
        assert LABEL_NAME.match(name), name
        assert value, f"label {name} is empty (Alertmanager drops it, and the identity changes)"
    assert alert["startsAt"] <= alert["endsAt"]


def test_the_alert_of_a_ticket_is_identified_by_labels_that_never_carry_values() -> None:
    alert = firing_alert(opened_notice(), 42, "tikv-a-latency-tikv-0-42", at(60), timedelta(minutes=2), LINKS)
    assert_valid_alert(alert)
    assert alert["labels"] == {
        "alertname": "OperatorK8sTicket", "namespace": "prod", "cluster": "tikv-a", "invariant": "latency",
        "store": "tikv-0", "severity": "warning", "ticket": "prod/ticket-42",
    }  # fmt: skip
    assert alert["annotations"]["value"] == "1.019"
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example/tikv/latency"
    assert "get ticket tikv-a-latency-tikv-0-42" in alert["annotations"]["ticket"]
    assert alert["generatorURL"].startswith("https://prometheus.example/graph?g0.expr=histogram_quantile")


def test_every_send_keeps_starts_at_and_moves_ends_at_a_few_resends_ahead() -> None:
    first = firing_alert(opened_notice(), 42, "n", at(60), timedelta(minutes=2), LINKS)
    later = firing_alert(
        opened_notice(summary="p99 is 2000 ms", value=2.0), 42, "n", at(90), timedelta(minutes=2), LINKS
    )
    assert first["startsAt"] == later["startsAt"] == "2026-01-01T12:00:10Z"
    assert first["labels"] == later["labels"]
    assert later["endsAt"] == "2026-01-01T12:03:30Z"


def test_a_resolution_ends_the_alert_at_the_resolution() -> None:
    (alert,) = resolved_alerts(opened_notice(kind="resolved", status="resolved", at=at(300)), 42, "n", LINKS)
    assert_valid_alert(alert)
    assert alert["endsAt"] == "2026-01-01T12:05:00Z"
    assert alert["labels"]["severity"] == "warning"


def test_an_escalation_ends_the_alert_of_the_old_severity() -> None:
    notice = opened_notice(kind="escalated", severity=Severity.CRITICAL, previous_severity=Severity.WARNING, at=at(70))
    (ended,) = resolved_alerts(notice, 42, "n", LINKS)
    fired = firing_alert(notice, 42, "n", at(70), timedelta(minutes=2), LINKS)
    assert ended["labels"]["severity"] == "warning"
    assert fired["labels"]["severity"] == "critical"
    assert ended["endsAt"] == "2026-01-01T12:01:10Z"


def test_an_opening_ends_nothing() -> None:
    assert resolved_alerts(opened_notice(), 42, "n", LINKS) == []


def test_the_watchdog_always_fires_and_ends_on_its_own() -> None:
    alert = watchdog_alert("op-1", at(0), timedelta(minutes=2))
    assert_valid_alert(alert)
    assert alert["labels"]["alertname"] == "OperatorK8sWatchdog"
    assert alert["endsAt"] == "2026-01-01T12:02:00Z"


# -- Webhooks ----------------------------------------------------------------------------------------------------


def test_the_webhook_payload_groups_and_deduplicates_by_ticket() -> None:
    payload = webhook_payload(
        opened_notice(kind="resolved", status="resolved"), ticket_id=42, ticket_name="n", sequence=7,
        idempotency_key="tkt_42_3_1", links=LINKS,
    )  # fmt: skip
    assert payload["version"] == "1"
    assert payload["group_id"] == payload["dedup_key"] == "prod/ticket-42"
    assert (payload["status"], payload["transition"], payload["sequence"]) == ("resolved", "resolved", 7)
    assert payload["id"] == "tkt_42_3_1"
    assert payload["ticket"]["invariant"] == "latency"


def test_a_signature_verifies_with_either_key_during_a_rotation() -> None:
    old, new = Webhook("whsec_" + "b2xkLWtleS0xMjM0NTY3ODkw"), Webhook("whsec_" + "bmV3LWtleS0xMjM0NTY3ODkw")
    body = b'{"a":1}'
    now = at(0).replace(year=2026)
    headers = signed_headers([old, new], "tkt_1_1_1", body, now)
    assert headers["webhook-id"] == "tkt_1_1_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for key in (old, new):
        key._Webhook__verify_timestamp = lambda stamp: now  # type: ignore[attr-defined]  # a fixed clock
        assert key.verify(body, headers) == {"a": 1}
    stranger = Webhook("whsec_" + "c3RyYW5nZXIta2V5LTEyMzQ1Ng==")
    stranger._Webhook__verify_timestamp = lambda stamp: now  # type: ignore[attr-defined]
    with pytest.raises(WebhookVerificationError):
        stranger.verify(body, headers)


@pytest.mark.parametrize(
    ("status", "retry_after", "ok", "gone", "permanent", "wait"),
    [
        (200, None, True, False, False, 0),
        (204, None, True, False, False, 0),
        (410, None, False, True, False, 0),
        (429, "120", False, False, False, 120),
        (429, None, False, False, False, 0),
        (503, None, False, False, False, 0),
        (408, None, False, False, False, 0),
        (302, None, False, False, False, 0),
        (400, None, False, False, True, 0),
        (401, None, False, False, True, 0),
    ],
)
def test_an_answer_becomes_an_outcome(
    status: int, retry_after: str | None, ok: bool, gone: bool, permanent: bool, wait: int
) -> None:
    outcome = outcome_of(status, "body", retry_after, T0)
    assert (outcome.ok, outcome.gone, outcome.permanent) == (ok, gone, permanent)
    assert outcome.retry_after == timedelta(seconds=wait)
    if 300 <= status < 400:
        assert "not followed" in outcome.detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30", 30), ("", 0), (None, 0), ("soon", 0), ("Thu, 01 Jan 2026 12:01:00 GMT", 60), ("999999", 3600)],
)
def test_retry_after_is_read_as_seconds_or_a_date_and_bounded(value: str | None, expected: int) -> None:
    assert parse_retry_after(value, T0) == timedelta(seconds=expected)


# -- Retries and settling ----------------------------------------------------------------------------------------


def test_retries_back_off_with_jitter_up_to_a_cap() -> None:
    rules = RetryPolicy(first=timedelta(seconds=2), cap=timedelta(minutes=5), attempts=30, max_age=timedelta(hours=6))
    rand = random.Random(1)
    waits = [(next_attempt(rules, n, T0, T0, rand=rand) - T0).total_seconds() for n in range(12)]  # type: ignore[operator]
    for n, wait in enumerate(waits):
        ceiling = min(300, 2 * 2**n)
        assert ceiling / 2 <= wait <= ceiling
    assert next_attempt(rules, 1, T0, T0, at_least=timedelta(seconds=90), rand=rand) == at(90)


@pytest.mark.parametrize(("attempts", "age_hours"), [(500, 0), (3, 6)])
def test_retries_end_at_the_bound_of_attempts_or_age(attempts: int, age_hours: int) -> None:
    assert next_attempt(RetryPolicy(), attempts, T0, T0 + timedelta(hours=age_hours)) is None


def claimed(attempts: int = 1, **fields: Any) -> ClaimedDelivery:
    queued = QueuedNotice(9, 42, "tkt_42_1_1", opened_notice())
    base = ClaimedDelivery(9, "pager", attempts, T0, None, queued, ticket_active=True, told_firing=False)
    return replace(base, **fields)


@pytest.mark.parametrize(
    ("outcome", "attempts", "state"),
    [
        (SendOutcome(True, "HTTP 200"), 1, "delivered"),
        (SendOutcome(False, "HTTP 410", gone=True), 1, "dead"),
        (SendOutcome(False, "HTTP 400", permanent=True), 1, "dead"),
        (SendOutcome(False, "HTTP 503"), 1, "pending"),
        (SendOutcome(False, "HTTP 503"), 500, "dead"),
    ],
)
def test_an_attempt_settles_the_delivery(outcome: SendOutcome, attempts: int, state: str) -> None:
    settled = settle(claimed(attempts), outcome, RetryPolicy(), at(5))
    assert settled.state == state
    assert outcome.detail in settled.result
    assert (settled.due_at is not None) == (state == "pending")


# -- Maintenance windows and routing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "active", "told", "sent"),
    [
        ("opened", True, False, True),
        ("opened", False, False, False),
        ("resolved", False, True, True),
        ("resolved", False, False, False),
        ("acknowledged", True, False, False),
        ("escalated", True, True, True),
    ],
)
def test_a_delivery_deferred_by_a_window_is_sent_only_if_it_still_says_something(
    kind: str, active: bool, told: bool, sent: bool
) -> None:
    assert worth_sending(kind, deferred=False, ticket_active=active, told_firing=told) is None
    assert (worth_sending(kind, deferred=True, ticket_active=active, told_firing=told) is None) is sent


def test_deliveries_are_planned_per_receiver() -> None:
    until = at(3600)
    now_plan = plan_deliveries(["am", "pager"], covered=None, disabled=frozenset({"pager"}), now=T0)
    assert [(p.receiver, p.state, p.due_at) for p in now_plan] == [("am", "pending", T0), ("pager", "dead", T0)]
    deferred = plan_deliveries(["am"], covered=("upgrade", until), disabled=frozenset(), now=T0)
    assert [(p.state, p.due_at, p.deferred_by) for p in deferred] == [("pending", until, "upgrade")]


CONFIG = {
    "receivers": [
        {"name": "am", "alertmanager": {"urls": ["http://alertmanager:9093"]}},
        {"name": "pager", "webhook": {"url": "https://pager.example/hook", "keyFiles": ["/keys/pager"]}},
    ],
    "routes": [
        {"receivers": ["am"]},
        {"receivers": ["pager"], "namespaces": ["prod"], "severities": ["critical"]},
        {"receivers": ["pager"], "clusters": ["payments/tikv-a"]},
    ],
    "watchdog": ["am"],
}


@pytest.mark.parametrize(
    ("namespace", "severity", "expected"),
    [
        ("prod", Severity.CRITICAL, ["am", "pager"]),
        ("prod", Severity.WARNING, ["am"]),
        ("dev", Severity.CRITICAL, ["am"]),  # tikv-a in dev is not payments/tikv-a
        ("payments", Severity.INFO, ["am", "pager"]),  # the cluster by namespace/name, only in that namespace
    ],
)
def test_routes_send_a_notice_to_every_matching_receiver_once(
    namespace: str, severity: Severity, expected: list[str]
) -> None:
    config = NotificationsConfig.model_validate(CONFIG)
    names = receivers_for(config.routes, namespace=namespace, cluster="tikv-a", invariant="latency", severity=severity)
    assert names == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"routes": [{"receivers": ["nobody"]}]}, "not defined: nobody"),
        ({"receivers": CONFIG["receivers"] * 2}, "unique: am, pager"),
        ({"watchdog": ["pager"]}, "watchdog must name alertmanager receivers"),
        (
            {
                "receivers": [
                    {
                        "name": "both",
                        "webhook": {"url": "http://x", "keyFiles": ["k"]},
                        "alertmanager": {"urls": ["http://y"]},
                    }
                ],
                "routes": [],
                "watchdog": [],
            },
            "exactly one",
        ),
        (
            {
                "receivers": [{"name": "x", "webhook": {"url": "http://x", "keyFiles": []}}],
                "routes": [],
                "watchdog": [],
            },
            "at least 1 item",
        ),
        (
            {
                "receivers": [{"name": "x", "alertmanager": {"urls": ["http://y"], "resendSeconds": 120}}],
                "routes": [],
                "watchdog": [],
            },
            "less than or equal to 60",
        ),
    ],
)
def test_a_wrong_notifications_file_says_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotificationsConfig.model_validate({**CONFIG, **change})


LABEL_ROUTES = {
    "receivers": CONFIG["receivers"],
    "routes": [
        {"receivers": ["am"]},
        {"receivers": ["pager"], "clusterSelector": {"matchLabels": {"team": "payments"}}},
        {"receivers": ["pager"], "namespaces": ["prod"],
         "clusterSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold", "platinum"]},
                                                  {"key": "canary", "operator": "DoesNotExist"}]}},
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("namespace", "labels", "expected"),
    [
        ("dev", {}, ["am"]),  # no labels: only the routes without a selector
        ("dev", {"team": "payments"}, ["am", "pager"]),
        ("dev", {"team": "payments", "canary": "yes"}, ["am", "pager"]),  # the first label route holds
        ("dev", {"team": "search"}, ["am"]),
        ("prod", {"tier": "gold"}, ["am", "pager"]),
        ("prod", {"tier": "platinum", "team": "payments"}, ["am", "pager"]),  # two routes, the receiver once
        ("prod", {"tier": "gold", "canary": ""}, ["am"]),  # DoesNotExist: an empty value is still a label
        ("prod", {"tier": "bronze"}, ["am"]),
        ("dev", {"tier": "gold"}, ["am"]),  # the selector and the namespaces must both hold
    ],
)
def test_a_route_selects_clusters_by_the_labels_their_ticket_was_recorded_with(
    namespace: str, labels: dict[str, str], expected: list[str]
) -> None:
    config = NotificationsConfig.model_validate(LABEL_ROUTES)
    names = receivers_for(
        config.routes, namespace=namespace, cluster="tikv-a", invariant="latency", severity=Severity.INFO,
        cluster_labels=labels,
    )  # fmt: skip
    assert names == expected


@pytest.mark.parametrize(
    ("operator", "values", "labels", "holds"),
    [
        ("In", ["a", "b"], {"k": "a"}, True),
        ("In", ["a", "b"], {"k": "c"}, False),
        ("In", ["a"], {}, False),
        ("NotIn", ["a"], {"k": "b"}, True),
        ("NotIn", ["a"], {"k": "a"}, False),
        ("NotIn", ["a"], {}, True),  # Kubernetes: NotIn holds for an object without the key
        ("Exists", [], {"k": ""}, True),
        ("Exists", [], {}, False),
        ("DoesNotExist", [], {}, True),
        ("DoesNotExist", [], {"k": "a"}, False),
    ],
)
def test_a_route_s_match_expressions_have_kubernetes_semantics(
    operator: str, values: list[str], labels: dict[str, str], holds: bool
) -> None:
    requirement: dict[str, Any] = {"key": "k", "operator": operator} | ({"values": values} if values else {})
    config = NotificationsConfig.model_validate({
        "receivers": CONFIG["receivers"],
        "routes": [{"receivers": ["pager"], "clusterSelector": {"matchExpressions": [requirement]}}],
    })  # fmt: skip
    found = receivers_for(config.routes, namespace="ns", cluster="c", invariant="latency", severity=Severity.INFO,
                          cluster_labels=labels)  # fmt: skip
    assert found == (["pager"] if holds else [])


def _route_with(selector: Any) -> dict[str, Any]:
    return {"routes": [{"receivers": ["pager"], "clusterSelector": selector}], "watchdog": []}


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (_route_with({"matchLabels": {"bad key!": "x"}}), "matchLabels", "matchLabels keys must be Kubernetes label keys"),
        (_route_with({"matchLabels": {"team": "not a value"}}), "matchLabels.team", "String should match pattern"),
        (_route_with({"matchExpressions": [{"key": "tier", "operator": "In"}]}), "matchExpressions.0",
         "values must be given for In and NotIn, and only for them"),
        (_route_with({"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]}),
         "matchExpressions.0", "values must be given for In and NotIn, and only for them"),
        (_route_with({"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["x"]}]}),
         "matchExpressions.0.operator", "Input should be 'In', 'NotIn', 'Exists' or 'DoesNotExist'"),
        (_route_with({"matchExpressions": [{"key": "-tier", "operator": "Exists"}]}), "matchExpressions.0.key",
         "key must be a Kubernetes label key"),
        (_route_with({"matchLabel": {"team": "payments"}}), "matchLabel", "Extra inputs are not permitted"),
        (_route_with({"matchLabels": {"team": "payments"}, "url": "https://attacker.example"}), "url",
         "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_wrong_cluster_selector_is_refused_at_load_saying_where_and_why(
    change: dict[str, Any], where: str, message: str
) -> None:
    """A typo must not widen a route to every cluster (``matchLabel`` would be an empty selector if ignored)."""
    with pytest.raises(ValidationError) as raised:
        NotificationsConfig.model_validate({**CONFIG, **change})
    (error,) = raised.value.errors()
    assert ".".join(str(part) for part in error["loc"]).startswith(f"routes.0.clusterSelector.{where}")
    assert message in error["msg"]


def test_a_ticket_keeps_the_labels_it_was_recorded_with_and_its_notices_carry_them() -> None:
    """Routing needs no live view of the clusters: a relabelled cluster, a restart or another replica routes one
    ticket's every notice alike."""
    recorded = {"team": "payments"}
    first = transition(None, finding(Verdict.VIOLATED), T0, policy(), key=KEY, namespace="prod",
                       cluster_name="tikv-a", cluster_labels=recorded)  # fmt: skip
    assert first.after is not None
    assert first.after.cluster_labels == recorded
    resolved = transition(first.after, finding(Verdict.HOLDS), at(5), policy(), key=KEY, namespace="prod",
                          cluster_name="tikv-a", cluster_labels={"team": "search"})  # fmt: skip
    reopened = transition(resolved.after, finding(Verdict.VIOLATED), at(10), policy(), key=KEY, namespace="prod",
                          cluster_name="tikv-a", cluster_labels={"team": "search"})  # fmt: skip
    assert [e.kind for e in reopened.effects] == [EffectKind.REOPENED]
    for step in (resolved, reopened):
        assert step.after is not None
        assert step.after.cluster_labels == recorded
        notices = [e.notice for e in with_notices(step, at(10)).effects if e.notice is not None]
        assert notices
        assert all(n.cluster_labels == recorded for n in notices)


def test_a_notice_s_labels_survive_the_queue_and_one_queued_before_them_has_none() -> None:
    notice = opened_notice(cluster_labels={"team": "payments"})
    assert Notice.from_json(notice.to_json()) == notice
    older = {k: v for k, v in opened_notice().to_json().items() if k != "cluster_labels"}
    assert Notice.from_json(older).cluster_labels == {}


def silence(
    key: str, *, ends: str = "2026-01-02T12:00:00Z", state: str = "active", by: str = "operator-k8s"
) -> dict[str, Any]:
    return {"id": f"s-{key}-{ends}", "createdBy": by, "status": {"state": state}, "endsAt": ends,
            "matchers": [{"name": "ticket", "value": key, "isRegex": False, "isEqual": True}]}  # fmt: skip


@pytest.mark.parametrize(
    ("acknowledged", "existing", "created", "expired"),
    [
        ({"ns/ticket-1": "ack"}, [], ["ns/ticket-1"], []),
        ({"ns/ticket-1": "ack"}, [silence("ns/ticket-1")], [], []),
        ({}, [silence("ns/ticket-1")], [], ["s-ns/ticket-1-2026-01-02T12:00:00Z"]),
        ({}, [silence("ns/ticket-1", by="alice")], [], []),  # a human's silence is theirs
        ({}, [silence("ns/ticket-1", state="expired")], [], []),
        (
            {"ns/ticket-1": "ack"},
            [silence("ns/ticket-1", ends="2026-01-01T18:00:00Z")],
            ["ns/ticket-1"],
            ["s-ns/ticket-1-2026-01-01T18:00:00Z"],
        ),  # renewed before it ends
    ],
)
def test_silences_follow_the_acknowledged_tickets(
    acknowledged: dict[str, str], existing: list[dict[str, Any]], created: list[str], expired: list[str]
) -> None:
    plan = plan_silences(acknowledged, existing, T0)
    assert [s["matchers"][0]["value"] for s in plan.create] == created
    assert list(plan.expire) == expired
    for body in plan.create:
        assert body["createdBy"] == "operator-k8s"
        assert body["endsAt"] == "2026-01-02T12:00:00Z"


def test_while_postgres_is_away_what_was_firing_is_sent_again_and_resolutions_are_not() -> None:
    sent_at = at(60)
    firing = firing_alert(opened_notice(), 42, "n", sent_at, timedelta(minutes=2), LINKS)
    (ended,) = resolved_alerts(opened_notice(kind="resolved", status="resolved", at=at(30)), 43, "m", LINKS)
    watchdog = watchdog_alert("prod", sent_at, timedelta(minutes=2))
    again = still_firing([firing, ended, watchdog], sent_at, at(150), timedelta(minutes=2))
    assert [a["labels"]["alertname"] for a in again] == ["OperatorK8sTicket", "OperatorK8sWatchdog"]
    assert all(a["endsAt"] == "2026-01-01T12:04:30Z" for a in again)
    assert again[0]["startsAt"] == firing["startsAt"]


def test_a_window_deleted_or_shortened_releases_what_it_held_at_its_new_end() -> None:
    held = [(1, at(3600), None), (2, at(3600), at(600)), (3, at(3600), at(3600)), (4, at(3600), at(-5))]
    assert released(held, at(0)) == [(1, at(0)), (2, at(600)), (4, at(0))]


@pytest.mark.parametrize(("flapping", "told"), [(False, True), (True, False)])
def test_the_diagnosis_of_a_flapping_tickets_reopening_is_history_only(flapping: bool, told: bool) -> None:
    cause = Cause("disk-tikv", "disk filled by TiKV's data", "tikv-0", "95%", "80%", "warning", "d", "n")
    item = diagnosed(ticket(TicketState.OPEN, flapping=flapping), [cause])
    (effect,) = with_notices(item, T0).effects
    assert (effect.notice is not None) is told
