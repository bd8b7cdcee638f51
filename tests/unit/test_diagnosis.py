"""Evidence of a store's pod and the rules that name a probable cause, table-driven from the API server's bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from operator_k8s.domain.diagnosis import (
    EVIDENCE_BYTES,
    bounded,
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


def latency(*rows: tuple[str, float, float | None], answered: bool = True) -> dict[str, Any]:
    types = [{"type": t, "p99Ms": own, "othersP99Ms": others, "ratio": own / others if others else None}
             for t, own, others in rows]  # fmt: skip
    return {"latency": {"types": types, "failures": {}, "othersAnswered": answered}}


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
        (latency(("kv_get", 0.9, 0.1)), None, [], ""),  # 9x of nothing: fast
        # hung while Ready
        (pd_view("disconnected"), pod(conditions=[READY]), ["store-hung"], "disconnected (no heartbeat)"),
        (pd_view(score=95.0), pod(conditions=[READY]), ["store-hung"], "slow score of 95"),
        (pd_view("disconnected"), pod(restarts=4, last=OOM, waiting={"reason": "CrashLoopBackOff"}),
         ["memory-limit"], "8Gi"),  # not Ready: the kubelet sees it, and the OOM explains it
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
