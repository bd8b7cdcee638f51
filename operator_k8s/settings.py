"""Operator settings from the environment, validated once at start-up. Secrets never reach logs or reprs.

pydantic-settings maps ``OPERATOR_K8S_<FIELD>`` variables to fields, so a new setting is one field here and nothing
else. Two conventions of ours sit on top of it as sources: the DSN may come from a file (``*_DSN_FILE``, as a mounted
Secret gives it, and it wins over the variable), and ``NAMESPACES`` is a comma-separated list (what a Helm template
writes), not JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from operator_k8s.domain.receivers import NotificationsConfig

PREFIX = "OPERATOR_K8S_"
DSN_VARIABLE = f"{PREFIX}DATABASE_DSN"
DSN_FILE_VARIABLE = f"{PREFIX}DATABASE_DSN_FILE"


class SettingsError(Exception):
    """The environment does not describe a usable operator; the message says which variable and why."""


class Settings(BaseSettings):
    """Every knob of the operator. ``load_settings`` is the way in: it turns validation errors into messages that
    name the variable; constructing ``Settings`` directly (tests) reads the process's environment under the given
    values, as pydantic-settings does."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, case_sensitive=False, frozen=True, extra="forbid")

    database_dsn: SecretStr
    database_dsn_file: str = Field(
        default="", description="File holding the DSN (a mounted Secret): read again for each new connection"
    )
    tick_seconds: float = Field(default=5.0, gt=0, le=60, description="Base period of the per-cluster timers")
    reopen_window_seconds: float = Field(default=600, ge=0)
    ticket_retention_seconds: float = Field(default=3600, ge=0)
    postgres_timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="Deadline of one Postgres call")
    crash_after_commit: float = Field(
        default=0.0, ge=0, le=1, description="Test failpoint: chance of a SIGKILL right after a Postgres commit"
    )
    orphan_sweep_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Period of the sweep that resolves deleted clusters' tickets"
    )
    db_pool_size: int = Field(default=4, ge=1, le=64)
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Empty: watch every namespace; from the environment: comma-separated"
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="json", pattern="^(json|text)$")
    bind_address: str = Field(default="127.0.0.1", description="Address of the metrics and health endpoints")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="0 disables the metrics endpoint")
    health_port: int = Field(default=8081, ge=0, le=65535, description="0 disables kopf's health endpoint")
    peering: str = Field(default="", description="kopf peering name; empty runs standalone")
    peering_lifetime_seconds: int = Field(default=60, ge=5, le=3600, description="How long a silent peer counts")
    peering_wait_seconds: float = Field(
        default=30,
        ge=0,
        le=600,
        description="How long a replica waits at start for the peering object (kopf's health endpoint starts after: "
        "keep it inside the liveness probe's budget)",
    )
    sharding: str = Field(
        default="",
        pattern="^(|leases)$",
        description="leases: every replica checks its share of the clusters, one Lease per shard; empty: one process "
        "checks them all (standalone, or the active one under peering)",
    )
    shard_count: int = Field(default=32, ge=1, le=256, description="Virtual shards the clusters are hashed onto")
    shard_lease_seconds: int = Field(
        default=10, ge=3, le=300, description="A shard Lease's duration: how long a killed replica's shards wait"
    )
    shard_renew_seconds: float = Field(default=2.0, ge=0.5, le=60, description="Period of the shard Lease loop")
    lease_namespace: str = Field(default="", description="Namespace of the shard Leases (the operator's own)")
    lease_prefix: str = Field(
        default="operator-k8s",
        pattern="^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$",
        description="Names this installation's Leases (<prefix>-shard-NN, <prefix>-member-<identity>)",
    )
    identity: str = Field(
        default="",
        pattern=r"^([a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?)?$",
        description="This replica's name in the Leases (the pod's name; a lower-case DNS name); empty: host-pid",
    )
    evidence: bool = Field(
        default=True,
        description="Gather evidence and diagnose a ticket when it opens or escalates (false: tickets only, as before"
        " diagnosis; the benchmark's before and after)",
    )
    notifications_file: str = Field(
        default="",
        description="Where notifications go (receivers, routes; the chart's notifications value, mounted): empty sends"
        " none",
    )
    prometheus_credentials_dir: str = Field(
        default="/etc/operator-k8s/prometheus",
        max_length=4096,
        pattern="^/",
        description="Absolute path of the directory spec.prometheus.auth's files are read from (and never outside it)",
    )
    prometheus_max_answer_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="Decoded bytes one Prometheus answer may bring into memory (refused while read past it)",
    )
    prometheus_max_answer_series: int = Field(
        default=5_000, ge=1, le=10_000_000, description="Series one Prometheus answer may hold (refused past it)"
    )
    prometheus_max_buffered_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024 * 1024,
        le=16 * 1024 * 1024 * 1024,
        description="Bytes of answers all queries together may hold while reading (a query waits for room)",
    )
    prometheus_query_threads: int = Field(
        default=256, ge=2, le=4096, description="Worker threads for Prometheus queries (started as needed)"
    )
    prometheus_slots_per_endpoint: int = Field(
        default=16, ge=1, le=256, description="Queries in flight to one Prometheus once it answers in time"
    )

    @model_validator(mode="after")
    def _sharding_has_a_home(self) -> Settings:
        if self.sharding and not self.lease_namespace:
            raise ValueError("sharding needs OPERATOR_K8S_LEASE_NAMESPACE (where the shard Leases live)")
        if self.sharding and self.peering:
            raise ValueError("sharding and peering exclude each other: every sharded replica is active")
        if self.shard_renew_seconds * 3 > self.shard_lease_seconds:
            raise ValueError("OPERATOR_K8S_SHARD_RENEW_SECONDS must be at most a third of the shard lease")
        return self

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """A Helm template writes ``a,b`` more easily than JSON; blanks and empty items mean nothing."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment only, as ``load_settings`` reads it: no ``.env`` file, no secrets directory, so a file
        lying in the working directory never changes what the operator does."""
        return (init_settings, *_sources(settings_cls, os.environ))


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the process's, or a test's), so that tests and
    the integration tiers pass their own environment without touching the process's. Only upper-case names count
    (``OPERATOR_K8S_TICK_SECONDS``, not ``operator_k8s_tick_seconds``): environment names are case-sensitive, and
    pydantic-settings matches them case-insensitively once lower-cased."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {name.lower(): value for name, value in environ.items() if name == name.upper()}


