"""The operator's own Prometheus metrics, served on the metrics port. Documented in the README."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from operator_k8s.domain.ledger import ClusterRef, CycleStats
from operator_k8s.domain.tickets import Ticket

PREFIX = "operator_k8s"
ERROR_KINDS = (
    "prometheus_unreachable", "prometheus_error", "postgres_unavailable", "postgres_rejected",
    "kubernetes_unavailable", "kubernetes_rejected", "cycle_failed", "cycle_timeout", "cycle_abandoned",
)  # fmt: skip
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _OpenTickets(Collector):
    """Unresolved tickets by severity and state, read from the service's memory at scrape time."""

    def __init__(self, tickets: Callable[[], Iterable[Ticket]]) -> None:
        self._tickets = tickets

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_open_tickets", "Unresolved tickets (pending included) by severity and state",
            labels=["severity", "state"],
        )  # fmt: skip
        counts = Tally((t.severity.value, t.state.value) for t in self._tickets() if t.state.value != "resolved")
        for (severity, state), count in sorted(counts.items()):
            family.add_metric([severity, state], count)
        yield family


class Telemetry:
    def __init__(self, tickets: Callable[[], Iterable[Ticket]] = list) -> None:
        self.registry = CollectorRegistry()
        self.cycles = Counter(f"{PREFIX}_check_cycles_total", "Check cycles run, by outcome", ["outcome"],
                              registry=self.registry)  # fmt: skip
        self.cycle_seconds = Histogram(f"{PREFIX}_check_duration_seconds", "Duration of one cluster's check cycle",
                                       buckets=FAST_BUCKETS, registry=self.registry)  # fmt: skip
        self.errors = Counter(f"{PREFIX}_check_errors_total", "Dependency failures met by check cycles, by kind",
                              ["kind"], registry=self.registry)  # fmt: skip
        self.query_seconds = Histogram(f"{PREFIX}_prometheus_query_duration_seconds", "Latency of Prometheus queries",
                                       buckets=FAST_BUCKETS, registry=self.registry)  # fmt: skip
        self.postgres_seconds = Histogram(f"{PREFIX}_postgres_round_trip_seconds", "Latency of Postgres round trips",
                                          buckets=FAST_BUCKETS, registry=self.registry)  # fmt: skip
        self.kube_requests = Counter(f"{PREFIX}_kubernetes_requests_total", "Kubernetes API writes by verb",
                                     ["verb"], registry=self.registry)  # fmt: skip
        self.status_writes = Counter(f"{PREFIX}_status_writes_total", "MonitoredCluster status patches",
                                     registry=self.registry)  # fmt: skip
        self.last_success = Gauge(f"{PREFIX}_last_successful_check_timestamp_seconds",
                                  "Unix time of each cluster's last check that met no dependency failure",
                                  ["namespace", "cluster"], registry=self.registry)  # fmt: skip
        self.last_check = Gauge(f"{PREFIX}_last_check_timestamp_seconds",
                                "Unix time each cluster's last check cycle ended, whatever its outcome",
                                ["namespace", "cluster"], registry=self.registry)  # fmt: skip
        self.start_lag = Histogram(f"{PREFIX}_check_start_lag_seconds", "How late cycles start after their due time",
                                   buckets=FAST_BUCKETS, registry=self.registry)  # fmt: skip
        self.skipped = Counter(f"{PREFIX}_skipped_intervals_total", "Whole check intervals missed (late starts)",
                               registry=self.registry)  # fmt: skip
        self.scheduled = Gauge(f"{PREFIX}_scheduled_clusters",
                               "MonitoredClusters whose check loop ran recently (0 on a paused peering replica)",
                               registry=self.registry)  # fmt: skip
        self.active = Gauge(f"{PREFIX}_active",
                            "1 while this replica runs the checks, 0 while it stands by for a peer (kopf peering)",
                            registry=self.registry)  # fmt: skip
        self.shards_held = Gauge(f"{PREFIX}_shards_held",
                                 "Shard Leases this replica holds (sharding mode: it checks only their clusters)",
                                 registry=self.registry)  # fmt: skip
        self.ignored_series = Counter(f"{PREFIX}_ignored_series_total",
                                      "Series a query returned about other namespaces or stores than the cluster's own",
                                      registry=self.registry)  # fmt: skip
        self.conflicts = Counter(f"{PREFIX}_ticket_write_conflicts_total",
                                 "Ticket writes that lost a compare-and-set race and were re-decided",
                                 registry=self.registry)  # fmt: skip
        self.deliveries = Counter(f"{PREFIX}_notification_deliveries_total",
                                  "Notification delivery attempts by receiver and result"
                                  " (delivered, retry, dead, suppressed)",
                                  ["receiver", "result"], registry=self.registry)  # fmt: skip
        self.delivery_seconds = Histogram(f"{PREFIX}_notification_delay_seconds",
                                          "From a ticket's transition to its receiver's acceptance", ["receiver"],
                                          buckets=(0.5, 1, 2, 5, 10, 15, 30, 60, 300, 1800, 7200),
                                          registry=self.registry)  # fmt: skip
        self.pending_deliveries = Gauge(f"{PREFIX}_notification_queue_pending",
                                        "Deliveries waiting in the Postgres queue, by receiver", ["receiver"],
                                        registry=self.registry)  # fmt: skip
        self.alertmanager_posts = Counter(f"{PREFIX}_alertmanager_posts_total",
                                          "POSTs of alerts to Alertmanager by receiver and outcome (ok, error)",
                                          ["receiver", "outcome"], registry=self.registry)  # fmt: skip
        self.registry.register(_OpenTickets(tickets))
        # Known label values are exported at zero from the start, so rates and alerts work before the first event.
        for outcome in ("ok", "degraded", "error"):
            self.cycles.labels(outcome)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for verb in ("create", "patch", "delete"):
            self.kube_requests.labels(verb)

    def serve(self, address: str, port: int) -> None:
        """Serve /metrics in a background thread (port 0 disables it)."""
        if port:
            start_http_server(port, addr=address, registry=self.registry)

    def record_cycle(self, ref: ClusterRef, seconds: float, stats: CycleStats, now: float) -> None:
        self.cycle_seconds.observe(seconds)
        failed = "cycle_failed" in stats.errors or "cycle_timeout" in stats.errors
        self.cycles.labels("error" if failed else "degraded" if stats.errors else "ok").inc()
        for kind in stats.errors:
            self.errors.labels(kind).inc()
        if stats.status_written:
            self.status_writes.inc()
        if stats.ignored_series:
            self.ignored_series.inc(stats.ignored_series)
        if stats.conflicts:
            self.conflicts.inc(stats.conflicts)
        self.last_check.labels(ref.namespace, ref.name).set(now)
        if not stats.errors:
            self.last_success.labels(ref.namespace, ref.name).set(now)

    def record_tick(self, lag: float, skipped: int) -> None:
        self.start_lag.observe(lag)
        if skipped:
            self.skipped.inc(skipped)

    def record_failure(self, kind: str) -> None:
        self.cycles.labels("error").inc()
        self.errors.labels(kind).inc()

    def forget(self, ref: ClusterRef) -> None:
        for gauge in (self.last_check, self.last_success):
            with contextlib.suppress(KeyError):
                gauge.remove(ref.namespace, ref.name)

    def count_kube(self, verb: str) -> None:
        self.kube_requests.labels(verb).inc()
