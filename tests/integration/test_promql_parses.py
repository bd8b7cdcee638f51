"""Every query the operator renders from a spec the API server accepts parses, as Prometheus's own promtool says.

Specs are generated over the CRD's accepted values (label names, namespace labels, matcher values with quotes,
backslashes, newlines and any Unicode, pod names with dots, quantiles, request types, windows, PD states) and
rendered for hostile namespace, store and PD pod names; custom queries are valid PromQL templates using every
placeholder. Each example's queries go to `promtool check rules` as recording rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operator_k8s.domain.queries import cycle_queries
from operator_k8s.domain.specs import PD_REGION_STATES, PD_STORE_STATES, MonitoredClusterSpec


@pytest.fixture(autouse=True, scope="module")
def promtool() -> None:
    """promtool (Debian's prometheus package, which ``make setup`` installs). Missing, the tier is skipped on a
    developer's machine and fails under CI (``CI`` set, as ``.ci/run`` does): a skipped check is never green there."""
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (the Debian prometheus package): make setup installs it")
        pytest.skip("promtool (Debian prometheus) not installed")


LABEL_NAMES = st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_]{0,20}\Z").filter(
    lambda n: not n.startswith("__") and n.lower() not in {"without", "inf", "nan"}
)
VALUES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=64)
DNS_LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
POD_NAME = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?\Z")
RANGES = st.sampled_from(["1s", "1m", "10m", "1h30m", "24h", "1m30s500ms", "2h15s"])
CUSTOM_TEMPLATES = [
    "max by ({store_label}) (rate(some_total{selector}[{window}]))",
    'sum by ({store_label}) (x{{matchers},job="a"})',
    'max(x{namespace="{namespace}",pod=~"{stores}"})',
    "histogram_quantile({quantile}, sum by (le, {store_label}) (rate(h_bucket{selector}[{window}])))",
    "count(up{{scope}})",
]

SPECS = st.fixed_dictionaries(
    {
        "stores": st.just({"selector": {"matchLabels": {"app": "tikv"}}}),
        "pd": st.just({"selector": {"matchLabels": {"app": "pd"}}}),
        "prometheus": st.fixed_dictionaries(
            {"url": st.just("http://p:9090")},
            optional={
                "rateWindow": RANGES,
                "storeLabel": LABEL_NAMES,
                "namespaceLabel": st.one_of(st.just(""), LABEL_NAMES),
                "matchers": st.dictionaries(LABEL_NAMES, VALUES, max_size=3),
            },
        ),
        "invariants": st.fixed_dictionaries(
            {
                "latency": st.fixed_dictionaries(
                    {},
                    optional={
                        "quantile": st.floats(1e-12, 1 - 1e-12),
                        "requestTypes": st.lists(st.from_regex(r"\A[a-z][a-z0-9_]{0,39}\Z"), min_size=1, max_size=5),
                    },
                ),
                "diskUsage": st.fixed_dictionaries({}, optional={"minAvailableBytes": st.integers(0, 2**53)}),
                "writeStall": st.fixed_dictionaries({}, optional={"window": RANGES}),
                "pdStores": st.fixed_dictionaries(
                    {}, optional={"states": st.lists(st.sampled_from(PD_STORE_STATES), min_size=1, max_size=4)}
                ),
                "pdRegions": st.fixed_dictionaries(
                    {}, optional={"states": st.lists(st.sampled_from(PD_REGION_STATES), min_size=1, max_size=2)}
                ),
                "custom": st.lists(
                    st.builds(
                        lambda i, query, scope: {
                            "name": f"c{i}",
                            "query": query,
                            "scope": scope,
                            "comparator": ">",
                            "threshold": 0,
                        },
                        st.integers(0, 9),
                        st.sampled_from(CUSTOM_TEMPLATES),
                        st.sampled_from(["store", "cluster"]),
                    ),
                    max_size=3,
                    unique_by=lambda c: c["name"],
                ),
            }
        ),
    }
)


def promtool_check(queries: list[str]) -> None:
    rules = {"groups": [{"name": "rendered", "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)]}]}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rules.yml"
        path.write_text(yaml.safe_dump(rules, allow_unicode=True))
        result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + "\n".join(queries)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    body=SPECS,
    namespace=DNS_LABEL,
    stores=st.lists(POD_NAME, min_size=1, max_size=4, unique=True),
    pd=st.lists(POD_NAME, max_size=3, unique=True),
)
def test_every_rendered_query_parses(body: dict[str, Any], namespace: str, stores: list[str], pd: list[str]) -> None:
    spec = MonitoredClusterSpec.model_validate(body)
    generic = {**body, "preset": "generic", "invariants": {**body["invariants"], "latency": {"enabled": False}}}
    for variant in (spec, MonitoredClusterSpec.model_validate(generic)):
        queries = [q.promql for q in cycle_queries(variant, namespace, tuple(stores), tuple(pd)).values()]
        promtool_check(queries)


def test_the_negative_control_fails() -> None:
    with pytest.raises(AssertionError, match="parse error"):
        promtool_check(['sum(up{a="x"}'])
