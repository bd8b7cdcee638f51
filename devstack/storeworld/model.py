"""A faithful model of what a TiKV cluster exports: TiKV stores and PD members, their counters and faults.

Pure: no I/O and no clock reads; every method takes ``now`` (unix seconds). ``devstack.storeworld.simulator`` serves
it, one endpoint per pod, and ``tests/unit/test_store_world_model.py`` checks it. The facts it follows, with their
sources, are in ``../shared/notes/tikv-metrics.md``; the short version:

- TiKV (``/metrics`` on the status port 20180) exports no identity label (no ``namespace``, ``pod``, ``instance``,
  ``job``): the scrape configuration adds them.
- ``tikv_grpc_msg_duration_seconds`` (histogram, ``type`` and ``priority``, buckets ``5e-5 * 2^i`` for i in 0..21,
  tikv/tikv:src/server/metrics.rs): point operations about 1 ms, ``kv_pessimistic_lock`` includes lock waits (up to
  ``wait-for-lock-timeout``, 1 s), ``kv_scan`` and ``coprocessor`` slower, ``kv_gc`` rare and slow. A latency is
  observed only when a response is sent: an idle or hung store observes nothing.
- ``tikv_store_size_bytes`` (tikv/tikv:components/server/src/server.rs): ``used = snap + kv + raft + placeholder``
  (the space-reserve placeholder file, max(5 % of capacity, 5 GiB) / 5, is not exported as a type), ``available =
  min(capacity - used, filesystem free)``; both ``capacity`` and ``available`` are 0 when disk stats cannot be read.
- ``tikv_engine_write_stall`` is a gauge of RocksDB statistics (µs); ``tikv_engine_write_stall_reason{db, type}``
  holds RocksDB's cumulative cfstats stall counts by reason in a gauge (``type`` in ``ROCKSDB_IOSTALL_TYPE``,
  tikv/tikv:components/engine_rocks/src/rocks_metrics_defs.rs), with ``tikv_engine_num_files_at_level{db, cf,
  level}`` and ``tikv_engine_pending_compaction_bytes{db, cf}`` beside it; ``tikv_critical_error_total`` exists only
  once an error was counted (a counter vector without pre-created children).
- PD (``/metrics`` on the client port 2379): ``pd_cluster_status`` is set by the leader only (followers have none:
  ``statistics.Reset()`` on losing leadership); classic format ``{type}`` (PD ≤ v8.5.4) or per store ``{type, engine,
  store}`` (PD ≥ v8.5.5). ``pd_regions_status{type}`` exists on every member (pre-created), zero on followers, with
  hyphenated types. ``etcd_server_is_leader`` and ``service_member_role{service="PD"}`` are 1 on the leader.
- PD judges a store by its last heartbeat (tikv/pd:pkg/core/store.go): disconnected after 20 s, unhealthy after
  10 min, down after ``max-store-down-time`` (30 min); low space when ``available / capacity < 1 - low-space-ratio``
  (0.8). The timings are per cluster so that tests can shorten them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cache

GIB = 2**30
BUCKETS: tuple[float, ...] = tuple(5e-5 * 2**i for i in range(22))
"""Upper bounds of ``tikv_grpc_msg_duration_seconds`` since TiKV v6.2: ``exponential_buckets(5e-5, 2.0, 22)``."""

CAPACITY_BYTES = 100 * GIB
HEALTHY_USED_PERCENT = 40.0
HEALTHY_OTHER_BYTES = GIB // 2
"""Files on the volume that are not TiKV's data (RocksDB info logs, core files…), on a healthy store."""
PLACEHOLDER_BYTES = max(CAPACITY_BYTES // 20, 5 * GIB) // 5
LOW_SPACE_RATIO = 0.8
INIT_CLUSTER_REGION_THRESHOLD = 100
SLOW_SCORE_SLOW = 80.0
"""PD counts a store slow at this slow score (tikv/pd:pkg/core/store.go ``IsSlow``)."""
INITIAL_MIN_SPACE = 8 * GIB
LOCK_WAIT_TIMEOUT_SECONDS = 1.0
RESTART_LOOP_SECONDS = 5.0
MISSING_PEER_REGIONS = 150
CRITICAL_ERRORS_PER_SECOND = 1.0
BLOCK_CACHE_UNSET = "unset"
"""A ``blockCacheCapacity`` that leaves ``storage.block-cache.capacity`` unset (TiKV's default install)."""
TIKV_STATUS_PORT = 20180
TIKV_SERVER_PORT = 20160
PD_CLIENT_PORT = 2379
PD_PEER_PORT = 2380


# -- latency distributions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float

    def cdf(self, x: float) -> float:
        if x <= 0:
            return 0.0
        return 0.5 * (1 + math.erf(math.log(x / self.median) / (self.sigma * math.sqrt(2))))

    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def cdf(self, x: float) -> float:
        return min(1.0, max(0.0, (x - self.low) / (self.high - self.low)))

    def mean(self) -> float:
        return (self.low + self.high) / 2


@dataclass(frozen=True)
class Exactly:
    value: float

    def cdf(self, x: float) -> float:
        return 1.0 if x >= self.value else 0.0

    def mean(self) -> float:
        return self.value


Shape = LogNormal | Uniform | Exactly


@dataclass(frozen=True)
class Latency:
    """A mixture of shapes, weights summing to 1."""

    parts: tuple[tuple[float, Shape], ...]

    def cdf(self, x: float) -> float:
        return sum(weight * shape.cdf(x) for weight, shape in self.parts)

    def mean(self) -> float:
        return sum(weight * shape.mean() for weight, shape in self.parts)


def lognormal(median: float, sigma: float) -> Latency:
    return Latency(((1.0, LogNormal(median, sigma)),))


@cache
def bucket_fractions(latency: Latency) -> tuple[float, ...]:
    """The share of requests at or under each bucket bound (cumulative, as Prometheus buckets are)."""
    return tuple(latency.cdf(bound) for bound in BUCKETS)


@dataclass(frozen=True)
class RequestKind:
    """One ``type`` of ``tikv_grpc_msg_duration_seconds`` as a healthy store serves it."""

    name: str
    rate: float  # requests per second
    latency: Latency
    point: bool = False  # a point read or write: what the ``latency`` fault slows down
    priority: str = "medium"  # TiDB's default resource group has MEDIUM priority (override_priority 8)


REQUEST_KINDS: tuple[RequestKind, ...] = (
    RequestKind("kv_get", 90, lognormal(0.00030, 0.45), point=True),
    RequestKind("kv_batch_get", 40, lognormal(0.00050, 0.5), point=True),
    RequestKind("kv_prewrite", 30, lognormal(0.0010, 0.4), point=True),
    RequestKind("kv_commit", 30, lognormal(0.0009, 0.4), point=True),
    RequestKind("raw_get", 20, lognormal(0.00025, 0.4), point=True),
    RequestKind("raw_put", 10, lognormal(0.0008, 0.4), point=True),
    RequestKind("kv_pessimistic_lock", 20, lognormal(0.0010, 0.4)),
    RequestKind("kv_scan", 5, lognormal(0.003, 0.8)),
    RequestKind("coprocessor", 15, lognormal(0.012, 0.9)),
    RequestKind("kv_gc", 1 / 60, lognormal(2.0, 0.3)),
)
KINDS_BY_NAME = {kind.name: kind for kind in REQUEST_KINDS}
POINT_KINDS = tuple(kind.name for kind in REQUEST_KINDS if kind.point)

CONTENDED_LOCK = Latency(
    (
        (0.68, LogNormal(0.0010, 0.4)),  # acquired at once
        (0.20, Uniform(0.001, LOCK_WAIT_TIMEOUT_SECONDS)),  # waited, then acquired
        (0.12, Exactly(LOCK_WAIT_TIMEOUT_SECONDS)),  # waited until wait-for-lock-timeout (answered with an error)
    )
)
"""``kv_pessimistic_lock`` under contention: about 30 % of the requests wait for a lock, up to the 1 s timeout."""


# -- faults ----------------------------------------------------------------------------------------------------------


class Fault(StrEnum):
    DOWN = "down"
    HUNG = "hung"
    IDLE = "idle"
    CONTENTION = "contention"
    LATENCY = "latency"
    DISK = "disk"
    DISK_OTHER = "disk-other"
    DISK_UNREADABLE = "disk-unreadable"
    RESTART_LOOP = "restart-loop"
    MISSING_PEERS = "missing-peers"
    CRITICAL_ERROR = "critical-error"
    WRITE_STALL = "write-stall"
    CRASH_LOOP = "crash-loop"
    UNSCHEDULABLE = "unschedulable"


CLUSTER_FAULTS = frozenset({Fault.MISSING_PEERS})
PD_FAULTS = frozenset({Fault.DOWN, Fault.HUNG})
STOPPED_BY = frozenset({Fault.DOWN, Fault.CRASH_LOOP, Fault.UNSCHEDULABLE})
"""Faults under which no process runs: gone, exiting at every start, or a pod no node takes."""
WRITE_POINT_KINDS = frozenset({"kv_prewrite", "kv_commit", "raw_put"})
"""The point writes a write stall slows down (reads do not wait on RocksDB's write path)."""
STALL_CAUSES = ("level0", "pending-compaction", "memtable")
"""What a write stall is caused by: too many level-0 files (compaction behind flushes), too many pending compaction
bytes (compaction behind writes), too many memtables (flushes behind writes)."""
STALL_REASON_OF = {"level0": "level0_file_limit", "pending-compaction": "pending_compaction_bytes",
                   "memtable": "memtable_count_limit"}  # fmt: skip
STALL_REASONS = tuple(f"{reason}_{kind}" for reason in STALL_REASON_OF.values() for kind in ("slowdown", "stop"))
"""``tikv_engine_write_stall_reason`` types (TiKV's ``ROCKSDB_IOSTALL_TYPE``)."""
STOP_EVERY = 4
"""One stall in this many reaches the stop trigger (the others slow writes down)."""
KV_CFS = ("default", "lock", "write", "raft")
LEVELS = 7
HEALTHY_LEVEL0_FILES = {"default": 2, "lock": 1, "write": 3, "raft": 0}
LEVEL0_SLOWDOWN, LEVEL0_STOP = 20, 36
"""RocksDB's level-0 triggers as TiKV sets them (``level0-slowdown-writes-trigger``, ``level0-stop-writes-trigger``)."""
HEALTHY_PENDING_COMPACTION_BYTES = 48 * 2**20
STALLED_PENDING_COMPACTION_BYTES = 200 * GIB
"""Past TiKV's ``soft-pending-compaction-bytes-limit`` (192 GiB)."""
CRASH_LOOP_SECONDS = 2.0
UNSCHEDULABLE_MESSAGE = "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available."
FAULT_PARAMETERS: dict[Fault, dict[str, float | str]] = {
    Fault.DOWN: {"reason": "Error", "blockCacheCapacity": ""},
    Fault.HUNG: {},
    Fault.IDLE: {},
    Fault.CONTENTION: {},
    Fault.LATENCY: {"seconds": 0.8, "slowScore": 1.0},
    Fault.DISK: {"percent": 95.0},
    Fault.DISK_OTHER: {"percent": 50.0},
    Fault.DISK_UNREADABLE: {},
    Fault.RESTART_LOOP: {"seconds": RESTART_LOOP_SECONDS},
    Fault.MISSING_PEERS: {"regions": MISSING_PEER_REGIONS},
    Fault.CRITICAL_ERROR: {"type": "default value not found"},
    Fault.WRITE_STALL: {"writeSeconds": 0.0, "cause": "level0"},
    Fault.CRASH_LOOP: {"seconds": CRASH_LOOP_SECONDS, "reason": "Error", "message": ""},
    Fault.UNSCHEDULABLE: {"message": UNSCHEDULABLE_MESSAGE},
}
"""Each fault's parameters with their defaults (a request body may override them)."""


def fault_parameters(kind: Fault, given: dict[str, object]) -> dict[str, float | str]:
    """The parameters of ``kind`` from a request body: defaults, overridden by the given values (typed like them)."""
    defaults = FAULT_PARAMETERS[kind]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"fault {kind} takes {sorted(defaults) or 'no parameters'}, not {unknown}")
    result: dict[str, float | str] = dict(defaults)
    for key, value in given.items():
        result[key] = str(value) if isinstance(defaults[key], str) else float(value)  # type: ignore[arg-type]
    if kind in (Fault.DISK, Fault.DISK_OTHER) and not 0 <= float(result["percent"]) <= 100:
        raise ValueError("percent must be within 0..100")
    if kind in (Fault.LATENCY, Fault.RESTART_LOOP, Fault.CRASH_LOOP) and float(result["seconds"]) <= 0:
        raise ValueError("seconds must be > 0")
    if kind is Fault.WRITE_STALL and result["cause"] not in STALL_CAUSES:
        raise ValueError(f"cause must be one of {list(STALL_CAUSES)}")
    if kind is Fault.LATENCY and not 1 <= float(result["slowScore"]) <= 100:
        raise ValueError("slowScore must be within 1..100")
    return result


