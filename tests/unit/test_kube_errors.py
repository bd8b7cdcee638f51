"""How the Kubernetes adapter classifies the API server's answers: retry later, or a refusal not to repeat."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio import client

from operator_k8s.adapters.kube import KubeTicketMirror
from operator_k8s.domain.ledger import ClusterRef
from operator_k8s.ports import KubernetesConflict, KubernetesNotFound, KubernetesRejected, KubernetesUnavailable

REF = ClusterRef(uid="u", name="tikv", namespace="ns", generation=1)
BODY: dict[str, Any] = {"metadata": {"name": "tikv-latency-tikv-0-1", "namespace": "ns"}, "spec": {}}


class Answers:
    """A CustomObjectsApi whose every write answers ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def create_namespaced_custom_object(self, *_: Any, **__: Any) -> None:
        raise client.ApiException(status=self.status, reason="Answer")

    async def patch_namespaced_custom_object(self, *_: Any, **__: Any) -> None:
        raise client.ApiException(status=self.status, reason="Answer")

    async def patch_namespaced_custom_object_status(self, *_: Any, **__: Any) -> None:
        raise client.ApiException(status=self.status, reason="Answer")


class Crds:
    """ApiextensionsV1Api listing the Tickets CRD, with or without the status subresource of older releases."""

    def __init__(self, legacy: bool = False) -> None:
        self.legacy = legacy

    async def list_custom_resource_definition(self, *_: Any, **__: Any) -> Any:
        version: dict[str, Any] = {"name": "v1alpha1", **({"subresources": {"status": {}}} if self.legacy else {})}
        return SimpleNamespace(items=[{"spec": {"versions": [version]}}])


def mirror(status: int, *, legacy: bool = False) -> KubeTicketMirror:
    built = KubeTicketMirror(object())  # type: ignore[arg-type]
    built._custom = Answers(status)
    built._extensions = Crds(legacy)
    return built


class Recording:
    """A CustomObjectsApi that accepts every write and records which endpoint got what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def create_namespaced_custom_object(self, *args: Any, **__: Any) -> None:
        self.calls.append(("create", args[-1]))

    async def patch_namespaced_custom_object(self, *args: Any, **__: Any) -> None:
        self.calls.append(("patch", args[-1]))

    async def patch_namespaced_custom_object_status(self, *args: Any, **__: Any) -> None:
        self.calls.append(("patch-status", args[-1]))


@pytest.mark.parametrize("legacy", [False, True])
async def test_a_ticket_change_is_one_request_unless_the_crd_still_has_a_status_subresource(legacy: bool) -> None:
    """With the CRD of older releases the API server would drop the status sent with the object: it goes to the
    subresource too, so the Ticket still shows it (two writes, and an error that says how to replace the CRD)."""
    built = mirror(200, legacy=legacy)
    recording = built._custom = Recording()
    await built.patch(
        "ns", "t-1", "7", {"metadata": {"labels": {"state": "resolved"}}, "status": {"state": "resolved"}}
    )
    await built.create({**BODY, "status": {"state": "open"}})
    kinds = [kind for kind, _ in recording.calls]
    assert kinds == (["patch", "patch-status", "create", "patch-status"] if legacy else ["patch", "create"])
    assert recording.calls[0][1]["metadata"]["resourceVersion"] == "7"
    assert ("status" in recording.calls[0][1]) is not legacy


@pytest.mark.parametrize("status", [429, 500, 503, 504])
async def test_retry_later_answers_are_an_outage_for_every_write(status: int) -> None:
    """429 (e.g. "storage is (re)initializing" right after a restart) and 5xx mean "not now": never a refusal that
    would replace the cluster's status with a CheckFailed one, and never a raw ApiException out of a Ticket write."""
    with pytest.raises(KubernetesUnavailable):
        await mirror(status).write_status(REF, {"conditions": []}, "1")
    with pytest.raises(KubernetesUnavailable):
        await mirror(status).create(BODY)
    with pytest.raises(KubernetesUnavailable):
        await mirror(status).patch("ns", "t-1", "1", {"status": {}})


@pytest.mark.parametrize("status", [400, 403, 422])
async def test_refusals_are_rejections(status: int) -> None:
    with pytest.raises(KubernetesRejected):
        await mirror(status).write_status(REF, {"conditions": []}, "1")
    with pytest.raises(KubernetesRejected):
        await mirror(status).create(BODY)
    with pytest.raises(KubernetesRejected):
        await mirror(status).patch("ns", "t-1", "1", {"status": {}})


async def test_a_stale_resource_version_is_a_conflict_and_a_missing_ticket_not_found() -> None:
    """The optimistic lock: two writers conflict instead of overwriting; a Ticket gone since it was observed (the
    watch lags, the CRD was re-created) is told apart, so the caller creates it again."""
    with pytest.raises(KubernetesConflict):
        await mirror(409).patch("ns", "t-1", "1", {"status": {}})
    with pytest.raises(KubernetesConflict):
        await mirror(409).write_status(REF, {"conditions": []}, "1")
    with pytest.raises(KubernetesConflict):
        await mirror(409).create(BODY)
    with pytest.raises(KubernetesNotFound):
        await mirror(404).patch("ns", "t-1", "1", {"status": {}})
