"""Kubernetes writes the service asks for: Ticket resources, Events and status, through kubernetes-asyncio.

Reads (MonitoredClusters, Pods, Tickets) arrive through kopf's watches and indexes, so this adapter never LISTs
in a cycle (a status conflict re-reads that one object).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from operator_k8s.domain.diagnosis import EVENTS_KEPT, pod_evidence, status_address
from operator_k8s.domain.ledger import ClusterRef, TicketEvent
from operator_k8s.domain.observations import StorePod
from operator_k8s.domain.projections import ObservedTicket
from operator_k8s.domain.vocabulary import (
    API_VERSION,
    CLUSTER_KIND,
    CLUSTER_PLURAL,
    GROUP,
    MANAGER,
    TICKET_PLURAL,
    VERSION,
)
from operator_k8s.ports import KubernetesConflict, KubernetesNotFound, KubernetesRejected, KubernetesUnavailable

log = logging.getLogger("operator_k8s.kube")
MERGE_PATCH = "application/merge-patch+json"


async def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from the in-cluster service account, else from the kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


async def cluster_uids(api: client.ApiClient, namespaces: Sequence[str] | None) -> set[str]:
    """The uids of every MonitoredCluster (in ``namespaces``; None: all): one LIST, for the orphan sweep only."""
    custom: Any = client.CustomObjectsApi(api)
    if namespaces is None:
        listed = [await custom.list_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, _request_timeout=30)]
    else:
        listed = [
            await custom.list_namespaced_custom_object(GROUP, VERSION, ns, CLUSTER_PLURAL, _request_timeout=30)
            for ns in namespaces
        ]
    return {item["metadata"]["uid"] for page in listed for item in page.get("items", [])}


async def peering_object_exists(api: client.ApiClient, name: str, namespaces: Sequence[str] | None) -> bool:
    """Whether kopf's peering object exists: a ClusterKopfPeering for a whole-cluster watch, else a KopfPeering in
    each watched namespace."""
    custom: Any = client.CustomObjectsApi(api)
    try:
        if not namespaces:
            await custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name, _request_timeout=10)
        for namespace in namespaces or ():
            await custom.get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", name, _request_timeout=10
            )
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


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


def observed_ticket(body: Mapping[str, Any]) -> ObservedTicket:
    """What the projection compares of a Ticket body (as kopf hands it to an indexer or an event handler)."""
    meta = body.get("metadata") or {}
    owners = tuple(
        str(o.get("uid"))
        for o in meta.get("ownerReferences") or []
        if isinstance(o, dict) and o.get("controller") and o.get("kind") == CLUSTER_KIND
    )
    spec, status = body.get("spec"), body.get("status")
    return ObservedTicket(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta["name"]),
        resource_version=str(meta.get("resourceVersion") or ""),
        labels=_strings(meta.get("labels")),
        annotations=_strings(meta.get("annotations")),
        owner_uids=owners,
        spec=dict(spec) if isinstance(spec, Mapping) else {},
        status=dict(status) if isinstance(status, Mapping) else {},
        spec_actor=_spec_actor(meta),
    )


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _spec_actor(meta: Mapping[str, Any]) -> str:
    """Who last changed a Ticket's spec other than the operator, as far as managedFields tells (the newest field
    manager of ``spec`` that is not the operator's: an entry's time has a second's resolution, so a tie with the
    operator's own write must not credit the operator); the operator's name if nobody else ever wrote the spec."""
    fields = meta.get("managedFields") or []
    entries = [e for e in fields if isinstance(e, dict) and "f:spec" in (e.get("fieldsV1") or {})]
    entries.sort(key=lambda e: str(e.get("time") or ""))
    for entry in reversed(entries):
        manager = str(entry.get("manager") or "")
        if manager and manager != MANAGER:
            return f"kubernetes:{manager}"
    return f"kubernetes:{MANAGER}"


TICKET_CRD = f"{TICKET_PLURAL}.{GROUP}"
SUBRESOURCE_RECHECK = 300.0
"""Seconds between checks of the Tickets CRD's shape (see ``KubeTicketMirror._legacy_crd``)."""

