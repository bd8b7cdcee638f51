"""Maintenance windows: when one is active and next starts, which windows cover a ticket, the status a window
shows, and the specs the models refuse. Tables of inputs and outputs; the time is always passed in."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
import yaml
from pydantic import ValidationError

from operator_k8s.domain.maintenance import (
    Covered,
    OperatorReport,
    OperatorWindow,
    Window,
    WindowIndex,
    active_interval,
    covering,
    desired_status,
    index_entry,
    next_start,
    operator_window,
    operator_window_state,
    selector_matches,
    status_changes,
    tidb_report,
    wall_to_instant,
    window_status,
)
from operator_k8s.domain.notices import OPEN_ENDED, plan_deliveries, released
from operator_k8s.domain.specs import ClusterSelector, MaintenanceWindowSpec, MonitoredClusterSpec
from operator_k8s.domain.vocabulary import (
    CLUSTER_PLURAL,
    MAINTENANCE_SOURCES_INDEX,
    MAINTENANCE_WINDOW_PLURAL,
    TIDB_CLUSTER_PLURAL,
    TIDB_CLUSTERS_INDEX,
)
from operator_k8s.maintenance_handlers import CLUSTER_LABELS_INDEX, MAINTENANCE_INDEX, register_maintenance
from tests.hostile_specs import cel_messages

CRD = Path(__file__).resolve().parents[2] / "crds" / "maintenancewindows.operator-k8s.io.yaml"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def fixed(start: str, end: str, **fields: Any) -> MaintenanceWindowSpec:
    return MaintenanceWindowSpec.model_validate({"clusterSelector": {}, "start": start, "end": end, **fields})


def recurring(schedule: str, duration: str, **fields: Any) -> MaintenanceWindowSpec:
    spec = {"clusterSelector": {}, "schedule": schedule, "duration": duration, **fields}
    return MaintenanceWindowSpec.model_validate(spec)


def interval(start: str, end: str) -> tuple[datetime, datetime]:
    return t(start), t(end)


# -- When a window is active, and when it next starts ---------------------------------------------------------------

ONE_OFF = fixed("2025-06-01T02:00:00Z", "2025-06-01T06:00:00+02:00")  # offsets differ; the end is 04:00Z
WEEKLY = recurring("0 2 * * 6", "4h")  # Saturdays 02:00-06:00 UTC
SECOND_TUESDAY = recurring("0 1 * * 2#2", "3h", timeZone="Europe/Berlin")
BERLIN_SUNDAYS = recurring("30 1 * * 0", "2h", timeZone="Europe/Berlin")  # 01:30-03:30 on an ordinary Sunday
BERLIN_0230 = recurring("30 2 * * *", "1h", timeZone="Europe/Berlin")  # starts in the hour skipped or repeated
MONTH_END = recurring("0 22 L * *", "4h")  # the last day of each month, 22:00 to 02:00 the next day
BOUNDED = recurring("0 2 * * 6", "4h", **{"from": "2025-06-07T03:00:00Z", "until": "2025-06-21T04:00:00Z"})
FROM_BETWEEN = recurring("0 2 * * 6", "4h", **{"from": "2025-06-08T00:00:00Z"})
UNTIL_AT_A_START = recurring("0 2 * * 6", "4h", until="2025-06-21T02:00:00Z")

ACTIVE = [
    # A fixed window: start included, end not; any offset names the same instant.
    ("fixed, before", ONE_OFF, "2025-06-01T01:59:59Z", None, "2025-06-01T02:00:00Z"),
    ("fixed, at its start", ONE_OFF, "2025-06-01T02:00:00Z", interval("2025-06-01T02:00:00Z", "2025-06-01T04:00:00Z"), None),
    ("fixed, inside, another offset", ONE_OFF, "2025-06-01T05:00:00+02:00", interval("2025-06-01T02:00:00Z", "2025-06-01T04:00:00Z"), None),
    ("fixed, last microsecond", ONE_OFF, "2025-06-01T03:59:59.999999Z", interval("2025-06-01T02:00:00Z", "2025-06-01T04:00:00Z"), None),
    ("fixed, at its end", ONE_OFF, "2025-06-01T04:00:00Z", None, None),
    ("fixed, long after", ONE_OFF, "2026-01-01T00:00:00Z", None, None),
    # Weekly: 2025-06-07 is a Saturday.
    ("weekly, a minute early", WEEKLY, "2025-06-07T01:59:00Z", None, "2025-06-07T02:00:00Z"),
    ("weekly, at its start", WEEKLY, "2025-06-07T02:00:00Z", interval("2025-06-07T02:00:00Z", "2025-06-07T06:00:00Z"), "2025-06-14T02:00:00Z"),
    ("weekly, inside", WEEKLY, "2025-06-07T05:59:59Z", interval("2025-06-07T02:00:00Z", "2025-06-07T06:00:00Z"), "2025-06-14T02:00:00Z"),
    ("weekly, at its end", WEEKLY, "2025-06-07T06:00:00Z", None, "2025-06-14T02:00:00Z"),
    ("weekly, midweek", WEEKLY, "2025-06-11T12:00:00Z", None, "2025-06-14T02:00:00Z"),
    # The 2nd Tuesday, at 01:00 in Berlin: CET in winter, CEST from April.
    ("2nd Tuesday, January", SECOND_TUESDAY, "2025-01-14T02:00:00+01:00", interval("2025-01-14T01:00:00+01:00", "2025-01-14T04:00:00+01:00"), "2025-02-11T01:00:00+01:00"),
    ("1st Tuesday is not", SECOND_TUESDAY, "2025-01-07T02:00:00+01:00", None, "2025-01-14T01:00:00+01:00"),
    ("3rd Tuesday is not", SECOND_TUESDAY, "2025-01-21T02:00:00+01:00", None, "2025-02-11T01:00:00+01:00"),
    ("2nd Tuesday, April, summer time", SECOND_TUESDAY, "2025-04-07T23:30:00Z", interval("2025-04-08T01:00:00+02:00", "2025-04-08T04:00:00+02:00"), "2025-05-13T01:00:00+02:00"),
    ("April 1st is a Tuesday, the 1st", SECOND_TUESDAY, "2025-04-01T02:00:00+02:00", None, "2025-04-08T01:00:00+02:00"),
    # Berlin, clocks forward on 2025-03-30 (02:00 CET → 03:00 CEST): the window starts at 01:30 CET and lasts 2h of
    # elapsed time, so it ends at 04:30 CEST; the Sundays around it are 01:30-03:30 local.
    ("Sunday before the change", BERLIN_SUNDAYS, "2025-03-23T03:29:00+01:00", interval("2025-03-23T01:30:00+01:00", "2025-03-23T03:30:00+01:00"), "2025-03-30T01:30:00+01:00"),
    ("clocks forward, before the jump", BERLIN_SUNDAYS, "2025-03-30T01:59:00+01:00", interval("2025-03-30T01:30:00+01:00", "2025-03-30T04:30:00+02:00"), "2025-04-06T01:30:00+02:00"),
    ("clocks forward, after the jump", BERLIN_SUNDAYS, "2025-03-30T04:29:59+02:00", interval("2025-03-30T01:30:00+01:00", "2025-03-30T04:30:00+02:00"), "2025-04-06T01:30:00+02:00"),
    ("clocks forward, over", BERLIN_SUNDAYS, "2025-03-30T04:30:00+02:00", None, "2025-04-06T01:30:00+02:00"),
    ("Sunday after the change", BERLIN_SUNDAYS, "2025-04-06T01:30:00+02:00", interval("2025-04-06T01:30:00+02:00", "2025-04-06T03:30:00+02:00"), "2025-04-13T01:30:00+02:00"),
    # Clocks back on 2025-10-26 (03:00 CEST → 02:00 CET): 01:30 CEST plus 2h is 02:30 CET, the repeated hour's second time.
    ("clocks back, in the repeated hour", BERLIN_SUNDAYS, "2025-10-26T02:15:00+01:00", interval("2025-10-26T01:30:00+02:00", "2025-10-26T02:30:00+01:00"), "2025-11-02T01:30:00+01:00"),
    ("clocks back, over", BERLIN_SUNDAYS, "2025-10-26T02:30:00+01:00", None, "2025-11-02T01:30:00+01:00"),
    # A start the clocks skip is the moment they jump; a start they repeat is its first time, once.
    ("02:30 skipped: starts at the jump", BERLIN_0230, "2025-03-30T01:00:00+01:00", None, "2025-03-30T03:00:00+02:00"),
    ("02:30 skipped: from the jump", BERLIN_0230, "2025-03-30T03:00:00+02:00", interval("2025-03-30T03:00:00+02:00", "2025-03-30T04:00:00+02:00"), "2025-03-31T02:30:00+02:00"),
    ("02:30 repeated: the first time", BERLIN_0230, "2025-10-26T02:45:00+02:00", interval("2025-10-26T02:30:00+02:00", "2025-10-26T03:30:00+02:00"), "2025-10-27T02:30:00+01:00"),
    ("02:30 repeated: not the second", BERLIN_0230, "2025-10-26T02:45:00+01:00", None, "2025-10-27T02:30:00+01:00"),
    ("02:30 repeated: an hour elapsed", BERLIN_0230, "2025-10-26T02:15:00+01:00", interval("2025-10-26T02:30:00+02:00", "2025-10-26T02:30:00+01:00"), "2025-10-27T02:30:00+01:00"),
    # Across midnight, a month's end and a year's end.
    ("month end, before midnight", MONTH_END, "2025-01-31T23:00:00Z", interval("2025-01-31T22:00:00Z", "2025-02-01T02:00:00Z"), "2025-02-28T22:00:00Z"),
    ("month end, after midnight", MONTH_END, "2025-02-01T01:59:00Z", interval("2025-01-31T22:00:00Z", "2025-02-01T02:00:00Z"), "2025-02-28T22:00:00Z"),
    ("month end, February", MONTH_END, "2025-03-01T00:30:00Z", interval("2025-02-28T22:00:00Z", "2025-03-01T02:00:00Z"), "2025-03-31T22:00:00Z"),
    ("year end", MONTH_END, "2026-01-01T01:00:00Z", interval("2025-12-31T22:00:00Z", "2026-01-01T02:00:00Z"), "2026-01-31T22:00:00Z"),
    ("month end, the day before", MONTH_END, "2025-04-29T23:00:00Z", None, "2025-04-30T22:00:00Z"),
    # from and until: the window is the schedule's occurrences cut to [from, until).
    ("bounded, a week before from", BOUNDED, "2025-05-31T12:00:00Z", None, "2025-06-07T03:00:00Z"),
    ("bounded, in progress before from", BOUNDED, "2025-06-07T02:30:00Z", None, "2025-06-07T03:00:00Z"),
    ("bounded, from cuts the start", BOUNDED, "2025-06-07T03:00:00Z", interval("2025-06-07T03:00:00Z", "2025-06-07T06:00:00Z"), "2025-06-14T02:00:00Z"),
    ("bounded, between", BOUNDED, "2025-06-14T03:00:00Z", interval("2025-06-14T02:00:00Z", "2025-06-14T06:00:00Z"), "2025-06-21T02:00:00Z"),
    ("bounded, until cuts the end", BOUNDED, "2025-06-21T03:00:00Z", interval("2025-06-21T02:00:00Z", "2025-06-21T04:00:00Z"), None),
    ("bounded, at until", BOUNDED, "2025-06-21T04:00:00Z", None, None),
    ("from with nothing in progress", FROM_BETWEEN, "2025-06-07T03:00:00Z", None, "2025-06-14T02:00:00Z"),
    ("until at a start: it never starts", UNTIL_AT_A_START, "2025-06-20T00:00:00Z", None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "now", "active", "upcoming"), [row[1:] for row in ACTIVE], ids=[row[0] for row in ACTIVE]
)
def test_active_interval_and_next_start(
    spec: MaintenanceWindowSpec, now: str, active: tuple[datetime, datetime] | None, upcoming: str | None
) -> None:
    assert active_interval(spec, t(now)) == active
    assert next_start(spec, t(now)) == (t(upcoming) if upcoming else None)


def test_results_are_in_utc_and_now_must_be_aware() -> None:
    found = active_interval(BERLIN_SUNDAYS, t("2025-03-30T02:00:00Z"))
    assert found is not None and all(moment.tzinfo is UTC for moment in found)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_start(WEEKLY, datetime(2025, 6, 7, 2))  # a naive time


def test_second_tuesday_month_after_month() -> None:
    starts, now = [], t("2025-01-01T00:00:00Z")
    for _ in range(6):
        upcoming = next_start(SECOND_TUESDAY, now)
        assert upcoming is not None
        starts.append(upcoming.astimezone(SECOND_TUESDAY.zone).isoformat())
        now = upcoming
    assert starts == [
        "2025-01-14T01:00:00+01:00", "2025-02-11T01:00:00+01:00", "2025-03-11T01:00:00+01:00",
        "2025-04-08T01:00:00+02:00", "2025-05-13T01:00:00+02:00", "2025-06-10T01:00:00+02:00",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("wall", "instant"),
    [
        (datetime(2025, 1, 5, 12, 0), "2025-01-05T11:00:00Z"),
        (datetime(2025, 3, 30, 2, 0), "2025-03-30T01:00:00Z"),  # skipped: the jump
        (datetime(2025, 3, 30, 2, 59), "2025-03-30T01:00:00Z"),
        (datetime(2025, 3, 30, 3, 0), "2025-03-30T01:00:00Z"),  # the first time after the jump
        (datetime(2025, 10, 26, 2, 0), "2025-10-26T00:00:00Z"),  # repeated: the first time
        (datetime(2025, 10, 26, 3, 0), "2025-10-26T02:00:00Z"),
    ],
)
def test_wall_times_map_onto_the_time_line_in_order(wall: datetime, instant: str) -> None:
    assert wall_to_instant(wall, BERLIN_SUNDAYS.zone) == t(instant)


def test_a_jump_other_than_an_hour() -> None:
    """Lord Howe Island moves its clocks by 30 minutes (02:00 → 02:30 on 2025-10-05)."""
    spec = recurring("15 2 * * *", "1h", timeZone="Australia/Lord_Howe")
    assert next_start(spec, t("2025-10-04T12:00:00Z")) == t("2025-10-05T02:30:00+11:00")
    assert active_interval(spec, t("2025-10-05T02:45:00+11:00")) == interval(
        "2025-10-05T02:30:00+11:00", "2025-10-05T03:30:00+11:00"
    )


# -- Which clusters a window selects -----------------------------------------------------------------------------

PROD = {"env": "prod", "tier": "gold"}
SELECTORS = [
    ({}, {}, True),
    ({}, PROD, True),
    ({"matchLabels": {"env": "prod"}}, PROD, True),
    ({"matchLabels": {"env": "prod", "tier": "silver"}}, PROD, False),
    ({"matchLabels": {"region": "eu"}}, PROD, False),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]}, PROD, True),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["staging"]}]}, PROD, False),
    ({"matchExpressions": [{"key": "region", "operator": "In", "values": ["eu"]}]}, PROD, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["staging"]}]}, PROD, True),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, PROD, False),
    ({"matchExpressions": [{"key": "region", "operator": "NotIn", "values": ["eu"]}]}, PROD, True),  # no label
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, PROD, True),
    ({"matchExpressions": [{"key": "region", "operator": "Exists"}]}, PROD, False),
    ({"matchExpressions": [{"key": "region", "operator": "DoesNotExist"}]}, PROD, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, PROD, False),
    (  # everything must hold
        {
            "matchLabels": {"env": "prod"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["gold"]},
                {"key": "region", "operator": "Exists"},
            ],
        },
        PROD,
        False,
    ),
]


@pytest.mark.parametrize(("selector", "labels", "matches"), SELECTORS)
def test_selector_matching(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(ClusterSelector.model_validate(selector), labels) is matches


# -- Which windows cover a ticket -----------------------------------------------------------------------------------

NOW = t("2025-06-07T03:00:00Z")  # a Saturday, inside WEEKLY's occurrence (until 06:00)


def window(name: str, spec: dict[str, Any], namespace: str = "db") -> Window:
    return Window(name, namespace, MaintenanceWindowSpec.model_validate(spec))


SATURDAYS = {"schedule": "0 2 * * 6", "duration": "4h"}
WINDOWS = [
    window("prod-weekly", {"clusterSelector": {"matchLabels": {"env": "prod"}}, **SATURDAYS}),
    window("disk-swap", {"clusterSelector": {}, "invariants": ["disk-usage"], "stores": ["tikv-3"],
                         "start": "2025-06-07T00:00:00Z", "end": "2025-06-07T08:00:00Z"}),
    window("whole-cluster", {"clusterSelector": {}, "stores": ["cluster"], "start": "2025-06-07T00:00:00Z",
                             "end": "2025-06-07T05:00:00Z"}),
    window("custom-lag", {"clusterSelector": {}, "invariants": ["replica-lag"], **SATURDAYS}),
    window("staging", {"clusterSelector": {"matchLabels": {"env": "staging"}}, "start": "2025-06-01T00:00:00Z",
                       "end": "2025-07-01T00:00:00Z"}),
    window("elsewhere", {"clusterSelector": {}, **SATURDAYS}, namespace="other"),
    window("last-year", {"clusterSelector": {}, "start": "2024-06-07T00:00:00Z", "end": "2024-06-08T00:00:00Z"}),
]  # fmt: skip
COVERING = [
    ("prod, any ticket", PROD, "latency", "tikv-0", Covered(("prod-weekly",), t("2025-06-07T06:00:00Z"), "prod-weekly")),
    ("its store and invariant too", PROD, "diskUsage", "tikv-3",
     Covered(("disk-swap", "prod-weekly"), t("2025-06-07T08:00:00Z"), "disk-swap")),
    ("invariant names compare without hyphens and case", {}, "diskUsage", "tikv-3",
     Covered(("disk-swap",), t("2025-06-07T08:00:00Z"), "disk-swap")),
    ("another store", {}, "diskUsage", "tikv-1", None),
    ("another invariant", {}, "latency", "tikv-3", None),
    ("the whole cluster's tickets", {}, "pdRegions", "cluster",
     Covered(("whole-cluster",), t("2025-06-07T05:00:00Z"), "whole-cluster")),
    ("a custom invariant", {}, "replica-lag", "tikv-0", Covered(("custom-lag",), t("2025-06-07T06:00:00Z"), "custom-lag")),
    ("staging", {"env": "staging"}, "latency", "tikv-0", Covered(("staging",), t("2025-07-01T00:00:00Z"), "staging")),
    ("unlabelled", {}, "latency", "tikv-0", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "invariant", "store", "covered"), [row[1:] for row in COVERING], ids=[row[0] for row in COVERING]
)
def test_covering(labels: dict[str, str], invariant: str, store: str, covered: Covered | None) -> None:
    found = covering(
        reversed(WINDOWS), namespace="db", cluster_labels=labels, invariant=invariant, store=store, now=NOW
    )
    assert found == covered


def test_only_windows_active_now_cover() -> None:
    later = t("2025-06-07T07:00:00Z")  # the weekly occurrence is over; the disk swap is not
    found = covering(WINDOWS, namespace="db", cluster_labels=PROD, invariant="diskUsage", store="tikv-3", now=later)
    assert found == Covered(("disk-swap",), t("2025-06-07T08:00:00Z"), "disk-swap")
    assert (
        covering(WINDOWS, namespace="db", cluster_labels=PROD, invariant="latency", store="tikv-0", now=later) is None
    )


def test_windows_of_another_namespace_never_cover() -> None:
    assert covering(WINDOWS, namespace="other", cluster_labels={}, invariant="latency", store="x", now=NOW) == Covered(
        ("elsewhere",), t("2025-06-07T06:00:00Z"), "elsewhere"
    )
    assert covering(WINDOWS, namespace="third", cluster_labels={}, invariant="latency", store="x", now=NOW) is None


def test_the_index_view_reads_through_to_the_live_mapping() -> None:
    live: dict[str, list[Window]] = {}
    view = WindowIndex()
    assert view.in_namespace("db") == [], "empty until attached"
    view.attach(live)
    live["db"] = [WINDOWS[0]]  # the watch saw a window after the view was attached
    assert view.covering(namespace="db", cluster_labels=PROD, invariant="latency", store="t", now=NOW) is not None
    live["db"] = []
    assert view.covering(namespace="db", cluster_labels=PROD, invariant="latency", store="t", now=NOW) is None


def test_a_notice_is_covered_by_the_windows_that_select_its_cluster_as_the_watch_shows_it() -> None:
    labels: dict[tuple[str, str], list[dict[str, str]]] = {("db", "tikv-a"): [dict(PROD)]}
    view = WindowIndex()
    view.attach({"db": [WINDOWS[0]]}, labels)
    covered = view.covered("db", "tikv-a", "latency", "t", NOW)
    assert covered is not None and covered[0] == WINDOWS[0].name
    window = active_interval(WINDOWS[0].spec, NOW)
    assert window is not None and covered[1:] == (window[1], window[0]), "until its end, since its start"
    assert view.covered("db", "gone", "latency", "t", NOW) is None, "a cluster the watch does not show has no labels"


# -- Automatic windows: TiDB Operator reports an upgrade or a scale -------------------------------------------------

NOT_READY = "2025-06-07T02:55:00Z"
AUTOMATIC = "automatic_maintenance/spec.maintenance.tidbCluster"
"""The timer's id as kopf names it (with the field it is filtered by)."""


