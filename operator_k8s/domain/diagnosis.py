"""Evidence about a store's pod, and the rules that turn it into a probable cause: decided here, without I/O.

Evidence is what Kubernetes shows about the store when its ticket opens or escalates: the pod (phase, conditions,
containers with their restarts and last termination), the recent Events about it, its node's conditions. It is
bounded (``EVIDENCE_BYTES``) and stored with the ticket. A rule reads it and, when its facts are there, says a
probable cause as a row in the shape TiDB's ``inspection_result`` uses (rule, item, store, value, reference,
severity, details, next step) with its runbook. When no rule's facts are there, nothing is said: unknown stays
unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from operator_k8s.domain.metric_evidence import COUNTED_PODS, metric_summary, pd_named_stores
from operator_k8s.domain.pd_api import api_store, api_text
from operator_k8s.domain.tickets import Effect, EffectKind, Ticket, TicketState, Transition
from operator_k8s.domain.vocabulary import CLUSTER_STORE, Invariant

EVIDENCE_BYTES = 64 * 1024
EVENTS_KEPT = 20
TEXT_BYTES = 512
RESTART_LOOP = 3
"""Restarts of one container from which a pod that keeps failing is a restart loop."""
RUNBOOK = "https://github.com/operator-k8s/operator-k8s/blob/main/README.md"
"""The runbooks: one README section per rule, ``#runbook-<rule>``."""


def _text(value: object) -> str:
    return str(value or "")[:TEXT_BYTES]


def _container(status: Mapping[str, Any], limits: Mapping[str, Any]) -> dict[str, Any]:
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    return {
        "name": _text(status.get("name")),
        "ready": bool(status.get("ready")),
        "restarts": int(status.get("restartCount") or 0),
        "state": next(iter(state), "unknown"),
        "waiting": _text(waiting.get("reason")) or None,
        "waitingMessage": _text(waiting.get("message")) or None,
        "terminated": _text(terminated.get("reason")) or None,
        "lastTermination": {
            "reason": _text(last.get("reason")),
            "exitCode": last.get("exitCode"),
            "message": _text(last.get("message")),
            "finishedAt": last.get("finishedAt"),
        }
        if last
        else None,
        "memoryLimit": _text(limits.get("memory")) or None,
    }


def _condition(condition: Mapping[str, Any]) -> dict[str, str]:
    return {key: _text(condition.get(key)) for key in ("type", "status", "reason")}


def pod_evidence(
    pod: Mapping[str, Any] | None, events: Sequence[Mapping[str, Any]], node: Mapping[str, Any] | None, *,
    unreachable: Sequence[str] = (),
) -> dict[str, Any]:  # fmt: skip
    """The evidence of one store's pod from the API server's bodies (a pod, its Events, its node), bounded in size.
    ``unreachable`` says what could not be read, and why: it is said, never guessed."""
    evidence: dict[str, Any] = {"unreachable": list(unreachable)}
    if pod is not None:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        limits = {c.get("name"): (c.get("resources") or {}).get("limits") or {} for c in spec.get("containers") or []}
        evidence["pod"] = {
            "name": _text((pod.get("metadata") or {}).get("name")),
            "phase": _text(status.get("phase")),
            "node": _text(spec.get("nodeName")) or None,
            "conditions": [
                _condition(c) | {"message": _text(c.get("message"))} for c in status.get("conditions") or []
            ],
            "containers": [_container(s, limits.get(s.get("name"), {})) for s in status.get("containerStatuses") or []],
            "statusAddress": status_address(pod),
        }
    recent = sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""), reverse=True)
    evidence["events"] = [
        {"type": _text(e.get("type")), "reason": _text(e.get("reason")), "message": _text(e.get("message")),
         "count": int(e.get("count") or 1), "last": _text(e.get("lastTimestamp") or e.get("eventTime"))}
        for e in recent[:EVENTS_KEPT]
    ]  # fmt: skip
    if node is not None:
        evidence["node"] = {
            "name": _text((node.get("metadata") or {}).get("name")),
            "conditions": [_condition(c) for c in (node.get("status") or {}).get("conditions") or []],
            "memory": _text(((node.get("status") or {}).get("capacity") or {}).get("memory")) or None,
        }
    return bounded(evidence)