REQUEST_TIMEOUT = 10.0
"""Seconds any one Kubernetes request may take: a cycle never waits longer on the API server."""


class KubeTicketMirror:
    """The TicketMirror port: Ticket custom resources, core/v1 Events and the MonitoredCluster status.

    Every request has a deadline. Errors come back as KubernetesUnavailable (no answer) or KubernetesRejected (the
    API server said no), so the service can tell an outage from a write it must not repeat.
    """

    def __init__(self, api: client.ApiClient, *, count: Callable[[str], None] | None = None) -> None:
        # The generated clients are typed for model objects; we pass plain dicts, which they accept.
        self._custom: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self._extensions: Any = client.ApiextensionsV1Api(api)
        self._count = count or (lambda verb: None)
        self._subresource_checked = -math.inf
        self._status_subresource = False

    async def _legacy_crd(self) -> bool:
        """Whether the installed Tickets CRD still has the status subresource of releases before this one (Helm
        never upgrades CRDs, and a server-side apply keeps fields another manager set): the API server then drops
        a status sent with the object, so the status goes to the subresource in a second request, until the CRD is
        replaced. Checked every few minutes, so a replaced CRD is noticed."""
        now = time.monotonic()
        if now - self._subresource_checked < SUBRESOURCE_RECHECK:
            return self._status_subresource
        self._subresource_checked = now
        listed = await self._call(
            "list", self._extensions.list_custom_resource_definition, field_selector=f"metadata.name={TICKET_CRD}"
        )
        items = [item.to_dict() if hasattr(item, "to_dict") else item for item in listed.items]
        legacy = any(
            (version.get("subresources") or {}).get("status") is not None
            for item in items
            for version in item["spec"]["versions"]
        )
        if legacy and not self._status_subresource:
            log.error(
                "The Tickets CRD has a status subresource: every Ticket change costs two writes until it is replaced "
                f"(kubectl replace -f crds/{TICKET_CRD}.yaml)",
                extra={"crd": TICKET_CRD},
            )
        self._status_subresource = legacy
        return legacy

    async def _status_write(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._call(
            "patch", self._custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, TICKET_PLURAL,
            name, {"status": status}, _content_type=MERGE_PATCH, field_manager=MANAGER,
        )  # fmt: skip

    async def _call(self, verb: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """One request. 404 and 409 come back as ApiException (each caller knows what they mean to it); no answer,
        a server error or 429 (the API server asks to retry later, e.g. while its storage initializes) as
        KubernetesUnavailable; any other refusal as KubernetesRejected."""
        self._count(verb)
        try:
            return await method(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except client.ApiException as error:
            if error.status in (409, 404):
                raise
            if error.status is None or error.status >= 500 or error.status == 429:
                raise KubernetesUnavailable(f"API server error {error.status}") from None
            raise KubernetesRejected(f"{error.status} {error.reason}: {_api_message(error)}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise KubernetesUnavailable(f"API server unreachable: {type(error).__name__}") from None

    async def create(self, body: dict[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            await self._call(
                "create", self._custom.create_namespaced_custom_object, GROUP, VERSION, namespace, TICKET_PLURAL,
                body, field_manager=MANAGER,
            )  # fmt: skip
        except client.ApiException as error:
            if error.status == 409:
                raise KubernetesConflict(f"Ticket {name} already exists") from None
            raise KubernetesUnavailable(f"API server error {error.status}") from None
        log.info("Created Ticket", extra={"ticket": name, "namespace": namespace})
        if await self._legacy_crd():
            await self._status_write(namespace, name, body["status"])

    async def patch(self, namespace: str, name: str, resource_version: str, patch: dict[str, Any]) -> None:
        status = patch.get("status") if await self._legacy_crd() else None
        if status is not None:
            patch = {k: v for k, v in patch.items() if k != "status"}
        locked = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        try:
            await self._call(
                "patch", self._custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, TICKET_PLURAL,
                name, locked, _content_type=MERGE_PATCH, field_manager=MANAGER,
            )  # fmt: skip
        except client.ApiException as error:
            if error.status == 409:
                raise KubernetesConflict(f"Ticket {name} changed since it was observed") from None
            raise KubernetesNotFound(f"Ticket {name} does not exist") from None
        if status is not None:
            await self._status_write(namespace, name, status)

    async def delete(self, namespace: str, name: str) -> None:
        try:
            await self._call(
                "delete", self._custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, TICKET_PLURAL, name
            )
            log.info("Deleted Ticket no longer shown", extra={"ticket": name, "namespace": namespace})
        except client.ApiException as error:
            if error.status != 404:
                raise KubernetesUnavailable(f"API server error {error.status}") from None

    async def write_status(self, ref: ClusterRef, patch: dict[str, Any], resource_version: str | None) -> None:
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            await self._call(
                "patch", self._custom.patch_namespaced_custom_object_status, GROUP, VERSION, ref.namespace,
                CLUSTER_PLURAL, ref.name, body, _content_type=MERGE_PATCH, field_manager=MANAGER,
            )  # fmt: skip
        except client.ApiException as error:
            if error.status == 409:
                raise KubernetesConflict(f"MonitoredCluster {ref.name} changed since it was observed") from None
            return  # 404: deleted meanwhile, nothing to report on

    async def read_status(self, ref: ClusterRef) -> tuple[dict[str, Any], str] | None:
        try:
            body = await self._call(
                "get", self._custom.get_namespaced_custom_object_status, GROUP, VERSION, ref.namespace,
                CLUSTER_PLURAL, ref.name,
            )  # fmt: skip
        except client.ApiException:
            return None
        status = body.get("status")
        return (dict(status) if isinstance(status, dict) else {}), str(body["metadata"].get("resourceVersion", ""))

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
                await self._call("create", self._core.create_namespaced_event, owner.namespace, body)
            except (client.ApiException, KubernetesRejected) as error:
                log.warning("Could not post Event", extra={"cluster": owner.name, "error": str(error)[:200]})


def _api_message(error: client.ApiException) -> str:
    """The API server's own message from a Status body (what kubectl would print), bounded."""
    try:
        message = str(json.loads(error.body or "{}").get("message") or error.body or "")
    except (ValueError, AttributeError):
        message = str(error.body or "")
    return message[:1000]


class KubeEvidence:
    """The EvidenceSource port: the store's pod, the Events about it (selected by field, never a namespace's every
    Event) and its node; three requests at most, each bounded, read as the API server's JSON."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._core: Any = client.CoreV1Api(api)

    async def _read(self, what: str, method: Any, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """The object's JSON, or why it could not be read (a string)."""
        try:
            answer = await method(*args, _request_timeout=timeout, _preload_content=False, **kwargs)
            return json.loads(await answer.read())
        except client.ApiException as error:
            reason = {403: "forbidden (RBAC)", 404: "not found"}.get(error.status or 0, f"error {error.status}")
            return f"{what}: {reason}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            return f"{what}: {type(error).__name__}"

    async def pod_address(self, namespace: str, pod: str, port_name: str, *, timeout: float) -> str | None:
        found = await self._read(f"pod {pod}", self._core.read_namespaced_pod, pod, namespace, timeout=timeout)
        return status_address(found, port_name) if isinstance(found, dict) else None

    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        unreachable: list[str] = []
        found = await self._read(f"pod {pod}", self._core.read_namespaced_pod, pod, namespace, timeout=timeout)
        events = await self._read(
            "its events", self._core.list_namespaced_event, namespace, timeout=timeout,
            field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}", limit=EVENTS_KEPT * 5,
        )  # fmt: skip
        pod_body = found if isinstance(found, dict) else None
        node_name = ((pod_body or {}).get("spec") or {}).get("nodeName")
        node = (
            await self._read(f"node {node_name}", self._core.read_node, node_name, timeout=timeout)
            if node_name
            else None
        )
        for answer in (found, events, node):
            if isinstance(answer, str):
                unreachable.append(answer)
        return pod_evidence(
            pod_body,
            events.get("items", []) if isinstance(events, dict) else [],
            node if isinstance(node, dict) else None,
            unreachable=unreachable,
        )
