"""PromQL for the invariants, from presets or user overrides, with label values safely escaped.

The ``tikv`` preset follows TiKV's and PD's own semantics (tikv/tikv:metrics/alertmanager/tikv.rules.yml,
tikv/pd:metrics/alertmanager/pd.rules.yml, and ../shared/notes/tikv-metrics.md):

- latency: the quantile over the configured request types only (default: point reads and writes; never lock waits,
  GC or scans, which are slow by design), per store. An idle store has no observations: its quantile is NaN, which
  the invariant reads as "no traffic", not as missing data.
- diskUsage: ``1 - available/capacity`` (TiKV's ``used`` is only its own data), guarded by ``capacity > 0`` (TiKV
  reports 0 when it cannot read disk stats); optionally an absolute floor on ``available``.
- criticalErrors: any increase of ``tikv_critical_error_total``; writeStall: ``delta()`` of the write-stall gauge.
- pdStores / pdRegions: what PD's *leader* reports (``and on (instance) etcd_server_is_leader > 0``), from the
  cluster's PD pods only; PD spells region states with hyphens.

Templates may use ``{selector}`` (the matchers naming this cluster's series: its namespace, the extra matchers and
its stores, with braces), ``{matchers}`` (the same without braces, to append), ``{scope}`` (namespace and extra
matchers only), ``{namespace}``, ``{stores}`` (a regex alternation of its stores), ``{store_label}``, ``{quantile}``,
``{window}``, ``{types}``; any other brace is PromQL's own. Whatever a query returns, the service judges only the
cluster's own stores (``observations.scope_result``).
"""

from __future__ import annotations

from dataclasses import dataclass

from operator_k8s.domain.specs import CustomInvariantSpec, MonitoredClusterSpec
from operator_k8s.domain.vocabulary import Invariant

DISK_AVAILABLE = "diskUsage:available"
"""The result key of the disk floor's query (available bytes per store), judged with diskUsage."""

_LATENCY = (
    "histogram_quantile({quantile}, sum by (le, {store_label}) "
    '(rate(tikv_grpc_msg_duration_seconds_bucket{{matchers},type=~"{types}"}[{window}]))) * 1000'
)
_CAPACITY = 'sum by ({store_label}) (tikv_store_size_bytes{type="capacity",{matchers}}) > 0'
_DISK = '(1 - sum by ({store_label}) (tikv_store_size_bytes{type="available",{matchers}}) / (' + _CAPACITY + ")) * 100"
_AVAILABLE = (
    'sum by ({store_label}) (tikv_store_size_bytes{type="available",{matchers}}) and on ({store_label}) ('
    + _CAPACITY
    + ")"
)
_GENERIC_DISK = (
    '(1 - sum by ({store_label}) (label_replace(kubelet_volume_stats_available_bytes{namespace="{namespace}",'
    'persistentvolumeclaim=~".+-({stores})"}, "{store_label}", "$1", "persistentvolumeclaim", ".+-({stores})")) / '
    '(sum by ({store_label}) (label_replace(kubelet_volume_stats_capacity_bytes{namespace="{namespace}",'
    'persistentvolumeclaim=~".+-({stores})"}, "{store_label}", "$1", "persistentvolumeclaim", ".+-({stores})")) > 0))'
    " * 100"
)
_GENERIC_AVAILABLE = (
    'sum by ({store_label}) (label_replace(kubelet_volume_stats_available_bytes{namespace="{namespace}",'
    'persistentvolumeclaim=~".+-({stores})"}, "{store_label}", "$1", "persistentvolumeclaim", ".+-({stores})"))'
)
_CRITICAL_ERRORS = (
    "sum by ({store_label}) (increase(tikv_critical_error_total{selector}[{window}]))"
    # The counter exists only after a store's first critical error: a running store without it has had none.
    " or (0 * max by ({store_label}) (process_start_time_seconds{selector}))"
)
_WRITE_STALL = "max by ({store_label}) (delta(tikv_engine_write_stall{selector}[{window}]))"
_PD_LEADER = " and on (instance) (max by (instance) (etcd_server_is_leader{selector}) > 0)"
_PD_STORES = 'sum(pd_cluster_status{{matchers},type=~"{types}"}' + _PD_LEADER + ")"
_PD_REGIONS = 'sum(pd_regions_status{{matchers},type=~"{types}"}' + _PD_LEADER + ")"

PRESETS: dict[str, dict[str, str]] = {
    "tikv": {
        Invariant.LATENCY: _LATENCY,
        Invariant.DISK_USAGE: _DISK,
        DISK_AVAILABLE: _AVAILABLE,
        Invariant.CRITICAL_ERRORS: _CRITICAL_ERRORS,
        Invariant.WRITE_STALL: _WRITE_STALL,
    },
    "generic": {Invariant.DISK_USAGE: _GENERIC_DISK, DISK_AVAILABLE: _GENERIC_AVAILABLE},
}
PD_PRESETS = {Invariant.PD_STORES: _PD_STORES, Invariant.PD_REGIONS: _PD_REGIONS}


SCOPING_PLACEHOLDERS = ("{selector}", "{matchers}", "{scope}", "{namespace}")


@dataclass(frozen=True)
class MetricQuery:
    """One query of a cycle: its PromQL, whether it answers per store (else one value for the cluster), and whether
    the operator scoped it to the cluster's namespace (so a series that aggregated the namespace label away is still
    this namespace's; an unscoped query's such series could be any namespace's and are not judged)."""

    promql: str
    per_store: bool = True
    namespace_scoped: bool = True


