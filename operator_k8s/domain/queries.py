"""PromQL for the built-in invariants, from presets or user overrides, with label values safely escaped.

Templates may use ``{selector}`` (the label matchers, with braces), ``{matchers}`` (the same without braces, for
appending), ``{store_label}``, ``{quantile}`` and ``{window}``; any other brace is PromQL's own.
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


def label_matchers(spec: MonitoredClusterSpec, namespace: str, store_names: tuple[str, ...]) -> str:
    """Matchers naming this cluster's series: its namespace, the extra matchers, and its stores if known."""
    pairs = [f'namespace="{escape_label_value(namespace)}"']
    pairs += [f'{key}="{escape_label_value(value)}"' for key, value in sorted(spec.prometheus.matchers.items())]
    if store_names:
        alternatives = "|".join(_escape_regex(name) for name in sorted(store_names))
        pairs.append(f'{spec.prometheus.store_label}=~"{escape_label_value(alternatives)}"')
    return ",".join(pairs)


def _escape_regex(value: str) -> str:
    special = set(".^$*+?()[]{}|\\")
    return "".join("\\" + char if char in special else char for char in value)


def builtin_query(spec: MonitoredClusterSpec, invariant: Invariant, namespace: str, stores: tuple[str, ...]) -> str:
    """The query for latency or disk usage: the user's override or the preset, filled in."""
    override = spec.queries.latency if invariant is Invariant.LATENCY else spec.queries.disk_usage
    template = override or PRESETS[spec.preset][invariant]
    matchers = label_matchers(spec, namespace, stores)
    return fill_template(
        template,
        selector="{" + matchers + "}",
        matchers=matchers,
        store_label=spec.prometheus.store_label,
        quantile=repr(spec.invariants.latency.quantile),
        window=spec.prometheus.rate_window,
    )


def fill_template(template: str, **values: str) -> str:
    """Replace only the known ``{placeholders}``; every other brace is PromQL's own (label matchers)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def custom_query(custom: CustomInvariantSpec) -> str:
    """A custom invariant's query is the user's own PromQL, used as written."""
    return custom.query
