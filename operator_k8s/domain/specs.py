"""Pydantic models of the MonitoredCluster, Ticket and MaintenanceWindow specs, mirroring the CRD schemas in ``crds/``.

The API server has already validated what reaches us; these models turn it into typed values and repeat every bound
the CRD's CEL rules set, with the same messages, so that anything that slips past the API server (a CRD installed
from an older release, an object stored before a bound existed) becomes an ``InvalidSpec`` message rather than an
exception deep in a cycle. ``tests/unit/test_crd_models.py`` keeps the models and the schemas in step;
``tests/hostile_specs.py`` lists the refusals that both must agree on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.vocabulary import Invariant, Severity

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
Duration = Annotated[str, Field(max_length=16, pattern=DURATION_PATTERN)]
RANGE_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"
RangeDuration = Annotated[str, Field(min_length=2, max_length=16, pattern=RANGE_PATTERN)]
"""A duration PromQL reads in a range selector (``[1h30m]``): whole numbers, units in order, each at most once."""
Comparator = Literal[">", ">=", "<", "<="]
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
LabelName = Annotated[str, Field(max_length=63, pattern=LABEL_NAME_PATTERN)]
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
"""A host and an optional path, no query or fragment: the client appends ``/api/v1/query`` to it."""

MAX_GRACE = "168h"
MAX_GRACE_SECONDS = parse_duration(MAX_GRACE)
BUILTIN_NAMES = frozenset(invariant.value.lower() for invariant in Invariant)
"""Built-in invariant names as custom names are compared with them: hyphens removed, lower case."""
PROMQL_MISREAD_LABELS = ("without", "inf", "nan")
"""Label names PromQL reads as a keyword or a number (any case), so a query naming them does not parse."""

GRACE_MESSAGE = "{field} must be at most 168h (7 days)"
TIMEOUT_MESSAGE = "timeout must be more than 0s and at most 60s"
RATE_WINDOW_MESSAGE = "rateWindow must be more than 0s and at most 24h"
INTERVAL_MESSAGE = "interval must be between 1s and 1h"
BUILTIN_NAME_MESSAGE = (
    "custom invariant name must differ from the built-ins' (storesReady, latency, diskUsage, criticalErrors,"
    " writeStall, pdStores, pdRegions; hyphens aside)"
)
NAMESPACE_LABEL_MESSAGE = "namespaceLabel must not start with __ nor be without, inf or nan (PromQL misreads them)"
GENERIC_LATENCY_MESSAGE = "the generic preset has no latency query: set queries.latency or disable invariants.latency"
POINT_OPERATIONS = (
    "kv_get", "kv_batch_get", "kv_batch_get_command", "kv_prewrite", "kv_commit", "kv_cleanup",
    "kv_check_txn_status", "raw_get", "raw_batch_get", "raw_put", "raw_batch_put", "raw_delete",
)  # fmt: skip
"""TiKV's point reads and writes (tikv/tikv:src/server/metrics.rs): the request types whose latency a user feels.
Never lock waits (``kv_pessimistic_lock`` waits up to 1 s by design), GC, scans or coprocessor requests."""
PD_STORE_STATES = ("store_down_count", "store_disconnected_count", "store_low_space_count", "store_slow_count")
PD_REGION_STATES = ("miss-peer-region-count", "down-peer-region-count")
"""PD's own spelling (tikv/pd:pkg/statistics/region_collection.go): hyphens, unlike upstream's alert rule."""
HYPHEN_UNIQUE_MESSAGE = "custom invariant names must differ in more than hyphens (a-1 and a1 both name CustomA1)"
STORE_LABEL_MESSAGE = "storeLabel must not start with __ nor be without, inf or nan (PromQL misreads them)"
MATCHER_KEY_MESSAGE = "matcher keys must not start with __ nor be without, inf or nan (PromQL misreads them)"
MATCH_LABELS_KEY_MESSAGE = "matchLabels keys must be Kubernetes label keys"


def _seconds(value: str) -> float:
    """A duration in seconds, infinite when too long to represent, so every upper bound refuses it by its message."""
    try:
        return parse_duration(value)
    except ValueError:
        return math.inf


def _promql_safe_label(name: str) -> bool:
    return not name.startswith("__") and name.lower() not in PROMQL_MISREAD_LABELS


def is_label_key(key: str) -> bool:
    """A Kubernetes label key: an optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters."""
    return bool(_LABEL_KEY.match(key)) and key.find("/") <= 253


def validation_message(error: ValidationError) -> str:
    """A refused spec in one line (its first five errors), each at its field as the API server writes it:
    ``spec.a.b[0]: why``."""
    parts = []
    for item in error.errors()[:5]:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        parts.append(f"spec{where}: {item['msg']}")
    return "; ".join(parts)


def normalised_name(name: str) -> str:
    """A custom name as compared with the built-ins and the other custom names: hyphens dropped (its condition type
    drops them too), lower case."""
    return name.replace("-", "").lower()


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected, values immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, allow_inf_nan=False
    )


class LabelSelector(ApiModel):
    match_labels: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        min_length=1, max_length=16
    )

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        """Keys that cannot be labels would select no pod, silently."""
        if not all(is_label_key(key) for key in value):
            raise ValueError(MATCH_LABELS_KEY_MESSAGE)
        return value


class StoresSpec(ApiModel):
    selector: LabelSelector
    expected: int | None = Field(default=None, ge=0, le=10000)


CREDENTIAL_PATH_PATTERN = r"^[-._a-zA-Z0-9]+(/[-._a-zA-Z0-9]+)*$"
"""A file under the operator's credentials directory: the characters of Secret keys, ``/`` between segments."""
CredentialPath = Annotated[str, Field(max_length=256, pattern=CREDENTIAL_PATH_PATTERN)]
ABSOLUTE_PATH_MESSAGE = "{field} must be relative to the credentials directory (no leading /)"
PARENT_PATH_MESSAGE = "{field} must not contain .. segments (it names a file inside the credentials directory)"
AUTHORIZATION_TWICE_MESSAGE = "bearerTokenFile and basicAuth cannot both be set (each is the Authorization header)"
HEADER_NAME_PATTERN = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"
HEADER_NAME_MESSAGE = "header names must be HTTP tokens of at most 64 characters"
RESERVED_HEADERS = ("authorization", "proxy-authorization", "host", "connection", "content-length", "transfer-encoding")
RESERVED_HEADER_MESSAGE = (
    "headers must not set Authorization, Proxy-Authorization, Host, Connection, Content-Length or Transfer-Encoding"
    " (credentials come from bearerTokenFile or basicAuth; the others belong to HTTP itself)"
)
HEADER_CASE_MESSAGE = "header names must differ in more than case"
HEADER_VALUE_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
"""Printable ASCII, no leading or trailing space: nothing that could end the header or start another."""
USERNAME_PATTERN = r"^[^:]+$"


