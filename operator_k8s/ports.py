"""The Protocols the service needs and the errors they raise; adapters implement them, tests use small in-memory
fakes (held to the real ones by the contract suite). The values they carry live in the domain."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from operator_k8s.domain.ledger import ClusterRef, SyncResult, TicketEvent
from operator_k8s.domain.notices import ClaimedDelivery, PlannedDelivery, QueuedNotice, SendOutcome, Settled
from operator_k8s.domain.observations import QueryResult
from operator_k8s.domain.outbox import TicketWrite
from operator_k8s.domain.specs import PrometheusAuthSpec
from operator_k8s.domain.tickets import Ticket


class TicketStoreUnavailable(Exception):
    """Postgres did not answer in time; the message is safe to show (no DSN, no secrets)."""


class TicketStore(Protocol):
    async def sync(
        self, cluster_uid: str, writes: Sequence[TicketWrite], horizon: datetime, *, deadline: float
    ) -> SyncResult:
        """Apply the writes (each a compare-and-set) in one transaction and one round trip, within ``deadline``
        seconds; return the cluster's unresolved tickets and those resolved after ``horizon``."""

    async def store_evidence(
        self, ticket_id: int, evidence: dict[str, Any], findings: Sequence[dict[str, str]], summary: str,
        diagnosis: str | None, *, deadline: float,
    ) -> None:  # fmt: skip
        """Keep a ticket's latest evidence and the probable causes found in it."""

    async def store_incidents(
        self, counted: Mapping[int, dict[str, list[str]]], links: Mapping[int, int | None], *, deadline: float
    ) -> None:
        """Keep the stores cluster-level PD tickets count (by ticket id) and each linked ticket's cause."""

    async def close(self) -> None: ...


class EvidenceSource(Protocol):
    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        """What the API server shows about one store's pod (``domain.diagnosis.pod_evidence``), in at most three
        requests, each within ``timeout``; what could not be read is said in it, never raised."""

    async def pod_address(self, namespace: str, pod: str, port_name: str, *, timeout: float) -> str | None:
        """Where the pod's port named ``port_name`` answers (``domain.diagnosis.status_address``), in one request
        within ``timeout``; None when the pod could not be read or declares no such port."""


class TikvStatusSource(Protocol):
    async def tikv_config(self, address: str, *, timeout: float) -> dict[str, Any]:
        """What TiKV's status port at ``address`` serves at ``/config`` (``domain.diagnosis.tikv_config_evidence``),
        in one request within ``timeout``; what could not be read is said in it (``why``), never raised."""

    async def pd_stores(
        self, address: str, pods: Sequence[str], first: str | None, *, timeout: float
    ) -> dict[str, Any]:
        """What PD's client port at ``address`` serves at ``/pd/api/v1/stores`` (``domain.pd_api``), of the
        cluster's stores (``pods``), in one request within ``timeout``; what could not be read is said (``why``)."""


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
        keep: tuple[str, ...] = (),
    ) -> QueryResult:
        """One instant query within ``timeout`` seconds, authenticated as ``auth`` says; each sample's store and
        namespace are its ``store_label`` and ``namespace_label`` values, and the labels named in ``keep`` are kept.
        Failures (a credential file that cannot be used included) come back as a QueryResult, never as an
        exception."""


class KubernetesRejected(Exception):
    """The API server refused a write (4xx other than conflict or not-found); the message is its reason."""


class KubernetesUnavailable(Exception):
    """The API server did not answer in time."""


class KubernetesConflict(Exception):
    """The object changed since it was observed (409 on the resourceVersion it was written from, or it exists)."""


class KubernetesNotFound(Exception):
    """The object to patch does not exist (any more)."""


