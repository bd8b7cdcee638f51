"""The contract of the Kubernetes side, run on the fake and on the real API server alike: the same cycles, the same
tampering, the same outcome. The fake's merge patches, conflicts and missing objects are checked against the API
server here, so a unit test can no longer pass on a fake that differs from it (as the stale resolvedAt did)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest
from kubernetes_asyncio import client

from devstack.world.stack import Stack
from operator_k8s.adapters.kube import KubeTicketMirror, api_client, observed_ticket
from operator_k8s.domain.ledger import ClusterRef
from operator_k8s.domain.projections import ObservedTicket
from operator_k8s.domain.tickets import TicketState
from operator_k8s.domain.vocabulary import CLUSTER_PLURAL, GROUP, TICKET_PLURAL, VERSION, Label
from operator_k8s.ports import KubernetesConflict, KubernetesNotFound, TicketMirror
from operator_k8s.service import Monitor
from tests.stackutil import eventually_async
from tests.unit.builders import at
from tests.unit.cycles import PODS, SPEC
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore

_names = itertools.count()
SPEC_FAST: dict[str, Any] = {
    **SPEC,
    "invariants": {"latency": {"thresholdMs": 100, "clearFor": "0s"}, "diskUsage": {"enabled": False}},
}


class World(Protocol):
    """One Kubernetes side: the mirror the service writes through, and what the watch would observe."""

    ref: ClusterRef
    mirror: TicketMirror

    async def observe(self) -> tuple[dict[str, Any], str, list[ObservedTicket]]: ...

    async def tamper(self, name: str, patch: dict[str, Any]) -> None: ...

    async def delete_all(self) -> None: ...


class FakeWorld:
    def __init__(self) -> None:
        self.ref = ClusterRef("uid-contract", "tikv", "ns", 1)
        self.fake = FakeMirror()
        self.mirror: TicketMirror = self.fake

    async def observe(self) -> tuple[dict[str, Any], str, list[ObservedTicket]]:
        return self.fake.status, str(self.fake.cluster_version), self.fake.observed()

    async def tamper(self, name: str, patch: dict[str, Any]) -> None:
        self.fake.human_patch(name, patch)

    async def delete_all(self) -> None:
        self.fake.objects.clear()


class ApiServerWorld:
    def __init__(self, api: client.ApiClient, ref: ClusterRef) -> None:
        self.ref = ref
        self.mirror: TicketMirror = KubeTicketMirror(api)
        self._custom: Any = client.CustomObjectsApi(api)

    async def observe(self) -> tuple[dict[str, Any], str, list[ObservedTicket]]:
        cluster = await self._custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ref.namespace, CLUSTER_PLURAL, self.ref.name
        )
        listed = await _settled(
            lambda: self._custom.list_namespaced_custom_object(GROUP, VERSION, self.ref.namespace, TICKET_PLURAL)
        )
        tickets = [observed_ticket(item) for item in listed["items"]]
        return cluster.get("status") or {}, cluster["metadata"]["resourceVersion"], tickets

    async def tamper(self, name: str, patch: dict[str, Any]) -> None:
        await self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ref.namespace, TICKET_PLURAL, name, patch,
            _content_type="application/merge-patch+json", field_manager="kubectl-patch",
        )  # fmt: skip

    async def delete_all(self) -> None:
        await self._custom.delete_collection_namespaced_custom_object(GROUP, VERSION, self.ref.namespace, TICKET_PLURAL)


async def _settled(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call``'s answer once the API server has settled a CRD's storage (it answers 429 "storage is
    (re)initializing" for a while after a CRD is created or changed)."""

    async def attempt() -> Any:
        try:
            return await call()
        except client.ApiException as error:
            if error.status != 429:
                raise
            return None

    return await eventually_async(attempt, timeout=60, what="the API server to serve the CRD")


@pytest.fixture(params=["fake", "apiserver"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "fake":
        yield FakeWorld()
        return
    stack: Stack = request.getfixturevalue("stack")
    namespace: str = request.getfixturevalue("namespace")
    api = await api_client(str(stack.kubeconfig))
    custom: Any = client.CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MonitoredCluster",
            "metadata": {"name": f"c{next(_names)}", "namespace": namespace}, "spec": SPEC_FAST}  # fmt: skip
    created = await _settled(
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTER_PLURAL, body)
    )
    meta = created["metadata"]
    try:
        yield ApiServerWorld(api, ClusterRef(meta["uid"], meta["name"], namespace, meta["generation"]))
    finally:
        await api.close()