def escape_label_value(value: str) -> str:
    """Escape a value for a double-quoted PromQL string, so it cannot end the string or the selector."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_regex(value: str) -> str:
    special = set(".^$*+?()[]{}|\\")
    return "".join("\\" + char if char in special else char for char in value)


def alternation(names: tuple[str, ...] | list[str]) -> str:
    """Names as a regex alternation, escaped for a double-quoted PromQL string."""
    return escape_label_value("|".join(_escape_regex(name) for name in sorted(names)))


def scope_matchers(spec: MonitoredClusterSpec, namespace: str) -> list[str]:
    """The namespace matcher (if series carry one) and the extra matchers."""
    label = spec.prometheus.namespace_label
    pairs = [f'{label}="{escape_label_value(namespace)}"'] if label else []
    return pairs + [f'{key}="{escape_label_value(value)}"' for key, value in sorted(spec.prometheus.matchers.items())]


def label_matchers(spec: MonitoredClusterSpec, namespace: str, store_names: tuple[str, ...]) -> str:
    """Matchers naming this cluster's series: its namespace, the extra matchers, and its stores (or PD pods).

    The store matcher is never dropped: with no stores there is nothing to ask for (the caller does not query),
    and an empty alternation would match every series without the label.
    """
    if not store_names:
        raise ValueError("a store-scoped query needs at least one store")
    pairs = [*scope_matchers(spec, namespace), f'{spec.prometheus.store_label}=~"{alternation(store_names)}"']
    return ",".join(pairs)


def render(
    template: str, spec: MonitoredClusterSpec, namespace: str, stores: tuple[str, ...], *, window: str = "",
    types: tuple[str, ...] = (),
) -> str:  # fmt: skip
    """Fill a template's placeholders for this cluster."""
    matchers = label_matchers(spec, namespace, stores)
    return fill_template(
        template,
        selector="{" + matchers + "}",
        matchers=matchers,
        scope=",".join(scope_matchers(spec, namespace)),
        namespace=escape_label_value(namespace),
        stores=alternation(stores),
        store_label=spec.prometheus.store_label,
        quantile=repr(spec.invariants.latency.quantile),
        window=window or spec.prometheus.rate_window,
        types=alternation(types) if types else "",
    )


def fill_template(template: str, **values: str) -> str:
    """Replace only the known ``{placeholders}``; every other brace is PromQL's own (label matchers)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def builtin_query(spec: MonitoredClusterSpec, invariant: str, namespace: str, stores: tuple[str, ...]) -> str | None:
    """A built-in per-store invariant's query: the user's override or the preset's; None if the preset has none."""
    invariants = spec.invariants
    overrides: dict[str, str | None] = {
        Invariant.LATENCY: spec.queries.latency,
        Invariant.DISK_USAGE: spec.queries.disk_usage,
    }
    override = overrides.get(invariant)
    template = override or PRESETS[spec.preset].get(invariant)
    if template is None:
        return None
    window = invariants.write_stall.window if invariant == Invariant.WRITE_STALL else ""
    types = tuple(invariants.latency.request_types) if invariant == Invariant.LATENCY else ()
    return render(template, spec, namespace, stores, window=window, types=types)


def custom_query(
    spec: MonitoredClusterSpec, custom: CustomInvariantSpec, namespace: str, stores: tuple[str, ...]
) -> str | None:
    """A custom invariant's PromQL with its placeholders filled; None when it needs stores and the cluster has none
    (a store-scoped query about no store has nothing to judge)."""
    if not stores:
        if custom.scope == "store":
            return None
        return fill_template(
            custom.query,
            namespace=escape_label_value(namespace),
            scope=",".join(scope_matchers(spec, namespace)),
            store_label=spec.prometheus.store_label,
            window=spec.prometheus.rate_window,
        )
    return render(custom.query, spec, namespace, stores)


def cycle_queries(
    spec: MonitoredClusterSpec, namespace: str, stores: tuple[str, ...], pd_pods: tuple[str, ...]
) -> dict[str, MetricQuery]:
    """Every query of one cycle, by result key: a bounded number, independent of the number of stores."""
    queries: dict[str, MetricQuery] = {}
    invariants = spec.invariants
    per_store = {
        Invariant.LATENCY: invariants.latency.enabled,
        Invariant.DISK_USAGE: invariants.disk_usage.enabled,
        DISK_AVAILABLE: invariants.disk_usage.enabled and invariants.disk_usage.min_available_bytes is not None,
        Invariant.CRITICAL_ERRORS: invariants.critical_errors.enabled,
        Invariant.WRITE_STALL: invariants.write_stall.enabled,
    }
    for key, enabled in per_store.items():
        query = builtin_query(spec, key, namespace, stores) if enabled and stores else None
        if query is not None:
            queries[key] = MetricQuery(query)
    if spec.preset == "tikv" and pd_pods:
        for invariant, states in (
            (Invariant.PD_STORES, invariants.pd_stores),
            (Invariant.PD_REGIONS, invariants.pd_regions),
        ):
            if states.enabled:
                promql = render(PD_PRESETS[invariant], spec, namespace, pd_pods, types=tuple(states.states))
                queries[invariant] = MetricQuery(promql, per_store=False)
    for custom in invariants.custom:
        query = custom_query(spec, custom, namespace, stores) if custom.enabled else None
        if query is not None:
            scoped = not spec.prometheus.namespace_label or any(p in custom.query for p in SCOPING_PLACEHOLDERS)
            queries[custom.name] = MetricQuery(query, per_store=custom.scope == "store", namespace_scoped=scoped)
    return queries