def phases(tikv: str = "Normal", pd: str = "Normal", since: str | None = None) -> OperatorReport:
    return OperatorReport((("tikv", tikv), ("pd", pd)), t(since) if since else None)


TIDB_STATUSES: list[tuple[str, Any, OperatorReport]] = [
    ("no status yet", None, phases("", "")),
    ("normal", {"tikv": {"phase": "Normal"}, "pd": {"phase": "Normal"}}, phases()),
    ("a rolling upgrade, not Ready since", {"tikv": {"phase": "Upgrade"}, "pd": {"phase": "Normal"},
     "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": NOT_READY}]},
     phases("Upgrade", since=NOT_READY)),
    ("Ready True says nothing of a start", {"pd": {"phase": "Scale"},
     "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": NOT_READY}]}, phases("", "Scale")),
    ("an unreadable time", {"tikv": {"phase": "Scale"},
     "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "yesterday"}]}, phases("Scale", "")),
    ("foreign shapes survive", {"tikv": "Upgrade", "pd": {"phase": 3}, "conditions": {"Ready": False}},
     phases("", "")),
]  # fmt: skip


@pytest.mark.parametrize(("status", "report"), [r[1:] for r in TIDB_STATUSES], ids=[r[0] for r in TIDB_STATUSES])
def test_a_tidb_cluster_s_status_is_read_whatever_its_shape(status: Any, report: OperatorReport) -> None:
    assert tidb_report(status) == report


OPERATOR_WINDOWS: list[tuple[str, OperatorReport | None, OperatorWindow | None]] = [
    ("normal", phases(), None),
    ("no phase at all", phases("", ""), None),
    ("a phase a later release adds", phases("Suspend"), None),
    ("tikv upgrading, since it stopped being Ready", phases("Upgrade", since=NOT_READY),
     OperatorWindow("TidbCluster/basic (tikv Upgrade)", t(NOT_READY))),
    ("pd scaling, no start said: from now", phases(pd="Scale"), OperatorWindow("TidbCluster/basic (pd Scale)", NOW)),
    ("both, the store first", phases("Scale", "Upgrade"),
     OperatorWindow("TidbCluster/basic (tikv Scale, pd Upgrade)", NOW)),
    ("a start in the future is now", phases("Upgrade", since="2025-06-08T00:00:00Z"),
     OperatorWindow("TidbCluster/basic (tikv Upgrade)", NOW)),
    ("no such TidbCluster: never guessed", None, None),
]  # fmt: skip


@pytest.mark.parametrize(("report", "window"), [r[1:] for r in OPERATOR_WINDOWS], ids=[r[0] for r in OPERATOR_WINDOWS])
def test_an_upgrade_or_a_scale_opens_an_automatic_window(
    report: OperatorReport | None, window: OperatorWindow | None
) -> None:
    assert operator_window("basic", report, NOW) == window


@pytest.mark.parametrize(
    ("report", "said"),
    [
        (phases("Upgrade"), "In a maintenance window by TidbCluster/basic (tikv Upgrade): tickets are recorded"),
        (phases(pd=""), "TidbCluster basic reports tikv Normal, pd (no phase): no automatic maintenance window"),
        (None, "TidbCluster basic not found in the namespace (or TiDB Operator's CRD is not installed"),
    ],
)
def test_what_a_cluster_s_automatic_window_does_is_said_never_guessed(report: OperatorReport | None, said: str) -> None:
    assert operator_window_state("basic", report, NOW).startswith(said)


def test_an_automatic_window_covers_every_ticket_of_its_cluster_until_its_report_changes() -> None:
    upgrade = OperatorWindow("TidbCluster/basic (tikv Upgrade)", t(NOT_READY))
    alone = covering([], namespace="db", cluster_labels={}, invariant="diskUsage", store="tikv-2", now=NOW,
                     automatic=upgrade)  # fmt: skip
    assert alone == Covered((upgrade.by,), OPEN_ENDED, upgrade.by)
    assert alone is not None and alone.since == t(NOT_READY)
    with_window = covering(WINDOWS, namespace="db", cluster_labels=PROD, invariant="latency", store="t", now=NOW,
                           automatic=upgrade)  # fmt: skip
    assert with_window is not None and with_window.by == upgrade.by, "it outlasts any scheduled window"
    assert WINDOWS[0].name in with_window.windows
    assert with_window.since is not None and with_window.since <= t(NOT_READY)
    (planned,) = plan_deliveries(["hook"], covered=(alone.by, alone.until), disabled=frozenset(), now=NOW)
    assert (planned.state, planned.due_at, planned.deferred_by) == ("pending", OPEN_ENDED, upgrade.by)
    assert planned.result == "deferred: maintenance by TidbCluster/basic (tikv Upgrade) until it ends"


def test_the_view_follows_the_tidb_cluster_a_monitored_cluster_names_and_releases_at_its_end() -> None:
    reports: dict[tuple[str, str], list[OperatorReport]] = {}
    view = WindowIndex()
    view.attach({}, {}, {("db", "tikv-a"): ["basic"]}, reports)
    assert view.covered("db", "tikv-a", "latency", "tikv-0", NOW) is None, "no TidbCluster shown: no window"
    reports[("db", "basic")] = [phases("Upgrade", since=NOT_READY)]
    assert view.covered("db", "tikv-a", "latency", "tikv-0", NOW) == (
        "TidbCluster/basic (tikv Upgrade)",
        OPEN_ENDED,
        t(NOT_READY),
    )
    assert view.covered("db", "tikv-b", "latency", "tikv-0", NOW) is None, "only the cluster that opts in"
    assert view.covered("other", "tikv-a", "latency", "tikv-0", NOW) is None
    reports[("db", "basic")] = [phases()]  # the upgrade is over: what it held is released at once
    assert view.covered("db", "tikv-a", "latency", "tikv-0", NOW) is None
    assert released([(7, OPEN_ENDED, None)], NOW) == [(7, NOW)]


def test_a_monitored_cluster_opts_in_by_naming_a_tidb_cluster_of_its_namespace() -> None:
    base = {"stores": {"selector": {"matchLabels": {"app": "tikv"}}}, "prometheus": {"url": "http://p:9090"}}
    spec = MonitoredClusterSpec.model_validate({**base, "maintenance": {"tidbCluster": "basic"}})
    assert spec.maintenance is not None and spec.maintenance.tidb_cluster == "basic"
    assert MonitoredClusterSpec.model_validate(base).maintenance is None
    for bad in ({"tidbCluster": "Not/A-Name"}, {"tidbCluster": "x" * 254}, {"tidbClusters": "basic"}):
        with pytest.raises(ValidationError):
            MonitoredClusterSpec.model_validate({**base, "maintenance": bad})


async def test_registration_indexes_tidb_clusters_and_says_what_an_opt_in_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = kopf.OperatorRegistry()
    view = register_maintenance(registry)
    handlers = handlers_of(registry)
    assert handlers[TIDB_CLUSTERS_INDEX].selector.any_name == TIDB_CLUSTER_PLURAL
    assert handlers[TIDB_CLUSTERS_INDEX].selector.group == "pingcap.com"
    assert handlers[AUTOMATIC].selector.any_name == CLUSTER_PLURAL
    opted = kopf.Spec(kopf.Body(cast(kopf.RawBody, {"spec": {"maintenance": {"tidbCluster": "basic"}}})))
    assert await handlers[MAINTENANCE_SOURCES_INDEX].fn(name="tikv-a", namespace="db", spec=opted) == {
        ("db", "tikv-a"): "basic"
    }
    plain = kopf.Spec(kopf.Body(cast(kopf.RawBody, {"spec": {}})))
    assert await handlers[MAINTENANCE_SOURCES_INDEX].fn(name="tikv-b", namespace="db", spec=plain) == {}
    status = kopf.Status(kopf.Body(cast(kopf.RawBody, {"status": {"tikv": {"phase": "Upgrade"}}})))
    assert await handlers[TIDB_CLUSTERS_INDEX].fn(name="basic", namespace="db", status=status) == {
        ("db", "basic"): phases("Upgrade", "")
    }
    sources, reports = {("db", "tikv-a"): ["basic"]}, {}
    await handlers["maintenance_windows_view"].fn(**{
        MAINTENANCE_INDEX: {}, CLUSTER_LABELS_INDEX: {}, MAINTENANCE_SOURCES_INDEX: sources,
        TIDB_CLUSTERS_INDEX: reports,
    })  # fmt: skip
    memo = kopf.Memo()
    caplog.set_level("INFO", logger="operator_k8s.maintenance")
    for _ in range(2):  # said once while it stays the same
        await handlers[AUTOMATIC].fn(name="tikv-a", namespace="db", memo=memo)
    reports[("db", "basic")] = [phases("Upgrade")]
    await handlers[AUTOMATIC].fn(name="tikv-a", namespace="db", memo=memo)
    said = [r.getMessage() for r in caplog.records if r.name == "operator_k8s.maintenance"]
    assert [m.split(":")[0] for m in said] == [
        "TidbCluster basic not found in the namespace (or TiDB Operator's CRD is not installed, or the operator may"
        " not read tidbclusters.pingcap.com)",
        "In a maintenance window by TidbCluster/basic (tikv Upgrade)",
    ]
    assert view.tidb_cluster("db", "tikv-a") == "basic"


@pytest.mark.parametrize(
    ("spec", "entry"),
    [
        ({"clusterSelector": {}, **SATURDAYS}, {"db": Window("w", "db", recurring("0 2 * * 6", "4h"))}),
        ({"clusterSelector": {}, "schedule": "0 2 * * 6"}, {}),  # invalid: holds nothing back
        ({}, {}),
    ],
)
def test_index_entry(spec: dict[str, Any], entry: dict[str, Window]) -> None:
    assert index_entry("w", "db", spec) == entry


# -- The status a window shows --------------------------------------------------------------------------------------

STATUSES = [
    ("active", WEEKLY, "2025-06-07T03:00:00.5Z",
     {"active": True, "activeUntil": "2025-06-07T06:00:00Z", "nextStart": "2025-06-14T02:00:00Z",
      "message": "Active until 2025-06-07T06:00:00Z: tickets are recorded, notifications held"}),
    ("waiting", WEEKLY, "2025-06-09T00:00:00Z",
     {"active": False, "nextStart": "2025-06-14T02:00:00Z", "message": "Inactive; next starts 2025-06-14T02:00:00Z"}),
    ("one-off, over", ONE_OFF, "2025-06-02T00:00:00Z",
     {"active": False, "message": "Over: ended 2025-06-01T04:00:00Z"}),
    ("recurring, past until", BOUNDED, "2025-07-01T00:00:00Z",
     {"active": False, "message": "Over: no occurrence starts before until"}),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "now", "status"), [row[1:] for row in STATUSES], ids=[row[0] for row in STATUSES])