class Scenario:
    """One cluster's cycles through a world, as kopf runs them: the status and Tickets observed before each."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.store, self.metrics = FakeStore(), FakeMetrics()
        self.metrics.namespace = world.ref.namespace
        self.monitor = Monitor(store=self.store, metrics=self.metrics, mirror=world.mirror)
        self.second = 0

    async def cycles(self, count: int, **latency: float) -> int:
        """Run ``count`` cycles with the given store latencies; return the Ticket writes they cost."""
        self.metrics.latency.update({k.replace("_", "-"): v for k, v in latency.items()})
        writes = 0
        for _ in range(count):
            status, version, tickets = await self.world.observe()
            stats = await self.monitor.check_cluster(
                self.world.ref, SPEC_FAST, PODS, status, at(self.second),
                tickets_shown=tickets, resource_version=version,
            )  # fmt: skip
            assert not {"cycle_failed", "kubernetes_rejected", "kubernetes_unavailable"} & set(stats.errors), (
                stats.errors
            )
            writes += stats.ticket_writes
            self.second += 1
        return writes

    async def tickets(self) -> dict[str, ObservedTicket]:
        return {t.name: t for t in (await self.world.observe())[2]}


async def test_reopen_removes_resolved_at_and_a_state_change_is_one_write(world: World) -> None:
    scenario = Scenario(world)
    await scenario.cycles(3, tikv_1=900.0)
    [name] = await scenario.tickets()
    assert await scenario.cycles(1, tikv_1=5.0) == 1, "resolving: labels and status in one write"
    assert "resolvedAt" in (await scenario.tickets())[name].status
    assert await scenario.cycles(1, tikv_1=900.0) == 1
    reopened = (await scenario.tickets())[name]
    assert reopened.status["state"] == "open" and "resolvedAt" not in reopened.status
    assert reopened.labels[Label.STATE] == "open"
    assert await scenario.cycles(2) == 0, "nothing changed: nothing written"
    assert scenario.store.rows[0].state is TicketState.OPEN


@pytest.mark.parametrize(
    "tamper",
    [
        {"status": {"state": "resolved", "resolvedAt": "2026-01-01T00:00:00.5+00:00"}},
        {"metadata": {"ownerReferences": None, "labels": {Label.CLUSTER_UID: None}}},
    ],
    ids=["status", "owner"],
)
async def test_a_tampered_ticket_is_restored_in_one_cycle(world: World, tamper: dict[str, Any]) -> None:
    scenario = Scenario(world)
    await scenario.cycles(3, tikv_1=900.0)
    [(name, wanted)] = (await scenario.tickets()).items()
    await world.tamper(name, tamper)
    assert await scenario.cycles(1) == 1
    restored = (await scenario.tickets())[name]
    now_seen = {"lastSeen": restored.status["lastSeen"]}  # a restoring write shows the current lastSeen, exactly
    assert (restored.status, restored.labels, restored.owner_uids) == (
        {**wanted.status, **now_seen},
        wanted.labels,
        wanted.owner_uids,
    )


async def test_a_hold_set_by_a_human_survives_deleting_every_ticket(world: World) -> None:
    scenario = Scenario(world)
    await scenario.cycles(3, tikv_0=900.0, tikv_1=900.0)
    held, other = sorted(await scenario.tickets())
    await world.tamper(held, {"spec": {"hold": True}})
    await scenario.cycles(1, tikv_0=5.0, tikv_1=5.0)
    await world.delete_all()  # as deleting and re-creating the CRD does
    await scenario.cycles(1)
    rebuilt = await scenario.tickets()
    assert sorted(rebuilt) == [held, other], "every open and recently resolved ticket is shown again"
    assert rebuilt[held].spec["hold"] is True and rebuilt[held].status["state"] == "open"
    assert rebuilt[other].spec["hold"] is False and rebuilt[other].status["state"] == "resolved"


async def test_a_stale_resource_version_conflicts_and_a_missing_ticket_is_not_found(world: World) -> None:
    scenario = Scenario(world)
    await scenario.cycles(3, tikv_1=900.0)
    [(name, seen)] = (await scenario.tickets()).items()
    await world.tamper(name, {"spec": {"note": "a human was here"}})
    with pytest.raises(KubernetesConflict):
        await world.mirror.patch(world.ref.namespace, name, seen.resource_version, {"status": {"state": "x"}})
    await world.delete_all()
    with pytest.raises(KubernetesNotFound):
        await world.mirror.patch(world.ref.namespace, name, seen.resource_version, {"status": {"state": "x"}})
