"""How the Kubernetes adapter classifies the API server's answers: retry later, or a refusal not to repeat."""

from __future__ import annotations

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


def mirror(status: int) -> KubeTicketMirror:
    built = KubeTicketMirror(object())  # type: ignore[arg-type]
    built._custom = Answers(status)
    return built


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
