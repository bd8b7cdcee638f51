"""kopf registrations for MaintenanceWindows: their status, and an index of them for the notification code.

Registrations only, each a line or two: the decisions are ``operator_k8s.domain.maintenance``'s. A sibling of
``handlers`` (import-linter keeps the two independent); the composition root calls ``register_maintenance``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from operator_k8s.domain.maintenance import (
    OperatorReport,
    Window,
    WindowIndex,
    index_entry,
    operator_window_state,
    status_changes,
    tidb_report,
)
from operator_k8s.domain.vocabulary import (
    CLUSTER_PLURAL,
    GROUP,
    MAINTAINED_CLUSTERS_INDEX,
    MAINTENANCE_SOURCES_INDEX,
    MAINTENANCE_WINDOW_PLURAL,
    MAINTENANCE_WINDOWS_INDEX,
    TIDB_CLUSTER_PLURAL,
    TIDB_CLUSTERS_INDEX,
    TIDB_GROUP,
    TIDB_VERSION,
    VERSION,
)

log = logging.getLogger("operator_k8s.maintenance")

MAINTENANCE_INDEX = MAINTENANCE_WINDOWS_INDEX
"""The id of kopf's index of valid windows by namespace; kopf passes it to every handler as this keyword argument."""
CLUSTER_LABELS_INDEX = MAINTAINED_CLUSTERS_INDEX
STATUS_SECONDS = 30.0
"""How often each window's status is recomputed: it shows ``active`` within this long of an occurrence's edge (the
notification code asks the windows themselves when it decides, never this status)."""


def register_maintenance(registry: kopf.OperatorRegistry, *, interval: float = STATUS_SECONDS) -> WindowIndex:
    """Register the MaintenanceWindow handlers in ``registry``; return the view of the current windows, live once
    the operator has started (kopf runs no resource handler before its indexes are listed in full)."""
    windows = WindowIndex()

    @kopf.index(GROUP, VERSION, MAINTENANCE_WINDOW_PLURAL, id=MAINTENANCE_INDEX, registry=registry)
    async def maintenance_windows(name: str, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[str, Window]:
        return index_entry(name, namespace or "", spec)

    @kopf.index(GROUP, VERSION, CLUSTER_PLURAL, id=CLUSTER_LABELS_INDEX, registry=registry)
    async def maintained_clusters(
        name: str, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[tuple[str, str], dict[str, str]]:
        return {(namespace or "", name): dict(labels)}

    @kopf.index(GROUP, VERSION, CLUSTER_PLURAL, id=MAINTENANCE_SOURCES_INDEX, registry=registry)
    async def maintenance_sources(
        name: str, namespace: str | None, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str], str]:
        """The TidbCluster a MonitoredCluster opts into automatic windows by (none: nothing indexed)."""
        maintenance = spec.get("maintenance")
        source = maintenance.get("tidbCluster") if isinstance(maintenance, dict) else None
        return {(namespace or "", name): source} if isinstance(source, str) and source else {}

    @kopf.index(TIDB_GROUP, TIDB_VERSION, TIDB_CLUSTER_PLURAL, id=TIDB_CLUSTERS_INDEX, registry=registry)
    async def tidb_clusters(
        name: str, namespace: str | None, status: kopf.Status, **_: Any
    ) -> dict[tuple[str, str], OperatorReport]:
        """What each TidbCluster reports. Without TiDB Operator's CRD kopf watches nothing here (and says so once at
        start-up); it starts when the CRD appears."""
        return {(namespace or "", name): tidb_report(status)}

    @kopf.on.startup(id="maintenance_windows_view", registry=registry)
    async def attach_view(**kwargs: Any) -> None:
        """kopf hands its indexes (empty at first, then kept current) to start-up handlers too."""
        windows.attach(
            kwargs[MAINTENANCE_INDEX], kwargs.get(CLUSTER_LABELS_INDEX), kwargs.get(MAINTENANCE_SOURCES_INDEX),
            kwargs.get(TIDB_CLUSTERS_INDEX),
        )  # fmt: skip

    @kopf.timer(
        GROUP, VERSION, CLUSTER_PLURAL, id="automatic_maintenance", interval=interval, registry=registry,
        field="spec.maintenance.tidbCluster", value=kopf.PRESENT,
    )  # fmt: skip
    async def automatic_maintenance(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        """Says in the log, when it changes, what a cluster's ``spec.maintenance.tidbCluster`` does now: a window in
        force, none, or a TidbCluster the watch does not show (never guessed to be a window). Per-object memo: kopf
        drops it with the object."""
        source = windows.tidb_cluster(namespace or "", name)
        if source is None:
            return
        state = operator_window_state(source, windows.report(namespace or "", source), datetime.now(UTC))
        if memo.get("automatic_maintenance") != state:
            memo["automatic_maintenance"] = state
            log.info(state, extra={"cluster": name, "namespace": namespace, "tidb_cluster": source})

    @kopf.timer(
        GROUP, VERSION, MAINTENANCE_WINDOW_PLURAL, id="maintenance_status", interval=interval, registry=registry
    )
    async def maintenance_status(
        spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any
    ) -> None:
        """Writes only what differs from the status the object shows now (observed, never remembered), and returns
        None: kopf writes nothing of its own."""
        changes = status_changes(status, spec, int(meta.get("generation") or 0), datetime.now(UTC))
        if changes:
            patch["status"] = changes

    return windows
