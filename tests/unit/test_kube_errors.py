"""How the Kubernetes adapter classifies the API server's answers: retry later, or a refusal not to repeat."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client

from operator_k8s.adapters.kube import KubeTicketMirror
from operator_k8s.ports import ClusterRef, KubernetesRejected, KubernetesUnavailable, Projection

REF = ClusterRef(uid="u", name="tikv", namespace="ns", generation=1)
PROJECTION = Projection("tikv-latency-tikv-0-1", {}, {"ticketId": 1}, {"hold": False, "acknowledged": False})


class Answers:
    """A CustomObjectsApi whose create answers 409 (the Ticket exists) and whose patches answer ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def create_namespaced_custom_object(self, *_: Any, **__: Any) -> None:
        raise client.ApiException(status=409, reason="Conflict")

    async def patch_namespaced_custom_object(self, *_: Any, **__: Any) -> None:
        raise client.ApiException(status=self.status, reason="Answer")

    async def patch_namespaced_custom_object_status(self, *_: Any, **__: Any) -> None:
        raise client.ApiException(status=self.status, reason="Answer")


def mirror(status: int) -> KubeTicketMirror:
    built = KubeTicketMirror(object())  # type: ignore[arg-type]
    built._custom = Answers(status)
    return built


@pytest.mark.parametrize("status", [429, 500, 503, 504])
async def test_retry_later_answers_are_an_outage_for_every_write(status: int) -> None:
    """429 (e.g. "storage is (re)initializing" right after a restart) and 5xx mean "not now": never a refusal that
    would replace the cluster's status with a CheckFailed one, and never a raw ApiException out of a Ticket write."""
    with pytest.raises(KubernetesUnavailable):
        await mirror(status).write_status(REF, {"conditions": []})
    with pytest.raises(KubernetesUnavailable):
        await mirror(status).upsert(REF, PROJECTION, labels_changed=True)


@pytest.mark.parametrize("status", [400, 403, 422])
async def test_refusals_are_rejections(status: int) -> None:
    with pytest.raises(KubernetesRejected):
        await mirror(status).write_status(REF, {"conditions": []})
    with pytest.raises(KubernetesRejected):
        await mirror(status).upsert(REF, PROJECTION, labels_changed=False)