def test_window_status(spec: MaintenanceWindowSpec, now: str, status: dict[str, Any]) -> None:
    assert window_status(spec, t(now)) == status


def test_an_invalid_spec_shows_why_and_is_inactive() -> None:
    status = desired_status(
        {"clusterSelector": {}, "schedule": "0 1 * * *", "duration": "1h", "timeZone": "Mars/Base"}, 4, NOW
    )
    assert status == {
        "active": False,
        "message": "Invalid spec: spec.timeZone: Value error, timeZone must name an IANA time zone, such as UTC or"
        " Europe/Berlin",
        "observedGeneration": 4,
    }


RAW_WEEKLY = {"clusterSelector": {}, **SATURDAYS}
SHOWN_ACTIVE = desired_status(RAW_WEEKLY, 2, NOW)
CHANGES = [
    ("nothing shown yet", {}, 2, NOW, SHOWN_ACTIVE),
    ("shown already: no write", SHOWN_ACTIVE, 2, t("2025-06-07T05:59:59Z"), {}),
    ("kopf's own key left alone", {**SHOWN_ACTIVE, "kopf": {"progress": {}}}, 2, NOW, {}),
    ("the occurrence ended: its end removed", SHOWN_ACTIVE, 2, t("2025-06-07T06:00:00Z"),
     {"active": False, "activeUntil": None, "message": "Inactive; next starts 2025-06-14T02:00:00Z"}),
    ("a new generation", SHOWN_ACTIVE, 3, NOW, {"observedGeneration": 3}),
    ("someone else's value replaced", {**SHOWN_ACTIVE, "active": "yes", "stale": 1}, 2, NOW,
     {"active": True, "stale": None}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "generation", "now", "patch"), [row[1:] for row in CHANGES], ids=[row[0] for row in CHANGES]
)
def test_status_changes_are_a_diff_from_what_the_object_shows(
    observed: dict[str, Any], generation: int, now: datetime, patch: dict[str, Any]
) -> None:
    assert status_changes(observed, RAW_WEEKLY, generation, now) == patch


