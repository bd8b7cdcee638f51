"""Maintenance windows: when one is active, which ones cover a ticket, and the status a window shows. Pure: the
time is passed in, every datetime is timezone-aware, and what is returned is in UTC.

A recurring window's occurrences are found on the wall clock of its time zone: croniter only ever sees local times
without an offset (``0 2 * * 6`` is 02:00 on the clock on the wall, in winter and in summer), and each start is then
placed on the time line by ``wall_to_instant``. ``duration`` is elapsed time, as Go durations are: an occurrence
that spans a change of the clocks ends ``duration`` after it started, so its local end moves by the change (01:30
plus 2h is 04:30 on the night the clocks skip 02:00-03:00).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter
from pydantic import ValidationError

from operator_k8s.domain.notices import OPEN_ENDED
from operator_k8s.domain.specs import ClusterSelector, MaintenanceWindowSpec, normalised_name, validation_message
from operator_k8s.domain.status import FOREIGN_STATUS_KEYS, format_time, merge_patch, parse_time

MESSAGE_LIMIT = 1024
"""The CRD's maxLength of ``status.message``."""


# -- Label selectors ------------------------------------------------------------------------------------------------


def selector_matches(selector: ClusterSelector, labels: Mapping[str, str]) -> bool:
    """Whether a window's selector picks a cluster with these labels (``ClusterSelector.matches``)."""
    return selector.matches(labels)


# -- Occurrences ----------------------------------------------------------------------------------------------------


def wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A local time without offset, placed on the time line (UTC) so that later local times are never earlier
    instants: in the hour repeated when the clocks go back, its first instance; in the hour skipped when they go
    forward, the moment of the jump (a 02:30 start on a 02:00 → 03:00 night starts at 03:00, as cron runs a job whose
    time was skipped)."""
    first, second = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    before, after = first.utcoffset(), second.utcoffset()
    if before is None or after is None or before >= after:  # the same instant, or the first of a repeated hour
        return first.astimezone(UTC)
    # Skipped: the jump is in (second, first] on the time line; found to the second (jumps are on whole seconds).
    low, high = second.astimezone(UTC), first.astimezone(UTC)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle -= timedelta(microseconds=middle.microsecond)
        if middle.astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high


def _repeat_slack(local: datetime) -> timedelta:
    """How far past ``local`` (an aware local time) wall times still map at or before it: the rest of a repeated
    hour when ``local`` is in its second instance, else nothing."""
    first = local.replace(fold=0).utcoffset()
    current = local.utcoffset()
    if local.fold and first is not None and current is not None and first > current:
        return first - current
    return timedelta(0)


def _last_start(spec: MaintenanceWindowSpec, now: datetime) -> datetime | None:
    """The latest start of the schedule at or before ``now``, ignoring ``from`` and ``until``."""
    assert spec.schedule is not None
    zone = spec.zone
    local = now.astimezone(zone)
    # croniter's get_prev is strictly before its start: a minute past the last wall time that may map to ``now``
    # includes a start at exactly ``now``; the starts after ``now`` this lets in are skipped one by one.
    ceiling = local.replace(tzinfo=None) + _repeat_slack(local) + timedelta(minutes=1)
    walls = croniter(spec.schedule, ceiling)
    try:
        while True:
            start = wall_to_instant(walls.get_prev(datetime), zone)
            if start <= now:
                return start
    except CroniterBadDateError:
        return None


def _first_start_after(spec: MaintenanceWindowSpec, moment: datetime) -> datetime | None:
    """The earliest start of the schedule strictly after ``moment``, ignoring ``from`` and ``until``."""
    assert spec.schedule is not None
    zone = spec.zone
    walls = croniter(spec.schedule, moment.astimezone(zone).replace(tzinfo=None))
    try:
        while True:
            start = wall_to_instant(walls.get_next(datetime), zone)
            if start > moment:  # walls of a repeated hour's second instance map before it: skipped
                return start
    except CroniterBadDateError:
        return None


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def active_interval(spec: MaintenanceWindowSpec, now: datetime) -> tuple[datetime, datetime] | None:
    """The occurrence in progress at ``now`` (start ≤ now < end), or None.

    A recurring window is active only between ``from`` and ``until``: an occurrence in progress at ``from`` is
    active from then on, one in progress at ``until`` ends there. When occurrences overlap (a duration longer than
    the schedule's period), the one that started last is returned: it ends last."""
    now = _aware(now)
    if spec.start_at is not None and spec.end_at is not None:
        start, end = spec.start_at.astimezone(UTC), spec.end_at.astimezone(UTC)
        return (start, end) if start <= now < end else None
    lower, upper = spec.from_at, spec.until_at
    if (lower is not None and now < lower) or (upper is not None and now >= upper):
        return None
    begun = _last_start(spec, now)
    if begun is None or spec.duration_seconds is None:
        return None
    end = begun + timedelta(seconds=spec.duration_seconds)
    if now >= end:
        return None
    start = begun if lower is None else max(begun, lower.astimezone(UTC))
    return start, end if upper is None else min(end, upper.astimezone(UTC))


def next_start(spec: MaintenanceWindowSpec, now: datetime) -> datetime | None:
    """When the window next becomes active, strictly after ``now``: the next occurrence's start, or ``from`` when an
    occurrence is in progress then; None when the fixed window has begun or no occurrence starts before ``until``."""
    now = _aware(now)
    if spec.start_at is not None:
        start = spec.start_at.astimezone(UTC)
        return start if now < start else None
    lower, upper = spec.from_at, spec.until_at
    if lower is not None and now < lower:
        if active_interval(spec, lower) is not None:
            return lower.astimezone(UTC)
        now = lower.astimezone(UTC)  # no occurrence contains ``from``, so none starts at it either
    following = _first_start_after(spec, now)
    if following is None or (upper is not None and following >= upper):
        return None
    return following


# -- Which windows cover a ticket -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A MaintenanceWindow as the notification code reads it: where it is, and its (valid) spec."""

    name: str
    namespace: str
    spec: MaintenanceWindowSpec

    @property
    def selector(self) -> ClusterSelector:
        return self.spec.cluster_selector

    @property
    def invariants(self) -> frozenset[str]:
        """The invariants it covers, by normalised name (``disk-usage`` is ``diskUsage``); empty: all of them."""
        return frozenset(normalised_name(name) for name in self.spec.invariants)

    @property
    def stores(self) -> frozenset[str]:
        """The stores it covers (``cluster``: the tickets about the whole cluster); empty: all of them."""
        return frozenset(self.spec.stores)

    def applies_to(self, invariant: str, store: str) -> bool:
        """Whether the window is about this invariant and this store (whenever it is active)."""
        invariants, stores = self.invariants, self.stores
        return (not invariants or normalised_name(invariant) in invariants) and (not stores or store in stores)


# -- Automatic windows: the store's own operator reports an upgrade or a scale -----------------------------------

MAINTENANCE_PHASES = ("Upgrade", "Scale")
"""TiDB Operator's ``MemberPhase`` values (``pkg/apis/pingcap/v1alpha1/types.go``) that mean a rolling change is in
progress; ``Normal`` and anything else (a phase a later release adds, none at all) mean none."""
COMPONENTS = ("tikv", "pd")
"""The members whose phase is read, in this order: a store's upgrade is named before PD's."""


@dataclass(frozen=True)
class OperatorReport:
    """What a TidbCluster's status says, as far as windows go: each component's phase (``""``: none given), and
    when its ``Ready`` condition last turned False (None: it did not, or says nothing): the start of the window."""

    phases: tuple[tuple[str, str], ...]
    not_ready_since: datetime | None = None


def tidb_report(status: Any) -> OperatorReport:
    """A TidbCluster's status read for ``operator_window``: any shape survives (a status TiDB Operator did not
    write yet, a foreign value), and what cannot be read is no phase."""
    status = status if isinstance(status, Mapping) else {}
    phases = []
    for component in COMPONENTS:
        part = status.get(component)
        phase = part.get("phase") if isinstance(part, Mapping) else None
        phases.append((component, phase if isinstance(phase, str) else ""))
    since = None
    conditions = status.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready" and condition.get("status") == "False":
            try:
                since = parse_time(condition.get("lastTransitionTime"))
            except ValueError:
                since = None  # unreadable: the window starts when it is seen
    return OperatorReport(tuple(phases), since)


@dataclass(frozen=True)
class OperatorWindow:
    """An automatic window in force: who opened it (``TidbCluster/<name> (tikv Upgrade)``) and since when."""

    by: str
    since: datetime


def operator_window(tidb_cluster: str, report: OperatorReport | None, now: datetime) -> OperatorWindow | None:
    """The automatic window a TidbCluster opens now, or None (no upgrade or scale reported, or no such TidbCluster:
    then nothing is held, and ``operator_window_state`` says why). It lasts as long as the report, so it has no end
    of its own (``OPEN_ENDED``). It started when the TidbCluster stopped being Ready, if it says so (what fired before
    keeps firing in Alertmanager), else now."""
    if report is None:
        return None
    reported = [(component, phase) for component, phase in report.phases if phase in MAINTENANCE_PHASES]
    if not reported:
        return None
    what = ", ".join(f"{component} {phase}" for component, phase in reported)
    since = report.not_ready_since if report.not_ready_since is not None and report.not_ready_since <= now else now
    return OperatorWindow(f"TidbCluster/{tidb_cluster} ({what})", since)


def operator_window_state(tidb_cluster: str, report: OperatorReport | None, now: datetime) -> str:
    """One sentence on what a MonitoredCluster's ``spec.maintenance.tidbCluster`` does now, for the log: in force,
    not in force and why, or not found (which is never guessed to be a window)."""
    if report is None:
        return (
            f"TidbCluster {tidb_cluster} not found in the namespace (or TiDB Operator's CRD is not installed, or the"
            " operator may not read tidbclusters.pingcap.com): no automatic maintenance window"
        )
    window = operator_window(tidb_cluster, report, now)
    if window is not None:
        return f"In a maintenance window by {window.by}: tickets are recorded, notifications held"
    shown = ", ".join(f"{c} {p or '(no phase)'}" for c, p in report.phases)
    return f"TidbCluster {tidb_cluster} reports {shown}: no automatic maintenance window"


@dataclass(frozen=True)
class Covered:
    """The windows that cover a ticket now (by name, sorted), and when the last of their occurrences ends: the
    notification is held until then. ``by`` is the window whose occurrence ends then."""

    windows: tuple[str, ...]
    until: datetime
    by: str
    since: datetime | None = field(default=None, compare=False)
    """When the earliest of the covering occurrences started: what fired before it, Alertmanager already knows
    (derived from the windows, so it takes no part in comparing what covers)."""


def covering(
    windows: Iterable[Window],
    *,
    namespace: str,
    cluster_labels: Mapping[str, str],
    invariant: str,
    store: str,
    now: datetime,
    automatic: OperatorWindow | None = None,
) -> Covered | None:
    """The windows of ``namespace`` that cover a ticket of (``invariant``, ``store``) on a cluster labelled
    ``cluster_labels`` at ``now``, or None: then notify as usual. ``automatic``: the cluster's store operator reports
    an upgrade or a scale (``operator_window``): a window over all of the cluster, until its report changes."""
    found: list[tuple[str, datetime]] = []
    starts: list[datetime] = []
    if automatic is not None:
        found.append((automatic.by, OPEN_ENDED))
        starts.append(automatic.since)
    for window in sorted(windows, key=lambda w: w.name):
        if window.namespace != namespace or not window.applies_to(invariant, store):
            continue
        if not selector_matches(window.selector, cluster_labels):
            continue
        interval = active_interval(window.spec, now)
        if interval is not None:
            found.append((window.name, interval[1]))
            starts.append(interval[0])
    if not found:
        return None
    by, until = max(found, key=lambda item: item[1])  # the first found among equal ends
    return Covered(windows=tuple(name for name, _ in found), until=until, by=by, since=min(starts))


def window_of(name: str, namespace: str, raw_spec: Mapping[str, Any]) -> Window | None:
    """The window an object shows, or None when its spec is invalid: such a window holds no notification back
    (its status says why)."""
    try:
        return Window(name, namespace, MaintenanceWindowSpec.model_validate(dict(raw_spec)))
    except ValidationError:
        return None


def index_entry(name: str, namespace: str, raw_spec: Mapping[str, Any]) -> dict[str, Window]:
    """What kopf's index of windows holds for one object: its window under its namespace, or nothing for an invalid
    spec. Never None: kopf keeps an object's previous value when its indexer returns None, so a window whose spec
    turned invalid would stay in force."""
    window = window_of(name, namespace, raw_spec)
    return {namespace: window} if window is not None else {}


class WindowIndex:
    """The current windows by namespace, read through to a live mapping (kopf's index of them, attached when the
    operator starts; empty before). A view, never a copy: what it returns is what the watch shows now."""

    def __init__(self, by_namespace: Mapping[str, Iterable[Window]] | None = None) -> None:
        self._by_namespace: Mapping[str, Iterable[Window]] = by_namespace if by_namespace is not None else {}
        self._cluster_labels: Mapping[tuple[str, str], Iterable[Mapping[str, str]]] = {}
        self._sources: Mapping[tuple[str, str], Iterable[str]] = {}
        self._reports: Mapping[tuple[str, str], Iterable[OperatorReport]] = {}

    def attach(
        self,
        by_namespace: Mapping[str, Iterable[Window]],
        cluster_labels: Mapping[tuple[str, str], Iterable[Mapping[str, str]]] | None = None,
        sources: Mapping[tuple[str, str], Iterable[str]] | None = None,
        reports: Mapping[tuple[str, str], Iterable[OperatorReport]] | None = None,
    ) -> None:
        """Read through to kopf's live indexes: the windows by namespace, each MonitoredCluster's labels by
        (namespace, name), which the windows' selectors match, the TidbCluster each names for automatic windows,
        and what each TidbCluster reports, by (namespace, name)."""
        self._by_namespace = by_namespace
        if cluster_labels is not None:
            self._cluster_labels = cluster_labels
        if sources is not None:
            self._sources = sources
        if reports is not None:
            self._reports = reports

    def tidb_cluster(self, namespace: str, cluster: str) -> str | None:
        """The TidbCluster a MonitoredCluster names (``spec.maintenance.tidbCluster``), or None."""
        return next(iter(self._sources.get((namespace, cluster), ())), None)

    def report(self, namespace: str, tidb_cluster: str) -> OperatorReport | None:
        """What that TidbCluster reports now; None when the watch shows none (no such object, or no CRD)."""
        return next(iter(self._reports.get((namespace, tidb_cluster), ())), None)

    def automatic(self, namespace: str, cluster: str, at: datetime) -> OperatorWindow | None:
        """The automatic window over a MonitoredCluster at ``at``, as its TidbCluster's watch shows it now."""
        name = self.tidb_cluster(namespace, cluster)
        return operator_window(name, self.report(namespace, name), at) if name is not None else None

    def covered(
        self, namespace: str, cluster: str, invariant: str, store: str, at: datetime
    ) -> tuple[str, datetime, datetime] | None:
        """The window that holds back a notice of this ticket at ``at``, until when, and since when, or None:
        ``covering`` with the cluster's labels and its TidbCluster's report as the watch shows them now (a cluster
        no longer there has neither)."""
        labels = next(iter(self._cluster_labels.get((namespace, cluster), ())), {})
        found = covering(
            self.in_namespace(namespace), namespace=namespace, cluster_labels=labels, invariant=invariant,
            store=store, now=at, automatic=self.automatic(namespace, cluster, at),
        )  # fmt: skip
        if found is None:
            return None
        return found.by, found.until, found.since or at

    def in_namespace(self, namespace: str) -> list[Window]:
        return list(self._by_namespace.get(namespace, ()))

    def covering(
        self, *, namespace: str, cluster_labels: Mapping[str, str], invariant: str, store: str, now: datetime
    ) -> Covered | None:
        """``covering`` over the windows of ``namespace``."""
        return covering(
            self.in_namespace(namespace), namespace=namespace, cluster_labels=cluster_labels, invariant=invariant,
            store=store, now=now,
        )  # fmt: skip


# -- Status ---------------------------------------------------------------------------------------------------------


def window_status(spec: MaintenanceWindowSpec, now: datetime) -> dict[str, Any]:
    """What the window shows: whether it is active, until when, when it next starts, and a sentence saying so.
    Times have second precision, so the status changes only when an occurrence starts or ends."""
    interval = active_interval(spec, now)
    upcoming = next_start(spec, now)
    status: dict[str, Any] = {"active": interval is not None}
    if interval is not None:
        status["activeUntil"] = format_time(interval[1])
    if upcoming is not None:
        status["nextStart"] = format_time(upcoming)
    if interval is not None:
        message = f"Active until {status['activeUntil']}: tickets are recorded, notifications held"
    elif upcoming is not None:
        message = f"Inactive; next starts {status['nextStart']}"
    elif spec.end_at is not None:
        message = f"Over: ended {format_time(spec.end_at)}"
    else:
        message = "Over: no occurrence starts before until" if spec.until_at is not None else "Inactive"
    status["message"] = message
    return status


def desired_status(raw_spec: Mapping[str, Any], generation: int, now: datetime) -> dict[str, Any]:
    """The status a MaintenanceWindow object should show for the spec it has: ``window_status``, or for a spec the
    operator cannot read, inactive with the reason."""
    try:
        spec = MaintenanceWindowSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        status: dict[str, Any] = {"active": False, "message": f"Invalid spec: {validation_message(error)}"}
    else:
        status = window_status(spec, now)
    status["message"] = status["message"][:MESSAGE_LIMIT]
    return {**status, "observedGeneration": generation}


def status_changes(
    observed: Mapping[str, Any], raw_spec: Mapping[str, Any], generation: int, now: datetime
) -> dict[str, Any]:
    """The merge patch from the status a window shows to the one it should show (empty: nothing to write), removed
    keys as null; keys that are not the operator's (kopf's) left alone."""
    return merge_patch(observed, desired_status(raw_spec, generation, now), keep=FOREIGN_STATUS_KEYS)