class _DsnFile(PydanticBaseSettingsSource):
    """``OPERATOR_K8S_DATABASE_DSN_FILE``: the DSN from a file (a mounted Secret's key), so the password never
    sits in the pod's environment. It wins over ``OPERATOR_K8S_DATABASE_DSN``; an empty value counts as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.path = environ.get(DSN_FILE_VARIABLE, "")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the one field this source knows

    def __call__(self) -> dict[str, Any]:
        if not self.path:
            return {}
        try:
            dsn = Path(self.path).read_text().strip()
        except OSError as error:
            raise SettingsError(f"{DSN_FILE_VARIABLE}={self.path} cannot be read: {error.strerror}") from None
        if not dsn:
            raise SettingsError(f"{DSN_FILE_VARIABLE}={self.path} is empty (it should hold a Postgres DSN)")
        return {"database_dsn": dsn}


def _sources(settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> tuple[PydanticBaseSettingsSource, ...]:
    """Highest priority first, as pydantic-settings orders them."""
    return _DsnFile(settings_cls, environ), _Environment(settings_cls, environ)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``env`` (default: the process's environment), or a SettingsError naming each variable that
    is wrong and why. Messages carry pydantic's reason, never the value: a value may be a secret."""
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    for source in reversed(_sources(Settings, environ)):
        values.update(source())
    if not values.get("database_dsn"):
        raise SettingsError(f"Set {DSN_VARIABLE} or {DSN_FILE_VARIABLE} (a Postgres DSN, e.g. from a Secret)")
    try:
        return Settings.model_validate(values)  # validates these values only: the sources were read above
    except ValidationError as error:
        problems = "; ".join(
            f"{PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else str(e["msg"]) for e in error.errors()
        )
        raise SettingsError(problems) from None


def load_notifications(path: str) -> NotificationsConfig:
    """The notifications file (``OPERATOR_K8S_NOTIFICATIONS_FILE``), or a SettingsError naming the file and each
    field that is wrong; no file configured sends nothing."""
    if not path:
        return NotificationsConfig()
    variable = f"{PREFIX}NOTIFICATIONS_FILE={path}"
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise SettingsError(f"{variable} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"{variable} is not YAML: {error}") from None
    try:
        return NotificationsConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise SettingsError(f"{variable}: {problems}") from None