# -- text exposition -------------------------------------------------------------------------------------------------


def number(value: float) -> str:
    """A sample value or ``le`` as the Rust and Go clients print it (no exponent; integers without a fraction)."""
    if value == math.inf:
        return "+Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    text = format(Decimal(repr(value)), "f")
    return text


def labels(**pairs: str) -> str:
    body = ",".join(f'{name}="{value}"' for name, value in pairs.items())
    return "{" + body + "}" if body else ""


def header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


# -- TiKV ------------------------------------------------------------------------------------------------------------


@dataclass
class HistogramCounts:
    """Cumulative bucket counts (real-valued: whole requests are exported), count and sum of one series."""

    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    count: float = 0.0
    total: float = 0.0

    def observe(self, requests: float, latency: Latency) -> None:
        for index, fraction in enumerate(bucket_fractions(latency)):
            self.buckets[index] += requests * fraction
        self.count += requests
        self.total += requests * latency.mean()


@dataclass(frozen=True)
class DiskStats:
    capacity: int
    available: int
    used: int
    kv_size: int
    raft_size: int
    snap_size: int
    import_size: int


@dataclass(frozen=True)
class PodState:
    """What the kubelet would report for a pod: its container is running (and so Ready: TiKV and PD pods have no
    readiness probe by default), how often it restarted, and when the current container started."""

    running: bool
    restarts: int
    started_at: float
    last_exit_at: float | None = None
    last_exit_reason: str = "Error"
    """Why the last container ended: ``Error`` (exit code 1), or ``OOMKilled`` (137) for a down fault that says so."""
    last_exit_message: str = ""
    """The last container's termination message (the tail of its log, under ``FallbackToLogsOnError``)."""
    unschedulable: str | None = None
    """The scheduler's message while the pod waits for a node (phase Pending, no container)."""


