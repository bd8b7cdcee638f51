"""Hostile MonitoredCluster specs and the refusal each must meet, plus specs right at the bounds that must pass.

One table for two tiers: the unit tier checks the pydantic models (tests/unit/test_spec_bounds.py), the stack tier
applies the same specs to the real API server (tests/integration/test_crd_validation.py). A bound that exists in only
one of the two fails one of them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

BASE: dict[str, Any] = {
    "stores": {"selector": {"matchLabels": {"app": "tikv"}}},
    "prometheus": {"url": "http://prometheus:9090"},
}

GRACE = "must be at most 168h (7 days)"
TIMEOUT = "timeout must be more than 0s and at most 60s"
RATE_WINDOW = "rateWindow must be more than 0s and at most 24h"
INTERVAL = "interval must be between 1s and 1h"
BUILTIN_NAME = (
    "custom invariant name must differ from the built-ins' (storesReady, latency, diskUsage, criticalErrors,"
    " writeStall, pdStores, pdRegions; hyphens aside)"
)
NAMESPACE_LABEL = "namespaceLabel must not start with __ nor be without, inf or nan (PromQL misreads them)"
WINDOW = "window must be more than 0s and at most 24h"
GENERIC_LATENCY = "the generic preset has no latency query: set queries.latency or disable invariants.latency"
HYPHENS = "custom invariant names must differ in more than hyphens (a-1 and a1 both name CustomA1)"
STORE_LABEL = "storeLabel must not start with __ nor be without, inf or nan (PromQL misreads them)"
MATCHER_KEY = "matcher keys must not start with __ nor be without, inf or nan (PromQL misreads them)"
MATCHER_NAME = "matcher keys must be Prometheus label names"
LABEL_KEY = "matchLabels keys must be Kubernetes label keys"
PATTERN = "String should match pattern"
SERVER_PATTERN = "should match '"
SAFE_SIDE = "clearThreshold must be on the safe side of threshold"
ABSOLUTE = "must be relative to the credentials directory (no leading /)"
PARENT = "must not contain .. segments (it names a file inside the credentials directory)"
TWO_AUTHORIZATIONS = "bearerTokenFile and basicAuth cannot both be set (each is the Authorization header)"
HEADER_NAME = "header names must be HTTP tokens of at most 64 characters"
RESERVED_HEADER = (
    "headers must not set Authorization, Proxy-Authorization, Host, Connection, Content-Length or "
    "Transfer-Encoding (credentials come from bearerTokenFile or basicAuth; the others belong to HTTP itself)"
)
HEADER_CASE = "header names must differ in more than case"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` laid over it: dictionaries merged key by key, anything else (and an empty dictionary,
    so that a patch can empty a map) replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        both = isinstance(value, dict) and value and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both else copy.deepcopy(value)
    return out


def custom(name: str = "c", **fields: Any) -> dict[str, Any]:
    """A valid custom invariant, with ``fields`` overriding."""
    return {"name": name, "query": "up", "comparator": ">", "threshold": 1} | fields


def invariant(name: str, **fields: Any) -> dict[str, Any]:
    return {"invariants": {name: fields}}


def customs(*items: dict[str, Any]) -> dict[str, Any]:
    return {"invariants": {"custom": list(items)}}


def prometheus(**fields: Any) -> dict[str, Any]:
    return {"prometheus": fields}


def auth(**fields: Any) -> dict[str, Any]:
    return {"prometheus": {"auth": fields}}


def match_labels(labels: dict[str, str]) -> dict[str, Any]:
    return {"stores": {"selector": {"matchLabels": labels}}}


@dataclass(frozen=True)
class Hostile:
    """A spec to refuse. ``field`` is the path both tiers must name, as the API server writes it (the pydantic error
    location, rendered the same way, must start with it); ``message`` is pydantic's wording, which a CEL rule
    repeats word for word; ``server`` is the API server's where an OpenAPI check words it differently."""

    id: str
    patch: dict[str, Any]
    field: str
    message: str
    server: str | None = None
    json_safe: bool = True
    """False for values JSON cannot carry: an infinity goes on the wire as ``1e999`` (valid syntax, no float64),
    NaN as ``NaN`` (no JSON at all); the API server refuses the body before it looks at any field."""

    @property
    def spec(self) -> dict[str, Any]:
        return merge(BASE, self.patch)

    @property
    def server_message(self) -> str:
        return self.server or self.message


