"""The memory-limit rule with TiKV's own config: the block cache weighed against the container's memory limit, the
status port found from the pod, TiKV's ``/config`` read, and the evidence gathered again once the store is back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from operator_k8s.domain.diagnosis import (
    BLOCK_CACHE_UNKNOWN,
    block_cache_known,
    diagnose,
    pod_evidence,
    quantity_bytes,
    readable_size_bytes,
    status_address,
    tikv_config_evidence,
    worth_config_again,
)
from operator_k8s.domain.tickets import TicketKey, TicketState, Transition
from tests.unit.builders import ticket
from tests.unit.test_diagnosis import HEALTHY_NODE, OOM, pod

NODE = HEALTHY_NODE | {"status": {**HEALTHY_NODE["status"], "capacity": {"memory": "64Gi"}}}


def config(capacity: Any) -> dict[str, Any]:
    return {"storage": {"block-cache": {"shared": True, "capacity": capacity}}, "memory-usage-limit": None}


def oom_evidence(tikv_config: dict[str, Any] | None, memory: str | None = "2Gi") -> dict[str, Any]:
    evidence = pod_evidence(pod(restarts=1, last=OOM, memory=memory), [], NODE)
    if tikv_config is not None:
        evidence["tikvConfig"] = tikv_config
    return evidence


@pytest.mark.parametrize(
    ("tikv_config", "memory", "value", "words"),
    [
        (tikv_config_evidence(config(None)), "2Gi", "block cache capacity unset",
         ["not set", "28.8 GiB of node node-a's 64Gi", "sized for the node, not the pod", "at most 922 MiB"]),
        (tikv_config_evidence(config("28GiB")), "2Gi", "block cache 28GiB (1400 % of the 2Gi limit)",
         ["28.0 GiB, 1400 % of the 2Gi limit: sized for the node, not the pod", "at most 922 MiB"]),
        (tikv_config_evidence(config("0.9GiB")), "2Gi", "block cache 0.9GiB (45 % of the 2Gi limit)",
         ["sized for the pod", "went elsewhere"]),
        (tikv_config_evidence(config("512MiB")), "2Gi", "block cache 512MiB (25 % of the 2Gi limit)",
         ["sized for the pod"]),
        (tikv_config_evidence(config("1GiB")), None, "block cache 1GiB", ["no memory limit to weigh it against"]),
        ({"readable": False, "why": "http://10.0.0.5:20180/config: ClientConnectorError"}, "2Gi", "OOMKilled",
         [BLOCK_CACHE_UNKNOWN, "ClientConnectorError", "may be the node's"]),
        (None, "2Gi", "OOMKilled", [BLOCK_CACHE_UNKNOWN, "not asked"]),
        (tikv_config_evidence({"storage": {}}), "2Gi", "OOMKilled", ["no storage.block-cache.capacity"]),
    ],
    ids=["unset", "node-sized", "pod-sized-rounded", "pod-sized", "no-limit", "unreachable", "not-asked",
         "other-shape"],
)  # fmt: skip
def test_the_memory_limit_finding_weighs_the_block_cache_against_the_limit(
    tikv_config: dict[str, Any] | None, memory: str | None, value: str, words: list[str]
) -> None:
    (finding,) = diagnose("tikv-0", oom_evidence(tikv_config, memory))
    assert finding.rule == "memory-limit"
    assert value in finding.value
    text = f"{finding.details} | {finding.reference} | {finding.next_step}"
    for word in words:
        assert word in text, text
    assert finding.summary.startswith("memory limit hit: container tikv was killed for using more memory")


def test_no_config_is_asked_of_a_store_that_was_not_killed_for_its_memory() -> None:
    assert diagnose("tikv-0", pod_evidence(pod(), [], NODE)) == []


@pytest.mark.parametrize(
    ("metadata", "ports", "ip", "address"),
    [
        ({"annotations": {"prometheus.io/port": "20180"}}, [], "10.0.0.5", "10.0.0.5:20180"),
        ({}, [{"name": "server", "containerPort": 20160}, {"name": "status", "containerPort": 20180}], "10.0.0.5",
         "10.0.0.5:20180"),
        ({}, [{"name": "status", "containerPort": 20180}], "fd00::5", "[fd00::5]:20180"),
        ({}, [{"name": "server", "containerPort": 20160}], "10.0.0.5", None),
        ({"annotations": {"prometheus.io/port": "20180"}}, [], None, None),
    ],
    ids=["annotation", "named-port", "ipv6", "no-status-port", "no-ip"],
)  # fmt: skip
def test_the_status_port_is_the_one_the_pod_declares_and_nothing_is_guessed(
    metadata: dict[str, Any], ports: list[dict[str, Any]], ip: str | None, address: str | None
) -> None:
    body = {"metadata": metadata, "spec": {"containers": [{"name": "tikv", "ports": ports}]}, "status": {"podIP": ip}}
    assert status_address(body) == address


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2Gi", 2 * 2**30), ("2048Mi", 2 * 2**30), ("2G", 2 * 10**9), ("1500000000", 1_500_000_000), ("1.5Gi",
     int(1.5 * 2**30)), ("100m", None), ("", None), ("lots", None)],
)  # fmt: skip
def test_kubernetes_quantities(text: str, expected: int | None) -> None:
    assert quantity_bytes(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1GiB", 2**30), ("1GB", 2**30), ("512MiB", 2**29), ("0.5GiB", 2**29), ("0KiB", 0), (1024, 1024), (None, None),
     (True, None), ("1 parsec", None)],
)  # fmt: skip
def test_tikv_readable_sizes_are_binary(value: object, expected: int | None) -> None:
    assert readable_size_bytes(value) == expected


NOW = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("invariant", "after", "diagnosis", "again"),
    [
        ("storesReady", "clearing", f"memory limit hit: …; {BLOCK_CACHE_UNKNOWN}: its /config was not read (…)", True),
        ("storesReady", "resolved", f"memory limit hit: …; {BLOCK_CACHE_UNKNOWN}: …", True),
        ("storesReady", "violated", f"memory limit hit: …; {BLOCK_CACHE_UNKNOWN}: …", False),
        ("storesReady", "clearing", "memory limit hit: …; TiKV's storage.block-cache.capacity is not set", False),
        ("storesReady", "clearing", "restart loop: …", False),
        ("latency", "clearing", f"memory limit hit: …; {BLOCK_CACHE_UNKNOWN}: …", False),
    ],
    ids=["back-and-unknown", "resolved-at-once", "still-down", "already-known", "other-cause", "other-invariant"],
)  # fmt: skip
def test_the_evidence_is_gathered_again_once_a_store_killed_for_its_memory_runs_again(
    invariant: str, after: str, diagnosis: str, again: bool
) -> None:
    before = replace(ticket(TicketState.DIAGNOSED, key=TicketKey("uid-1", invariant, "tikv-0")), diagnosis=diagnosis)
    later = {
        "clearing": replace(before, clearing_since=NOW),
        "resolved": replace(before, state=TicketState.RESOLVED, resolved_at=NOW),
        "violated": replace(before, last_seen=NOW),
    }[after]
    assert worth_config_again(Transition(before, later)) is again
    assert not worth_config_again(Transition(later, replace(later, last_seen=NOW))), "once, when it comes back"


def test_evidence_gathered_again_is_kept_only_when_it_weighs_the_block_cache() -> None:
    known = oom_evidence(tikv_config_evidence(config(None)))
    assert block_cache_known(diagnose("tikv-0", known), known)
    unknown = oom_evidence({"readable": False, "why": "refused"})
    assert not block_cache_known(diagnose("tikv-0", unknown), unknown)
    assert not block_cache_known([], known)
