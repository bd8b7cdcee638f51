"""Pydantic models of the MonitoredCluster and Ticket specs, mirroring the CRD schemas in ``crds/``.

The API server has already validated what reaches us; these models turn it into typed values and catch what only
the operator can judge (a duration it cannot parse, for instance). ``tests/unit/test_crd_models.py`` keeps the models
and the schemas in step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from operator_k8s.domain.durations import parse_duration
from operator_k8s.domain.vocabulary import Severity

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
Duration = Annotated[str, Field(max_length=16, pattern=DURATION_PATTERN)]
Comparator = Literal[">", ">=", "<", "<="]
LabelName = Annotated[str, Field(max_length=63, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected, values immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class LabelSelector(ApiModel):
    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(min_length=1, max_length=16)


class StoresSpec(ApiModel):
    selector: LabelSelector
    expected: int | None = Field(default=None, ge=0, le=10000)


class PrometheusSpec(ApiModel):
    url: str = Field(max_length=2048, pattern=r"^https?://")
    timeout: Duration = "5s"
    rate_window: Duration = "1m"
    store_label: str = Field(default="pod", max_length=63, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    matchers: dict[LabelName, Annotated[str, Field(max_length=256)]] = Field(default_factory=dict, max_length=16)

    @field_validator("timeout", "rate_window")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_duration(value)
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

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_)

    @property
    def clear_for_seconds(self) -> float:
        return parse_duration(self.clear_for)


class StoresReadySpec(InvariantSpec):
    pass


class LatencySpec(InvariantSpec):
    severity: Severity = Severity.WARNING
    quantile: float = Field(default=0.99, gt=0, lt=1)
    threshold_ms: float = Field(default=500, gt=0, le=3_600_000)
    clear_threshold_ms: float | None = Field(default=None, gt=0, le=3_600_000)

    @model_validator(mode="after")
    def _clear_on_safe_side(self) -> LatencySpec:
        if self.clear_threshold_ms is not None and self.clear_threshold_ms > self.threshold_ms:
            raise ValueError("clearThresholdMs must not exceed thresholdMs")
        return self


class DiskUsageSpec(InvariantSpec):
    severity: Severity = Severity.WARNING
    threshold_percent: float = Field(default=85, gt=0, le=100)
    clear_threshold_percent: float | None = Field(default=None, gt=0, le=100)

    @model_validator(mode="after")
    def _clear_on_safe_side(self) -> DiskUsageSpec:
        if self.clear_threshold_percent is not None and self.clear_threshold_percent > self.threshold_percent:
            raise ValueError("clearThresholdPercent must not exceed thresholdPercent")
        return self


class CustomInvariantSpec(InvariantSpec):
    severity: Severity = Severity.WARNING
    name: str = Field(max_length=40, pattern=r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
    query: str = Field(min_length=1, max_length=4096)
    scope: Literal["store", "cluster"] = "store"
    comparator: Comparator
    threshold: float
    clear_threshold: float | None = None

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
    custom: list[CustomInvariantSpec] = Field(default_factory=list, max_length=20)

    @field_validator("custom")
    @classmethod
    def _unique_names(cls, value: list[CustomInvariantSpec]) -> list[CustomInvariantSpec]:
        names = [item.name for item in value]
        if len(names) != len(set(names)):
            raise ValueError("custom invariant names must be unique")
        return value


class MonitoredClusterSpec(ApiModel):
    interval: Duration = "30s"
    preset: Literal["tikv", "generic"] = "tikv"
    stores: StoresSpec
    prometheus: PrometheusSpec
    queries: QueryOverrides = Field(default_factory=QueryOverrides)
    invariants: InvariantsSpec = Field(default_factory=InvariantsSpec)

    @field_validator("interval")
    @classmethod
    def _interval_bounds(cls, value: str) -> str:
        if not 1 <= parse_duration(value) <= 3600:
            raise ValueError("interval must be between 1s and 1h")
        return value

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


class TicketSpec(ApiModel):
    """What humans may set on a Ticket resource."""

    hold: bool = False
    acknowledged: bool = False
    note: str | None = Field(default=None, max_length=1024)
