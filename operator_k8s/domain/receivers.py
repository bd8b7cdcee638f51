"""Where notifications go: receivers and routes, as an administrator configures them (the chart's
``notifications`` value, mounted as a file), and the pure routing of a notice to receivers.

Only the administrator names receivers and credentials: a MonitoredCluster cannot say where its notifications go,
so a user who may create one cannot send them, or a credential, anywhere the administrator did not allow. Signing
keys and tokens are files (mounted Secrets), never read through the API.

A route may select clusters by their labels (``clusterSelector``). Whoever may create a MonitoredCluster sets its
labels, so a label route is a choice among the receivers the administrator configured and nothing more: a label
never carries a URL, a key or a receiver's name into a send, it only decides which of the configured routes match
(as ``severities`` does: a route by labels is only as strict as the namespaces it also names).

The labels a notice is routed by are the cluster's labels when its ticket was first recorded, stored with the ticket
in the same transaction and copied onto each of its notices (``Ticket.cluster_labels``). Routing is then a pure
function of the notice and the configuration: a restart, a replica taking over (whose watch may not have listed
the clusters yet) or a cluster relabelled meanwhile routes a ticket's every notice, and its Alertmanager alert, the
way its opening was routed, so a resolution always reaches whoever heard of the opening. A relabelled cluster's new
labels route its next tickets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from operator_k8s.domain.specs import URL_PATTERN, ClusterSelector
from operator_k8s.domain.vocabulary import Severity

ReceiverName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class ConfigModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AlertmanagerTarget(ConfigModel):
    """An Alertmanager (v2 API), or several of one HA cluster: each is sent every alert (their gossip
    deduplicates), as Prometheus does."""

    urls: list[Annotated[str, Field(max_length=2048, pattern=URL_PATTERN)]] = Field(min_length=1, max_length=8)
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    resend_seconds: float = Field(
        default=30.0, ge=1, le=60, description="How often every open ticket's alert is sent again (at most a minute)"
    )
    bearer_token_file: str = ""
    silence_acknowledged: bool = Field(
        default=False,
        description="Mirror each acknowledgement as a silence of its ticket's alert, expired when it resolves or the"
        " acknowledgement is withdrawn (before the resolution is sent)",
    )


class WebhookTarget(ConfigModel):
    """A signed webhook (Standard Webhooks): HMAC-SHA256 with each key in ``key_files`` (several during a rotation;
    each file holds a ``whsec_`` base64 key)."""

    url: str = Field(max_length=2048, pattern=URL_PATTERN)
    key_files: list[str] = Field(min_length=1, max_length=4)
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    concurrency: int = Field(default=4, ge=1, le=64)


class Receiver(ConfigModel):
    name: ReceiverName
    alertmanager: AlertmanagerTarget | None = None
    webhook: WebhookTarget | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.alertmanager is None) == (self.webhook is None):
            raise ValueError(f"receiver {self.name}: set exactly one of alertmanager or webhook")
        return self

    @property
    def kind(self) -> Literal["alertmanager", "webhook"]:
        return "alertmanager" if self.alertmanager is not None else "webhook"

    @property
    def endpoint_digest(self) -> str:
        """Names the endpoint a 410 disabled: a receiver pointed at a new URL is enabled again."""
        target = self.alertmanager.urls if self.alertmanager is not None else [self.webhook.url]  # type: ignore[union-attr]
        return hashlib.sha256("\n".join(target).encode()).hexdigest()[:16]


class Route(ConfigModel):
    """Send to ``receivers`` the notices that match every list given (an empty list matches anything). Every
    matching route applies; a notice that matches none goes nowhere (and says so in its history)."""

    receivers: list[ReceiverName] = Field(min_length=1)
    namespaces: list[str] = Field(default_factory=list)
    clusters: list[Annotated[str, Field(pattern=r"^[a-z0-9][-a-z0-9]*/[a-z0-9][-a-z0-9.]*$")]] = Field(
        default_factory=list, description="namespace/name of MonitoredClusters (a name alone would match any namespace)"
    )
    invariants: list[str] = Field(default_factory=list)
    severities: list[Severity] = Field(default_factory=list)
    cluster_selector: ClusterSelector | None = Field(
        default=None,
        description="MonitoredClusters by their labels (a Kubernetes label selector: matchLabels, matchExpressions"
        " with In, NotIn, Exists, DoesNotExist); absent: any cluster. It chooses among the configured receivers only",
    )

    def matches(
        self, *, namespace: str, cluster: str, invariant: str, severity: Severity,
        cluster_labels: Mapping[str, str] | None = None,
    ) -> bool:  # fmt: skip
        return (
            (not self.namespaces or namespace in self.namespaces)
            and (not self.clusters or f"{namespace}/{cluster}" in self.clusters)
            and (not self.invariants or invariant in self.invariants)
            and (not self.severities or severity in self.severities)
            and (self.cluster_selector is None or self.cluster_selector.matches(cluster_labels or {}))
        )


class NotificationsConfig(ConfigModel):
    receivers: list[Receiver] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    watchdog: list[ReceiverName] = Field(
        default_factory=list, description="Alertmanager receivers sent the always-firing watchdog alert"
    )
    prometheus_url: str = Field(default="", description="Prometheus as the people on call reach it, for graph links")
    runbook_url: str = Field(default="", description="Runbooks' base URL: <runbookUrl>/<invariant>")
    retention_hours: float = Field(default=168, gt=0, description="How long finished deliveries are kept")
    instance: str = Field(
        default="", max_length=63, pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description="This installation's name (e.g. the Kubernetes cluster's), in every ticket key, webhook id and the"
        " watchdog: two installations posting to one integration never share a key",
    )  # fmt: skip

    @model_validator(mode="after")
    def _known_receivers(self) -> Self:
        names = [r.name for r in self.receivers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"receiver names must be unique: {', '.join(duplicates)}")
        for route in self.routes:
            unknown = sorted(set(route.receivers) - set(names))
            if unknown:
                raise ValueError(f"a route names receivers that are not defined: {', '.join(unknown)}")
        alertmanagers = {r.name for r in self.receivers if r.alertmanager is not None}
        if set(self.watchdog) - alertmanagers:
            raise ValueError("watchdog must name alertmanager receivers: " + ", ".join(sorted(set(self.watchdog))))
        return self

    def receiver(self, name: str) -> Receiver | None:
        return next((r for r in self.receivers if r.name == name), None)


def receivers_for(
    routes: Sequence[Route], *, namespace: str, cluster: str, invariant: str, severity: Severity,
    cluster_labels: Mapping[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """The receivers a notice (or an open ticket's alert) goes to: every matching route's, each once, in order.
    ``cluster_labels``: the labels its ticket was recorded with (see the module's docstring)."""
    names: list[str] = []
    for route in routes:
        if route.matches(
            namespace=namespace, cluster=cluster, invariant=invariant, severity=severity, cluster_labels=cluster_labels
        ):
            names += [name for name in route.receivers if name not in names]
    return names