# -- What the models refuse, naming the field ---------------------------------------------------------------------

BASE = {"clusterSelector": {}, "schedule": "0 2 * * 6", "duration": "4h"}
FIXED = {"clusterSelector": {}, "start": "2025-06-01T02:00:00Z", "end": "2025-06-01T04:00:00Z"}
PATTERN = "String should match pattern"
REFUSED = [
    ("cron out of range", BASE | {"schedule": "0 25 * * *"}, "spec.schedule", "schedule must be a cron expression"),
    ("cron of words", BASE | {"schedule": "at two on every saturday"}, "spec.schedule", "schedule must be a cron expression"),
    ("cron never matches", BASE | {"schedule": "0 0 30 2 *"}, "spec.schedule", "schedule never matches a time"),
    ("cron with seconds", BASE | {"schedule": "0 0 2 * * 6"}, "spec.schedule", PATTERN),
    ("cron macro", BASE | {"schedule": "@weekly"}, "spec.schedule", PATTERN),
    ("unknown zone", BASE | {"timeZone": "Mars/Olympus"}, "spec.timeZone", "timeZone must name an IANA time zone"),
    ("a zone directory", BASE | {"timeZone": "Europe"}, "spec.timeZone", "timeZone must name an IANA time zone"),
    ("a zone path", BASE | {"timeZone": "../etc/passwd"}, "spec.timeZone", PATTERN),
    ("duration zero", BASE | {"duration": "0s"}, "spec.duration", "duration must be more than 0s and at most 744h (31 days)"),
    ("duration too long", BASE | {"duration": "745h"}, "spec.duration", "duration must be more than 0s and at most 744h (31 days)"),
    ("duration past Go", BASE | {"duration": "9999999999999h"}, "spec.duration", "duration must be more than 0s and at most 744h (31 days)"),
    ("duration unreadable", BASE | {"duration": "2 hours"}, "spec.duration", PATTERN),
    ("both kinds", BASE | {"start": "2025-06-01T02:00:00Z", "end": "2025-06-01T04:00:00Z"}, "spec",
     "give either start and end (a fixed window) or schedule and duration (a recurring one), not both"),
    ("neither kind", {"clusterSelector": {}}, "spec", "give start and end (a fixed window) or schedule and duration (a recurring one)"),
    ("start alone", {"clusterSelector": {}, "start": "2025-06-01T02:00:00Z"}, "spec", "start and end must be given together (a fixed window)"),
    ("schedule alone", {"clusterSelector": {}, "schedule": "0 2 * * 6"}, "spec", "schedule and duration must be given together (a recurring window)"),
    ("end before start", FIXED | {"end": "2025-06-01T01:00:00Z"}, "spec.end", "end must be after start"),
    ("end at start, another offset", FIXED | {"end": "2025-06-01T04:00:00+02:00"}, "spec.end", "end must be after start"),
    ("a day no calendar has", FIXED | {"start": "2025-02-30T02:00:00Z"}, "spec.start", "start must be an RFC 3339 time"),
    ("a time without offset", FIXED | {"start": "2025-06-01T02:00:00"}, "spec.start", PATTERN),
    ("from on a fixed window", FIXED | {"from": "2025-06-01T00:00:00Z"}, "spec", "from and until bound a recurring window (schedule); a fixed window has start and end"),
    ("until before from", BASE | {"from": "2025-06-01T00:00:00Z", "until": "2025-05-01T00:00:00Z"}, "spec.until", "until must be after from"),
    ("until unreadable", BASE | {"until": "2025-13-01T00:00:00Z"}, "spec.until", "until must be an RFC 3339 time"),
    ("no selector", {"schedule": "0 2 * * 6", "duration": "4h"}, "spec.clusterSelector", "Field required"),
    ("In without values", BASE | {"clusterSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}},
     "spec.clusterSelector.matchExpressions[0]", "values must be given for In and NotIn, and only for them"),
    ("Exists with values", BASE | {"clusterSelector": {"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["a"]}]}},
     "spec.clusterSelector.matchExpressions[0]", "values must be given for In and NotIn, and only for them"),
    ("a key that is no label key", BASE | {"clusterSelector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}},
     "spec.clusterSelector.matchExpressions[0].key", "key must be a Kubernetes label key"),
    ("a matchLabels key", BASE | {"clusterSelector": {"matchLabels": {"-env": "prod"}}},
     "spec.clusterSelector.matchLabels", "matchLabels keys must be Kubernetes label keys"),
    ("an unknown operator", BASE | {"clusterSelector": {"matchExpressions": [{"key": "env", "operator": "Gt", "values": ["1"]}]}},
     "spec.clusterSelector.matchExpressions[0].operator", "Input should be"),
    ("an invariant name", BASE | {"invariants": ["disk usage"]}, "spec.invariants[0]", PATTERN),
]  # fmt: skip


def api_path(loc: tuple[int | str, ...]) -> str:
    return "spec" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


@pytest.mark.parametrize(("spec", "field", "message"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_models_refuse_naming_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MaintenanceWindowSpec.model_validate(spec)
    errors = [(api_path(error["loc"]), error["msg"]) for error in caught.value.errors()]
    assert any(path == field and message in text for path, text in errors), errors


@pytest.mark.parametrize(
    "spec",
    [
        FIXED,
        BASE | {"schedule": "0 1 * * 2#2", "timeZone": "Europe/Berlin"},
        BASE | {"schedule": "*/15 0-3 1,15 jan-jun mon-fri", "duration": "744h"},
        BASE | {"schedule": "0 1 * 3 L0", "from": "2025-01-01T00:00:00+01:00", "until": "2026-01-01T00:00:00.5Z"},
        BASE | {"clusterSelector": {"matchLabels": {"example.com/env": "prod"},
                                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}]}},
        BASE | {"invariants": ["latency", "diskUsage", "replica-lag"], "stores": ["tikv-0", "cluster"]},
    ],
)  # fmt: skip
def test_models_accept_what_windows_can_use(spec: dict[str, Any]) -> None:
    parsed = MaintenanceWindowSpec.model_validate(spec)
    assert next_start(parsed, t("2025-01-01T00:00:00Z")) is not None


EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "maintenance-windows.yaml"


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("weekly-upgrades", {"active": False, "nextStart": "2026-06-06T00:00:00Z"}),
        ("patch-tuesday", {"active": False, "nextStart": "2026-06-08T23:00:00Z"}),  # 2026-06-09 01:00 CEST
        ("tikv-3-disk-swap", {"active": True, "activeUntil": "2026-06-02T02:00:00Z"}),
    ],
)
def test_the_examples_are_windows_the_operator_uses(name: str, status: dict[str, Any]) -> None:
    examples = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(EXAMPLES.read_text()) if doc}
    shown = window_status(MaintenanceWindowSpec.model_validate(examples[name]["spec"]), t("2026-06-02T00:00:00Z"))
    assert {key: shown[key] for key in status} == status


def test_every_cel_rule_words_its_refusal_as_the_models_do() -> None:
    """Each rule of the CRD has a refused spec above that breaks it, with the model's message word for word."""
    messages = cel_messages(yaml.safe_load(CRD.read_text()))
    assert len(messages) >= 10
    refused = {row[3] for row in REFUSED}
    assert [message for message in messages if message not in refused] == []


# -- The registrations ----------------------------------------------------------------------------------------------


def handlers_of(registry: kopf.OperatorRegistry) -> dict[str, Any]:
    """The registered handlers by id (kopf keeps them in its registry's private parts)."""
    found = [*registry._indexing.get_all_handlers(), *registry._spawning.get_all_handlers(),
             *registry._activities.get_all_handlers()]  # fmt: skip
    return {str(handler.id): handler for handler in found}


async def test_registration_indexes_windows_and_writes_only_a_changed_status() -> None:
    registry = kopf.OperatorRegistry()
    view = register_maintenance(registry)
    handlers = handlers_of(registry)
    assert set(handlers) == {
        MAINTENANCE_INDEX, CLUSTER_LABELS_INDEX, MAINTENANCE_SOURCES_INDEX, TIDB_CLUSTERS_INDEX, "maintenance_status",
        "maintenance_windows_view", AUTOMATIC,
    }  # fmt: skip
    assert handlers["maintenance_status"].selector.any_name == MAINTENANCE_WINDOW_PLURAL

    index = {"db": [WINDOWS[0]]}
    await handlers["maintenance_windows_view"].fn(**{MAINTENANCE_INDEX: index})
    assert view.in_namespace("db") == [WINDOWS[0]]
    entry = await handlers[MAINTENANCE_INDEX].fn(name="w", namespace="db", spec=kopf.Spec(kopf.Body({"spec": FIXED})))
    assert entry == {"db": Window("w", "db", MaintenanceWindowSpec.model_validate(FIXED))}

    over = {"active": False, "message": "Over: ended 2025-06-01T04:00:00Z", "observedGeneration": 1}
    for shown, written in [({}, over), (over, None)]:
        body = kopf.Body(cast(kopf.RawBody, {"metadata": {"generation": 1}, "spec": FIXED, "status": shown}))
        patch = kopf.Patch()
        await handlers["maintenance_status"].fn(spec=body.spec, status=body.status, meta=body.meta, patch=patch)
        assert patch.get("status") == written
