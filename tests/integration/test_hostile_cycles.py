"""Property-based: specs the API server accepts and hostile query results, driven through whole cycles against the
real Postgres and API server. Whatever they are, no exception escapes a cycle, nothing is refused, status is written.

Specs are generated over the CRD's accepted values (bounds, label names, matcher values with quotes and newlines,
custom queries, extreme thresholds); results over what Prometheus can return (±Inf, NaN, the largest floats, series
for other namespaces and stores, store labels longer than a Ticket may show, series without labels).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio import client

from devstack.world.stack import Stack
from operator_k8s.adapters.kube import KubeTicketMirror, api_client, observed_ticket
from operator_k8s.adapters.ticket_store import PostgresTicketStore
from operator_k8s.domain.ledger import ClusterRef
from operator_k8s.domain.observations import QueryResult, Sample, StorePod
from operator_k8s.domain.vocabulary import CLUSTER_PLURAL, GROUP, TICKET_PLURAL, VERSION
from operator_k8s.service import Monitor
from tests.stackutil import create_database, eventually
from tests.unit.builders import at

pytestmark = pytest.mark.stack
_names = itertools.count()

DURATIONS = st.sampled_from(["0s", "1ms", "1s", "30s", "59m59s", "168h", "84h84h", "167h59m59s999ms"])
INTERVALS = st.sampled_from(["1s", "2s", "1h", "3600000ms", "59m"])
TIMEOUTS = st.sampled_from(["1ms", "1s", "60s", "59s999ms"])
WINDOWS = st.sampled_from(["1s", "1m", "24h", "23h59m59s999ms"])
LABEL_NAMES = st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_]{0,20}\Z").filter(
    lambda n: not n.startswith("__") and n.lower() not in {"without", "inf", "nan"}
)
HOSTILE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=256)
THRESHOLDS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1.7976931348623157e308, 5e-324])
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1.7976931348623157e308, 0.0]),
)


def _grace(**extra: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {**extra}, optional={"for": DURATIONS, "clearFor": DURATIONS, "enabled": st.booleans(),
                             "severity": st.sampled_from(["info", "warning", "critical"])},
    )  # fmt: skip


@st.composite
def customs(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z"), max_size=3, unique=True))
    names = [n for n in names if n not in {"latency", "diskusage", "storesready"}]
    return [
        draw(
            _grace(
                name=st.just(name),
                query=st.one_of(
                    st.sampled_from(["up", "vector(1)/vector(0)", 'max by (pod) (x{namespace="{namespace}"})',
                                     "sum(", "{selector}", 'x{pod=~"{stores}"}']),
                    HOSTILE_TEXT.filter(bool),
                ),
                comparator=st.sampled_from([">", ">=", "<", "<="]),
                threshold=THRESHOLDS,
                scope=st.sampled_from(["store", "cluster"]),
            )
        )
        for name in names
    ]  # fmt: skip


CREDENTIAL_PATHS = st.from_regex(r"\A[-._a-zA-Z0-9]{1,20}(/[-._a-zA-Z0-9]{1,20}){0,2}\Z").filter(
    lambda p: ".." not in p.split("/")
)
HEADERS = st.dictionaries(
    st.from_regex(r"\AX-[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}\Z"), st.from_regex(r"\A[!-~]([ -~]{0,30}[!-~])?\Z"), max_size=3
).filter(lambda headers: len({name.lower() for name in headers}) == len(headers))
USERNAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters=":"), min_size=1,
                    max_size=40)  # fmt: skip


@st.composite
def auths(draw: st.DrawFn) -> dict[str, Any]:
    """Accepted auth blocks: paths inside the credentials directory, any username without a colon, HTTP token header
    names differing in more than case; a bearer token or basic auth, never both."""
    auth = draw(st.fixed_dictionaries({}, optional={"caFile": CREDENTIAL_PATHS, "headers": HEADERS}))
    kind = draw(st.sampled_from(["none", "bearer", "basic"]))
    if kind == "bearer":
        auth["bearerTokenFile"] = draw(CREDENTIAL_PATHS)
    elif kind == "basic":
        auth["basicAuth"] = {"username": draw(USERNAMES), "passwordFile": draw(CREDENTIAL_PATHS)}
    return auth


SPECS = st.fixed_dictionaries(
    {
        "interval": INTERVALS,
        "stores": st.fixed_dictionaries(
            {"selector": st.just({"matchLabels": {"app": "tikv"}})},
            optional={"expected": st.integers(0, 10000)},
        ),
        "prometheus": st.fixed_dictionaries(
            {"url": st.just("http://prometheus.invalid:9090")},
            optional={
                "timeout": TIMEOUTS,
                "rateWindow": WINDOWS,
                "storeLabel": LABEL_NAMES,
                "matchers": st.dictionaries(LABEL_NAMES, HOSTILE_TEXT, max_size=3),
                "auth": auths(),
            },
        ),
        "invariants": st.fixed_dictionaries(
            {},
            optional={
                "storesReady": _grace(),
                "latency": _grace(quantile=st.floats(1e-9, 1 - 1e-9), thresholdMs=st.floats(1e-9, 3_600_000)),
                "diskUsage": _grace(thresholdPercent=st.floats(1e-9, 100)),
                "custom": customs(),
            },
        ),
    }
)
STORE_NAMES = st.one_of(
    st.sampled_from(["tikv-0", "tikv-1"]), st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,251}[a-z0-9])?\Z")
)
PODS = st.lists(
    st.builds(
        lambda name, phase, ready: StorePod(name, phase, ready, (("app", "tikv"),)),
        STORE_NAMES, st.sampled_from(["Running", "Pending", "Failed", "Unknown"]), st.booleans(),
    ),
    max_size=4, unique_by=lambda p: p.name,
)  # fmt: skip


@st.composite
def samples_for(draw: st.DrawFn, pods: list[StorePod]) -> list[Sample]:
    """Series mostly about the cluster's own stores (so verdicts happen), mixed with foreign and malformed ones."""
    own = [pod.name for pod in pods] or ["tikv-0"]
    stores = st.one_of(
        st.sampled_from(own), st.sampled_from(own), st.none(), STORE_NAMES, st.text(min_size=254, max_size=400)
    )
    namespaces = st.one_of(st.just("{ns}"), st.just("{ns}"), st.none(), st.sampled_from(["other", "kube-system"]))
    return draw(st.lists(st.builds(Sample, stores, VALUES, namespaces), max_size=8))