@dataclass
class Process:
    """What TiKV and PD share: a process that runs, hangs, restarts, and whose faults are recorded."""

    name: str
    started_at: float
    faults: dict[Fault, dict[str, float | str]] = field(default_factory=dict)
    restarts: int = 0
    last_exit_at: float | None = None
    last_exit_reason: str = "Error"
    last_exit_message: str = ""
    heartbeat_phase: float = 0.0
    heartbeat_stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return not STOPPED_BY & self.faults.keys()

    @property
    def hung(self) -> bool:
        return Fault.HUNG in self.faults

    @property
    def responding(self) -> bool:
        """Whether its endpoint answers (a hung process accepts connections and never answers)."""
        return self.running and not self.hung

    def pod_state(self) -> PodState:
        pending = self.faults.get(Fault.UNSCHEDULABLE)
        return PodState(
            self.running, self.restarts, self.started_at, self.last_exit_at, self.last_exit_reason,
            self.last_exit_message, None if pending is None else str(pending["message"]),
        )  # fmt: skip

    def last_heartbeat(self, now: float, interval: float) -> float:
        """When PD last heard from it: heartbeats every ``interval`` while it runs and is not hung."""
        until = now if self.heartbeat_stopped_at is None else min(now, self.heartbeat_stopped_at)
        return until - ((until - self.heartbeat_phase) % interval)

    def _stop_heartbeats(self, now: float) -> None:
        if self.heartbeat_stopped_at is None:
            self.heartbeat_stopped_at = now

    def _resume_heartbeats(self, now: float) -> None:
        if self.responding:
            self.heartbeat_stopped_at = None
            self.heartbeat_phase = now

    def set_fault(self, kind: Fault, parameters: dict[str, float | str], now: float) -> None:
        del now
        self.faults[kind] = parameters

    def heal(self, kind: Fault, now: float) -> None:
        if self.faults.pop(kind, None) is not None and kind is Fault.DOWN:
            self._restart(now)  # the container is started again

    def _restart(self, now: float) -> None:
        self.restarts += 1
        self.last_exit_at = now
        self.started_at = now
        self.heartbeat_phase = now

    def process_lines(self) -> list[str]:
        return [
            *header("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
            f"process_start_time_seconds {number(round(self.started_at, 2))}",
        ]


@dataclass
class TikvStore(Process):
    """One TiKV store: its counters, gauges and faults."""

    store_id: int = 1
    capacity_bytes: int = CAPACITY_BYTES
    last_advance: float = 0.0
    histograms: dict[str, HistogramCounts] = field(default_factory=dict)
    critical_errors: dict[str, float] = field(default_factory=dict)
    stalls: list[float] = field(default_factory=list)  # µs, since the process started
    stall_reasons: dict[str, int] = field(default_factory=dict)  # RocksDB's cfstats counts, since the process started
    next_restart: float | None = None
    next_crash: float | None = None
    disk_at_last_heartbeat: DiskStats | None = None
    block_cache_capacity: str | None = None
    """``storage.block-cache.capacity`` as its config file sets it (``1GiB``), or None: unset, as in a default
    install (TiKV then takes 45 % of the memory it sees)."""

    def __post_init__(self) -> None:
        self.last_advance = self.started_at
        self.heartbeat_phase = self.started_at
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.histograms = {kind.name: HistogramCounts() for kind in REQUEST_KINDS}
        self.critical_errors = {}
        self.stalls = []
        self.stall_reasons = dict.fromkeys(STALL_REASONS, 0)

    # -- traffic --

    @property
    def serving(self) -> bool:
        return self.responding and Fault.IDLE not in self.faults

    def latency_of(self, kind: RequestKind) -> Latency:
        latency = self.faults.get(Fault.LATENCY)
        if kind.point and latency is not None:
            return lognormal(float(latency["seconds"]), 0.1)
        stall = self.faults.get(Fault.WRITE_STALL)
        if kind.name in WRITE_POINT_KINDS and stall is not None and float(stall.get("writeSeconds", 0)) > 0:
            return lognormal(float(stall["writeSeconds"]), 0.1)
        if kind.name == "kv_pessimistic_lock" and Fault.CONTENTION in self.faults:
            return CONTENDED_LOCK
        return kind.latency

    def advance(self, now: float) -> None:
        """Account for the traffic and errors of the time since the last call, restarts included."""
        start = self.last_advance
        if now <= start:
            return
        while self.next_crash is not None and self.next_crash <= now:
            # Started again by the kubelet, it exits at once: one more restart, the same last termination.
            loop = self.faults[Fault.CRASH_LOOP]
            self.restarts += 1
            self.last_exit_at = self.next_crash
            self.next_crash += float(loop["seconds"])
        while self.next_restart is not None and self.next_restart <= now:
            at = self.next_restart
            self._accumulate(start, at)
            self._restart(at)
            self._reset_counters()
            start = at
            self.next_restart = at + float(self.faults[Fault.RESTART_LOOP]["seconds"])
        self._accumulate(start, now)
        self.last_advance = now

    def _accumulate(self, start: float, end: float) -> None:
        elapsed = end - start
        if elapsed <= 0 or not self.responding:
            return
        if self.serving:
            for kind in REQUEST_KINDS:
                self.histograms[kind.name].observe(kind.rate * elapsed, self.latency_of(kind))
        error = self.faults.get(Fault.CRITICAL_ERROR)
        if error is not None:
            kind_of_error = str(error["type"])
            self.critical_errors[kind_of_error] = self.critical_errors.get(kind_of_error, 0.0) + (
                CRITICAL_ERRORS_PER_SECOND * elapsed
            )
        if Fault.WRITE_STALL in self.faults:
            # A stall at every whole second, each longer than the last (the level-0 files pile up).
            reason = STALL_REASON_OF[str(self.faults[Fault.WRITE_STALL].get("cause", "level0"))]
            for _ in range(math.floor(end) - math.floor(start)):
                self.stalls.append(50_000.0 * (len(self.stalls) + 1))
                how = "stop" if len(self.stalls) % STOP_EVERY == 0 else "slowdown"
                self.stall_reasons[f"{reason}_{how}"] += 1

    # -- faults --

    def set_fault(self, kind: Fault, parameters: dict[str, float | str], now: float) -> None:
        self.advance(now)
        was_responding = self.responding
        if kind is Fault.CRITICAL_ERROR and kind not in self.faults:
            # The counter is created by its first increment.
            name = str(parameters["type"])
            self.critical_errors[name] = self.critical_errors.get(name, 0.0) + 1
        self.faults[kind] = parameters
        if kind is Fault.RESTART_LOOP:
            self.next_restart = now + float(parameters["seconds"])
        if kind is Fault.CRASH_LOOP:
            # It exited (why: ``reason``, ``message``), and exits again each time the kubelet starts it.
            self.restarts += 1
            self.last_exit_at, self.last_exit_reason = now, str(parameters["reason"])
            self.last_exit_message = str(parameters["message"])
            self.next_crash = now + float(parameters["seconds"])
        capacity = str(parameters.get("blockCacheCapacity", "")) if kind is Fault.DOWN else ""
        if capacity:
            # The config it was killed with: what its status port serves once it runs again.
            self.block_cache_capacity = None if capacity == BLOCK_CACHE_UNSET else capacity
        if kind is Fault.DOWN and parameters.get("reason", "Error") != "Error":
            # Killed for a reason the kubelet reports (OOMKilled): it ended once, was started, and keeps ending.
            self.restarts += 1
            self.last_exit_at, self.last_exit_reason = now, str(parameters["reason"])
        if was_responding and not self.responding:
            self.disk_at_last_heartbeat = self.disk()
            self._stop_heartbeats(now)

    def heal(self, kind: Fault, now: float) -> None:
        self.advance(now)
        if self.faults.pop(kind, None) is None:
            return
        if kind is Fault.RESTART_LOOP:
            self.next_restart = None
        if kind is Fault.CRASH_LOOP:
            self.next_crash = None
        if kind in STOPPED_BY and self.running:
            # The container is started again: a new process, its counters from zero (a pod that waited for a node
            # starts its first container: no restart).
            if kind is Fault.UNSCHEDULABLE:
                self.started_at = self.heartbeat_phase = now
            else:
                self._restart(now)
            self._reset_counters()
        if self.responding and self.heartbeat_stopped_at is not None:
            self.disk_at_last_heartbeat = None
            self._resume_heartbeats(now)

    # -- gauges --

    def disk(self) -> DiskStats:
        capacity = self.capacity_bytes
        disk = self.faults.get(Fault.DISK)
        other_fault = self.faults.get(Fault.DISK_OTHER)
        used = round(capacity * (float(disk["percent"]) if disk else HEALTHY_USED_PERCENT) / 100)
        other = round(capacity * float(other_fault["percent"]) / 100) if other_fault else HEALTHY_OTHER_BYTES
        other = min(other, capacity - used)
        data = max(0, used - PLACEHOLDER_BYTES)
        snap = data // 200
        raft = data * 8 // 100
        kv = data - snap - raft
        filesystem_free = max(0, capacity - used - other)
        if Fault.DISK_UNREADABLE in self.faults:
            return DiskStats(0, 0, used, kv, raft, snap, 0)
        return DiskStats(capacity, min(capacity - used, filesystem_free), used, kv, raft, snap, 0)

    def write_stall(self) -> dict[str, float]:
        stalls = self.stalls
        if not stalls:
            return {name: 0.0 for name in ("median", "percentile95", "percentile99", "average",
                                           "standard_deviation", "max")}  # fmt: skip
        ordered = sorted(stalls)
        average = sum(ordered) / len(ordered)
        return {
            "median": ordered[len(ordered) // 2],
            "percentile95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
            "percentile99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "average": average,
            "standard_deviation": math.sqrt(sum((s - average) ** 2 for s in ordered) / len(ordered)),
            "max": ordered[-1],
        }

    def stall_cause(self) -> str | None:
        stall = self.faults.get(Fault.WRITE_STALL)
        return str(stall.get("cause", "level0")) if stall is not None else None

    def level0_files(self, cf: str) -> int:
        """Level-0 files of a column family: a few when healthy; piling up past the slowdown trigger towards the stop
        trigger in ``write``, the busiest family, when compaction is behind the flushes."""
        if cf == "write" and self.stall_cause() == "level0":
            return min(LEVEL0_STOP, LEVEL0_SLOWDOWN + len(self.stalls))
        return HEALTHY_LEVEL0_FILES[cf]

    def pending_compaction_bytes(self, cf: str) -> int:
        if cf == "write" and self.stall_cause() == "pending-compaction":
            return STALLED_PENDING_COMPACTION_BYTES + len(self.stalls) * GIB
        return HEALTHY_PENDING_COMPACTION_BYTES if cf in ("default", "write") else 0

    def slow_score(self) -> float:
        """TiKV's slow score (1 healthy … 100), what its raftstore inspection of the disk reports to PD: a latency
        fault says how slow the disk looks to it (``slowScore``; 1 when the cause is not the disk)."""
        latency = self.faults.get(Fault.LATENCY)
        return float(latency.get("slowScore", 1.0)) if latency else 1.0

    def config(self) -> dict[str, object]:
        """What TiKV's status port serves at ``GET /config``: the running config as JSON, kebab-case keys as in its
        config file (a part of it; TiKV v8 serves about 40 KB). An unset ``storage.block-cache.capacity`` is
        ``null`` (tikv/tikv: ``BlockCacheConfig.capacity`` is an ``Option``, resolved only when the cache is built)."""
        return {
            "log-level": "info",
            "memory-usage-limit": None,
            "server": {"addr": f"0.0.0.0:{TIKV_SERVER_PORT}", "status-addr": f"0.0.0.0:{TIKV_STATUS_PORT}",
                       "grpc-concurrency": 5},
            "storage": {
                "data-dir": "/var/lib/tikv",
                "reserve-space": "5GiB",
                "block-cache": {"shared": True, "capacity": self.block_cache_capacity, "num-shard-bits": 6,
                                "strict-capacity-limit": False, "high-pri-pool-ratio": 0.8,
                                "memory-allocator": "nodump"},
            },
            "raftstore": {"capacity": "0KiB", "raft-entry-max-size": "8MiB"},
            "rocksdb": {"max-background-jobs": 9, "defaultcf": {"write-buffer-size": "128MiB",
                                                                  "max-write-buffer-number": 5}},
        }  # fmt: skip

    # -- exposition --

    def exposition(self, now: float) -> str:
        """The text TiKV's status port serves at ``now``: its own series, no identity label."""
        self.advance(now)
        name = "tikv_grpc_msg_duration_seconds"
        lines = header(name, "histogram", "Bucketed histogram of grpc server messages")
        for kind in REQUEST_KINDS:
            counts = self.histograms[kind.name]
            for bound, cumulative in zip(BUCKETS, counts.buckets, strict=True):
                lines.append(f"{name}_bucket{labels(type=kind.name, priority=kind.priority, le=number(bound))} "
                             f"{math.floor(cumulative + 1e-9)}")  # fmt: skip
            whole = math.floor(counts.count + 1e-9)
            lines.append(f"{name}_bucket{labels(type=kind.name, priority=kind.priority, le='+Inf')} {whole}")
            lines.append(f"{name}_sum{labels(type=kind.name, priority=kind.priority)} {number(counts.total)}")
            lines.append(f"{name}_count{labels(type=kind.name, priority=kind.priority)} {whole}")
        lines += header("tikv_grpc_msg_fail_total", "counter", "Total number of handle grpc message failure")
        lines += [f"tikv_grpc_msg_fail_total{labels(type=kind.name)} 0" for kind in REQUEST_KINDS]
        if self.critical_errors:
            lines += header("tikv_critical_error_total", "counter", "Counter of critical error.")
            lines += [f"tikv_critical_error_total{labels(type=error)} {math.floor(count)}"
                      for error, count in sorted(self.critical_errors.items())]  # fmt: skip
        disk = self.disk()
        lines += header("tikv_store_size_bytes", "gauge", "Size of storage.")
        for size, size_bytes in (("capacity", disk.capacity), ("available", disk.available), ("used", disk.used),
                                 ("snap_size", disk.snap_size), ("raft_size", disk.raft_size),
                                 ("kv_size", disk.kv_size), ("import_size", disk.import_size)):  # fmt: skip
            lines.append(f"tikv_store_size_bytes{labels(type=size)} {size_bytes}")
        lines += header("tikv_engine_write_stall", "gauge", "Histogram of write stall")
        for statistic, value in self.write_stall().items():
            lines.append(f"tikv_engine_write_stall{labels(db='kv', type='write_stall_' + statistic)} {number(value)}")
        lines += header("tikv_engine_write_stall_reason", "gauge", "QPS of each reason which cause tikv write stall")
        lines += [f"tikv_engine_write_stall_reason{labels(db='kv', type=reason)} {count}"
                  for reason, count in self.stall_reasons.items()]  # fmt: skip
        lines += header("tikv_engine_num_files_at_level", "gauge", "Number of files at each level")
        lines += [f"tikv_engine_num_files_at_level{labels(db='kv', cf=cf, level=str(level))} "
                  f"{self.level0_files(cf) if level == 0 else 0}"
                  for cf in KV_CFS for level in range(LEVELS)]  # fmt: skip
        lines += header("tikv_engine_pending_compaction_bytes", "gauge", "Pending compaction bytes")
        lines += [f"tikv_engine_pending_compaction_bytes{labels(db='kv', cf=cf)} {self.pending_compaction_bytes(cf)}"
                  for cf in KV_CFS]  # fmt: skip
        lines += header("tikv_raftstore_slow_score", "gauge", "Slow score of the store.")
        lines.append(f"tikv_raftstore_slow_score {number(self.slow_score())}")
        lines += self.process_lines()
        return "\n".join(lines) + "\n"


# -- PD and the cluster ----------------------------------------------------------------------------------------------


class PdVersion(StrEnum):
    CLASSIC = "v8.5.4"
    """``pd_cluster_status{type}``: PD up to v8.5.4 (and every earlier release)."""
    PER_STORE = "v8.5.5"
    """``pd_cluster_status{type, engine, store}``: PD v8.5.5 and later."""


@dataclass(frozen=True)
class Timings:
    """PD's and TiKV's clocks, in seconds (defaults are upstream's; tests shorten them)."""

    store_heartbeat: float = 10.0  # TiKV pd-heartbeat-tick-interval for store heartbeats
    store_disconnect: float = 20.0  # PD storeDisconnectDuration
    store_unhealthy: float = 600.0  # PD storeUnhealthyDuration
    max_store_down: float = 1800.0  # PD schedule.max-store-down-time
    max_peer_down: float = 600.0  # TiKV raftstore.max-peer-down-duration

    @classmethod
    def from_json(cls, body: dict[str, object]) -> Timings:
        names = {
            "storeHeartbeatSeconds": "store_heartbeat",
            "storeDisconnectSeconds": "store_disconnect",
            "storeUnhealthySeconds": "store_unhealthy",
            "maxStoreDownSeconds": "max_store_down",
            "maxPeerDownSeconds": "max_peer_down",
        }
        unknown = sorted(set(body) - set(names))
        if unknown:
            raise ValueError(f"unknown timings {unknown}; known: {sorted(names)}")
        return cls(**{names[key]: float(value) for key, value in body.items()})  # type: ignore[arg-type]


@dataclass
class PdMember(Process):
    """One PD member."""


STORE_STATUSES = (
    "store_up_count",
    "store_disconnected_count",
    "store_slow_count",
    "store_down_count",
    "store_unhealth_count",
    "store_offline_count",
    "store_tombstone_count",
    "store_low_space_count",
    "store_preparing_count",
    "store_serving_count",
    "store_removing_count",
    "store_removed_count",
)
STORE_STATS = ("region_count", "leader_count", "witness_count", "learner_count", "storage_size", "storage_capacity")
REGION_STATUSES = (
    "miss-peer-region-count",
    "extra-peer-region-count",
    "down-peer-region-count",
    "pending-peer-region-count",
    "offline-peer-region-count",
    "learner-peer-region-count",
    "empty-region-count",
    "oversized-region-count",
    "undersized-region-count",
    "witness-leader-region-count",
)


@dataclass
class Cluster:
    """A TiKV cluster: its stores, its PD members (maybe none), its regions and the faults of the whole."""

    namespace: str
    name: str
    stores: dict[str, TikvStore]
    pd: dict[str, PdMember] = field(default_factory=dict)
    regions: int = 1000
    replicas: int = 3
    timings: Timings = field(default_factory=Timings)
    pd_version: PdVersion = PdVersion.CLASSIC
    faults: dict[Fault, dict[str, float | str]] = field(default_factory=dict)
    preferred_leader: str | None = None

    # -- PD's view --

    def leader(self) -> PdMember | None:
        """The PD leader: the preferred member while it responds, else the first member that does."""
        candidates = [m for m in self.pd.values() if m.responding]
        preferred = self.pd.get(self.preferred_leader or "")
        if preferred is not None and preferred.responding:
            return preferred
        return candidates[0] if candidates else None

    def peers_on(self, store: TikvStore) -> int:
        del store
        return self.regions * min(self.replicas, len(self.stores)) // max(1, len(self.stores))

    def store_status(self, store: TikvStore, now: float) -> dict[str, float]:
        """PD's classification of one store (tikv/pd:pkg/statistics/store_collection.go ``observe``)."""
        result = dict.fromkeys(STORE_STATUSES, 0.0)
        down_time = now - store.last_heartbeat(now, self.timings.store_heartbeat)
        is_down = down_time >= self.timings.max_store_down
        if is_down:
            result["store_down_count"] += 1
        elif down_time > self.timings.store_unhealthy:
            result["store_unhealth_count"] += 1
        elif down_time > self.timings.store_disconnect:
            result["store_disconnected_count"] += 1
        elif store.slow_score() >= SLOW_SCORE_SLOW:
            result["store_slow_count"] += 1
        else:
            result["store_up_count"] += 1
        result["store_serving_count"] += 1
        disk = self.disk_seen_by_pd(store)
        few_regions = self.peers_on(store) < INIT_CLUSTER_REGION_THRESHOLD and disk.available > INITIAL_MIN_SPACE
        if (
            not is_down
            and not few_regions
            and disk.capacity > 0
            and disk.available / disk.capacity < 1 - LOW_SPACE_RATIO
        ):
            result["store_low_space_count"] += 1
        return result

    def disk_seen_by_pd(self, store: TikvStore) -> DiskStats:
        return store.disk_at_last_heartbeat or store.disk()

    def store_stats(self, store: TikvStore) -> dict[str, float]:
        disk = self.disk_seen_by_pd(store)
        return {
            "region_count": self.peers_on(store),
            "leader_count": self.regions // max(1, len(self.stores)),
            "witness_count": 0,
            "learner_count": 0,
            "storage_size": disk.used,
            "storage_capacity": disk.capacity,
        }

    def region_status(self, now: float) -> dict[str, float]:
        """PD's region statistics (tikv/pd:pkg/statistics/region_collection.go), from the stores' heartbeats."""
        result = dict.fromkeys(REGION_STATUSES, 0.0)
        pending = down_peer = missing = 0
        silent = {name: now - s.last_heartbeat(now, self.timings.store_heartbeat) for name, s in self.stores.items()}
        removed = [name for name, t in silent.items() if t >= self.timings.max_store_down]
        for name, quiet in silent.items():
            store = self.stores[name]
            if quiet > self.timings.store_heartbeat:
                pending += self.peers_on(store)
            if self.timings.max_peer_down <= quiet < self.timings.max_store_down:
                down_peer += self.peers_on(store)
        if removed and len(self.stores) - len(removed) < self.replicas:
            # PD removed the down peers and has no other store to put a replica on.
            missing += sum(self.peers_on(self.stores[name]) for name in removed)
        fault = self.faults.get(Fault.MISSING_PEERS)
        if fault is not None:
            missing += int(float(fault["regions"]))
        result["pending-peer-region-count"] = min(self.regions, pending)
        result["down-peer-region-count"] = min(self.regions, down_peer)
        result["miss-peer-region-count"] = min(self.regions, missing)
        return result

    def set_fault(self, kind: Fault, parameters: dict[str, float | str]) -> None:
        self.faults[kind] = parameters

    def heal(self, kind: Fault) -> None:
        self.faults.pop(kind, None)

    def pd_exposition(self, member: PdMember, now: float) -> str:
        """The text a PD member serves at ``now``: cluster status only on the leader, no identity label."""
        for store in self.stores.values():
            store.advance(now)
        leader = self.leader()
        is_leader = leader is member
        lines = header("pd_cluster_status", "gauge", "Status of the cluster.")
        if is_leader:
            lines += self._cluster_status_lines(now)
        lines += header("pd_scheduler_store_status", "gauge", "Store status for schedule")
        if is_leader:
            lines += self._store_status_lines()
        lines += header("pd_regions_status", "gauge", "Status of the regions.")
        regions = self.region_status(now) if is_leader else dict.fromkeys(REGION_STATUSES, 0.0)
        lines += [f"pd_regions_status{labels(type=kind)} {number(value)}" for kind, value in regions.items()]
        lines += header(
            "etcd_server_is_leader", "gauge", "Whether or not this member is a leader. 1 if is, 0 otherwise."
        )
        lines.append(f"etcd_server_is_leader {int(is_leader)}")
        lines += header("service_member_role", "gauge", "The role of this member.")
        lines.append(f"service_member_role{labels(service='PD')} {int(is_leader)}")
        lines += member.process_lines()
        return "\n".join(lines) + "\n"

    def stores_api(self, now: float) -> dict[str, object]:
        """What PD's ``GET /pd/api/v1/stores`` answers at ``now`` (tikv/pd server/api/store.go,
        pkg/response/store.go): each store's meta state, Disconnected or Down derived from its last heartbeat as
        the series are, and its last heartbeat's stats; sizes as PD's ``typeutil.ByteSize`` writes them."""
        for store in self.stores.values():
            store.advance(now)
        entries = []
        for pod, store in self.stores.items():
            heartbeat = store.last_heartbeat(now, self.timings.store_heartbeat)
            quiet = now - heartbeat
            state = "Up"
            if quiet >= self.timings.max_store_down:
                state = "Down"
            elif quiet > self.timings.store_disconnect:
                state = "Disconnected"
            disk, stats = self.disk_seen_by_pd(store), self.store_stats(store)
            status: dict[str, object] = {
                "capacity": byte_size(disk.capacity), "available": byte_size(disk.available),
                "used_size": byte_size(disk.used), "leader_count": int(stats["leader_count"]),
                "region_count": int(stats["region_count"]),
                "slow_score": int(store.slow_score()),
                "start_ts": go_time(store.started_at), "last_heartbeat_ts": go_time(heartbeat),
                "uptime": go_duration(heartbeat - store.started_at),
            }  # fmt: skip
            entries.append({
                "store": {"id": store.store_id, "address": self.store_address(pod), "version": "8.5.4",
                          "status_address": f"{pod}.{self.name}-tikv-peer.{self.namespace}.svc:20180",
                          "state_name": state},
                "status": status,
            })  # fmt: skip
        return {"count": len(entries), "stores": entries}

    def store_address(self, pod: str) -> str:
        """The address a store advertises to PD, as TiDB Operator sets it: ``<pod>.<peer service>.<ns>.svc``."""
        return f"{pod}.{self.name}-tikv-peer.{self.namespace}.svc:{TIKV_SERVER_PORT}"

    def _store_status_lines(self) -> list[str]:
        """``pd_scheduler_store_status{address, store, type}`` (tikv/pd:pkg/statistics/store_collection.go): the
        leader's per-store gauges, by PD's store id and the store's address, in every PD version."""
        lines = []
        for pod, store in self.stores.items():
            disk = self.disk_seen_by_pd(store)
            stats = self.store_stats(store)
            for kind, value in (("store_capacity", disk.capacity), ("store_available", disk.available),
                                ("store_used", disk.used), ("region_count", stats["region_count"]),
                                ("leader_count", stats["leader_count"])):  # fmt: skip
                pairs = labels(address=self.store_address(pod), store=str(store.store_id), type=kind)
                lines.append(f"pd_scheduler_store_status{pairs} {number(value)}")
        return lines

    def _cluster_status_lines(self, now: float) -> list[str]:
        lines = []
        if self.pd_version is PdVersion.CLASSIC:
            totals = dict.fromkeys((*STORE_STATUSES, *STORE_STATS), 0.0)
            for store in self.stores.values():
                for key, value in (self.store_status(store, now) | self.store_stats(store)).items():
                    totals[key] += value
            for key, value in totals.items():
                lines.append(f"pd_cluster_status{labels(type=key)} {number(value)}")
            return lines
        for store in self.stores.values():
            for key, value in (self.store_status(store, now) | self.store_stats(store)).items():
                lines.append(f"pd_cluster_status{labels(type=key, engine='tikv', store=str(store.store_id))} "
                             f"{number(value)}")  # fmt: skip
        return lines


def store_ids(count: int) -> list[int]:
    """Store IDs as a fresh cluster allocates them (PD hands out 2 and 3 to the first region and its peer)."""
    return [1, *range(4, 4 + count - 1)][:count]


def byte_size(count: float) -> str:
    """Bytes as PD's ``typeutil.ByteSize`` marshals them (docker/go-units ``BytesSize``: ``%.4g`` and a binary
    unit, e.g. ``100GiB``, ``1.953GiB``)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, index = float(count), 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.4g}{units[index]}"


def go_time(seconds: float) -> str:
    """A Unix time as Go's ``time.Time`` marshals it (RFC 3339, UTC)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration`` prints it, to the second (``1h2m3s``)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else (f"{minutes}m{secs}s" if minutes else f"{secs}s")
