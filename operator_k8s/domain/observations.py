"""What one check cycle gathered: store pods from Kubernetes and query results from Prometheus."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum


@dataclass(frozen=True)
class StorePod:
    """The facts about one store pod that the invariants need."""

    name: str
    phase: str
    ready: bool
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def healthy(self) -> bool:
        return self.phase == "Running" and self.ready


def select_pods(pods: Iterable[StorePod], match_labels: Mapping[str, str]) -> tuple[StorePod, ...]:
    """The pods whose labels include every ``matchLabels`` pair (the namespace's other pods are not stores)."""
    wanted = set(match_labels.items())
    return tuple(pod for pod in pods if wanted <= set(pod.labels))


@dataclass(frozen=True)
class Sample:
    """One series' value; ``store`` is None for a series without the store label (a cluster-wide value), and
    ``namespace`` None for a series without the namespace label."""

    store: str | None
    value: float
    namespace: str | None = None


class QueryFailure(StrEnum):
    UNREACHABLE = "unreachable"
    ERROR = "error"


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one instant query: samples, or why there are none."""

    query: str
    samples: tuple[Sample, ...] = ()
    failure: QueryFailure | None = None
    error: str = ""

    @classmethod
    def failed(cls, query: str, failure: QueryFailure, error: str) -> QueryResult:
        return cls(query=query, failure=failure, error=error)


def scope_result(
    result: QueryResult, namespace: str, owned: frozenset[str], *, per_store: bool, namespace_scoped: bool = True
) -> tuple[QueryResult, int]:
    """Keep only the series about this cluster: its own stores (for a cluster-wide query, also series that name no
    store) in its own namespace.

    A series naming no namespace counts as this namespace's only if the operator scoped the query to it
    (``namespace_scoped``): an unscoped query that aggregates the namespace label away (``max by (pod) (…)``) mixes
    every namespace's same-named pods. A query may reach other namespaces or other clusters' pods (an unscoped
    custom query, a shared Prometheus); those series are dropped and counted, never judged. Returns the scoped result
    and how many series were dropped.
    """
    kept = tuple(
        sample
        for sample in result.samples
        if (sample.namespace == namespace if sample.namespace is not None else namespace_scoped)
        and (sample.store in owned if sample.store is not None else not per_store)
    )
    return replace(result, samples=kept), len(result.samples) - len(kept)


@dataclass(frozen=True)
class Snapshot:
    """Everything one cycle decides from. ``results`` is keyed by invariant name."""

    pods: tuple[StorePod, ...]
    results: dict[str, QueryResult]
    tracked_stores: dict[str, frozenset[str]]
    """Stores that have an active ticket, per invariant: they are judged even when no pod or series names them."""
