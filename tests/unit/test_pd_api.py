"""PD's store API (``/pd/api/v1/stores``): what it says of each store, and how it names the stores an older PD's
series only count."""

from __future__ import annotations

from typing import Any

import pytest

from operator_k8s.domain.diagnosis import counted_to_read, diagnose, evidence_summary, pod_evidence
from operator_k8s.domain.metric_evidence import pd_named_stores
from operator_k8s.domain.pd_api import api_states, byte_size, pd_stores_evidence, store_pod
from tests.unit.test_diagnosis import HEALTHY_NODE, READY, pod

PODS = ("basic-tikv-0", "basic-tikv-1", "basic-tikv-2")


def entry(pod_name: str, state: str = "Up", **status: Any) -> dict[str, Any]:
    """One store as PD's API answers it (tikv/pd pkg/response/store.go)."""
    return {
        "store": {"id": 1, "address": f"{pod_name}.basic-tikv-peer.ns.svc:20160", "state_name": state},
        "status": {"capacity": "100GiB", "available": "60GiB", "region_count": 1000, "slow_score": 1,
                   "last_heartbeat_ts": "2026-12-08T03:00:00Z", **status},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100GiB", 100 * 2**30), ("1.953GiB", int(1.953 * 2**30)), ("512MiB", 512 * 2**20), ("0B", 0), (7, 7),
     ("12", 12), ("lots", None), ("3XB", None), (None, None), (True, None)],
)  # fmt: skip
def test_sizes_read_as_pd_writes_them(value: object, expected: int | None) -> None:
    assert byte_size(value) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [("basic-tikv-1.basic-tikv-peer.ns.svc:20160", "basic-tikv-1"), ("basic-tikv-1:20160", "basic-tikv-1"),
     ("other-tikv-1.other-tikv-peer.ns.svc:20160", None), ("10.0.0.5:20160", None), ("", None), (None, None)],
)  # fmt: skip
def test_a_store_address_names_only_a_pod_of_the_cluster(address: object, expected: str | None) -> None:
    assert store_pod(address, PODS) == expected


@pytest.mark.parametrize(
    ("store", "state", "slow_score", "pending", "low_space"),
    [
        (entry("basic-tikv-0"), ["up"], 1.0, 0, False),
        (entry("basic-tikv-0", "Disconnected"), ["disconnected"], 1.0, 0, False),
        (entry("basic-tikv-0", "Down"), ["down"], 1.0, 0, False),
        (entry("basic-tikv-0", "Offline"), ["offline"], 1.0, 0, False),
        (entry("basic-tikv-0", "Tombstone"), ["tombstone"], 1.0, 0, False),
        # PD's rule: available/capacity < 1 - low-space-ratio 0.8
        (entry("basic-tikv-0", available="19GiB"), ["up", "low_space"], 1.0, 0, True),
        (entry("basic-tikv-0", available="20GiB"), ["up"], 1.0, 0, False),
        (entry("basic-tikv-0", "Down", available="1GiB"), ["down"], 1.0, 0, True),
        (entry("basic-tikv-0", slow_score=80, pending_peer_count=12), ["up", "slow"], 80.0, 12, False),
        (entry("basic-tikv-0", "Disconnected", slow_score=100), ["disconnected"], 100.0, 0, False),
        (entry("basic-tikv-0", "Unknown-to-us"), [], 1.0, 0, False),
    ],
    ids=["up", "disconnected", "down", "offline", "tombstone", "low-space", "at-the-ratio", "down-not-low",
         "slow-pending", "disconnected-slow", "unknown-state"],
)  # fmt: skip
def test_what_pd_says_of_a_store(
    store: dict[str, Any], state: list[str], slow_score: float, pending: int, low_space: bool
) -> None:
    found = pd_stores_evidence({"count": 1, "stores": [store]}, PODS)["stores"]["basic-tikv-0"]
    assert (found["states"], found["slowScore"], found["pendingPeers"], found["lowSpace"]) == (
        state,
        slow_score,
        pending,
        low_space,
    )


