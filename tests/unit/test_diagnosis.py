"""Evidence of a store's pod and the rules that name a probable cause, table-driven from the API server's bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from operator_k8s.domain.diagnosis import (
    EVIDENCE_BYTES,
    bounded,
    counted_to_read,
    diagnose,
    diagnosed,
    evidence_summary,
    pod_evidence,
    worth_evidence,
)
from operator_k8s.domain.tickets import Effect, EffectKind, TicketKey, TicketState, Transition
from tests.unit.builders import ticket


def pod(
    phase: str = "Running", *, restarts: int = 0, last: dict[str, Any] | None = None,
    waiting: dict[str, Any] | None = None, conditions: list[dict[str, Any]] | None = None,
    memory: str | None = "8Gi",
) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"name": "tikv", "ready": phase == "Running" and not waiting, "restartCount": restarts,
                              "state": {"waiting": waiting} if waiting else {"running": {"startedAt": "t"}}}  # fmt: skip
    if last:
        status["lastState"] = {"terminated": last}
    limits = {"limits": {"memory": memory}} if memory else {}
    return {
        "metadata": {"name": "tikv-0"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "tikv", "resources": limits}]},
        "status": {"phase": phase, "conditions": conditions or [], "containerStatuses": [status]},
    }


def node(**conditions: str) -> dict[str, Any]:
    return {"metadata": {"name": "node-a"},
            "status": {"conditions": [{"type": k, "status": v, "reason": ""} for k, v in conditions.items()]}}  # fmt: skip


HEALTHY_NODE = node(Ready="True", MemoryPressure="False", DiskPressure="False")
OOM = {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2026-12-07T20:00:00Z"}
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}


@pytest.mark.parametrize(
    ("pod_body", "events", "node_body", "rules", "words"),
    [
        (pod(), [], HEALTHY_NODE, [], ""),
        (pod(restarts=4, last=OOM), [], HEALTHY_NODE, ["memory-limit"], "8Gi"),
        (pod(restarts=1, last=OOM, memory=None), [], HEALTHY_NODE, ["memory-limit"], "no limit set"),
        (pod(restarts=5, last={"reason": "Error", "exitCode": 1}, waiting={"reason": "CrashLoopBackOff"}), [],
         HEALTHY_NODE, ["restart-loop"], "Error (code 1)"),
        (pod(restarts=3, last={"reason": "Error", "exitCode": 1,
                               "message": "[FATAL] cluster id mismatch, local 7 != remote 9"}), [], HEALTHY_NODE,
         ["stale-volume"], "another PD cluster"),
        (pod(), [{"type": "Warning", "reason": "BackOff", "message": "... cluster ID mismatch ..."}], HEALTHY_NODE,
         ["stale-volume"], "reused volume"),
        (pod("Pending", conditions=[UNSCHEDULABLE | {"message": "0/3 nodes are available: pod has unbound "
                                                               "immediate PersistentVolumeClaims."}]),
         [], None, ["pod-pending"], "volume claim is not bound"),
        (pod("Pending", conditions=[UNSCHEDULABLE | {"message": "0/3 nodes are available: 3 Insufficient memory."}]),
         [], None, ["pod-pending"], "no node has the resources"),
        (pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "not found"}), [], HEALTHY_NODE,
         ["pod-pending"], "cannot pull its image"),
        (pod(), [], node(Ready="False", DiskPressure="False"), ["node-condition"], "Ready=False"),
        (pod(), [], node(Ready="True", DiskPressure="True"), ["node-condition"], "DiskPressure=True"),
        (pod(restarts=1, last={"reason": "Completed", "exitCode": 0}), [], HEALTHY_NODE, [], ""),
    ],
    ids=["healthy", "oom", "oom-no-limit", "crash-loop", "cluster-id-in-exit", "cluster-id-in-event",
         "pending-pvc", "pending-memory", "image-pull", "node-not-ready", "disk-pressure", "one-restart"],
)  # fmt: skip
def test_a_rule_names_a_cause_only_when_its_facts_are_there(
    pod_body: dict[str, Any], events: list[dict[str, Any]], node_body: dict[str, Any] | None, rules: list[str],
    words: str,
) -> None:  # fmt: skip
    findings = diagnose("tikv-0", pod_evidence(pod_body, events, node_body))
    assert [f.rule for f in findings] == rules
    if findings:
        assert words in f"{findings[0].details} {findings[0].value} {findings[0].reference}"
        assert findings[0].runbook.endswith(f"#runbook-{findings[0].rule}")
        assert findings[0].next_step


def test_an_oom_explains_its_restarts_so_the_loop_is_not_a_second_cause() -> None:
    findings = diagnose("tikv-0", pod_evidence(pod(restarts=9, last=OOM, waiting={"reason": "CrashLoopBackOff"}), [],
                                               HEALTHY_NODE))  # fmt: skip
    assert [f.rule for f in findings] == ["memory-limit"]


def test_what_could_not_be_read_is_said_and_nothing_is_guessed() -> None:
    evidence = pod_evidence(None, [], None, unreachable=["pod tikv-0: forbidden (RBAC)"])
    assert diagnose("tikv-0", evidence) == []
    assert evidence_summary(evidence) == "not reachable: pod tikv-0: forbidden (RBAC)"


def test_evidence_stays_within_its_bound_dropping_the_oldest_events_first() -> None:
    events = [{"type": "Warning", "reason": "BackOff", "message": "x" * 500, "lastTimestamp": f"2026-12-07T20:{i:02}"}
              for i in range(20)]  # fmt: skip
    evidence = pod_evidence(pod(), events, HEALTHY_NODE)
    assert evidence["events"][0]["last"] == "2026-12-07T20:19", "newest first"
    small = bounded(evidence, limit=4000)
    assert len(json.dumps(small)) <= 4000
    assert small["events"] == evidence["events"][: len(small["events"])]
    assert len(json.dumps(evidence)) <= EVIDENCE_BYTES


def test_the_summary_says_what_the_pod_and_node_show() -> None:
    evidence = pod_evidence(pod(restarts=4, last=OOM), [{"type": "Warning", "reason": "OOMKilling", "message": "m"}],
                            HEALTHY_NODE)  # fmt: skip
    assert evidence_summary(evidence) == (
        "pod Running, 4 restarts; last exit OOMKilled (137); 1 warning events, latest OOMKilling; node node-a Ready=True"
    )


def test_an_open_ticket_with_a_cause_is_diagnosed_and_others_stay() -> None:
    findings = diagnose("tikv-0", pod_evidence(pod(restarts=4, last=OOM), [], HEALTHY_NODE))
    opened = ticket(TicketState.OPEN)
    result = diagnosed(opened, findings)
    assert result.after is not None and result.after.state is TicketState.DIAGNOSED
    assert [e.kind for e in result.effects] == [EffectKind.DIAGNOSED]
    assert "memory limit hit" in result.effects[0].reason
    assert not diagnosed(opened, []).changed, "unknown stays unknown"
    assert not diagnosed(ticket(TicketState.ACKNOWLEDGED), findings).changed


@pytest.mark.parametrize(
    ("kind", "store", "gathered"),
    [(EffectKind.OPENED, "tikv-0", True), (EffectKind.ESCALATED, "tikv-0", True), (EffectKind.RESOLVED, "tikv-0", False),
     (EffectKind.OPENED, "cluster", False)],
)  # fmt: skip
def test_evidence_is_gathered_when_a_store_ticket_opens_or_escalates(
    kind: EffectKind, store: str, gathered: bool
) -> None:
    after = ticket(TicketState.OPEN, key=TicketKey("uid-1", "latency", store))
    item = Transition(None, after, (Effect(kind, None, TicketState.OPEN, "r"),))
    assert worth_evidence(item) is gathered


# -- rules over Prometheus's evidence --------------------------------------------------------------------------------

READY = {"type": "Ready", "status": "True", "reason": ""}


def with_metrics(prometheus: dict[str, Any], pod_body: dict[str, Any] | None = None) -> dict[str, Any]:
    evidence = pod_evidence(pod_body, [], HEALTHY_NODE)
    evidence["prometheus"] = prometheus
    return evidence


def disk(tikv: float, other: float, **extra: Any) -> dict[str, Any]:
    return {"disk": {"readable": True, "usedPercent": tikv + other, "tikvPercent": tikv, "otherPercent": other,
                     "otherBytes": int(other / 100 * 100 * 2**30), "sizes": {"kv_size": 30 * 2**30}, **extra}}  # fmt: skip


def latency(
    *rows: tuple[str, float, float | None], answered: bool = True, watched: tuple[str, ...] = ()
) -> dict[str, Any]:
    types = [{"type": t, "p99Ms": own, "othersP99Ms": others, "ratio": own / others if others else None}
             for t, own, others in rows]  # fmt: skip
    return {"latency": {"types": types, "failures": {}, "othersAnswered": answered, "watched": list(watched)}}


def stalls(**reasons: float) -> dict[str, Any]:
    return {"stalls": {"reasons": reasons, "level0Files": 28.0, "pendingCompactionBytes": 208 * 2**30,
                       "answered": True}}  # fmt: skip


def pd_view(*states: str, score: float | None = 1.0) -> dict[str, Any]:
    return {"pd": {"status": "ok", "stores": {}, "states": list(states), "storeId": "4"}, "slowScore": score}


@pytest.mark.parametrize(
    ("prometheus", "pod_body", "rules", "words"),
    [
        # what fills the disk
        (disk(40, 50), None, ["disk-other"], "not TiKV's are 50%"),
        (disk(85, 0.5, secondsToReserve=7200.0), None, ["disk-tikv"], "reserve (5 GiB) 2.0 h away"),
        ({"disk": {"readable": False, "sizes": {}}}, None, [], ""),  # TiKV cannot read its disk: unknown
        # one store slow, or all of them
        (latency(("kv_get", 800.0, 0.8), ("coprocessor", 40.0, 38.0)), None, ["slow-store"], "kv_get 800 ms"),
        (latency(("kv_get", 900.0, 850.0), ("kv_prewrite", 700.0, 690.0)), None, ["slow-cluster"], "shared"),
        (latency(("kv_get", 800.0, None), answered=False), None, [], ""),  # no other store to compare: unknown
        # judged on the types the invariant measures: lock waits on this store are contention, not its speed
        (latency(("kv_pessimistic_lock", 1000.0, 2.0), ("kv_get", 800.0, 790.0), watched=("kv_get", "kv_prewrite")),
         None, ["slow-cluster"], "shared"),
        (latency(("kv_pessimistic_lock", 1000.0, 2.0), ("kv_get", 1.0, 0.9), watched=("kv_get",)), None, [], ""),
        (latency(("kv_get", 0.9, 0.1)), None, [], ""),  # 9x of nothing: fast
        # a write stall, by cause
        (stalls(level0_file_limit_slowdown=6, level0_file_limit_stop=2), None, ["write-stall"], "level-0 files pile"),
        (stalls(pending_compaction_bytes_slowdown=9), None, ["write-stall"], "compaction owes"),
        (stalls(memtable_count_limit_slowdown=3, memtable_count_limit_stop=1, level0_file_limit_slowdown=1), None,
         ["write-stall"], "flushes are behind"),  # the cause that stalled most
        (stalls(), None, [], ""),  # no stall over the window
        # a stall explains the store's slow writes; not its slow reads
        ({**latency(("kv_prewrite", 800.0, 0.9), ("kv_commit", 700.0, 0.8)), **stalls(level0_file_limit_stop=1)},
         None, ["write-stall"], "level-0"),
        ({**latency(("kv_get", 800.0, 0.8), ("kv_prewrite", 700.0, 0.9)), **stalls(level0_file_limit_slowdown=4)},
         None, ["slow-store", "write-stall"], "kv_get 800 ms"),
        (latency(("kv_prewrite", 800.0, 0.9)), None, ["slow-store"], "kv_prewrite 800 ms"),  # slow, no stall
        # hung while Ready
        (pd_view("disconnected"), pod(conditions=[READY]), ["store-hung"], "disconnected (no heartbeat)"),
        (pd_view(score=95.0), pod(conditions=[READY]), ["store-hung"], "slow score of 95"),
        (pd_view("disconnected"), pod(restarts=4, last=OOM, waiting={"reason": "CrashLoopBackOff"}),
         ["memory-limit"], "8Gi"),  # not Ready: the kubelet sees it, and the OOM explains it
        (pd_view("disconnected"), pod(restarts=1, last=OOM, conditions=[READY]), ["store-hung", "memory-limit"],
         "disconnected (no heartbeat)"),  # Ready again after an old OOM kill: the hang is now, the kill history
        (pd_view("up", score=1.0), pod(conditions=[READY]), [], ""),
        (pd_view(score=None), pod(conditions=[READY]), [], ""),  # no slow score answered: nothing said
    ],
)  # fmt: skip
def test_rules_over_prometheus_evidence(
    prometheus: dict[str, Any], pod_body: dict[str, Any] | None, rules: list[str], words: str
) -> None:
    found = diagnose("tikv-1", with_metrics(prometheus, pod_body))
    assert [f.rule for f in found] == rules
    if found:
        assert words in found[0].details + found[0].value
        assert found[0].store == "tikv-1" and found[0].next_step and found[0].reference
        assert found[0].runbook.endswith(f"#runbook-{found[0].rule}")


def test_a_write_stall_says_its_severity_and_next_step_by_cause() -> None:
    stop, slowdown = (diagnose("tikv-1", with_metrics(stalls(**{reason: 2})))[0]
                      for reason in ("pending_compaction_bytes_stop", "memtable_count_limit_slowdown"))  # fmt: skip
    assert stop.severity == "critical" and "compaction is behind" in stop.next_step
    assert "208.0 GiB pending compaction" in stop.details
    assert slowdown.severity == "warning" and "flushing is behind" in slowdown.next_step


def counted_cluster(pods: dict[str, dict[str, Any] | None], states: dict[str, list[str]]) -> dict[str, Any]:
    """A cluster-level pdStores ticket's evidence: PD's states of the stores it counts, and the pods it read."""
    return {
        "unreachable": [],
        "prometheus": {"pd": {"status": "ok", "stores": states}},
        "counted": {name: pod_evidence(body, [], HEALTHY_NODE) for name, body in pods.items()},
    }


@pytest.mark.parametrize(
    ("pods", "states", "rules"),
    [
        # PD counts a store disconnected whose pod is Running and Ready: hung
        ({"tikv-1": pod(conditions=[READY])}, {"tikv-1": ["disconnected"], "tikv-0": ["up"]}, ["store-hung"]),
        # ...whose pod was OOMKilled and is not Ready: the OOM, never hung
        ({"tikv-1": pod(restarts=2, last=OOM, waiting={"reason": "CrashLoopBackOff"})}, {"tikv-1": ["disconnected"]},
         ["memory-limit"]),
        # ...Pending: not scheduled
        ({"tikv-2": pod("Pending", conditions=[UNSCHEDULABLE | {"message": "0/3 nodes: 3 Insufficient memory."}])},
         {"tikv-2": ["disconnected"]}, ["pod-pending"]),
        # two stores, each from its own view
        ({"tikv-1": pod(conditions=[READY]), "tikv-2": pod(restarts=2, last=OOM, waiting={"reason": "BackOff"})},
         {"tikv-1": ["disconnected"], "tikv-2": ["down"]}, ["store-hung", "memory-limit"]),
        # low on space only, Ready: not hung (the disk's own ticket says why)
        ({"tikv-1": pod(conditions=[READY])}, {"tikv-1": ["low_space", "up"]}, []),
        # no pod read: unknown
        ({}, {"tikv-1": ["disconnected"]}, []),
    ],
    ids=["hung", "oom-not-hung", "pending", "two-stores", "low-space", "no-pod"],
)  # fmt: skip
def test_a_cluster_ticket_diagnoses_each_store_pd_counts_from_its_own_view(
    pods: dict[str, dict[str, Any] | None], states: dict[str, list[str]], rules: list[str]
) -> None:
    found = diagnose("cluster", counted_cluster(pods, states))
    assert [f.rule for f in found] == rules
    assert [f.store for f in found] == sorted(pods)[: len(found)], "each finding names the store PD counts"


def test_a_cluster_ticket_reads_at_most_two_of_its_own_counted_stores() -> None:
    evidence = {"prometheus": {"pd": {"stores": {"tikv-0": ["disconnected"], "tikv-1": ["up"], "tikv-2": ["down"],
                                                 "tikv-3": ["disconnected"], "store id 9": ["down"]}}}}  # fmt: skip
    counted = ("store_disconnected_count", "store_down_count")
    assert counted_to_read(evidence, counted, ("tikv-0", "tikv-1", "tikv-2", "tikv-3")) == ["tikv-0", "tikv-2"]
    assert counted_to_read(evidence, counted, ("tikv-1", "tikv-3")) == ["tikv-3"], "never a pod not its cluster's"
    assert counted_to_read({}, counted, ("tikv-0",)) == []
