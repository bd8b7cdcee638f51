"""PromQL for the built-in invariants, from presets or user overrides, with label values safely escaped.

Templates (preset, override or custom) may use ``{selector}`` (the label matchers naming this cluster's series:
its namespace, the extra matchers and its stores, with braces), ``{matchers}`` (the same without braces, for
appending), ``{namespace}`` and ``{stores}`` (the namespace and a regex alternation of the cluster's stores, escaped
for a double-quoted string), ``{store_label}``, ``{quantile}`` and ``{window}``; any other brace is PromQL's own.
A query that leaves out the scoping placeholders still judges only this cluster's stores: the service drops series
about any other namespace or store (see ``observations.scope_result``).
"""

from __future__ import annotations

from operator_k8s.domain.specs import CustomInvariantSpec, MonitoredClusterSpec
from operator_k8s.domain.vocabulary import Invariant

PRESETS: dict[str, dict[str, str]] = {
    "tikv": {
        Invariant.LATENCY: (
            "histogram_quantile({quantile}, sum by (le, {store_label}) "
            "(rate(tikv_grpc_msg_duration_seconds_bucket{selector}[{window}]))) * 1000"
        ),
        Invariant.DISK_USAGE: (
            'sum by ({store_label}) (tikv_store_size_bytes{type="used",{matchers}}) / '
            'sum by ({store_label}) (tikv_store_size_bytes{type="capacity",{matchers}}) * 100'
        ),
    },
    "generic": {
        Invariant.LATENCY: (
            "histogram_quantile({quantile}, sum by (le, {store_label}) "
            "(rate(request_duration_seconds_bucket{selector}[{window}]))) * 1000"
        ),
        Invariant.DISK_USAGE: (
            "(1 - sum by ({store_label}) (node_filesystem_avail_bytes{selector}) / "
            "sum by ({store_label}) (node_filesystem_size_bytes{selector})) * 100"
        ),
    },
}


def escape_label_value(value: str) -> str:
    """Escape a value for a double-quoted PromQL string, so it cannot end the string or the selector."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def store_alternation(store_names: tuple[str, ...]) -> str:
    """The stores as a regex alternation, escaped for a double-quoted PromQL string."""
    return escape_label_value("|".join(_escape_regex(name) for name in sorted(store_names)))


def label_matchers(spec: MonitoredClusterSpec, namespace: str, store_names: tuple[str, ...]) -> str:
    """Matchers naming this cluster's series: its namespace, the extra matchers, and its stores.

    The store matcher is never dropped: with no stores there is nothing to ask for (the caller does not query),
    and an empty alternation would match every series without the label.
    """
    if not store_names:
        raise ValueError("a store-scoped query needs at least one store")
    pairs = [f'namespace="{escape_label_value(namespace)}"']
    pairs += [f'{key}="{escape_label_value(value)}"' for key, value in sorted(spec.prometheus.matchers.items())]
    pairs.append(f'{spec.prometheus.store_label}=~"{store_alternation(store_names)}"')
    return ",".join(pairs)


def _escape_regex(value: str) -> str:
    special = set(".^$*+?()[]{}|\\")
    return "".join("\\" + char if char in special else char for char in value)


def builtin_query(spec: MonitoredClusterSpec, invariant: Invariant, namespace: str, stores: tuple[str, ...]) -> str:
    """The query for latency or disk usage: the user's override or the preset, filled in."""
    override = spec.queries.latency if invariant is Invariant.LATENCY else spec.queries.disk_usage
    return _render(override or PRESETS[spec.preset][invariant], spec, namespace, stores)


def _render(template: str, spec: MonitoredClusterSpec, namespace: str, stores: tuple[str, ...]) -> str:
    matchers = label_matchers(spec, namespace, stores)
    return fill_template(
        template,
        selector="{" + matchers + "}",
        matchers=matchers,
        namespace=escape_label_value(namespace),
        stores=store_alternation(stores),
        store_label=spec.prometheus.store_label,
        quantile=repr(spec.invariants.latency.quantile),
        window=spec.prometheus.rate_window,
    )


def fill_template(template: str, **values: str) -> str:
    """Replace only the known ``{placeholders}``; every other brace is PromQL's own (label matchers)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


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
            store_label=spec.prometheus.store_label,
            window=spec.prometheus.rate_window,
        )
    return _render(custom.query, spec, namespace, stores)
