"""Composition root: settings → adapters → service → kopf handlers, then run the operator."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf

from operator_k8s import cli, handlers
from operator_k8s.adapters.delivery_queue import PostgresDeliveryQueue
from operator_k8s.adapters.kube import KubeEvidence, KubeTicketMirror, api_client, cluster_uids, peering_object_exists
from operator_k8s.adapters.leases import KubeLeases
from operator_k8s.adapters.prometheus import PrometheusMetrics
from operator_k8s.adapters.prometheus_http import AnswerLimits
from operator_k8s.adapters.receivers_http import ReceiversHttp
from operator_k8s.adapters.telemetry import Telemetry
from operator_k8s.adapters.ticket_store import PostgresTicketStore
from operator_k8s.adapters.tikv_status import TikvStatusHttp
from operator_k8s.domain.receivers import NotificationsConfig
from operator_k8s.domain.shards import replica_identity
from operator_k8s.domain.tickets import Ticket
from operator_k8s.maintenance_handlers import register_maintenance
from operator_k8s.notifier import Notifier
from operator_k8s.ports import TicketStoreUnavailable
from operator_k8s.service import Monitor, ServiceSettings
from operator_k8s.settings import Settings, SettingsError, load_notifications, load_settings
from operator_k8s.sharding import ShardCoordinator

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
PEERING_LOGGER = "kopf._core.engines.peering"
"""kopf's logger of peering decisions ("Pausing operations in favour of …", "Resuming operations …")."""
_NOISY = {"settings"}  # kopf attaches its whole OperatorSettings to some records


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call passed in ``extra`` (the record's own attributes left out)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k not in _NOISY and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line for a human: the message, then its structured fields as key=value (quoted where needed)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        return f"{super().formatMessage(record)} {fields}".rstrip()


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("operator_k8s").setLevel(settings.log_level)
    logging.getLogger("kopf").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
    # Whether a replica stands down for a peer, or resumes, is what tells an SRE which one is active.
    logging.getLogger(PEERING_LOGGER).setLevel(min(logging.INFO, logging.getLevelName(settings.log_level)))


def dsn_source(settings: Settings) -> str | Callable[[], str]:
    """The DSN, or where to read it: from a mounted Secret it is read again for each new connection, so a rotated
    password is used without a restart (the kubelet updates the file in place)."""
    path = settings.database_dsn_file
    return (lambda: Path(path).read_text().strip()) if path else settings.database_dsn.get_secret_value()


class Operator:
    """The running operator's parts, built lazily inside kopf's event loop."""

    def __init__(
        self, settings: Settings, kubeconfig: str | None = None, notifications: NotificationsConfig | None = None
    ) -> None:
        self.settings = settings
        self.telemetry = Telemetry(self._all_tickets)
        self.tikv_status = TikvStatusHttp()
        self.notifier = Notifier(
            notifications or NotificationsConfig(),
            PostgresDeliveryQueue(_as_callable(dsn_source(settings))),
            ReceiversHttp(),
            owner=f"{socket.gethostname()}-{os.getpid()}",
            record=self._record_delivery,
            record_post=lambda receiver, ok: self.telemetry.alertmanager_posts.labels(
                receiver, "ok" if ok else "error"
            ).inc(),
            record_pending=self._record_pending,
            active=lambda: self.heartbeats is None or self.heartbeats.may_check(time.monotonic()),
        )
        self.store = PostgresTicketStore(
            dsn_source(settings),
            pool_size=settings.db_pool_size,
            observe=self.telemetry.postgres_seconds.observe,
        )
        self.metrics = PrometheusMetrics(
            concurrency=settings.prometheus_query_threads,
            per_endpoint=settings.prometheus_slots_per_endpoint,
            observe=self.telemetry.query_seconds.observe,
            credentials_dir=settings.prometheus_credentials_dir,
            limits=AnswerLimits(
                max_bytes=settings.prometheus_max_answer_bytes, max_series=settings.prometheus_max_answer_series
            ),
            buffered_bytes=settings.prometheus_max_buffered_bytes,
        )
        self.kubeconfig = kubeconfig
        self.shards: ShardCoordinator | None = None
        self.monitor: Monitor | None = None
        self.heartbeats: handlers.Heartbeats | None = None
        self._api_client: Any = None

    def _all_tickets(self) -> list[Ticket]:
        """The open-tickets gauge's tickets: none on a standby (its caches are the active replica's to show)."""
        if self.monitor is None or self.heartbeats is None or not self.heartbeats.active:
            return []
        return list(self.monitor.ledger.cached_tickets())

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        monitor = Monitor(
            store=self.store,
            metrics=self.metrics,
            mirror=_LazyMirror(self),
            evidence=_LazyEvidence(self) if self.settings.evidence else None,
            tikv=self.tikv_status,
            settings=ServiceSettings(
                reopen_window=timedelta(seconds=self.settings.reopen_window_seconds),
                ticket_retention=timedelta(seconds=self.settings.ticket_retention_seconds),
                postgres_timeout=self.settings.postgres_timeout_seconds,
                after_commit=_then(_crash_with_probability(self.settings.crash_after_commit), self.notifier.wake),
                checked_by=self._checked_by,
            ),
        )
        self.monitor = monitor
        windows = register_maintenance(registry)
        self.notifier.covering = lambda notice, at: windows.covered(
            notice.namespace, notice.cluster, notice.invariant, notice.store, at
        )
        heartbeats = self.heartbeats = handlers.register(
            registry,
            monitor,
            self.telemetry,
            tick_seconds=self.settings.tick_seconds,
            peering=bool(self.settings.peering),
            owns=self._owns,
        )
        logging.getLogger(PEERING_LOGGER).addHandler(PeeringDecisions(heartbeats))
        sweeper: list[asyncio.Task[None]] = []

        @kopf.on.startup(registry=registry)
        async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.posting.enabled = False  # Events are posted by the service, on ticket transitions only
            settings.persistence.finalizer = "operator-k8s.io/tickets"
            settings.watching.server_timeout = 300
            settings.networking.request_timeout = 30
            if self.settings.peering:
                settings.peering.name = self.settings.peering
                settings.peering.mandatory = True
                settings.peering.lifetime = self.settings.peering_lifetime_seconds
                # kopf pauses every peer that sees another with the same priority; replicas of one Deployment
                # would all pause. A random priority per process makes exactly one of them active.
                settings.peering.priority = random.randint(1, 2**31 - 1)  # noqa: S311 - not a secret
            else:
                settings.peering.standalone = True
            self.telemetry.serve(self.settings.bind_address, self.settings.metrics_port)
            if self.settings.peering:
                await self._await_peering_object()
            try:
                await self.store.start()
            except TicketStoreUnavailable as error:
                logging.getLogger("operator_k8s").warning(
                    "Could not use Postgres at start-up; will retry each cycle", extra={"error": str(error)}
                )
            sweeper.append(asyncio.create_task(self._sweep_orphans(monitor)))
            if self.settings.sharding:
                sweeper.append(asyncio.create_task(self._hold_shards(monitor)))
            self.notifier.start()

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            """In a cluster, the pod's service account; elsewhere, the kubeconfig."""
            return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            for task in sweeper:
                task.cancel()
            await self._release_shards()
            await self.notifier.stop()
            await self.tikv_status.close()
            self.metrics.close()

        return registry

    async def _await_peering_object(self) -> None:
        """Wait (up to ``peering_wait_seconds``) until the peering object exists, before kopf's peering starts.

        A chart creates it with the Deployment, and Helm applies custom resources last: a replica that starts first
        would send its keep-alive into nothing, see no peer when the object appears, and run beside its peers
        until the next keep-alive (about a minute). Waiting here makes the first keep-alive land."""
        log = logging.getLogger("operator_k8s")
        deadline = time.monotonic() + self.settings.peering_wait_seconds
        announced = False
        while True:
            try:
                if await peering_object_exists(await self._api(), self.settings.peering, self.settings.namespaces):
                    return
            except Exception as error:  # the API server not answering yet is a reason to wait, not to stop
                log.debug("Could not read the peering object", extra={"error": f"{type(error).__name__}: {error}"})
            if time.monotonic() >= deadline:
                log.warning(
                    "Peering object not found; kopf keeps this replica paused until it appears",
                    extra={"peering": self.settings.peering},
                )
                return
            if not announced:
                log.info("Waiting for the peering object", extra={"peering": self.settings.peering})
                announced = True
            await asyncio.sleep(1.0)

    async def _sweep_orphans(self, monitor: Monitor) -> None:
        """Every ``orphan_sweep_seconds``: resolve the tickets of MonitoredClusters that no longer exist (deleted
        while the operator was away, or with their finalizer removed by hand). Postgres is read before the API
        server is listed, so a cluster created in between can never look orphaned."""
        log = logging.getLogger("operator_k8s")
        namespaces = self.settings.namespaces or None
        while True:
            await asyncio.sleep(self.settings.orphan_sweep_seconds)
            if self.heartbeats is not None and not self.heartbeats.may_check(time.monotonic()):
                continue  # a standby leaves Postgres to the active replica
            try:
                candidates = await self.store.cluster_uids(namespaces)
                if not candidates:
                    continue
                existing = await cluster_uids(await self._api(), namespaces)
                await monitor.sweep_orphans(candidates, existing, datetime.now(UTC))
            except Exception as error:  # the sweep must outlive any outage; it runs again next period
                log.warning("Could not sweep orphaned Tickets", extra={"error": f"{type(error).__name__}: {error}"})

    def _owns(self, cluster_uid: str) -> bool:
        """Sharding: whether this replica holds the cluster's shard (none before its first Lease period)."""
        if not self.settings.sharding:
            return True
        return self.shards is not None and self.shards.owns(cluster_uid)

    def _checked_by(self, cluster_uid: str) -> dict[str, Any] | None:
        """Sharding: this replica and the cluster's shard, for its status (only the shard's holder writes it)."""
        if self.shards is None:
            return None
        return {"replica": self.shards.identity, "shard": self.shards.shard_of(cluster_uid)}

    def _taken(self, monitor: Monitor) -> None:
        """Shards were taken: the last holder may have changed anything meanwhile, and their clusters are due here
        now (their loops wake instead of sleeping out their wait)."""
        monitor.drop_caches()
        self._wake_all()

    def _wake_all(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.wake_all()

    async def _hold_shards(self, monitor: Monitor) -> None:
        settings = self.settings
        leases = KubeLeases(await self._api(), settings.lease_namespace, settings.lease_prefix)
        self.shards = ShardCoordinator(
            leases,
            settings.identity or replica_identity(socket.gethostname(), os.getpid()),
            installation=settings.lease_prefix,
            shards=settings.shard_count,
            lease_seconds=settings.shard_lease_seconds,
            renew_seconds=settings.shard_renew_seconds,
            on_taken=lambda shards: self._taken(monitor),
            on_lost=lambda shards: self._wake_all(),  # their clusters' loops let go of them now, not at their slot
        )
        shards = self.shards
        self.telemetry.shards_held.set_function(lambda: len(shards.held()))
        await shards.run()

    async def _release_shards(self) -> None:
        """A graceful stop hands the shards over now instead of after the lease (a SIGKILL leaves them to expire)."""
        if self.shards is None:
            return
        try:
            await asyncio.wait_for(self.shards.release_all(), timeout=5)
        except Exception as error:  # the API server away at shutdown: the Leases expire by themselves
            logging.getLogger("operator_k8s").warning(
                "Could not release the shard Leases", extra={"error": f"{type(error).__name__}: {error}"}
            )

    def _record_delivery(self, receiver: str, result: str, delay: float | None) -> None:
        self.telemetry.deliveries.labels(receiver, result).inc()
        if delay is not None:
            self.telemetry.delivery_seconds.labels(receiver).observe(delay)

    def _record_pending(self, counts: dict[str, int]) -> None:
        for receiver in self.notifier.config.receivers:
            self.telemetry.pending_deliveries.labels(receiver.name).set(counts.get(receiver.name, 0))

    async def _api(self) -> Any:
        if self._api_client is None:
            self._api_client = await api_client(self.kubeconfig)
        return self._api_client


def _as_callable(dsn: str | Callable[[], str]) -> Callable[[], str]:
    return dsn if callable(dsn) else (lambda: dsn)


def _then(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()

    return both


def _crash_with_probability(chance: float) -> Callable[[], None]:
    """The crash-test failpoint: SIGKILL this process with ``chance`` (0 in production: a no-op)."""

    def maybe_crash() -> None:
        if chance and random.random() < chance:  # noqa: S311 - a test failpoint, not a secret
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_crash


class _LazyMirror:
    """The Kubernetes mirror, connected on first use so the API client is made inside kopf's loop."""

    def __init__(self, operator: Operator) -> None:
        self._operator = operator
        self._mirror: KubeTicketMirror | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> KubeTicketMirror:
        async with self._lock:
            if self._mirror is None:
                api = await api_client(self._operator.kubeconfig)
                self._mirror = KubeTicketMirror(api, count=self._operator.telemetry.count_kube)
            return self._mirror

    async def create(self, *args: Any) -> None:
        await (await self._get()).create(*args)

    async def patch(self, *args: Any) -> None:
        await (await self._get()).patch(*args)

    async def write_status(self, *args: Any) -> None:
        await (await self._get()).write_status(*args)

    async def read_status(self, *args: Any) -> tuple[dict[str, Any], str] | None:
        return await (await self._get()).read_status(*args)

    async def delete(self, *args: Any) -> None:
        await (await self._get()).delete(*args)

    async def events(self, *args: Any) -> None:
        await (await self._get()).events(*args)


class _LazyEvidence:
    """The evidence reader, on the API client made inside kopf's loop on first use."""

    def __init__(self, operator: Operator) -> None:
        self._operator = operator

    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        return await KubeEvidence(await self._operator._api()).pod_evidence(namespace, pod, timeout=timeout)

    async def pod_address(self, namespace: str, pod: str, port_name: str, *, timeout: float) -> str | None:
        return await KubeEvidence(await self._operator._api()).pod_address(namespace, pod, port_name, timeout=timeout)


class PeeringDecisions(logging.Handler):
    """kopf's peering decisions, read from its log records (kopf exposes no other signal): the replica's heartbeats
    learn whether it is active, so liveness and ``operator_k8s_active`` are right after a pause and a hand-over."""

    def __init__(self, heartbeats: handlers.Heartbeats) -> None:
        super().__init__(logging.INFO)
        self._heartbeats = heartbeats

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Pausing"):
            self._heartbeats.paused()
        elif message.startswith("Resuming"):
            self._heartbeats.resumed(time.monotonic())


def liveness_endpoint(settings: Settings) -> str | None:
    """kopf's health endpoint (for the liveness and readiness probes), or None when disabled."""
    return f"http://{settings.bind_address}:{settings.health_port}/healthz" if settings.health_port else None


def kopf_namespaces(settings: Settings) -> dict[str, Any]:
    return {"namespaces": settings.namespaces} if settings.namespaces else {"clusterwide": True}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tickets"]:
        return cli.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="operator-k8s",
        description="Run the operator-k8s Kubernetes operator (`operator-k8s tickets --help`: the ticket history).",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig to use outside a cluster (default: in-cluster, then ~/.kube)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        notifications = load_notifications(settings.notifications_file)
    except SettingsError as error:
        print(f"operator-k8s: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    operator = Operator(settings, args.kubeconfig, notifications)
    kopf.run(
        registry=operator.registry(),
        standalone=not settings.peering,
        peering_name=settings.peering or None,
        liveness_endpoint=liveness_endpoint(settings),
        **kopf_namespaces(settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
