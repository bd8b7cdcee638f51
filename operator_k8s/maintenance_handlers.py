"""kopf registrations for MaintenanceWindows: their status, and an index of them for the notification code.

Registrations only, each a line or two: the decisions are ``operator_k8s.domain.maintenance``'s. A sibling of
``handlers`` (import-linter keeps the two independent); the composition root calls ``register_maintenance``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from operator_k8s.domain.maintenance import Window, WindowIndex, index_entry, status_changes
from operator_k8s.domain.vocabulary import (
    CLUSTER_PLURAL,
    GROUP,
    MAINTAINED_CLUSTERS_INDEX,
    MAINTENANCE_WINDOW_PLURAL,
    MAINTENANCE_WINDOWS_INDEX,
    VERSION,
)

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

    @kopf.on.startup(id="maintenance_windows_view", registry=registry)
    async def attach_view(**kwargs: Any) -> None:
        """kopf hands its indexes (empty at first, then kept current) to start-up handlers too."""
        windows.attach(kwargs[MAINTENANCE_INDEX], kwargs.get(CLUSTER_LABELS_INDEX))

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
