"""Our Leases (``coordination.k8s.io/v1``) through the API server: one LIST by label, writes guarded by the
resourceVersion, so two replicas racing for a shard never both win. Times are written in UTC with microseconds, the
MicroTime format the API server expects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from operator_k8s.ports import LeaseRecord

LEASE_OF_LABEL = "operator-k8s.io/lease-of"
"""Which installation a Lease belongs to (several may share a namespace)."""


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeLeases:
    def __init__(self, api: client.ApiClient, namespace: str, installation: str, *, timeout: float = 5) -> None:
        self._api: Any = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.installation = installation
        self.timeout = timeout

    async def list(self) -> list[LeaseRecord]:
        listed = await self._api.list_namespaced_lease(
            self.namespace, label_selector=f"{LEASE_OF_LABEL}={self.installation}", _request_timeout=self.timeout
        )
        return [
            LeaseRecord(
                name=item.metadata.name,
                holder=item.spec.holder_identity or "",
                duration_seconds=item.spec.lease_duration_seconds or 0,
                version=item.metadata.resource_version or "",
                transitions=item.spec.lease_transitions or 0,
                acquired_at=_micro_time(item.spec.acquire_time) if item.spec.acquire_time else "",
            )
            for item in listed.items
        ]

    async def write(self, lease: LeaseRecord, *, acquired: bool) -> bool:
        now = _micro_time(datetime.now(UTC))
        spec: dict[str, Any] = {
            "holderIdentity": lease.holder or None,
            "leaseDurationSeconds": lease.duration_seconds,
            "renewTime": now,
            "leaseTransitions": lease.transitions,
        }
        if acquired or lease.acquired_at:  # a renewal or a release keeps the term's start
            spec["acquireTime"] = now if acquired else lease.acquired_at
        metadata: dict[str, Any] = {"name": lease.name, "labels": {LEASE_OF_LABEL: self.installation}}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        try:
            if not lease.version:
                await self._api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)
            else:
                metadata["resourceVersion"] = lease.version
                await self._api.replace_namespaced_lease(
                    lease.name, self.namespace, body, _request_timeout=self.timeout
                )
        except client.ApiException as error:
            if error.status in (404, 409):  # deleted or written by someone else meanwhile: the next LIST shows it
                return False
            raise
        return True

    async def delete(self, lease: LeaseRecord) -> None:
        try:
            await self._api.delete_namespaced_lease(lease.name, self.namespace, _request_timeout=self.timeout)
        except client.ApiException as error:
            if error.status != 404:
                raise