@dataclass(frozen=True)
class Accepted:
    """A spec at a bound, which both tiers must accept."""

    id: str
    patch: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> dict[str, Any]:
        return merge(BASE, self.patch)


INF = float("inf")
NAN = float("nan")
LONG_PREFIX = "a" * 254 + "/app"
"""A label key whose prefix is one character longer than a DNS subdomain may be."""

HOSTILE: list[Hostile] = [
    # Durations: every one bounded above, the overflow that used to crash a cycle included.
    Hostile("for-overflow", invariant("latency", **{"for": "99999999999h"}), "spec.invariants.latency.for", "for " + GRACE),
    Hostile("for-past-go", invariant("latency", **{"for": "9999999999999h"}), "spec.invariants.latency.for", "for " + GRACE),
    Hostile("for-1ms-over", invariant("storesReady", **{"for": "168h0m0.001s"}), "spec.invariants.storesReady.for", "for " + GRACE),
    Hostile("clear-for-8d", invariant("diskUsage", clearFor="192h"), "spec.invariants.diskUsage.clearFor", "clearFor " + GRACE),
    Hostile("custom-for-overflow", customs(custom(**{"for": "99999999999h"})), "spec.invariants.custom[0].for", "for " + GRACE),
    Hostile("custom-clear-for", customs(custom(clearFor="604801s")), "spec.invariants.custom[0].clearFor", "clearFor " + GRACE),
    Hostile("timeout-overflow", prometheus(timeout="99999999999h"), "spec.prometheus.timeout", TIMEOUT),
    Hostile("timeout-zero", prometheus(timeout="0s"), "spec.prometheus.timeout", TIMEOUT),
    Hostile("timeout-61s", prometheus(timeout="1m1s"), "spec.prometheus.timeout", TIMEOUT),
    Hostile("rate-window-zero", prometheus(rateWindow="0ms"), "spec.prometheus.rateWindow", RATE_WINDOW),
    Hostile("rate-window-25h", prometheus(rateWindow="25h"), "spec.prometheus.rateWindow", RATE_WINDOW),
    Hostile("rate-window-overflow", prometheus(rateWindow="9999999999999h"), "spec.prometheus.rateWindow", RATE_WINDOW),
    Hostile("rate-window-fraction", prometheus(rateWindow="1.5m"), "spec.prometheus.rateWindow", PATTERN, SERVER_PATTERN),
    Hostile("rate-window-unit-twice", prometheus(rateWindow="1h1h"), "spec.prometheus.rateWindow", PATTERN, SERVER_PATTERN),
    Hostile("rate-window-disorder", prometheus(rateWindow="1m1h"), "spec.prometheus.rateWindow", PATTERN, SERVER_PATTERN),
    Hostile("interval-overflow", {"interval": "99999999999h"}, "spec.interval", INTERVAL),
    Hostile("interval-sub-second", {"interval": "0.999s"}, "spec.interval", INTERVAL),
    Hostile("duration-too-long", {"interval": "1m1m1m1m1m1m1m1m1m"}, "spec.interval", "at most 16 characters",
            "may not be more than 16"),
    Hostile("duration-negative", invariant("latency", **{"for": "-1s"}), "spec.invariants.latency.for", PATTERN, SERVER_PATTERN),
    # Custom names: no built-in's name, no two that name the same condition.
    Hostile("custom-named-latency", customs(custom("latency")), "spec.invariants.custom[0].name", BUILTIN_NAME),
    Hostile("custom-named-stores-ready", customs(custom("stores-ready")), "spec.invariants.custom[0].name", BUILTIN_NAME),
    Hostile("custom-named-disk-usage", customs(custom("disk-usage")), "spec.invariants.custom[0].name", BUILTIN_NAME),
    Hostile("custom-named-diskusage", customs(custom("diskusage")), "spec.invariants.custom[0].name", BUILTIN_NAME),
    Hostile("custom-named-write-stall", customs(custom("write-stall")), "spec.invariants.custom[0].name", BUILTIN_NAME),
    Hostile("custom-named-pd-stores", customs(custom("pd-stores")), "spec.invariants.custom[0].name", BUILTIN_NAME),
    # Real Prometheus set-ups and TiKV's own semantics.
    Hostile("namespace-label-name", prometheus(namespaceLabel="__name__"), "spec.prometheus.namespaceLabel",
            NAMESPACE_LABEL),
    Hostile("namespace-label-nan", prometheus(namespaceLabel="NaN"), "spec.prometheus.namespaceLabel", NAMESPACE_LABEL),
    Hostile("write-stall-window-zero", invariant("writeStall", window="0s"), "spec.invariants.writeStall.window",
            WINDOW),
    Hostile("write-stall-window-25h", invariant("writeStall", window="25h"), "spec.invariants.writeStall.window",
            WINDOW),
    Hostile("generic-without-latency-query", {"preset": "generic"}, "spec", GENERIC_LATENCY),
    Hostile("request-type-regex", invariant("latency", requestTypes=["kv_get|.*"]),
            "spec.invariants.latency.requestTypes[0]", PATTERN, SERVER_PATTERN),
    Hostile("pd-state-unknown", invariant("pdStores", states=["store_up_count"]), "spec.invariants.pdStores.states[0]",
            "Input should be", "Unsupported value"),
    Hostile("custom-a-1-and-a1", customs(custom("a-1"), custom("a1")), "spec.invariants.custom", HYPHENS),
    Hostile("custom-a--b-and-a-b", customs(custom("a--b"), custom("a-b")), "spec.invariants.custom", HYPHENS),
    Hostile("custom-same-name", customs(custom("a"), custom("a")), "spec.invariants.custom", "must be unique",
            "Duplicate value"),
    Hostile("custom-name-41", customs(custom("a" * 41)), "spec.invariants.custom[0].name", "at most 40 characters",
            "may not be more than 40"),
    Hostile("custom-name-upper", customs(custom("Bad_Name")), "spec.invariants.custom[0].name", PATTERN, SERVER_PATTERN),
    Hostile("custom-21", customs(*(custom(f"c{i}") for i in range(21))), "spec.invariants.custom", "at most 20 items",
            "must have at most 20 items"),
    # Label names PromQL cannot read where the queries put them.
    Hostile("store-label-name", prometheus(storeLabel="__name__"), "spec.prometheus.storeLabel", STORE_LABEL),
    Hostile("store-label-reserved", prometheus(storeLabel="__meta_pod"), "spec.prometheus.storeLabel", STORE_LABEL),
    Hostile("store-label-without", prometheus(storeLabel="WITHOUT"), "spec.prometheus.storeLabel", STORE_LABEL),
    Hostile("store-label-inf", prometheus(storeLabel="Inf"), "spec.prometheus.storeLabel", STORE_LABEL),
    Hostile("store-label-nan", prometheus(storeLabel="nan"), "spec.prometheus.storeLabel", STORE_LABEL),
    Hostile("store-label-dash", prometheus(storeLabel="pod-name"), "spec.prometheus.storeLabel", PATTERN, SERVER_PATTERN),
    Hostile("matcher-name", prometheus(matchers={"__name__": "up"}), "spec.prometheus.matchers", MATCHER_KEY),
    Hostile("matcher-without", prometheus(matchers={"without": "x"}), "spec.prometheus.matchers", MATCHER_KEY),
    Hostile("matcher-inf", prometheus(matchers={"INF": "x"}), "spec.prometheus.matchers", MATCHER_KEY),
    Hostile("matcher-space", prometheus(matchers={"bad key": "v"}), "spec.prometheus.matchers", PATTERN, MATCHER_NAME),
    Hostile("matchers-17", prometheus(matchers={f"l{i}": "v" for i in range(17)}), "spec.prometheus.matchers",
            "at most 16 items", "must have at most 16 items"),
    Hostile("matcher-value-257", prometheus(matchers={"job": "v" * 257}), "spec.prometheus.matchers.job",
            "at most 256 characters", "may not be more than 256"),
    # Store selectors that no pod's labels could ever match.
    Hostile("selector-key-space", match_labels({"my app": "tikv"}), "spec.stores.selector.matchLabels", LABEL_KEY),
    Hostile("selector-key-prefix-254", match_labels({LONG_PREFIX: "tikv"}), "spec.stores.selector.matchLabels", LABEL_KEY),
    Hostile("selector-value-space", match_labels({"app": "ti kv"}), "spec.stores.selector.matchLabels.app", PATTERN,
            SERVER_PATTERN),
    Hostile("selector-empty", match_labels({}), "spec.stores.selector.matchLabels", "at least 1 item",
            "should have at least 1 properties"),
    Hostile("expected-10001", {"stores": {"expected": 10001}}, "spec.stores.expected", "less than or equal to 10000"),
    # Prometheus URLs the client cannot append /api/v1/query to.
    Hostile("url-no-host", prometheus(url="http://"), "spec.prometheus.url", PATTERN, SERVER_PATTERN),
    Hostile("url-space", prometheus(url="http://prometheus:9090/ x"), "spec.prometheus.url", PATTERN, SERVER_PATTERN),
    Hostile("url-query", prometheus(url="http://prometheus:9090?x=1"), "spec.prometheus.url", PATTERN, SERVER_PATTERN),
    Hostile("url-file", prometheus(url="file:///etc/passwd"), "spec.prometheus.url", PATTERN, SERVER_PATTERN),
    # Credentials: files inside the credentials directory only (the adapter also refuses symlinks out of it).
    Hostile("auth-token-absolute", auth(bearerTokenFile=SA_TOKEN), "spec.prometheus.auth.bearerTokenFile",
            "bearerTokenFile " + ABSOLUTE),
    Hostile("auth-token-parent", auth(bearerTokenFile="../../../" + SA_TOKEN[1:]), "spec.prometheus.auth.bearerTokenFile",
            "bearerTokenFile " + PARENT),
    Hostile("auth-token-parent-inside", auth(bearerTokenFile="tenant/../../token"),
            "spec.prometheus.auth.bearerTokenFile", "bearerTokenFile " + PARENT),
    Hostile("auth-token-parent-alone", auth(bearerTokenFile=".."), "spec.prometheus.auth.bearerTokenFile",
            "bearerTokenFile " + PARENT),
    Hostile("auth-token-space", auth(bearerTokenFile="my token"), "spec.prometheus.auth.bearerTokenFile", PATTERN,
            SERVER_PATTERN),
    Hostile("auth-token-257", auth(bearerTokenFile="t" * 257), "spec.prometheus.auth.bearerTokenFile",
            "at most 256 characters", "may not be more than 256"),
    Hostile("auth-ca-absolute", auth(caFile="/etc/ssl/certs/ca-certificates.crt"), "spec.prometheus.auth.caFile",
            "caFile " + ABSOLUTE),
    Hostile("auth-ca-parent", auth(caFile="certs/../../ca.crt"), "spec.prometheus.auth.caFile", "caFile " + PARENT),
    Hostile("auth-password-absolute", auth(basicAuth={"username": "u", "passwordFile": "/etc/shadow"}),
            "spec.prometheus.auth.basicAuth.passwordFile", "passwordFile " + ABSOLUTE),
    Hostile("auth-password-parent", auth(basicAuth={"username": "u", "passwordFile": "a/../../b"}),
            "spec.prometheus.auth.basicAuth.passwordFile", "passwordFile " + PARENT),
    Hostile("auth-password-missing", auth(basicAuth={"username": "u"}), "spec.prometheus.auth.basicAuth.passwordFile",
            "Field required", "Required value"),
    Hostile("auth-username-colon", auth(basicAuth={"username": "a:b", "passwordFile": "p"}),
            "spec.prometheus.auth.basicAuth.username", PATTERN, SERVER_PATTERN),
    Hostile("auth-bearer-and-basic", auth(bearerTokenFile="t", basicAuth={"username": "u", "passwordFile": "p"}),
            "spec.prometheus.auth", TWO_AUTHORIZATIONS),
    Hostile("auth-header-authorization", auth(headers={"Authorization": "Bearer secret"}), "spec.prometheus.auth.headers",
            RESERVED_HEADER),
    Hostile("auth-header-host", auth(headers={"host": "prometheus.internal"}), "spec.prometheus.auth.headers",
            RESERVED_HEADER),
    Hostile("auth-header-name-space", auth(headers={"X Scope": "a"}), "spec.prometheus.auth.headers", HEADER_NAME),
    Hostile("auth-header-name-65", auth(headers={"X" * 65: "a"}), "spec.prometheus.auth.headers", HEADER_NAME),
    Hostile("auth-header-twice", auth(headers={"X-Scope-OrgID": "a", "x-scope-orgid": "b"}),
            "spec.prometheus.auth.headers", HEADER_CASE),
    Hostile("auth-header-value-crlf", auth(headers={"X-Scope-OrgID": "a\r\nX-Injected: b"}),
            "spec.prometheus.auth.headers.X-Scope-OrgID", PATTERN, SERVER_PATTERN),
    Hostile("auth-header-value-1025", auth(headers={"X-Scope-OrgID": "a" * 1025}),
            "spec.prometheus.auth.headers.X-Scope-OrgID", "at most 1024 characters", "may not be more than 1024"),
    Hostile("auth-headers-17", auth(headers={f"X-H{i}": "v" for i in range(17)}), "spec.prometheus.auth.headers",
            "at most 16 items", "must have at most 16 items"),
    # Numbers: finite, and inside their ranges.
    Hostile("quantile-1", invariant("latency", quantile=1), "spec.invariants.latency.quantile", "less than 1"),
    Hostile("quantile-0", invariant("latency", quantile=0), "spec.invariants.latency.quantile", "greater than 0"),
    Hostile("threshold-ms-over-1h", invariant("latency", thresholdMs=3_600_001), "spec.invariants.latency.thresholdMs",
            "less than or equal to 3600000"),
    Hostile("percent-over-100", invariant("diskUsage", thresholdPercent=100.5), "spec.invariants.diskUsage.thresholdPercent",
            "less than or equal to 100"),
    Hostile("clear-ms-above", invariant("latency", thresholdMs=100, clearThresholdMs=200), "spec.invariants.latency",
            "clearThresholdMs must not exceed thresholdMs"),
    Hostile("clear-percent-above", invariant("diskUsage", thresholdPercent=80, clearThresholdPercent=90),
            "spec.invariants.diskUsage", "clearThresholdPercent must not exceed thresholdPercent"),
    Hostile("custom-clear-wrong-side", customs(custom(comparator="<", threshold=5, clearThreshold=1)),
            "spec.invariants.custom[0]", SAFE_SIDE),
    Hostile("custom-empty-query", customs(custom(query="")), "spec.invariants.custom[0].query", "at least 1 character",
            "should be at least 1 chars long"),
    Hostile("custom-threshold-inf", customs(custom(threshold=INF)), "spec.invariants.custom[0].threshold",
            "finite number", "number 1e999", json_safe=False),
    Hostile("custom-clear-threshold-nan", customs(custom(clearThreshold=NAN)), "spec.invariants.custom[0].clearThreshold",
            "finite number", "invalid character 'N'", json_safe=False),
    Hostile("threshold-ms-inf", invariant("latency", thresholdMs=INF), "spec.invariants.latency.thresholdMs",
            "finite number", "number 1e999", json_safe=False),
]  # fmt: skip

