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
    labels: tuple[tuple[str, str], ...] = ()
    """Other labels the caller asked to keep (evidence queries: a request ``type``, PD's ``store`` id)."""

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


def samples_of(
    data: object, store_label: str, namespace_label: str, keep: tuple[str, ...] = ()
) -> tuple[tuple[Sample, ...], int]:
    """The samples of an instant-vector answer (``data.result``) and how many series were malformed.

    An answer is input from a server we do not control: a series that is not an object, has no ``[time, "value"]``
    pair, or labels the store or namespace with anything but a string (a list, a number) is counted and skipped,
    never allowed to stop a cycle. NaN and ±Inf are kept: the invariants judge them. The labels named in ``keep``
    are kept with each sample (a label that is missing or not a string is left out)."""
    if not isinstance(data, list):
        return (), 0
    samples, malformed = [], 0
    for series in data:
        try:
            value = float(series["value"][1])
            labels = series.get("metric") or {}
            store, namespace = labels.get(store_label), labels.get(namespace_label)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            malformed += 1
            continue
        if not isinstance(store, str | None) or not isinstance(namespace, str | None):
            malformed += 1
            continue
        kept = tuple((name, labels[name]) for name in keep if isinstance(labels.get(name), str))
        samples.append(Sample(store=store, value=value, namespace=namespace, labels=kept))
    return tuple(samples), malformed


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
    malformed: int = 0
    """Series of the answer that could not be read (see ``samples_of``): ignored, and counted as such."""

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
    return replace(result, samples=kept), len(result.samples) - len(kept) + result.malformed


@dataclass(frozen=True)
class Snapshot:
    """Everything one cycle decides from. ``results`` is keyed by invariant name."""

    pods: tuple[StorePod, ...]
    results: dict[str, QueryResult]
    tracked_stores: dict[str, frozenset[str]]
    """Stores that have an active ticket, per invariant: they are judged even when no pod or series names them."""