class ScriptedMetrics:
    """Prometheus answering every query with the generated samples (this cluster's namespace filled in)."""

    def __init__(self, samples: list[Sample], namespace: str) -> None:
        self.samples = tuple(
            Sample(s.store, s.value, namespace if s.namespace == "{ns}" else s.namespace) for s in samples
        )

    async def query(
        self,
        url: str,
        promql: str,
        *,
        store_label: str,
        namespace_label: str,
        timeout: float,
        auth: Any = None,
        keep: tuple[str, ...] = (),
    ) -> QueryResult:
        return QueryResult(promql, self.samples)


@pytest.fixture(scope="module")
def database(stack: Stack) -> str:
    # A stack just started may still answer 429 "storage is (re)initializing" for its CRDs: examples start once both
    # kinds are served, so a refusal in an example is the cycle's, never the stack's warming up.
    for plural in (CLUSTER_PLURAL, TICKET_PLURAL):
        eventually(lambda p=plural: stack.kubectl("get", p, "-A", check=False).returncode == 0, timeout=60,
                   what=f"the API server serving {plural}")  # fmt: skip
    return asyncio.run(create_database(stack, "hostile_cycles"))


async def _cycles(stack: Stack, database: str, namespace: str, spec: dict[str, Any], pods: list[StorePod],
                  samples: list[Sample], accepted: list[str]) -> None:  # fmt: skip
    api = await api_client(str(stack.kubeconfig))
    custom: Any = client.CustomObjectsApi(api)
    store = PostgresTicketStore(database)
    name = f"h{next(_names)}"
    try:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MonitoredCluster",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip
        try:
            created = await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTER_PLURAL, body)
        except client.ApiException as error:
            if error.status != 422:
                raise
            assume(False)  # outside what the API server accepts: the CRD tier covers those
            return
        accepted.append(name)
        ref = ClusterRef(created["metadata"]["uid"], name, namespace, created["metadata"].get("generation", 1))
        monitor = Monitor(store=store, metrics=ScriptedMetrics(samples, namespace), mirror=KubeTicketMirror(api))
        status: dict[str, Any] = {}
        version = created["metadata"]["resourceVersion"]
        for second in (0, 1, 700_000):  # past every grace period the CRD allows (168h)
            listed = await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TICKET_PLURAL)
            shown = [observed_ticket(item) for item in listed["items"]]
            stats = await monitor.check_cluster(
                ref, created["spec"], pods, status, at(second), tickets_shown=shown, resource_version=version
            )
            unexpected = [e for e in stats.errors if e not in ("prometheus_unreachable", "prometheus_error")]
            assert unexpected == [], (unexpected, json.dumps(spec)[:2000])
            written = await custom.get_namespaced_custom_object_status(GROUP, VERSION, namespace, CLUSTER_PLURAL, name)
            status, version = written.get("status") or {}, written["metadata"]["resourceVersion"]
            assert status.get("conditions"), "every cycle leaves its conditions on the cluster"
    finally:
        await store.close()
        await api.close()


EXAMPLES = 60
ACCEPTED_FLOOR = 20
"""At least this many of the examples must be specs the API server accepts, or the test proves little."""


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec=SPECS, data=st.data())
def _hostile_examples(
    stack: Stack, database: str, namespace: str, accepted: list[str], spec: dict[str, Any], data: st.DataObject
) -> None:
    pods = data.draw(PODS, label="pods")
    samples = data.draw(samples_for(pods), label="samples")
    asyncio.run(_cycles(stack, database, namespace, spec, pods, samples, accepted))


def test_no_accepted_spec_or_query_result_breaks_a_cycle(stack: Stack, database: str, namespace: str) -> None:
    accepted: list[str] = []
    _hostile_examples(stack, database, namespace, accepted)
    print(f"[measured] hostile cycles: {len(accepted)} of the examples were specs the API server accepted")
    assert len(accepted) >= ACCEPTED_FLOOR, f"only {len(accepted)} examples reached a cycle"
