"""The Protocols the service needs; adapters implement them, tests use small in-memory fakes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from operator_k8s.domain.observations import QueryResult
from operator_k8s.domain.outbox import TicketWrite
from operator_k8s.domain.specs import PrometheusAuthSpec
from operator_k8s.domain.tickets import Ticket

__all__ = ["TicketWrite"]


@dataclass(frozen=True)
class ClusterRef:
    """The MonitoredCluster a cycle is about."""

    uid: str
    name: str
    namespace: str
    generation: int


class TicketStoreUnavailable(Exception):
    """Postgres did not answer in time; the message is safe to show (no DSN, no secrets)."""


@dataclass(frozen=True)
class SyncResult:
    """What Postgres holds after a sync, and which writes it did not apply.

    ``conflicts``: the positions of writes decided from a version that is no longer current (another writer got
    there first); the caller re-decides from ``tickets``. ``rejected``: writes Postgres refused (the reason, safe to
    show); dropped.
    """

    tickets: list[Ticket]
    conflicts: frozenset[int] = frozenset()
    rejected: tuple[str, ...] = ()


class TicketStore(Protocol):
    async def sync(
        self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime, *, deadline: float
    ) -> SyncResult:
        """Apply the writes (each a compare-and-set) in one transaction and one round trip, within ``deadline``
        seconds; return the cluster's unresolved tickets and those resolved after ``horizon``."""

    async def close(self) -> None: ...


class MetricsSource(Protocol):
    async def query(
        self,
        url: str,
        promql: str,
        *,
        store_label: str,
        namespace_label: str,
        timeout: float,
        auth: PrometheusAuthSpec | None = None,
    ) -> QueryResult:
        """One instant query within ``timeout`` seconds, authenticated as ``auth`` says; each sample's store and
        namespace are its ``store_label`` and ``namespace_label`` values. Failures (a credential file that cannot be
        used included) come back as a QueryResult, never as an exception."""


@dataclass(frozen=True)
class TicketEvent:
    """A Kubernetes Event about a ticket transition, reported on the MonitoredCluster."""

    reason: str
    message: str
    warning: bool


@dataclass
class Projection:
    """What the Kubernetes side should show for one ticket: labels and status, and the human intent in spec (set
    when the resource is created, so a rebuilt Ticket shows what Postgres holds)."""

    name: str
    labels: dict[str, str]
    status: dict[str, Any]
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TicketResource:
    """A Ticket resource a human edited: where it is, and the ticket it says it shows (its status, or its name)."""

    namespace: str
    name: str
    ticket_id: int


class KubernetesRejected(Exception):
    """The API server refused a write (4xx other than conflict or not-found); the message is its reason."""


class KubernetesUnavailable(Exception):
    """The API server did not answer in time."""


class TicketMirror(Protocol):
    async def upsert(self, owner: ClusterRef, projection: Projection, *, labels_changed: bool) -> None:
        """Create the Ticket resource (with its spec) or update its labels (if changed) and status."""

    async def delete(self, namespace: str, name: str) -> None: ...

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None: ...

    async def write_status(self, ref: ClusterRef, status: dict[str, Any]) -> None:
        """Write the MonitoredCluster's status (a merge patch of the status subresource)."""