def bounded(evidence: dict[str, Any], limit: int = EVIDENCE_BYTES) -> dict[str, Any]:
    """The evidence within ``limit`` bytes of JSON: the oldest Events go first, then the messages."""
    shrunk = dict(evidence)
    while len(json.dumps(shrunk)) > limit and shrunk.get("events"):
        shrunk["events"] = shrunk["events"][:-1]
    if len(json.dumps(shrunk)) > limit:
        shrunk = {"unreachable": [*shrunk.get("unreachable", []), f"evidence over {limit} bytes: dropped"]}
    return shrunk


@dataclass(frozen=True)
class Finding:
    """One probable cause, as a row of TiDB's ``inspection_result`` (with a runbook)."""

    rule: str
    item: str
    store: str
    value: str
    reference: str
    severity: str
    details: str
    next_step: str

    @property
    def runbook(self) -> str:
        return f"{RUNBOOK}#runbook-{self.rule}"

    def to_json(self) -> dict[str, str]:
        return {**asdict(self), "runbook": self.runbook}

    @property
    def summary(self) -> str:
        return f"{self.item}: {self.details}"


def _containers(evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((evidence.get("pod") or {}).get("containers") or [])


def _all_text(evidence: Mapping[str, Any]) -> str:
    parts = [e.get("message", "") for e in evidence.get("events") or []]
    for container in _containers(evidence):
        last = container.get("lastTermination") or {}
        parts += [last.get("message", ""), container.get("waitingMessage") or ""]
    return "\n".join(parts).lower()


def _oom(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    found = []
    for container in _containers(evidence):
        last = container.get("lastTermination") or {}
        if last.get("reason") == "OOMKilled" or container.get("terminated") == "OOMKilled":
            limit = container.get("memoryLimit") or "no limit set"
            cache = block_cache_reading(evidence, container)
            found.append(Finding(
                "memory-limit", "memory limit hit", store,
                f"OOMKilled (exit code {last.get('exitCode', 137)})" + (f"; {cache.value}" if cache.value else ""),
                f"container {container['name']} memory limit {limit}" + (f"; {cache.reference}" if cache.reference
                                                                          else ""), "critical",
                f"container {container['name']} was killed for using more memory than its limit ({limit});"
                f" restarted {container['restarts']} times; {cache.details}",
                cache.next_step,
            ))  # fmt: skip
    return found


def _cluster_id(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    if "cluster id mismatch" not in _all_text(evidence):
        return []
    return [Finding(
        "stale-volume", "a volume from another cluster", store, "cluster id mismatch", "the PD cluster's id",
        "critical", "TiKV refuses to start: its data directory belongs to another PD cluster (a reused volume)",
        "check which PersistentVolume the pod mounts; wipe or replace a volume left by an old cluster",
    )]  # fmt: skip


def _restart_loop(store: str, evidence: Mapping[str, Any], explained: bool) -> list[Finding]:
    if explained:
        return []
    for container in _containers(evidence):
        looping = container.get("waiting") == "CrashLoopBackOff" or container["restarts"] >= RESTART_LOOP
        if looping and container["restarts"] >= 1:
            last = container.get("lastTermination") or {}
            why = f"last exit: {last.get('reason') or 'unknown'} (code {last.get('exitCode')})" if last else "no exit"
            return [Finding(
                "restart-loop", "restart loop", store, f"{container['restarts']} restarts",
                f"fewer than {RESTART_LOOP} restarts", "warning",
                f"container {container['name']} keeps restarting; {why}",
                "read the previous container's log (kubectl logs --previous) for the reason it exits",
            )]  # fmt: skip
    return []


def _pending(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    pod = evidence.get("pod") or {}
    if pod.get("phase") != "Pending":
        return []
    for condition in pod.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message") or condition.get("reason") or ""
            lowered = message.lower()
            if "persistentvolumeclaim" in lowered:
                cause, step = "its volume claim is not bound", "check the PVC's StorageClass and provisioner"
            elif "insufficient" in lowered:
                cause, step = "no node has the resources it requests", "add capacity or lower its requests"
            elif "affinity" in lowered or "taint" in lowered or "selector" in lowered:
                cause, step = "no node matches its placement rules", "check its affinity, tolerations and selector"
            else:
                cause, step = "the scheduler found no node for it", "read the scheduler's message"
            return [Finding(
                "pod-pending", "store pod not scheduled", store, "Pending", "Running", "critical",
                f"{cause}: {message}", step,
            )]  # fmt: skip
    for container in _containers(evidence):
        if container.get("waiting") in ("ImagePullBackOff", "ErrImagePull"):
            return [Finding(
                "pod-pending", "store image not pulled", store, container["waiting"], "Running", "critical",
                f"container {container['name']} cannot pull its image: {container.get('waitingMessage') or ''}",
                "check the image name and tag, and the pull secret",
            )]  # fmt: skip
    return []


def _node(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    node = evidence.get("node") or {}
    found = []
    for condition in node.get("conditions") or []:
        kind, status = condition.get("type"), condition.get("status")
        if (kind == "Ready" and status != "True") or (kind in PRESSURES and status == "True"):
            found.append(Finding(
                "node-condition", f"node {node.get('name')} {kind}", store, f"{kind}={status}",
                "Ready=True, no pressure", "critical" if kind == "Ready" else "warning",
                f"the store's node reports {kind}={status} ({condition.get('reason') or 'no reason'})",
                "look at the node (kubectl describe node); the store's pod may need to move",
            ))  # fmt: skip
    return found


PRESSURES = ("MemoryPressure", "DiskPressure", "PIDPressure")
OTHER_FILES_PERCENT = 20.0
"""Files that are not TiKV's taking this share of the volume fill it: a healthy store's logs take well under 1 %."""
SLOW_RATIO = 5.0
"""A request type this many times slower on the store than on the cluster's other stores is the store's own."""
SLOW_FLOOR_MS = 10.0
"""A p99 under this is fast whatever the ratio (point operations take about a millisecond)."""
CLUSTER_WIDE_RATIO = 2.0
"""Slow on every store alike: the store is within this factor of the others."""
SLOW_SCORE_SLOW = 80.0
HUNG_STATES = frozenset({"disconnected", "down", "unhealth"})
WRITE_TYPES = frozenset({
    "kv_prewrite", "kv_commit", "kv_pessimistic_lock", "kv_pessimistic_rollback", "kv_cleanup", "kv_batch_rollback",
    "kv_txn_heart_beat", "kv_check_txn_status", "kv_check_secondary_locks", "kv_resolve_lock", "kv_flush",
    "raw_put", "raw_batch_put", "raw_delete", "raw_batch_delete", "raw_delete_range", "raw_compare_and_swap",
})  # fmt: skip
"""Request types that write through RocksDB's write path, which a write stall holds up (reads do not wait on it)."""
STALL_CAUSES: dict[str, tuple[str, str, str]] = {
    "level0_file_limit": (
        "too many level-0 files",
        "compaction is behind the flushes: level-0 files pile up (writes slow down at"
        " rocksdb.<cf>.level0-slowdown-writes-trigger, 20 files, and stop at level0-stop-writes-trigger)",
        "compaction is behind: check the disk's write bandwidth and utilisation, the compaction threads"
        " (rocksdb.max-background-jobs) and the rate limiter (rocksdb.rate-bytes-per-sec); slow down a bulk load",
    ),
    "pending_compaction_bytes": (
        "too many pending compaction bytes",
        "compaction is behind the writes: the bytes compaction owes pass rocksdb.<cf>.soft-pending-compaction-bytes-"
        "limit (writes slow down) or hard-pending-compaction-bytes-limit (writes stop)",
        "compaction is behind: check the disk's write bandwidth, the compaction threads (rocksdb.max-background-jobs)"
        " and a large import or range deletion; raising the limits only hides it",
    ),
    "memtable_count_limit": (
        "too many memtables",
        "flushes are behind the writes: memtables reach rocksdb.<cf>.max-write-buffer-number before they are"
        " flushed (writes slow down one short of it and stop at it)",
        "flushing is behind: check the disk's write latency, the flush threads (rocksdb.max-background-flushes) and"
        " a burst of large writes; write-buffer-size and max-write-buffer-number trade memory for headroom",
    ),
}
"""RocksDB's write-stall causes (the reasons' prefixes): the item, what it means, and the next step."""


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "not falling"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _disk(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    disk = (evidence.get("prometheus") or {}).get("disk") or {}
    if not disk.get("readable"):
        return []
    used, tikv, other = disk["usedPercent"], disk["tikvPercent"], disk["otherPercent"]
    when = (f"at the present rate the threshold is {_hours(disk.get('secondsToThreshold'))} away and TiKV's"
            f" write-rejecting reserve (5 GiB) {_hours(disk.get('secondsToReserve'))} away")  # fmt: skip
    if other >= OTHER_FILES_PERCENT:
        return [Finding(
            "disk-other", "disk filled by other files", store, f"{other:g}% of the volume is not TiKV's",
            f"under {OTHER_FILES_PERCENT:g}% not TiKV's", "critical",
            f"the volume is {used:g}% full: TiKV's own data (tikv_store_size_bytes used) is {tikv:g}%, files that"
            f" are not TiKV's are {other:g}% ({disk['otherBytes'] / 2**30:.1f} GiB); {when}",
            "find what else writes to the volume (core dumps, logs, a backup or import left behind: du on the data"
            " directory) and remove it; TiKV's data is not the cause",
        )]  # fmt: skip
    sizes = disk.get("sizes") or {}
    return [Finding(
        "disk-tikv", "disk filled by TiKV's data", store, f"TiKV's data is {tikv:g}% of the volume",
        f"{used:g}% used in all", "warning",
        f"TiKV's own data fills the volume: kv {sizes.get('kv_size', 0) / 2**30:.1f} GiB, raft"
        f" {sizes.get('raft_size', 0) / 2**30:.1f} GiB, snapshots {sizes.get('snap_size', 0) / 2**30:.1f} GiB; {when}",
        "grow the volume, or add stores so PD moves regions away (check PD's low-space and region balance)",
    )]  # fmt: skip


def _stall(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    stalls = (evidence.get("prometheus") or {}).get("stalls") or {}
    reasons: dict[str, float] = {r: n for r, n in (stalls.get("reasons") or {}).items() if n and n > 0}
    if not reasons:
        return []
    by_cause: dict[str, float] = {}
    for reason, count in reasons.items():
        cause = reason.removesuffix("_slowdown").removesuffix("_stop")
        if cause in STALL_CAUSES:
            by_cause[cause] = by_cause.get(cause, 0.0) + count
    if not by_cause:
        return []
    cause = max(by_cause, key=lambda c: (by_cause[c], -list(STALL_CAUSES).index(c)))
    item, meaning, step = STALL_CAUSES[cause]
    stops = sum(n for r, n in reasons.items() if r.endswith("_stop"))
    counts = ", ".join(f"{reason} {count:g}" for reason, count in reasons.items())
    facts = [f"RocksDB stalled writes ({counts}) over the window: {meaning}"]
    if stalls.get("level0Files") is not None:
        facts.append(f"now {stalls['level0Files']:g} level-0 files")
    if stalls.get("pendingCompactionBytes") is not None:
        facts.append(f"{stalls['pendingCompactionBytes'] / 2**30:.1f} GiB pending compaction")
    return [Finding(
        "write-stall", f"write stall: {item}", store, f"{by_cause[cause]:g} {cause} stalls",
        "no write stall", "critical" if stops else "warning",
        "; ".join(facts), step,
    )]  # fmt: skip


def _latency(store: str, evidence: Mapping[str, Any], *, stalled: bool = False) -> list[Finding]:
    """One store slow, or every store, judged on the request types the latency invariant measures (``watched``:
    the slowness the ticket is about; a lock wait in ``kv_pessimistic_lock`` is the workload's contention, not the
    store's speed); not the store's own slowness when only its writes are slow and it stalls writes (``stalled``):
    the stall is the cause, and the slowness its symptom."""
    latency = (evidence.get("prometheus") or {}).get("latency") or {}
    watched = set(latency.get("watched") or [])
    rows = [r for r in latency.get("types") or [] if r.get("p99Ms") is not None and r["p99Ms"] >= SLOW_FLOOR_MS
            and (not watched or r["type"] in watched)]  # fmt: skip
    if not rows or not latency.get("othersAnswered"):
        return []
    own = [r for r in rows if r.get("ratio") is not None and r["ratio"] >= SLOW_RATIO]
    if own and stalled and all(r["type"] in WRITE_TYPES for r in own):
        return []
    if own:
        names = ", ".join(f"{r['type']} {r['p99Ms']:g} ms (others {r['othersP99Ms']:g} ms)" for r in own[:4])
        return [Finding(
            "slow-store", "slowness on one store", store, f"{own[0]['type']} p99 {own[0]['p99Ms']:g} ms",
            f"the other stores' p99 {own[0]['othersP99Ms']:g} ms", "warning",
            f"only this store is slow: {names}",
            "look at this store alone: its disk (append log and WAL sync durations), its CPU, its node; PD's slow"
            " score shows whether TiKV sees its disk as slow",
        )]  # fmt: skip
    alike = [r for r in rows if r.get("ratio") is not None and r["ratio"] < CLUSTER_WIDE_RATIO]
    if alike and len(alike) == len([r for r in rows if r.get("ratio") is not None]):
        top = alike[0]
        return [Finding(
            "slow-cluster", "slowness on every store", store, f"{top['type']} p99 {top['p99Ms']:g} ms",
            f"the other stores' p99 {top['othersP99Ms']:g} ms", "warning",
            "the other stores are as slow as this one: the cause is shared (the workload, PD, the network), not"
            " this store",
            "look at what all stores share: the workload's request mix, hot regions, PD and the network",
        )]  # fmt: skip
    return []


def _pod_ready(evidence: Mapping[str, Any]) -> bool:
    pod = evidence.get("pod") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("conditions") or [])
    containers = _containers(evidence)
    return pod.get("phase") == "Running" and (ready or (bool(containers) and all(c["ready"] for c in containers)))


def _hung(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    if not _pod_ready(evidence):
        return []
    prometheus = evidence.get("prometheus") or {}
    states = set((prometheus.get("pd") or {}).get("states") or [])
    api = api_store(evidence, store)
    score = prometheus.get("slowScore")
    if not states & HUNG_STATES and api is not None and set(api["states"]) & HUNG_STATES:
        state = sorted(set(api["states"]) & HUNG_STATES)[0]
        value, reference = f"PD: {state}", "PD: up"
        details = (
            f"PD's store API says {api['stateName']} (last heartbeat {api.get('lastHeartbeat') or '?'})"
            " while its pod is Running and Ready"
        )
    elif states & HUNG_STATES:
        state = sorted(states & HUNG_STATES)[0]
        value, reference = f"PD: {state}", "PD: up"
        details = f"PD counts the store {state} (no heartbeat) while its pod is Running and Ready"
        if api is not None:
            details += f" ({api_text(api)})"
    elif score is not None and score >= SLOW_SCORE_SLOW:
        value, reference = f"slow score {score:g}", f"slow score under {SLOW_SCORE_SLOW:g}"
        details = (
            f"TiKV reports a slow score of {score:g} (PD counts it slow at 80, evicts its leaders at 100)"
            " while its pod is Running and Ready"
        )
    else:
        return []
    return [Finding(
        "store-hung", "store hung while its pod is Ready", store, value, reference, "critical", details,
        "TiKV pods have no readiness probe by default: the kubelet cannot see this. Read the store's log and"
        " stack (kill -QUIT or pprof), its disk latency; restart the pod if it stays stuck",
    )]  # fmt: skip


def diagnose(store: str, evidence: Mapping[str, Any]) -> list[Finding]:
    """The probable causes the evidence supports, most specific first (empty: unknown). A cluster-level ticket's are
    those of the stores PD counts, each diagnosed from its own view (``counted_views``)."""
    if store == CLUSTER_STORE:
        return [finding for pod, view in counted_views(evidence).items() for finding in diagnose(pod, view)]
    hung = _hung(store, evidence)
    specific = _cluster_id(store, evidence) + _oom(store, evidence) + _pending(store, evidence)
    stall = _stall(store, evidence)
    metric = _disk(store, evidence) + _latency(store, evidence, stalled=bool(stall)) + stall
    looping = _restart_loop(store, evidence, explained=bool(specific))
    if hung:  # the pod runs and is Ready now: an earlier exit (an OOM kill in its last state) is history, not this
        return hung + specific + metric + looping + _node(store, evidence)
    return specific + hung + metric + looping + _node(store, evidence)


def counted_to_read(evidence: Mapping[str, Any], counted: Sequence[str], stores: Sequence[str]) -> list[str]:
    """The stores PD counts in a pdStores ticket's states (``counted``) whose pods its evidence reads: the cluster's
    own stores only, at most ``COUNTED_PODS`` of them (three API requests each, within the ticket's budget)."""
    return [pod for pod in sorted(pd_named_stores(evidence, counted)) if pod in stores][:COUNTED_PODS]


def counted_views(evidence: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each store PD counts whose pod a cluster-level ticket read, seen alone: its pod's evidence and PD's states of
    it (its series' and its store API's), the evidence a ticket of its own would hold (so a store PD counts whose pod
    is not Ready is not hung)."""
    pd = (evidence.get("prometheus") or {}).get("pd") or {}
    stores = pd.get("stores") or {}
    api = evidence.get("pdApi") or {}
    return {
        pod: {**view, "prometheus": {"pd": {"status": pd.get("status"), "stores": {pod: stores.get(pod, [])},
                                            "states": list(stores.get(pod, []))}},
              **({"pdApi": {**api, "stores": {pod: found}}} if (found := api_store(evidence, pod)) else {})}
        for pod, view in sorted((evidence.get("counted") or {}).items())
    }  # fmt: skip


def evidence_summary(evidence: Mapping[str, Any]) -> str:
    """One line of what the evidence shows, for the Ticket."""
    parts = []
    pod = evidence.get("pod")
    if pod:
        restarts = sum(c.get("restarts", 0) for c in pod.get("containers") or [])
        parts.append(f"pod {pod.get('phase') or '?'}, {restarts} restarts")
        lasts = [c["lastTermination"] for c in pod.get("containers") or [] if c.get("lastTermination")]
        if lasts:
            parts.append(f"last exit {lasts[0].get('reason') or '?'} ({lasts[0].get('exitCode')})")
    warnings = [e for e in evidence.get("events") or [] if e.get("type") == "Warning"]
    if warnings:
        parts.append(f"{len(warnings)} warning events, latest {warnings[0].get('reason')}")
    node = evidence.get("node")
    if node:
        ready = next((c.get("status") for c in node.get("conditions") or [] if c.get("type") == "Ready"), "?")
        parts.append(f"node {node.get('name')} Ready={ready}")
    metrics = metric_summary(evidence)
    if metrics:
        parts.append(metrics)
    for pod, view in sorted((evidence.get("counted") or {}).items()):
        shown = view.get("pod") or {}
        ready = "Ready" if _pod_ready(view) else "not Ready"
        parts.append(f"{pod}: pod {shown.get('phase') or 'not read'}, {ready}")
    api = evidence.get("pdApi") or {}
    for pod, view in (api.get("stores") or {}).items() if api.get("readable") else ():
        if pod == (evidence.get("pod") or {}).get("name") or pod in (evidence.get("counted") or {}):
            parts.append(f"{pod}: {api_text(view)}")
    for what in evidence.get("unreachable") or []:
        parts.append(f"not reachable: {what}")
    return "; ".join(parts)[:TEXT_BYTES]


def diagnosed(ticket: Ticket, findings: Sequence[Finding]) -> Transition:
    """An open ticket with a probable cause moves to ``diagnosed``; any other ticket, or no cause, stays."""
    if not findings or ticket.state is not TicketState.OPEN:
        return Transition(ticket, ticket)
    after = replace(ticket, state=TicketState.DIAGNOSED)
    effect = Effect(EffectKind.DIAGNOSED, ticket.state, after.state, findings[0].summary[:TEXT_BYTES])
    return Transition(ticket, after, (effect,))


def worth_evidence(transition: Transition) -> bool:
    """Evidence is gathered when a store's ticket, or PD's cluster-level store count, opens, reopens or escalates
    (PD's count is explained by naming the stores it counts)."""
    after = transition.after
    return (
        after is not None
        and (after.key.store != CLUSTER_STORE or after.key.invariant == Invariant.PD_STORES)
        and any(e.kind in (EffectKind.OPENED, EffectKind.REOPENED, EffectKind.ESCALATED) for e in transition.effects)
    )


# -- TiKV's own config: the block cache against the container's memory limit ------------------------------------------

BLOCK_CACHE_SHARE = 0.45
"""TiKV's default ``storage.block-cache.capacity``: 45 % of the memory TiKV sees (tikv/tikv ``BLOCK_CACHE_RATE``,
of ``SysQuota::memory_limit_in_bytes``: the machine's, or the container's cgroup limit where TiKV reads it)."""
BLOCK_CACHE_TOLERANCE = 1.02
"""A capacity written as a rounded size (``0.9GiB`` of a 2 GiB limit) is still 45 %: 2 % of slack."""
CONFIG_BYTES = 256 * 1024
"""The most of TiKV's ``/config`` answer read (TiKV v8 answers about 40 KB); only the block cache is kept."""
_BINARY = {"": 1, "b": 1, "k": 2**10, "ki": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mi": 2**20, "mb": 2**20,
           "mib": 2**20, "g": 2**30, "gi": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "ti": 2**40, "tb": 2**40,
           "tib": 2**40, "p": 2**50, "pi": 2**50, "pb": 2**50, "pib": 2**50}  # fmt: skip
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def _split_unit(text: str) -> tuple[float, str] | None:
    text = text.strip()
    digits = len(text) - len(text.lstrip("0123456789.eE+-")) if text[:1].isdigit() else 0
    while digits and not text[:digits].replace(".", "", 1).isdigit():
        digits -= 1  # "1E" is one exabyte, not a float's exponent
    try:
        return float(text[:digits]), text[digits:].strip()
    except ValueError:
        return None


def quantity_bytes(text: object) -> int | None:
    """A Kubernetes memory quantity (``2Gi``, ``2048Mi``, ``2G``, ``2147483648``) in bytes; None if it is not one."""
    found = _split_unit(str(text or ""))
    if found is None:
        return None
    number, unit = found
    if unit in _DECIMAL:
        return int(number * _DECIMAL[unit])
    factor = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}.get(unit)
    return None if factor is None else int(number * factor)


def readable_size_bytes(value: object) -> int | None:
    """A TiKV ``ReadableSize`` (``1GiB``, ``512MB``: TiKV's units are binary either way, or a number of bytes)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    found = _split_unit(str(value or ""))
    if found is None:
        return None
    number, unit = found
    factor = _BINARY.get(unit.lower())
    return None if factor is None else int(number * factor)


def size_text(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def status_address(pod: Mapping[str, Any], port_name: str = "status") -> str | None:
    """Where the pod's status port answers (TiKV's ``/metrics``, ``/config``; PD's client port, ``/metrics`` and
    its API): its IP and the port Prometheus is told to scrape (TiDB Operator's ``prometheus.io/port``
    annotation), else the container port named ``port_name`` (TiKV ``status``, PD ``client``). None when the pod
    has no IP (not scheduled, not started) or declares no such port: nothing is guessed."""
    ip = (pod.get("status") or {}).get("podIP")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    port: object = annotations.get("prometheus.io/port")
    if not str(port or "").isdigit():
        declared = [p for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
        port = next((p.get("containerPort") for p in declared if p.get("name") == port_name), None)
    if not ip or not str(port or "").isdigit():
        return None
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"{host}:{int(str(port))}"[:TEXT_BYTES]


def tikv_config_evidence(body: object) -> dict[str, Any]:
    """What the diagnosis keeps of TiKV's ``/config`` JSON: the block cache's capacity (``null``: unset, TiKV sizes
    it from the memory it sees) and ``memory-usage-limit``; an answer of another shape says so."""
    storage = body.get("storage") if isinstance(body, dict) else None
    cache = storage.get("block-cache") if isinstance(storage, dict) else None
    if not isinstance(cache, dict) or "capacity" not in cache:
        return {"readable": False, "why": "its answer has no storage.block-cache.capacity"}
    capacity = cache.get("capacity")
    assert isinstance(body, dict)
    return {
        "readable": True,
        "blockCacheCapacity": None if capacity is None else _text(capacity),
        "blockCacheBytes": None if capacity is None else readable_size_bytes(capacity),
        "memoryUsageLimit": _text(body.get("memory-usage-limit")) or None,
    }


def oom_killed(evidence: Mapping[str, Any]) -> bool:
    """Whether a container of the store's pod was killed for its memory: then TiKV's own config is read."""
    return any(
        (c.get("lastTermination") or {}).get("reason") == "OOMKilled" or c.get("terminated") == "OOMKilled"
        for c in _containers(evidence)
    )


@dataclass(frozen=True)
class CacheReading:
    """What the memory-limit finding says of the block cache: its value and reference (empty: not known)."""

    value: str
    reference: str
    details: str
    next_step: str


def block_cache_reading(evidence: Mapping[str, Any], container: Mapping[str, Any]) -> CacheReading:
    """The block cache against the container's memory limit: sized for the node (capacity unset, so TiKV takes 45 %
    of the memory it sees, or set above 45 % of the limit), sized for the pod, or not known (``/config`` not read)."""
    limit_text = container.get("memoryLimit")
    limit = quantity_bytes(limit_text)
    node = evidence.get("node") or {}
    node_memory = quantity_bytes(node.get("memory"))
    config = evidence.get("tikvConfig") or {}
    share = f"{size_text(limit * BLOCK_CACHE_SHARE)} (45 % of the {limit_text} limit)" if limit else ""
    set_it = (f"set storage.block-cache.capacity to at most {share} in the TidbCluster's spec.tikv.config, or raise"
              " the container's memory limit") if limit else "give the container a memory limit and size" \
        " storage.block-cache.capacity for it"  # fmt: skip
    if not config.get("readable"):
        why = config.get("why") or "not asked"
        return CacheReading(
            "",
            "",
            f"{BLOCK_CACHE_UNKNOWN}: its /config was not read ({why})",
            "raise the container's memory limit, or size TiKV's storage.block-cache.capacity for the pod's limit"
            " (left unset, TiKV takes 45 % of the memory it sees, which may be the node's, not the pod's)",
        )
    capacity = config.get("blockCacheBytes")
    reference = f"block cache at most {share}" if limit else ""
    if config.get("blockCacheCapacity") is None:
        seen = (f" ({size_text(node_memory * BLOCK_CACHE_SHARE)} of node {node.get('name')}'s {node.get('memory')}"
                " where TiKV does not read the container's limit)") if node_memory else ""  # fmt: skip
        return CacheReading(
            "block cache capacity unset", reference,
            f"TiKV's storage.block-cache.capacity is not set: TiKV sizes it at 45 % of the memory it sees{seen}:"
            " sized for the node, not the pod", set_it,
        )  # fmt: skip
    shown = f"block cache {config['blockCacheCapacity']}"
    if capacity is None or not limit:
        return CacheReading(shown, reference, f"TiKV's {shown}; no memory limit to weigh it against", set_it)
    percent = f"{capacity / limit * 100:.0f} % of the {limit_text} limit"
    if capacity > limit * BLOCK_CACHE_SHARE * BLOCK_CACHE_TOLERANCE:
        return CacheReading(
            f"{shown} ({percent})", reference,
            f"TiKV's storage.block-cache.capacity is {size_text(capacity)}, {percent}: sized for the node, not the"
            " pod (TiKV also needs memory for memtables, the raft entry cache and requests)", set_it,
        )  # fmt: skip
    return CacheReading(
        f"{shown} ({percent})", reference,
        f"the block cache is sized for the pod ({size_text(capacity)}, {percent}): the memory went elsewhere"
        " (memtables, the raft entry cache, coprocessor requests)",
        "raise the container's memory limit; TiKV's memory by component (its Grafana memory panels) shows what grew",
    )  # fmt: skip


BLOCK_CACHE_UNKNOWN = "TiKV's block cache is not known"
"""How a memory-limit diagnosis says it could not read TiKV's config (the store was not running)."""


def worth_config_again(transition: Transition) -> bool:
    """A store killed for its memory is usually not running when its storesReady ticket opens (that is what opened
    it), so its status port cannot answer. When the ticket starts clearing, or resolves at once (``clearFor: 0s``):
    the store runs again, and its diagnosis could not weigh the block cache, the evidence is gathered once more:
    TiKV's ``/config`` can answer now."""
    before, after = transition.before, transition.after
    if before is None or after is None or not before.state.active or before.clearing_since is not None:
        return False
    back = after.clearing_since is not None or after.state is TicketState.RESOLVED  # clearFor 0s resolves at once
    return (
        back
        and after.key.invariant == Invariant.STORES_READY
        and after.key.store != CLUSTER_STORE
        and BLOCK_CACHE_UNKNOWN in (after.diagnosis or "")
    )


def block_cache_known(findings: Sequence[Finding], evidence: Mapping[str, Any]) -> bool:
    """Whether evidence gathered again names more than the first did: a memory-limit cause with TiKV's config read.
    Otherwise the evidence of the ticket's opening stays (the store's later state explains less)."""
    return (
        bool(findings)
        and findings[0].rule == "memory-limit"
        and bool((evidence.get("tikvConfig") or {}).get("readable"))
    )