def _credential_path_problem(value: object, field: str) -> str | None:
    """Why a credential path could name a file outside the credentials directory, or None. Checked before the
    pattern, so both tiers word an absolute path and a ``..`` segment the same way (the adapter still resolves
    symlinks and refuses anything outside the directory)."""
    if not isinstance(value, str):
        return None
    if value.startswith("/"):
        return ABSOLUTE_PATH_MESSAGE.format(field=field)
    if re.search(r"(^|/)\.\.(/|$)", value):
        return PARENT_PATH_MESSAGE.format(field=field)
    return None


class BasicAuthSpec(ApiModel):
    username: str = Field(min_length=1, max_length=256, pattern=USERNAME_PATTERN)
    password_file: CredentialPath

    @field_validator("password_file", mode="before")
    @classmethod
    def _inside_directory(cls, value: object) -> object:
        problem = _credential_path_problem(value, "passwordFile")
        if problem:
            raise ValueError(problem)
        return value


class PrometheusAuthSpec(ApiModel):
    """How the operator authenticates to Prometheus: every secret is a file under the directory the operator is
    configured with (``OPERATOR_K8S_PROMETHEUS_CREDENTIALS_DIR``, mounted from a Secret by the chart), named here by
    a relative path; the operator never reads Secrets through the API. Header values are not secret."""

    bearer_token_file: CredentialPath | None = None
    basic_auth: BasicAuthSpec | None = None
    ca_file: CredentialPath | None = None
    headers: dict[str, Annotated[str, Field(max_length=1024, pattern=HEADER_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=16
    )

    @field_validator("bearer_token_file", "ca_file", mode="before")
    @classmethod
    def _inside_directory(cls, value: object, info: ValidationInfo) -> object:
        problem = _credential_path_problem(value, to_camel(info.field_name or ""))
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        if not all(len(name) <= 64 and re.fullmatch(HEADER_NAME_PATTERN, name) for name in value):
            raise ValueError(HEADER_NAME_MESSAGE)
        if any(name.lower() in RESERVED_HEADERS for name in value):
            raise ValueError(RESERVED_HEADER_MESSAGE)
        if len({name.lower() for name in value}) != len(value):
            raise ValueError(HEADER_CASE_MESSAGE)
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> PrometheusAuthSpec:
        if self.bearer_token_file is not None and self.basic_auth is not None:
            raise ValueError(AUTHORIZATION_TWICE_MESSAGE)
        return self


class PrometheusSpec(ApiModel):
    url: str = Field(max_length=2048, pattern=URL_PATTERN)
    timeout: Duration = "5s"
    rate_window: RangeDuration = "1m"
    store_label: str = Field(default="pod", max_length=63, pattern=LABEL_NAME_PATTERN)
    namespace_label: str = Field(default="namespace", max_length=63, pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")
    """``namespace`` under prometheus-operator, ``kubernetes_namespace`` under TidbMonitor, empty when series carry no
    namespace (then ``matchers`` must tell clusters apart)."""
    matchers: dict[LabelName, Annotated[str, Field(max_length=256)]] = Field(default_factory=dict, max_length=16)
    auth: PrometheusAuthSpec | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout_bounds(cls, value: str) -> str:
        """A query thread is held at most this long; unbounded, one silent endpoint would hold them all."""
        if not 0 < _seconds(value) <= 60:
            raise ValueError(TIMEOUT_MESSAGE)
        return value

    @field_validator("rate_window")
    @classmethod
    def _rate_window_bounds(cls, value: str) -> str:
        """PromQL refuses an empty range, and a day of samples per store is already a heavy query."""
        if not 0 < _seconds(value) <= 86400:
            raise ValueError(RATE_WINDOW_MESSAGE)
        return value

    @field_validator("store_label")
    @classmethod
    def _store_label_readable(cls, value: str) -> str:
        if not _promql_safe_label(value):
            raise ValueError(STORE_LABEL_MESSAGE)
        return value

    @field_validator("namespace_label")
    @classmethod
    def _namespace_label_readable(cls, value: str) -> str:
        if value and not _promql_safe_label(value):
            raise ValueError(NAMESPACE_LABEL_MESSAGE)
        return value

    @field_validator("matchers")
    @classmethod
    def _matcher_keys_readable(cls, value: dict[str, str]) -> dict[str, str]:
        if not all(_promql_safe_label(key) for key in value):
            raise ValueError(MATCHER_KEY_MESSAGE)
        return value


class QueryOverrides(ApiModel):
    latency: str | None = Field(default=None, max_length=4096)
    disk_usage: str | None = Field(default=None, max_length=4096)


class InvariantSpec(ApiModel):
    """What every invariant has: on/off, severity and the two grace periods."""

    enabled: bool = True
    severity: Severity = Severity.CRITICAL
    for_: Duration = Field(default="0s", alias="for")
    clear_for: Duration = "0s"

    @field_validator("for_", "clear_for")
    @classmethod
    def _grace_bounds(cls, value: str, info: ValidationInfo) -> str:
        """A week is longer than any useful grace, and far below what a timedelta or Go can hold."""
        if _seconds(value) > MAX_GRACE_SECONDS:
            raise ValueError(GRACE_MESSAGE.format(field="for" if info.field_name == "for_" else "clearFor"))
        return value

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_)

    @property
    def clear_for_seconds(self) -> float:
        return parse_duration(self.clear_for)


class StoresReadySpec(InvariantSpec):
    pass


RequestType = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]


class LatencySpec(InvariantSpec):
    severity: Severity = Severity.WARNING
    quantile: float = Field(default=0.99, gt=0, lt=1)
    request_types: list[RequestType] = Field(default=list(POINT_OPERATIONS), min_length=1, max_length=32)
    threshold_ms: float = Field(default=500, gt=0, le=3_600_000)
    clear_threshold_ms: float | None = Field(default=None, gt=0, le=3_600_000)

    @model_validator(mode="after")
    def _clear_on_safe_side(self) -> LatencySpec:
        if self.clear_threshold_ms is not None and self.clear_threshold_ms > self.threshold_ms:
            raise ValueError("clearThresholdMs must not exceed thresholdMs")
        return self


class DiskUsageSpec(InvariantSpec):
    """Disk used as the filesystem sees it: 1 - available/capacity (TiKV's own rule alerts below 20 % available;
    PD's low-space ratio is 0.8), plus an optional absolute floor of available bytes (TiKV rejects writes at
    ``storage.reserve-space``, 5 GiB by default)."""

    severity: Severity = Severity.WARNING
    threshold_percent: float = Field(default=80, gt=0, le=100)
    clear_threshold_percent: float | None = Field(default=None, gt=0, le=100)
    min_available_bytes: int | None = Field(default=None, ge=0, le=2**53)

    @model_validator(mode="after")
    def _clear_on_safe_side(self) -> DiskUsageSpec:
        if self.clear_threshold_percent is not None and self.clear_threshold_percent > self.threshold_percent:
            raise ValueError("clearThresholdPercent must not exceed thresholdPercent")
        return self


class CriticalErrorsSpec(InvariantSpec):
    """Any increase of ``tikv_critical_error_total`` in the rate window (TiKV's own rule, critical)."""


class WriteStallSpec(InvariantSpec):
    """RocksDB write stalls: ``tikv_engine_write_stall`` is a gauge, so upstream's ``delta(…[10m]) > 0``."""

    severity: Severity = Severity.WARNING
    window: RangeDuration = "10m"

    @field_validator("window")
    @classmethod
    def _window_bounds(cls, value: str) -> str:
        if not 0 < _seconds(value) <= 86400:
            raise ValueError("window must be more than 0s and at most 24h")
        return value


class PdStoresSpec(InvariantSpec):
    """Stores PD's leader counts as unhealthy (a hung TiKV stays Ready but PD sees it disconnected)."""

    states: list[Literal[PD_STORE_STATES]] = Field(default=list(PD_STORE_STATES), min_length=1, max_length=4)  # type: ignore[valid-type]


class PdRegionsSpec(InvariantSpec):
    """Regions PD's leader counts in the chosen states, against a threshold. The default is upstream's critical rule
    (more than 100 regions missing a peer); upstream's warning (any region with a down peer) is
    ``states: [down-peer-region-count], thresholdRegions: 0``."""

    severity: Severity = Severity.CRITICAL
    states: list[Literal[PD_REGION_STATES]] = Field(default=["miss-peer-region-count"], min_length=1, max_length=2)  # type: ignore[valid-type]
    threshold_regions: int = Field(default=100, ge=0, le=10_000_000)


class CustomInvariantSpec(InvariantSpec):
    severity: Severity = Severity.WARNING
    name: str = Field(max_length=40, pattern=r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
    query: str = Field(min_length=1, max_length=4096)
    scope: Literal["store", "cluster"] = "store"
    comparator: Comparator
    threshold: float
    clear_threshold: float | None = None

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        """A custom ``latency`` would share the built-in's tickets and condition."""
        if normalised_name(value) in BUILTIN_NAMES:
            raise ValueError(BUILTIN_NAME_MESSAGE)
        return value

    @model_validator(mode="after")
    def _clear_on_safe_side(self) -> CustomInvariantSpec:
        if self.clear_threshold is None:
            return self
        upward = self.comparator in (">", ">=")
        if (upward and self.clear_threshold > self.threshold) or (not upward and self.clear_threshold < self.threshold):
            raise ValueError("clearThreshold must be on the safe side of threshold")
        return self


class InvariantsSpec(ApiModel):
    stores_ready: StoresReadySpec = Field(default_factory=StoresReadySpec)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    disk_usage: DiskUsageSpec = Field(default_factory=DiskUsageSpec)
    critical_errors: CriticalErrorsSpec = Field(default_factory=CriticalErrorsSpec)
    write_stall: WriteStallSpec = Field(default_factory=WriteStallSpec)
    pd_stores: PdStoresSpec = Field(default_factory=PdStoresSpec)
    pd_regions: PdRegionsSpec = Field(default_factory=PdRegionsSpec)
    custom: list[CustomInvariantSpec] = Field(default_factory=list, max_length=20)

    @field_validator("custom")
    @classmethod
    def _unique_names(cls, value: list[CustomInvariantSpec]) -> list[CustomInvariantSpec]:
        names = [item.name for item in value]
        if len(names) != len(set(names)):
            raise ValueError("custom invariant names must be unique")
        if len(names) != len({normalised_name(name) for name in names}):
            raise ValueError(HYPHEN_UNIQUE_MESSAGE)
        return value


class PdSpec(ApiModel):
    """The cluster's PD pods (TiDB Operator labels them ``app.kubernetes.io/component=pd``): PD-level invariants read
    what the PD leader reports, from these pods' series only."""

    selector: LabelSelector


OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (a DNS subdomain)."""


class ClusterMaintenance(ApiModel):
    """Automatic maintenance windows, opted into: while the store's own operator reports an upgrade or a scale in
    progress, the cluster counts as in a maintenance window (``domain.maintenance.operator_window``)."""

    tidb_cluster: str | None = Field(default=None, max_length=253, pattern=OBJECT_NAME_PATTERN)
    """The TidbCluster (TiDB Operator, ``pingcap.com/v1alpha1``) of this namespace whose ``status.tikv.phase`` and
    ``status.pd.phase`` are read."""


class MonitoredClusterSpec(ApiModel):
    interval: Duration = "30s"
    preset: Literal["tikv", "generic"] = "tikv"
    stores: StoresSpec
    pd: PdSpec | None = None
    prometheus: PrometheusSpec
    queries: QueryOverrides = Field(default_factory=QueryOverrides)
    invariants: InvariantsSpec = Field(default_factory=InvariantsSpec)
    maintenance: ClusterMaintenance | None = None

    @model_validator(mode="after")
    def _generic_latency_needs_a_query(self) -> MonitoredClusterSpec:
        """The generic preset cannot guess a store's request-latency histogram."""
        if self.preset == "generic" and self.invariants.latency.enabled and not self.queries.latency:
            raise ValueError(GENERIC_LATENCY_MESSAGE)
        return self

    @field_validator("interval")
    @classmethod
    def _interval_bounds(cls, value: str) -> str:
        if not 1 <= _seconds(value) <= 3600:
            raise ValueError(INTERVAL_MESSAGE)
        return value

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


class TicketSpec(ApiModel):
    """What humans may set on a Ticket resource."""

    hold: bool = False
    acknowledged: bool = False
    note: str | None = Field(default=None, max_length=1024)


# -- MaintenanceWindow ----------------------------------------------------------------------------------------------

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
Timestamp = Annotated[str, Field(max_length=64, pattern=RFC3339_PATTERN)]
"""An RFC 3339 time with its offset (``2025-06-01T02:00:00Z``, ``2025-06-01T04:00:00+02:00``): never a local time
whose meaning would depend on the operator's clock."""
CRON_PATTERN = r"^\S+( +\S+){4}$"
"""Five fields: minute, hour, day of month, month, day of week (no seconds, no year, no ``@weekly``)."""
TIME_ZONE_PATTERN = r"^[A-Za-z][-+_A-Za-z0-9]*(/[-+_A-Za-z0-9]+)*$"
INVARIANT_NAME_PATTERN = r"^[a-zA-Z]([a-zA-Z0-9-]*[a-zA-Z0-9])?$"
"""A built-in invariant's name (``diskUsage``) or a custom one's (``replica-lag``)."""
MAX_OCCURRENCE = "744h"
MAX_OCCURRENCE_SECONDS = parse_duration(MAX_OCCURRENCE)

LABEL_KEY_MESSAGE = "key must be a Kubernetes label key"
SELECTOR_VALUES_MESSAGE = "values must be given for In and NotIn, and only for them"
TIMESTAMP_MESSAGE = "{field} must be an RFC 3339 time"
SCHEDULE_MESSAGE = "schedule must be a cron expression (minute hour day-of-month month day-of-week): {detail}"
SCHEDULE_NEVER_MESSAGE = "schedule never matches a time (as 0 0 30 2 *: no February has a 30th)"
OCCURRENCE_MESSAGE = "duration must be more than 0s and at most 744h (31 days)"
TIME_ZONE_MESSAGE = "timeZone must name an IANA time zone, such as UTC or Europe/Berlin"
FIXED_PAIR_MESSAGE = "start and end must be given together (a fixed window)"
RECURRING_PAIR_MESSAGE = "schedule and duration must be given together (a recurring window)"
NO_WHEN_MESSAGE = "give start and end (a fixed window) or schedule and duration (a recurring one)"
BOTH_WHENS_MESSAGE = "give either start and end (a fixed window) or schedule and duration (a recurring one), not both"
END_MESSAGE = "end must be after start"
BOUNDS_MESSAGE = "from and until bound a recurring window (schedule); a fixed window has start and end"
UNTIL_MESSAGE = "until must be after from"


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 time the pattern admitted, as an aware datetime; ValueError for a date no calendar has."""
    return datetime.fromisoformat(value)


class SelectorRequirement(ApiModel):
    """One ``matchExpressions`` entry, as in any Kubernetes label selector."""

    key: str = Field(max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = Field(default_factory=list, max_length=64)

    @field_validator("key")
    @classmethod
    def _label_key(cls, value: str) -> str:
        if not is_label_key(value):
            raise ValueError(LABEL_KEY_MESSAGE)
        return value

    @model_validator(mode="after")
    def _values_for_set_operators(self) -> SelectorRequirement:
        """Kubernetes refuses both mistakes; silently, one would match nothing and the other ignore the values."""
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError(SELECTOR_VALUES_MESSAGE)
        return self


class ClusterSelector(ApiModel):
    """Which MonitoredClusters of the window's namespace it covers, by their labels: every pair and every
    expression must hold; an empty selector covers them all."""

    match_labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=16)
    match_expressions: list[SelectorRequirement] = Field(default_factory=list, max_length=16)

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if not all(is_label_key(key) for key in value):
            raise ValueError(MATCH_LABELS_KEY_MESSAGE)
        return value

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes label-selector semantics: every ``matchLabels`` pair and every expression holds (``NotIn`` and
        ``DoesNotExist`` hold for an object without the key); an empty selector matches everything."""
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        for requirement in self.match_expressions:
            present = requirement.key in labels
            holds = {
                "In": present and labels.get(requirement.key) in requirement.values,
                "NotIn": not present or labels.get(requirement.key) not in requirement.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[requirement.operator]
            if not holds:
                return False
        return True


class MaintenanceWindowSpec(ApiModel):
    """When tickets of the selected clusters are recorded but nobody is told: either one fixed interval (``start``,
    ``end``) or a recurring one (``schedule``, ``duration``, read in ``timeZone``, optionally between ``from`` and
    ``until``). Cron syntax and zone names are beyond CEL, so the API server admits any five fields and any
    well-formed name; these models refuse what croniter or zoneinfo cannot read, and the window's status says why."""

    cluster_selector: ClusterSelector
    invariants: list[Annotated[str, Field(max_length=40, pattern=INVARIANT_NAME_PATTERN)]] = Field(
        default_factory=list, max_length=32
    )
    stores: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list, max_length=128)
    start: Timestamp | None = None
    end: Timestamp | None = None
    schedule: str | None = Field(default=None, max_length=128, pattern=CRON_PATTERN)
    duration: Duration | None = None
    time_zone: str = Field(default="UTC", max_length=64, pattern=TIME_ZONE_PATTERN)
    from_: Timestamp | None = Field(default=None, alias="from")
    until: Timestamp | None = None

    @field_validator("start", "end", "from_", "until")
    @classmethod
    def _calendar_time(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                parse_timestamp(value)
            except ValueError:
                raise ValueError(TIMESTAMP_MESSAGE.format(field=(info.field_name or "").rstrip("_"))) from None
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get("start")
        if value is not None and start is not None and parse_timestamp(value) <= parse_timestamp(start):
            raise ValueError(END_MESSAGE)
        return value

    @field_validator("until")
    @classmethod
    def _after_from(cls, value: str | None, info: ValidationInfo) -> str | None:
        lower = info.data.get("from_")
        if value is not None and lower is not None and parse_timestamp(value) <= parse_timestamp(lower):
            raise ValueError(UNTIL_MESSAGE)
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        """Parsed as the windows will read it, and run once: a schedule that never matches is refused too."""
        if value is None:
            return value
        try:
            croniter(value, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(SCHEDULE_NEVER_MESSAGE) from None
        except (CroniterError, ValueError, KeyError, IndexError) as error:  # croniter's parser raises all of these
            raise ValueError(SCHEDULE_MESSAGE.format(detail=error)) from None
        return value

    @field_validator("duration")
    @classmethod
    def _occurrence_bounds(cls, value: str | None) -> str | None:
        if value is not None and not 0 < _seconds(value) <= MAX_OCCURRENCE_SECONDS:
            raise ValueError(OCCURRENCE_MESSAGE)
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError, OSError):  # not found; not a TZif file (zone.tab); a directory (Europe)
            raise ValueError(TIME_ZONE_MESSAGE) from None
        return value

    @model_validator(mode="after")
    def _one_kind_of_window(self) -> MaintenanceWindowSpec:
        """The CRD's CEL rules on the whole spec, in the same words (end and until are checked at their fields, as
        the CRD reports them)."""
        fixed, recurring = self.start is not None, self.schedule is not None
        if fixed != (self.end is not None):
            raise ValueError(FIXED_PAIR_MESSAGE)
        if recurring != (self.duration is not None):
            raise ValueError(RECURRING_PAIR_MESSAGE)
        if not (fixed or recurring):
            raise ValueError(NO_WHEN_MESSAGE)
        if fixed and recurring:
            raise ValueError(BOTH_WHENS_MESSAGE)
        if not recurring and (self.from_ is not None or self.until is not None):
            raise ValueError(BOUNDS_MESSAGE)
        return self

    @property
    def start_at(self) -> datetime | None:
        return None if self.start is None else parse_timestamp(self.start)

    @property
    def end_at(self) -> datetime | None:
        return None if self.end is None else parse_timestamp(self.end)

    @property
    def from_at(self) -> datetime | None:
        return None if self.from_ is None else parse_timestamp(self.from_)

    @property
    def until_at(self) -> datetime | None:
        return None if self.until is None else parse_timestamp(self.until)

    @property
    def duration_seconds(self) -> float | None:
        return None if self.duration is None else parse_duration(self.duration)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)