@pytest.mark.parametrize(
    "body",
    [None, [], {"count": 0}, {"stores": "x"}, "text"],
)
def test_an_answer_of_another_shape_is_said_never_guessed(body: object) -> None:
    assert pd_stores_evidence(body, PODS) == {"readable": False, "why": "its answer has no stores list"}


def test_only_the_clusters_stores_are_kept_the_tickets_first() -> None:
    body = {"stores": [entry("basic-tikv-0"), entry("other-tikv-0"), entry("basic-tikv-2"), {"store": 3}, 7]}
    found = pd_stores_evidence(body, PODS, first="basic-tikv-2")
    assert list(found["stores"]) == ["basic-tikv-2", "basic-tikv-0"]
    assert found["count"] == 5


def older_pd(api: dict[str, Any] | None, series: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A cluster-level pdStores ticket's evidence: an older PD's series count only (no stores named)."""
    evidence: dict[str, Any] = {"unreachable": [], "prometheus": {"pd": {"status": "no data", "stores": series or {}}}}
    if api is not None:
        evidence["pdApi"] = api
    return evidence


DISCONNECTED_API = pd_stores_evidence({"stores": [entry("basic-tikv-0"), entry("basic-tikv-1", "Disconnected")]}, PODS)


@pytest.mark.parametrize(
    ("evidence", "named"),
    [
        (older_pd(DISCONNECTED_API), {"basic-tikv-1": ["disconnected"]}),
        (older_pd(None), {}),
        (older_pd({"readable": False, "why": "http://x: HTTP 503"}), {}),
        # PD's series name the stores (v8.5.5): they decide, the API only adds
        (older_pd(DISCONNECTED_API, {"basic-tikv-2": ["disconnected"]}), {"basic-tikv-2": ["disconnected"]}),
    ],
    ids=["api-names", "not-read", "not-reachable", "series-first"],
)  # fmt: skip
def test_the_api_names_the_stores_an_older_pd_only_counts(
    evidence: dict[str, Any], named: dict[str, list[str]]
) -> None:
    assert pd_named_stores(evidence, ("store_disconnected_count",)) == named
    assert counted_to_read(evidence, ("store_disconnected_count",), PODS) == sorted(named)


def test_a_hung_store_under_an_older_pd_is_diagnosed_through_the_api() -> None:
    evidence = older_pd(DISCONNECTED_API)
    evidence["counted"] = {"basic-tikv-1": pod_evidence(pod(conditions=[READY]), [], HEALTHY_NODE)}
    found = diagnose("cluster", evidence)
    assert [(f.rule, f.store) for f in found] == [("store-hung", "basic-tikv-1")]
    assert "PD's store API says Disconnected" in found[0].details
    assert "basic-tikv-1: PD API: Disconnected, slow score 1" in evidence_summary(evidence)
    assert api_states(evidence)["basic-tikv-0"] == ["up"]


def test_a_store_ticket_shows_what_pd_says_beside_the_series() -> None:
    api = pd_stores_evidence({"stores": [entry("tikv-0", "Disconnected", slow_score=100, pending_peer_count=7)]},
                             ("tikv-0",))  # fmt: skip
    evidence = {**pod_evidence(pod(conditions=[READY]), [], HEALTHY_NODE), "pdApi": api,
                "prometheus": {"pd": {"states": ["disconnected"]}}}  # fmt: skip
    found = diagnose("tikv-0", evidence)
    assert found[0].rule == "store-hung"
    assert "PD API: Disconnected, slow score 100, 7 pending peers" in found[0].details
    assert "tikv-0: PD API: Disconnected, slow score 100, 7 pending peers" in evidence_summary(evidence)


def test_a_store_pd_says_up_is_not_hung() -> None:
    api = pd_stores_evidence({"stores": [entry("tikv-0")]}, ("tikv-0",))
    evidence = {**pod_evidence(pod(conditions=[READY]), [], HEALTHY_NODE), "pdApi": api}
    assert diagnose("tikv-0", evidence) == []
