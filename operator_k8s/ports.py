"""The Protocols the service needs; adapters implement them, tests use small in-memory fakes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from operator_k8s.domain.observations import QueryResult
from operator_k8s.domain.tickets import Effect, Ticket


@dataclass(frozen=True)
class ClusterRef:
    """The MonitoredCluster a cycle is about."""

    uid: str
    name: str
    namespace: str
    generation: int


@dataclass(frozen=True)
class TicketWrite:
    """A ticket's new row (None: delete the row) and the history to append with it."""

    before: Ticket | None
    after: Ticket | None
    effects: tuple[Effect, ...] = ()
    at: datetime | None = None


class TicketStoreUnavailable(Exception):
    """Postgres did not answer; the message is safe to show (no DSN, no secrets)."""


class TicketStore(Protocol):
    async def sync(self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime) -> list[Ticket]:
        """Apply the writes in one transaction and one round trip; return the cluster's unresolved tickets and those
        resolved after ``horizon``."""

    async def close(self) -> None: ...


class MetricsSource(Protocol):
    async def query(self, url: str, promql: str, *, store_label: str, timeout: float) -> QueryResult:
        """One instant query; each sample's store is its ``store_label`` value. Failures come back as a
        QueryResult, never as an exception."""


@dataclass(frozen=True)
class TicketEvent:
    """A Kubernetes Event about a ticket transition, reported on the MonitoredCluster."""

    reason: str
    message: str
    warning: bool


@dataclass
class Projection:
    """What the Kubernetes side should show for one ticket."""

    name: str
    labels: dict[str, str]
    status: dict[str, Any]


class TicketMirror(Protocol):
    async def upsert(self, owner: ClusterRef, projection: Projection) -> None:
        """Create the Ticket resource or patch its labels and status."""

    async def delete(self, namespace: str, name: str) -> None: ...

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None: ...
