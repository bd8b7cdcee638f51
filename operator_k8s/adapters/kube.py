"""Kubernetes writes the service asks for: Ticket resources and Events, through kubernetes-asyncio.

Reads (MonitoredClusters, Pods) arrive through kopf's watches and indexes, so this adapter never LISTs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, config

from operator_k8s.domain.observations import StorePod
from operator_k8s.domain.vocabulary import (
    API_VERSION,
    CLUSTER_KIND,
    GROUP,
    MANAGER,
    TICKET_KIND,
    TICKET_PLURAL,
    VERSION,
)
from operator_k8s.ports import ClusterRef, Projection, TicketEvent

log = logging.getLogger("operator_k8s.kube")
MERGE_PATCH = "application/merge-patch+json"


async def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from the in-cluster service account, else from the kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


def store_pod(body: Mapping[str, Any]) -> StorePod:
    """The facts the invariants need from a Pod body (as kopf hands it to an indexer)."""
    status = body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    labels = (body.get("metadata") or {}).get("labels") or {}
    return StorePod(
        name=body["metadata"]["name"],
        phase=status.get("phase") or "Unknown",
        ready=ready,
        labels=tuple(sorted(labels.items())),
    )


def owner_reference(owner: ClusterRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": CLUSTER_KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


class KubeTicketMirror:
    """The TicketMirror port: Ticket custom resources and core/v1 Events."""

    def __init__(self, api: client.ApiClient, *, count: Callable[[str], None] | None = None) -> None:
        # The generated clients are typed for model objects; we pass plain dicts, which they accept.
        self._custom: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self._count = count or (lambda verb: None)

    async def upsert(self, owner: ClusterRef, projection: Projection) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": TICKET_KIND,
            "metadata": {
                "name": projection.name,
                "namespace": owner.namespace,
                "labels": projection.labels,
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": {},
        }
        try:
            self._count("create")
            await self._custom.create_namespaced_custom_object(GROUP, VERSION, owner.namespace, TICKET_PLURAL, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            self._count("patch")
            await self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                owner.namespace,
                TICKET_PLURAL,
                projection.name,
                {"metadata": {"labels": projection.labels}},
                _content_type=MERGE_PATCH,
            )
        else:
            log.info("Created Ticket", extra={"ticket": projection.name, "namespace": owner.namespace})
        self._count("patch")
        await self._custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            owner.namespace,
            TICKET_PLURAL,
            projection.name,
            {"status": projection.status},
            _content_type=MERGE_PATCH,
        )

    async def delete(self, namespace: str, name: str) -> None:
        try:
            self._count("delete")
            await self._custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, TICKET_PLURAL, name)
            log.info("Deleted Ticket past retention", extra={"ticket": name, "namespace": namespace})
        except client.ApiException as error:
            if error.status != 404:
                raise

    async def events(self, owner: ClusterRef, events: Sequence[TicketEvent]) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for event in events:
            body = {
                "metadata": {"name": f"{owner.name}.{uuid.uuid4().hex[:16]}", "namespace": owner.namespace},
                "involvedObject": {
                    "apiVersion": API_VERSION,
                    "kind": CLUSTER_KIND,
                    "name": owner.name,
                    "namespace": owner.namespace,
                    "uid": owner.uid,
                },
                "reason": event.reason,
                "message": event.message,
                "type": "Warning" if event.warning else "Normal",
                "source": {"component": MANAGER},
                "reportingComponent": MANAGER,
                "reportingInstance": MANAGER,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            try:
                self._count("create")
                await self._core.create_namespaced_event(owner.namespace, body)
            except client.ApiException as error:
                log.warning("Could not post Event", extra={"cluster": owner.name, "status": error.status})
