"""The fault catalogue: what ``python -m devstack eval`` injects into the store world, and what it must see.

Data only (no I/O): every case is a TidbCluster of its own (``tc``, 3 stores unless it says otherwise) in a namespace
of its own, a list of actions on the simulator, and what the operator should do about it:

- the **tickets** it must open, each an (invariant, store) pair, the store an index into ``tc-tikv-<i>`` or
  ``CLUSTER`` for PD's cluster-level invariants;
- for the ticket that carries the fault's cause, the **top-1 cause**: the id of the diagnosis rule
  (``operator_k8s.domain.diagnosis``) that should name it first, or ``UNKNOWN`` where no rule should claim it. A
  companion ticket (PD's count of the same store) has no cause to score (``None``): one cause explains it.

Each fault has its **seen** variant (store 1, the default magnitude, a sudden onset: what the rules were written
against) and **held-out** variants the rules were not written against: another store, another magnitude, another
onset (the fault already there when monitoring starts, or a ramp through a level below the threshold), combined
with a benign control on another store, or a larger cluster. Controls are healthy by TiKV's own standards: they must
open no ticket and produce no diagnosis.

A cause whose rule does not exist yet goes in ``FUTURE_RULES``: its cases score as abstentions (Unknown) until the
rule exists (today every cause has its rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

CLUSTER: int | None = None
"""The store of a cluster-level ticket (PD's view): ``cluster`` on the ticket."""
UNKNOWN = "unknown"
"""The expected top-1 cause where no rule should claim the ticket (and what an undiagnosed ticket scores as)."""
SEEN = "seen"
HELD_OUT_VARIANTS = ("store", "magnitude", "onset", "control", "size")
"""Ways a held-out variant differs from the seen one."""

# The rules of operator_k8s.domain.diagnosis today.
MEMORY_LIMIT = "memory-limit"
RESTART_LOOP = "restart-loop"
STALE_VOLUME = "stale-volume"
POD_PENDING = "pod-pending"
DISK_OTHER = "disk-other"
DISK_TIKV = "disk-tikv"
SLOW_STORE = "slow-store"
CLUSTER_SLOW = "slow-cluster"
STORE_HUNG = "store-hung"
WRITE_STALL = "write-stall"
FUTURE_RULES: frozenset[str] = frozenset()
"""Causes the catalogue expects that no rule names yet (their rule ids must match when they come)."""

STALE_VOLUME_MESSAGE = (
    '[2025/06/01 10:00:00.000 +00:00] [FATAL] [server.rs:1128] ["failed to start node: '
    'Other(\\"[components/pd_client/src/util.rs:878]: cluster id mismatch, local 7112345678901234567 != '
    'remote 7198765432109876543\\")"]'
)
PVC_UNBOUND = "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are " \
    "available: 1 Preemption is not helpful for scheduling."  # fmt: skip

TRAFFIC = "sum(rate(tikv_grpc_msg_duration_seconds_count{{{sel}}}[5s]))"
"""Requests per second of one store (``{sel}``: its namespace and pod matchers)."""


@dataclass(frozen=True)
class Action:
    """One call to the simulator: a fault put on (or, ``heal``, taken off) a store (an index) or the cluster
    (``store=None``), a PD leader moved (``pd_leader``), or the cluster scaled out (``scale_to``). ``evidence`` is a
    PromQL condition (``{sel}`` the store's matchers, ``{ns}`` the namespace, ``{since}`` when the action was done)
    that shows the action is in the data; the next action waits for it."""

    fault: str = ""
    store: int | None = 1
    body: dict[str, Any] | None = None
    heal: bool = False
    evidence: str = ""
    pd_leader: int | None = None
    scale_to: int | None = None


@dataclass(frozen=True)
class Expected:
    """A ticket the case must open, and the top-1 cause its diagnosis must name (``None``: not scored)."""

    invariant: str
    store: int | None
    cause: str | None = None


@dataclass(frozen=True)
class Case:
    name: str
    fault: str
    variant: str
    title: str
    actions: tuple[Action, ...]
    expected: tuple[Expected, ...] = ()
    before_monitoring: bool = False
    """The fault is there before the MonitoredCluster exists (an onset the operator never saw healthy)."""
    stores: int = 3
    control: bool = False
    cross: bool = False
    """The cause shows on another invariant than its own (a hung store on PD's count, a stall on latency)."""

    @property
    def held_out(self) -> bool:
        return not self.control and self.variant != SEEN


# -- building blocks -------------------------------------------------------------------------------------------------


def put(fault: str, store: int | None = 1, body: dict[str, Any] | None = None, evidence: str = "") -> Action:
    return Action(fault, store, body, evidence=evidence)


def heal(fault: str, store: int | None = 1, evidence: str = "") -> Action:
    return Action(fault, store, heal=True, evidence=evidence)


CONTENTION = put("contention", 0, evidence="histogram_quantile(0.99, sum by (le) (rate("
                 'tikv_grpc_msg_duration_seconds_bucket{{{sel},type="kv_pessimistic_lock"}}[5s]))) > 0.5')  # fmt: skip
"""The benign control a held-out variant adds on another store (store 0): lock waits up to 1 s."""


@dataclass(frozen=True)
class Fault:
    """A fault of the catalogue: how to inject it on a store at a magnitude, and what it must cause."""

    name: str
    title: str
    inject: Callable[[int, Any], tuple[Action, ...]]
    expect: Callable[[int], tuple[Expected, ...]]
    magnitude: Any = None
    """The seen variant's magnitude (``None``: the fault has none)."""
    other_magnitude: Any = None
    ramp: Any = None
    """A magnitude below the threshold, injected first in the ramp onset (``None``: the onset is "before")."""
    cross: bool = False
    variants: tuple[str, ...] = ("store", "magnitude", "onset", "control")


def _variants(fault: Fault) -> list[Case]:
    def case(variant: str, store: int, magnitude: Any, title: str, **extra: Any) -> Case:
        actions = fault.inject(store, magnitude)
        return Case(f"{fault.name}/{variant}", fault.name, variant, title, actions, fault.expect(store),
                    cross=fault.cross, **extra)  # fmt: skip

    cases = [case(SEEN, 1, fault.magnitude, fault.title)]
    for variant in fault.variants:
        if variant == "store":
            cases.append(case(variant, 2, fault.magnitude, f"{fault.title}, on store 2"))
        elif variant == "magnitude" and fault.other_magnitude is not None:
            cases.append(case(variant, 1, fault.other_magnitude, f"{fault.title}, magnitude {fault.other_magnitude}"))
        elif variant == "onset" and fault.ramp is not None:
            seen = case(variant, 0, fault.magnitude, "")
            ramp = fault.inject(0, fault.ramp)
            cases.append(replace(seen, actions=ramp + seen.actions,
                                 title=f"{fault.title}, on store 0, ramping up from {fault.ramp}"))  # fmt: skip
        elif variant == "onset":
            cases.append(case(variant, 0, fault.magnitude, f"{fault.title}, on store 0, there before monitoring "
                              "starts", before_monitoring=True))  # fmt: skip
        elif variant == "control":
            plain = case(variant, 2, fault.magnitude, "")
            cases.append(replace(plain, actions=(CONTENTION, *plain.actions),
                                 title=f"{fault.title}, on store 2, next to lock contention on store 0"))  # fmt: skip
        elif variant == "size":
            cases.append(case(variant, 3, fault.magnitude, f"{fault.title}, on store 3 of 5", stores=5))
    return cases


Inject = Callable[[int, Any], tuple[Action, ...]]


def _one(fault: str, body: Callable[[Any], dict[str, Any] | None] = lambda m: None) -> Inject:
    return lambda store, magnitude: (put(fault, store, body(magnitude)),)


def _latency_ramp_evidence(seconds: float) -> str:
    return ("histogram_quantile(0.99, sum by (le) (rate(tikv_grpc_msg_duration_seconds_bucket"
            f'{{{{{{sel}},type="kv_get"}}}}[5s]))) > {seconds * 0.8:g}')  # fmt: skip


def _disk_evidence(percent: float) -> str:
    return ('1 - sum(tikv_store_size_bytes{{{sel},type="available"}}) / sum(tikv_store_size_bytes{{{sel},'
            f'type="capacity"}}}}) > {(percent - 1) / 100:g}')  # fmt: skip


def other(store: int) -> int:
    """The store a combined fault's second half goes to: never the first half's."""
    return (store + 2) % 3


def _latency(store: int, seconds: float) -> tuple[Action, ...]:
    return (put("latency", store, {"seconds": seconds}, evidence=_latency_ramp_evidence(seconds)),)


def _disk(fault: str) -> Callable[[int, float], tuple[Action, ...]]:
    def inject(store: int, percent: float) -> tuple[Action, ...]:
        shown = percent if fault == "disk" else percent + 40  # TiKV's own 40 % stays under another fill
        return (put(fault, store, {"percent": percent}, evidence=_disk_evidence(shown)),)

    return inject


FAULTS: tuple[Fault, ...] = (
    Fault("oom-kill", "store killed for its memory (OOMKilled)", _one("down", lambda m: {"reason": "OOMKilled"}),
          lambda s: (Expected("storesReady", s, MEMORY_LIMIT), Expected("pdStores", CLUSTER)),
          variants=("store", "onset", "control", "size")),
    Fault("crash-loop", "store exits at every start (CrashLoopBackOff)",
          _one("crash-loop", lambda m: {"seconds": m, "message": "invalid configuration"}),
          lambda s: (Expected("storesReady", s, RESTART_LOOP), Expected("pdStores", CLUSTER)),
          magnitude=2, other_magnitude=6),
    Fault("stale-volume", "store on a volume from another cluster (cluster id mismatch)",
          _one("crash-loop", lambda m: {"seconds": m, "message": STALE_VOLUME_MESSAGE}),
          lambda s: (Expected("storesReady", s, STALE_VOLUME), Expected("pdStores", CLUSTER)),
          magnitude=2, other_magnitude=6),
    Fault("unschedulable", "store pod Pending: no node has the memory",
          _one("unschedulable", lambda m: {"message": m} if m else None),
          lambda s: (Expected("storesReady", s, POD_PENDING), Expected("pdStores", CLUSTER)),
          other_magnitude=PVC_UNBOUND),
    Fault("hung", "store hung while its pod stays Ready", _one("hung"),
          lambda s: (Expected("pdStores", CLUSTER, STORE_HUNG),), cross=True,
          variants=("store", "onset", "control", "size")),
    Fault("slow-store", "one store's point operations slow", _latency,
          lambda s: (Expected("latency", s, SLOW_STORE),), magnitude=0.8, other_magnitude=2.0, ramp=0.3),
    Fault("cluster-slow", "every store's point operations slow",
          lambda store, seconds: tuple(put("latency", i, {"seconds": seconds}) for i in range(3)),
          lambda s: tuple(Expected("latency", i, CLUSTER_SLOW) for i in range(3)),
          magnitude=0.8, other_magnitude=2.0, variants=("magnitude", "onset", "control")),
    Fault("disk-tikv", "disk filled by TiKV's own data", _disk("disk"),
          lambda s: (Expected("diskUsage", s, DISK_TIKV), Expected("pdStores", CLUSTER)),
          magnitude=95, other_magnitude=88, ramp=70),
    Fault("disk-other", "disk filled by other files than TiKV's", _disk("disk-other"),
          lambda s: (Expected("diskUsage", s, DISK_OTHER), Expected("pdStores", CLUSTER)),
          magnitude=50, other_magnitude=45, ramp=25),
    Fault("write-stall", "RocksDB write stall (too many level-0 files)",
          _one("write-stall", lambda m: {"cause": m} if m else None),
          lambda s: (Expected("writeStall", s, WRITE_STALL),), other_magnitude="pending-compaction",
          variants=("store", "magnitude", "onset", "control", "size")),
    Fault("stall-slows-writes", "write stall slowing point writes (seen on latency)",
          _one("write-stall", lambda m: {"writeSeconds": m}),
          lambda s: (Expected("writeStall", s, WRITE_STALL), Expected("latency", s, WRITE_STALL)),
          magnitude=0.8, other_magnitude=2.0, cross=True),
    Fault("critical-error", "TiKV critical error", _one("critical-error", lambda m: {"type": m}),
          lambda s: (Expected("criticalErrors", s, UNKNOWN),),
          magnitude="default value not found", other_magnitude="invalid cf name"),
    Fault("missing-peers", "regions missing a peer (PD)",
          lambda store, regions: (put("missing-peers", None, {"regions": regions}),),
          lambda s: (Expected("pdRegions", CLUSTER, UNKNOWN),), magnitude=150, other_magnitude=600,
          variants=("magnitude", "onset", "control")),
    Fault("oom-and-disk-other", "two faults at once: a store killed for its memory, another's disk filled by others",
          lambda store, m: (put("down", store, {"reason": "OOMKilled"}), put("disk-other", other(store),
                                                                             {"percent": 50})),
          lambda s: (Expected("storesReady", s, MEMORY_LIMIT), Expected("diskUsage", other(s), DISK_OTHER),
                     Expected("pdStores", CLUSTER)),
          variants=("store", "onset", "control")),
    Fault("hung-and-slow", "two faults at once: a store hung, another slow",
          lambda store, m: (put("hung", store), put("latency", other(store), {"seconds": 0.8})),
          lambda s: (Expected("pdStores", CLUSTER, STORE_HUNG), Expected("latency", other(s), SLOW_STORE)),
          cross=True, variants=("store", "onset", "control")),
    Fault("stale-volume-and-stall", "two faults at once: a store on a stale volume, another stalling writes (too "
          "many memtables)",
          lambda store, m: (put("crash-loop", store, {"message": STALE_VOLUME_MESSAGE}),
                            put("write-stall", other(store), {"cause": "memtable"})),
          lambda s: (Expected("storesReady", s, STALE_VOLUME), Expected("pdStores", CLUSTER),
                     Expected("writeStall", other(s), WRITE_STALL)),
          variants=("store", "onset", "control")),
)  # fmt: skip


def _rolling_restart() -> tuple[Action, ...]:
    """What TiDB Operator does to each store in turn, minus the NotReady seconds that ``for`` covers: evict its
    leaders (no traffic), restart the process, give it traffic back; PD leadership moves away and back."""
    actions = [Action(store=None, pd_leader=1, evidence='etcd_server_is_leader{{namespace="{ns}",pod="tc-pd-1"}} == 1')]
    for index in range(3):
        actions += [
            put("idle", index, evidence=TRAFFIC + " == 0"),
            put("restart-loop", index, {"seconds": 1}, evidence="process_start_time_seconds{{{sel}}} > {since}"),
            heal("restart-loop", index),
            heal("idle", index, evidence=TRAFFIC + " > 0"),
        ]
    actions.append(
        Action(store=None, pd_leader=0, evidence='etcd_server_is_leader{{namespace="{ns}",pod="tc-pd-0"}} == 1')
    )
    return tuple(actions)


CONTROLS: tuple[Case, ...] = (
    Case("healthy", "healthy", "control", "no fault", (Action(evidence=TRAFFIC + " > 0"),), control=True),
    Case("contention", "contention", "control", "lock contention (lock waits up to 1 s)",
         (replace(CONTENTION, store=1),), control=True),
    Case("idle", "idle", "control", "an idle store (leaders evicted: no traffic)",
         (put("idle", 1, evidence=TRAFFIC + " == 0"),), control=True),
    Case("rolling-restart", "rolling-restart", "control", "a rolling restart: each store's leaders evicted, process "
         "restarted, traffic back; PD leader moved", _rolling_restart(), control=True),
    Case("scale-out", "scale-out", "control", "scale-out from 3 to 4 stores (the new one idle, then serving)",
         (Action(store=3, scale_to=4), put("idle", 3, evidence='up{{{sel}}} == 1'),
          heal("idle", 3, evidence=TRAFFIC + " > 0")), control=True),
)  # fmt: skip


def catalogue() -> tuple[Case, ...]:
    """Every case: each fault's seen and held-out variants, then the controls."""
    return (*(c for fault in FAULTS for c in _variants(fault)), *CONTROLS)


CASES: tuple[Case, ...] = catalogue()
FAST_SUBSET = ("oom-kill/seen", "oom-kill/store", "stale-volume/magnitude", "unschedulable/seen", "slow-store/seen",
               "write-stall/seen", "hung/seen", "contention")  # fmt: skip
"""What ``make test`` runs (tests/e2e/test_eval.py): seven faults (seen and held-out variants, a cause shown on
another invariant than its own: the hung store) and a control."""


def select(names: list[str] | tuple[str, ...], cases: tuple[Case, ...] = CASES) -> tuple[Case, ...]:
    """The cases named (a fault name selects all of its variants); every name must match something."""
    chosen = [c for c in cases if c.name in names or c.fault in names]
    unknown = [n for n in names if not any(n in (c.name, c.fault) for c in cases)]
    if unknown:
        raise ValueError(f"no case or fault named {unknown}")
    return tuple(chosen)


@dataclass(frozen=True)
class Listing:
    faults: int
    held_out_per_fault: dict[str, int] = field(default_factory=dict)
    controls: int = 0


def listing(cases: tuple[Case, ...] = CASES) -> Listing:
    """How many faults, held-out variants per fault and controls the catalogue has (what the issue counts)."""
    per: dict[str, int] = {}
    for case in cases:
        if not case.control:
            per[case.fault] = per.get(case.fault, 0) + int(case.held_out)
    return Listing(len(per), per, sum(c.control for c in cases))