ACCEPTED: list[Accepted] = [
    Accepted("defaults"),
    Accepted("tidb-monitor-labels", prometheus(storeLabel="instance", namespaceLabel="kubernetes_namespace",
                                                matchers={"tidb_cluster": "ns-basic"})),
    Accepted("no-namespace-label", prometheus(namespaceLabel="")),
    Accepted("generic-with-latency-query", {"preset": "generic", "queries": {"latency": "x{selector}"}}),
    Accepted("generic-without-latency", {"preset": "generic", "invariants": {"latency": {"enabled": False}}}),
    Accepted("pd-and-floor", {"pd": {"selector": {"matchLabels": {"app.kubernetes.io/component": "pd"}}},
                              "invariants": {"diskUsage": {"minAvailableBytes": 5368709120}}}),
    Accepted("grace-at-168h", {"invariants": {
        "storesReady": {"for": "168h", "clearFor": "604800s"},
        "latency": {"for": "10080m", "clearFor": "167h59m59.999s"},
        "diskUsage": {"for": "0s", "clearFor": "84h84h"},
        "custom": [custom(**{"for": "168h", "clearFor": "168h"})]}}),
    Accepted("timeout-at-60s", prometheus(timeout="60s")),
    Accepted("timeout-1ms", prometheus(timeout="1ms")),
    Accepted("rate-window-at-24h", prometheus(rateWindow="24h")),
    Accepted("rate-window-1ms", prometheus(rateWindow="1ms")),
    Accepted("rate-window-all-units", prometheus(rateWindow="23h59m59s999ms")),
    Accepted("interval-at-1h", {"interval": "3600000ms"}),
    Accepted("interval-at-1s", {"interval": "1000ms"}),
    Accepted("custom-names-near-builtins", customs(custom("latency2"), custom("disk"), custom("stores-not-ready"),
                                                     custom("my-latency"), custom("a-1"), custom("a-2"))),
    Accepted("custom-20", customs(*(custom(f"c{i}") for i in range(20)))),
    Accepted("store-label-near-keywords", prometheus(storeLabel="infinity", matchers={"_": "x", "nan_": "y", "withouts": "z"})),
    Accepted("store-label-single-underscore", prometheus(storeLabel="_pod")),
    Accepted("selector-label-keys", match_labels({"app.kubernetes.io/name": "tikv", "a" * 253 + "/b": "", "x": "a" * 63})),
    Accepted("url-with-path", prometheus(url="https://prometheus.monitoring.svc:9090/prom")),
    Accepted("threshold-extremes", customs(custom(threshold=1.7976931348623157e308, clearThreshold=-1.7976931348623157e308),
                                           custom("tiny", comparator="<", threshold=5e-324, clearThreshold=5e-324))),
    Accepted("quantile-extremes", invariant("latency", quantile=0.999999, thresholdMs=3_600_000, clearThresholdMs=1e-9)),
    Accepted("expected-bounds", {"stores": {"expected": 10000}}),
    Accepted("auth-bearer-tenant", auth(bearerTokenFile="token", caFile="..data/ca.crt",
                                        headers={"X-Scope-OrgID": "tenant-1|tenant-2", "X-Grafana-Org-Id": "1"})),
    Accepted("auth-basic", auth(basicAuth={"username": "operator@example.com", "passwordFile": "tenants/a/.password"},
                                caFile="ca.crt")),
    Accepted("auth-at-bounds", auth(bearerTokenFile="/".join(["t" * 63] * 3) + "/" + "t" * 64, caFile="a..b/..c/c..",
                                    headers={"X" * 64: "v" * 1024} | {f"X-H{i}": "!~ ~!" for i in range(15)})),
    Accepted("auth-empty", auth()),
    Accepted("long-strings", {"queries": {"latency": "q" * 4096}, "prometheus": {"matchers": {"job": "v" * 256}},
                              "invariants": {"custom": [custom("a" * 40, query="q" * 4096)]}}),
]  # fmt: skip


def cel_messages(node: Any) -> list[str]:
    """Every CEL rule's message in a CRD schema (``x-kubernetes-validations``), depth first."""
    if isinstance(node, dict):
        rules = [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
        return rules + [message for value in node.values() for message in cel_messages(value)]
    if isinstance(node, list):
        return [message for value in node for message in cel_messages(value)]
    return []