class TicketMirror(Protocol):
    """Writes of what Kubernetes shows. Every patch names the resourceVersion it was computed from (optimistic
    lock, as CloudNativePG's ``PatchWithOptimisticLock``), so two writers conflict instead of overwriting."""

    async def create(self, body: dict[str, Any]) -> None:
        """Create a Ticket resource; KubernetesConflict if one of that name exists."""

    async def patch(self, namespace: str, name: str, resource_version: str, patch: dict[str, Any]) -> None:
        """Merge-patch a Ticket resource; KubernetesConflict if it changed since, KubernetesNotFound if gone."""

    async def delete(self, namespace: str, name: str) -> None: ...

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None: ...

    async def write_status(self, ref: ClusterRef, patch: dict[str, Any], resource_version: str | None) -> None:
        """Merge-patch the MonitoredCluster's status subresource (KubernetesConflict if it changed since)."""

    async def read_status(self, ref: ClusterRef) -> tuple[dict[str, Any], str] | None:
        """The MonitoredCluster's current status and resourceVersion (None if it is gone)."""


class DeliveryQueue(Protocol):
    """The Postgres delivery queue (``adapters.delivery_queue``): notices routed, deliveries claimed with a lease."""

    async def route(self, plan: Callable[[QueuedNotice], list[PlannedDelivery]], *, limit: int = 200) -> int: ...

    async def deferred(self, *, limit: int = 500) -> list[tuple[int, datetime, QueuedNotice]]: ...

    async def reschedule(self, due: Sequence[tuple[int, datetime]]) -> None: ...

    async def claim(self, receiver: str, owner: str, lease: timedelta, *, limit: int) -> list[ClaimedDelivery]: ...

    async def settle(self, delivery_id: int, owner: str, settled: Settled) -> bool: ...

    async def disabled(self) -> dict[str, str]: ...

    async def disable(self, receiver: str, digest: str, reason: str) -> int: ...

    async def open_tickets(self) -> list[Ticket]: ...

    async def told_firing(self, receiver: str) -> set[int]: ...

    async def recent_endings(self, receiver: str, since: datetime) -> list[QueuedNotice]: ...

    async def prune(self, older_than: timedelta, receivers: Sequence[str]) -> int: ...

    async def pending(self) -> dict[str, int]: ...

    async def reset(self) -> None: ...


class ReceiverClient(Protocol):
    """HTTP to the receivers; every failure comes back as a SendOutcome, never as an exception."""

    async def webhook(
        self, url: str, key_files: Sequence[str], message_id: str, payload: dict[str, Any], timeout: float
    ) -> SendOutcome: ...

    async def alerts(
        self, url: str, alerts: Sequence[dict[str, Any]], timeout: float, token_file: str = ""
    ) -> SendOutcome: ...

    async def silences(self, url: str, timeout: float, token_file: str = "") -> list[dict[str, Any]] | None: ...

    async def create_silence(
        self, url: str, silence: dict[str, Any], timeout: float, token_file: str = ""
    ) -> SendOutcome: ...

    async def expire_silence(self, url: str, silence_id: str, timeout: float, token_file: str = "") -> SendOutcome: ...


@dataclass(frozen=True)
class LeaseRecord:
    """One ``coordination.k8s.io`` Lease of ours: ``version`` is its resourceVersion, the compare-and-set token."""

    name: str
    holder: str
    duration_seconds: int
    version: str
    transitions: int = 0
    acquired_at: str = ""
    """When the holder's term began (MicroTime, UTC), kept as read so a renewal does not move it."""


class Leases(Protocol):
    """The Leases of one installation, in one namespace. Kubernetes is the arbiter: a write carrying an old
    ``version`` is refused (409), and ``write`` then returns False."""

    async def list(self) -> list[LeaseRecord]:
        """Every Lease of this installation, in one LIST."""

    async def write(self, lease: LeaseRecord, *, acquired: bool) -> bool:
        """Create (``version`` empty) or replace the Lease; ``acquired``: this write starts a new holder's term
        (acquireTime, leaseTransitions). False when another writer got there first."""

    async def delete(self, lease: LeaseRecord) -> None: ...
