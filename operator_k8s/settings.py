"""Operator settings from the environment, validated once at start-up. Secrets never reach logs or reprs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

PREFIX = "OPERATOR_K8S_"


class SettingsError(Exception):
    """The environment does not describe a usable operator; the message says which variable and why."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    database_dsn: SecretStr
    tick_seconds: float = Field(default=5.0, gt=0, le=60, description="Base period of the per-cluster timers")
    reopen_window_seconds: float = Field(default=600, ge=0)
    ticket_retention_seconds: float = Field(default=3600, ge=0)
    query_concurrency: int = Field(default=16, ge=2, le=128, description="Worker threads for Prometheus queries")
    query_concurrency_per_prometheus: int = Field(
        default=4, ge=1, le=64, description="Queries in flight to any one Prometheus (one slow endpoint starves none)"
    )
    postgres_timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="Deadline of one Postgres call")
    crash_after_commit: float = Field(
        default=0.0, ge=0, le=1, description="Test failpoint: chance of a SIGKILL right after a Postgres commit"
    )
    orphan_sweep_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Period of the sweep that resolves deleted clusters' tickets"
    )
    db_pool_size: int = Field(default=4, ge=1, le=64)
    namespaces: list[str] = Field(default_factory=list, description="Empty: watch every namespace")
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
    prometheus_credentials_dir: str = Field(
        default="/etc/operator-k8s/prometheus",
        max_length=4096,
        pattern="^/",
        description="Absolute path of the directory spec.prometheus.auth's files are read from (and never outside it)",
    )
    prometheus_max_answer_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="Decoded bytes one Prometheus answer may bring into memory (refused while read past it)",
    )
    prometheus_max_answer_series: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Series one Prometheus answer may hold (refused past it)"
    )
    prometheus_max_buffered_bytes: int = Field(
        default=64 * 1024 * 1024,
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


def _dsn(env: Mapping[str, str]) -> str:
    path = env.get(f"{PREFIX}DATABASE_DSN_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as error:
            raise SettingsError(f"{PREFIX}DATABASE_DSN_FILE={path} cannot be read: {error.strerror}") from None
    dsn = env.get(f"{PREFIX}DATABASE_DSN")
    if not dsn:
        raise SettingsError(
            f"Set {PREFIX}DATABASE_DSN or {PREFIX}DATABASE_DSN_FILE (a Postgres DSN, e.g. from a Secret)"
        )
    return dsn


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, object] = {"database_dsn": _dsn(env)}
    for name in Settings.model_fields:
        raw = env.get(PREFIX + name.upper())
        if raw is None or name == "database_dsn":
            continue
        values[name] = [n.strip() for n in raw.split(",") if n.strip()] if name == "namespaces" else raw
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(f"{PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in error.errors())
        raise SettingsError(problems) from None
