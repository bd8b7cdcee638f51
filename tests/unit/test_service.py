"""The service's cycle against small in-memory fakes of the ports: no mocks on string paths, no I/O."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from operator_k8s.domain.diagnosis import pod_evidence, tikv_config_evidence
from operator_k8s.domain.observations import QueryFailure, Sample, StorePod
from operator_k8s.domain.outbox import MAX_QUEUED_EVENTS, TicketWrite
from operator_k8s.domain.pd_api import pd_stores_evidence
from operator_k8s.domain.tickets import Ticket, TicketState
from operator_k8s.ports import TicketStoreUnavailable
from operator_k8s.service import Monitor, ServiceSettings
from tests.unit.builders import at, shown
from tests.unit.cycles import PODS, REF, SPEC, TIKV, Parts, condition, conditions, cycle, run
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore, observed_cycle


async def test_healthy_steady_state_costs_one_round_trip_and_no_kubernetes_write(parts: Parts) -> None:
    monitor, store, _, mirror = parts
    await cycle(monitor, 0)
    assert conditions(mirror.status)["Healthy"] == "True"
    before, written = len(store.calls), len(mirror.statuses)
    stats = await cycle(monitor, 1, mirror.status)
    assert not stats.status_written, "nothing changed: no status write"
    assert (stats.postgres_round_trips, stats.queries, stats.kubernetes_writes) == (1, 3, 0)  # latency, errors, stall
    assert len(store.calls) == before + 1
    assert (mirror.writes, len(mirror.statuses)) == (0, written)


async def test_violation_opens_one_ticket_and_resolves_after_heal(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    await cycle(monitor, 0)
    metrics.latency["tikv-1"] = 900.0
    await run(parts, [1, 2, 3])
    assert [(r.key.store, r.state) for r in store.rows] == [("tikv-1", TicketState.OPEN)]
    assert conditions(mirror.status)["LatencyWithinBudget"] == "False"
    assert list(mirror.resources) == ["tikv-latency-tikv-1-1"]
    assert mirror.specs["tikv-latency-tikv-1-1"] == {"hold": False, "acknowledged": False}
    assert [e.reason for e in mirror.posted] == ["TicketOpened"]
    metrics.latency["tikv-1"] = 5.0
    await run(parts, [4])
    assert store.rows[0].state is TicketState.RESOLVED
    assert conditions(mirror.status)["LatencyWithinBudget"] == "True"
    assert mirror.resources["tikv-latency-tikv-1-1"]["state"] == "resolved"
    assert [e.reason for e in mirror.posted] == ["TicketOpened", "TicketResolved"]


async def test_a_ticket_is_recorded_with_its_cluster_s_labels_and_keeps_them_when_they_change(parts: Parts) -> None:
    """Notification routes select tickets by these labels (``domain.receivers``): fixed when the ticket is first
    recorded, so its resolution is routed where its opening went."""
    monitor, store, metrics, mirror = parts
    labelled = replace(REF, labels=(("team", "payments"),))
    metrics.latency["tikv-1"] = 900.0
    for second in (0, 1, 2):
        await observed_cycle(monitor, labelled, SPEC, PODS, at(second), mirror.status)
    relabelled = replace(REF, labels=(("team", "search"),))
    metrics.latency["tikv-1"] = 5.0
    for second in (3, 4, 5):
        await observed_cycle(monitor, relabelled, SPEC, PODS, at(second), mirror.status)
    (row,) = store.rows
    assert row.state is TicketState.RESOLVED
    assert row.cluster_labels == {"team": "payments"}


async def test_prometheus_down_resolves_nothing(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    metrics.failure = QueryFailure.UNREACHABLE
    await run(parts, [1, 2, 3])
    assert store.rows[0].state is TicketState.OPEN
    assert conditions(mirror.status)["MetricsAvailable"] == "False"
    assert conditions(mirror.status)["LatencyWithinBudget"] == "False"


async def test_postgres_down_queues_transitions_and_loses_none(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    await cycle(monitor, 0)
    store.down = True
    metrics.latency["tikv-1"] = 900.0
    await run(parts, [1])
    assert conditions(mirror.status)["TicketStoreAvailable"] == "False"
    metrics.latency["tikv-1"] = 5.0
    await run(parts, [2])
    assert store.rows == []
    store.down = False
    await run(parts, [3])
    assert [(r.key.store, r.state) for r in store.rows] == [("tikv-1", TicketState.RESOLVED)]
    assert [kind for _, kind, _ in store.history] == ["Pending", "Opened", "Resolved"]
    assert conditions(mirror.status)["TicketStoreAvailable"] == "True"


async def test_a_long_outage_keeps_the_latest_state_and_a_bounded_history(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    spec = {**SPEC, "invariants": {"latency": {"thresholdMs": 100}, "diskUsage": {"enabled": False}}}
    await cycle(monitor, 0, spec=spec)
    store.down = True
    for second in range(1, 400):  # a flapping store: open, resolve, reopen… every cycle
        metrics.latency["tikv-1"] = 900.0 if second % 2 else 5.0
        await cycle(monitor, second, spec=spec)
    assert sum(len(w.history) for w in monitor.ledger.memory(REF.uid).outbox.writes) <= MAX_QUEUED_EVENTS
    store.down = False
    await cycle(monitor, 400, spec=spec)
    kinds = [kind for _, kind, _ in store.history]
    assert kinds[0] == "HistoryTruncated" and len(kinds) == MAX_QUEUED_EVENTS + 1
    assert [(r.key.store, r.state) for r in store.rows] == [("tikv-1", TicketState.OPEN)], "the latest state lands"


async def test_postgres_down_from_the_start_keeps_conditions(parts: Parts) -> None:
    monitor, store, _, mirror = parts
    store.down = True
    await cycle(monitor, 0)
    assert conditions(mirror.status)["TicketStoreAvailable"] == "False"
    assert "LatencyWithinBudget" not in conditions(mirror.status), "no invariant condition is invented without tickets"


async def test_invalid_spec_becomes_a_condition(parts: Parts) -> None:
    monitor, _, _, mirror = parts
    await cycle(monitor, 0, spec={**SPEC, "interval": "never"})
    healthy = condition(mirror.status, "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("Unknown", "InvalidSpec")
    assert "spec.interval" in healthy["message"]


async def test_restart_keeps_the_grace_countdown(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    spec = {**SPEC, "invariants": {"latency": {"thresholdMs": 100, "for": "10s"}, "diskUsage": {"enabled": False}}}
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0, spec=spec)
    assert store.rows[0].state is TicketState.PENDING
    restarted = Monitor(store=store, metrics=metrics, mirror=mirror)
    await restarted.check_cluster(REF, spec, PODS, {}, at(9))
    assert store.rows[0].state is TicketState.PENDING
    await restarted.check_cluster(REF, spec, PODS, {}, at(10))
    assert [r.state for r in store.rows] == [TicketState.OPEN]


async def test_cluster_deleted_resolves_open_tickets(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    assert await monitor.cluster_deleted(REF, at(5)) == 1
    assert store.rows[0].state is TicketState.RESOLVED
    assert store.history[-1][1:] == ("Resolved", "ClusterDeleted")


async def test_orphan_sweep_resolves_tickets_of_clusters_that_no_longer_exist(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    candidates = await store.cluster_uids(None)
    assert await monitor.sweep_orphans(candidates, {REF.uid}, at(1)) == 0
    assert await monitor.sweep_orphans(candidates, set(), at(2)) == 1
    assert store.rows[0].state is TicketState.RESOLVED


async def human(monitor: Monitor, ticket: Ticket, second: int, old: dict[str, Any] | None, **new: Any) -> bool:
    """A human's edit of the ticket's resource, from spec ``old`` (None: kopf had not seen it) to ``new``."""
    return await monitor.human_intent(REF.uid, shown(ticket), old, new, actor="kubernetes:kubectl", now=at(second))


UNTOUCHED = {"hold": False, "acknowledged": False}


async def test_human_hold_keeps_ticket_open_and_ack_keeps_the_hold(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    assert await human(monitor, store.rows[0], 1, UNTOUCHED, hold=True, acknowledged=False)
    assert await human(monitor, store.rows[0], 1, {"hold": True, "acknowledged": False}, hold=True, acknowledged=True)
    metrics.latency["tikv-1"] = 5.0
    await cycle(monitor, 2)
    assert (store.rows[0].state, store.rows[0].hold) == (TicketState.ACKNOWLEDGED, True)
    await human(monitor, store.rows[0], 3, {"hold": True, "acknowledged": True}, hold=False, acknowledged=True)
    await cycle(monitor, 4)
    assert store.rows[0].state is TicketState.RESOLVED


async def test_an_edit_kopf_saw_no_old_spec_for_is_judged_against_postgres(parts: Parts) -> None:
    """Edited before kopf handled the resource's creation (or while the operator was away): old is None."""
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    assert await human(monitor, store.rows[0], 1, None, **UNTOUCHED)  # the operator's own create: nothing changes
    assert (store.rows[0].hold, len(store.history)) == (False, 2)
    assert await human(monitor, store.rows[0], 1, None, hold=False, acknowledged=True)
    assert (store.rows[0].state, store.rows[0].hold) == (TicketState.ACKNOWLEDGED, False)


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"namespace": "other"},  # the same name in another namespace, owned by this cluster
        {"name": "forged-7"},  # a name ending in the id, made by someone who may create Tickets
    ],
)
async def test_an_edit_of_a_resource_that_does_not_show_the_ticket_changes_nothing(
    parts: Parts, elsewhere: dict[str, str]
) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    resource = replace(shown(store.rows[0]), **elsewhere)
    assert not await monitor.human_intent(REF.uid, resource, UNTOUCHED, {"hold": True}, actor="h", now=at(1))
    assert store.rows[0].hold is False


async def test_a_lost_race_re_reads_and_re_decides(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    # Another writer (a second replica, a human through another path) bumps the row behind the cache's back.
    store.rows[0] = replace(store.rows[0], hold=True, version=store.rows[0].version + 1)
    metrics.latency["tikv-1"] = 5.0
    stats = await cycle(monitor, 1)
    assert stats.conflicts == 1
    assert (store.rows[0].state, store.rows[0].hold) == (TicketState.OPEN, True), "the other writer's hold counts"
    assert len([r for r in store.rows if r.state is not TicketState.RESOLVED]) == 1


@pytest.mark.parametrize("seed", range(8))
async def test_dropping_the_cache_at_random_changes_no_outcome(seed: int) -> None:
    """The same faults with and without caches dropped at random moments: the same tickets and history."""

    async def scenario(drop: random.Random | None) -> tuple[list[tuple[str, str, int]], list[str]]:
        store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
        monitor = Monitor(store=store, metrics=metrics, mirror=mirror)
        faults = random.Random(seed)
        for second in range(60):
            if second % 7 == 0:
                metrics.latency["tikv-1"] = faults.choice([5.0, 900.0])
            if second == 20:
                ticket_id = store.rows[0].id if store.rows else None
                if ticket_id is not None:
                    await human(monitor, store.rows[0], second, UNTOUCHED, hold=True, acknowledged=False)
            if drop is not None and drop.random() < 0.3:
                monitor.drop_caches()
            await monitor.check_cluster(REF, SPEC, PODS, mirror.status, at(second))
        rows = [(r.key.store, r.state.value, r.occurrences) for r in store.rows]
        return rows, [kind for _, kind, _ in store.history]

    assert await scenario(random.Random(seed + 100)) == await scenario(None)


async def test_a_refused_ticket_write_is_tried_again_next_cycle(parts: Parts) -> None:
    monitor, _, metrics, mirror = parts
    metrics.latency["tikv-1"] = 900.0
    mirror.refuse_tickets = True
    stats = await cycle(monitor, 0)
    assert "kubernetes_rejected" in stats.errors and mirror.resources == {}
    mirror.refuse_tickets = False
    await cycle(monitor, 1)  # nothing about the ticket changed: only the refusal makes it write again
    assert [s["state"] for s in mirror.resources.values()] == ["open"]


async def test_series_about_other_namespaces_or_stores_are_ignored_and_counted(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    metrics.extra = [
        Sample("tikv-1", 900.0, "other-ns"),  # a same-named pod in another namespace
        Sample("tikv-9", 900.0, "ns"),  # a neighbour's store in this namespace
        Sample(None, 900.0, "ns"),  # a series without the store label
    ]
    stats = await cycle(monitor, 0)
    assert stats.ignored_series == 3
    assert store.rows == []
    assert "ignored 3 series" in condition(mirror.status, "MetricsAvailable")["message"]


async def test_a_cluster_without_pods_asks_nothing_per_store_and_opens_nothing(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency = {"tikv-0": 900.0, "tikv-1": 900.0}  # the neighbour's stores, on the same Prometheus
    stats = await monitor.check_cluster(REF, SPEC, [], {}, at(0))
    assert stats.queries == 0
    assert [r.key.store for r in store.rows] == ["cluster"], "only the missing-stores finding (expected 2, saw 0)"


async def test_an_unexpected_error_is_counted_shown_and_the_next_cycle_runs(parts: Parts) -> None:
    monitor, _, metrics, mirror = parts

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("surprise")

    healthy_query = metrics.query
    metrics.query = broken  # type: ignore[method-assign]
    stats = await cycle(monitor, 0)
    assert "cycle_failed" in stats.errors
    healthy = condition(mirror.status, "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("Unknown", "CheckFailed")
    assert "RuntimeError: surprise" in healthy["message"]
    metrics.query = healthy_query  # type: ignore[method-assign]
    stats = await cycle(monitor, 1, mirror.status)
    assert stats.errors == [] and conditions(mirror.status)["Healthy"] == "True"


async def test_a_hung_cycle_is_cancelled_at_its_deadline_shown_and_the_next_cycle_runs(parts: Parts) -> None:
    monitor, _, metrics, mirror = parts

    async def hangs(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    answering = metrics.query
    metrics.query = hangs  # type: ignore[method-assign]
    stats = await monitor.check_cluster(REF, SPEC, PODS, {}, at(0), deadline=0.05)
    assert stats.errors == ["cycle_timeout"]
    healthy = condition(mirror.status, "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("Unknown", "CheckFailed")
    assert "deadline of 0.05s" in healthy["message"]
    metrics.query = answering  # type: ignore[method-assign]
    stats = await monitor.check_cluster(REF, SPEC, PODS, mirror.status, at(1), deadline=30)
    assert stats.errors == [] and conditions(mirror.status)["Healthy"] == "True"


async def test_a_timeout_met_inside_the_cycle_is_a_failure_not_the_deadline(parts: Parts) -> None:
    monitor, _, metrics, mirror = parts

    async def times_out(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("a client's own timeout")

    metrics.query = times_out  # type: ignore[method-assign]
    for deadline in (None, 30.0):
        stats = await monitor.check_cluster(REF, SPEC, PODS, {}, at(0), deadline=deadline)
        assert stats.errors == ["cycle_failed"]
        assert "TimeoutError: a client's own timeout" in condition(mirror.status, "Healthy")["message"]


async def test_a_refused_status_is_replaced_by_one_that_says_why(parts: Parts) -> None:
    monitor, _, _, mirror = parts
    mirror.refuse_status = True
    stats = await cycle(monitor, 0)
    assert "kubernetes_rejected" in stats.errors
    healthy = condition(mirror.status, "Healthy")
    assert healthy["reason"] == "CheckFailed" and "422" in healthy["message"]
    mirror.refuse_status = False
    await cycle(monitor, 1, mirror.status)
    assert conditions(mirror.status)["Healthy"] == "True"


async def test_an_api_server_outage_degrades_and_the_first_cycle_after_it_catches_up(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    await cycle(monitor, 0)
    mirror.down = True
    metrics.latency["tikv-1"] = 900.0
    stats = await cycle(monitor, 1, mirror.status)
    assert "kubernetes_unavailable" in stats.errors
    assert [r.state for r in store.rows] == [TicketState.OPEN], "Postgres records it during the outage"
    mirror.down = False
    await cycle(monitor, 2, mirror.status)
    assert list(mirror.resources) == ["tikv-latency-tikv-1-1"]
    assert conditions(mirror.status)["LatencyWithinBudget"] == "False"


async def test_an_infinite_value_violates_and_is_stored_as_text(parts: Parts) -> None:
    monitor, store, metrics, mirror = parts
    metrics.latency["tikv-1"] = float("inf")
    await cycle(monitor, 0)
    assert store.rows[0].snapshot["value"] == "+Inf"
    assert mirror.resources["tikv-latency-tikv-1-1"]["snapshot"].startswith("value +Inf")


async def test_queries_per_cycle_do_not_grow_with_stores(parts: Parts) -> None:
    monitor, _, _, _ = parts
    few = await monitor.check_cluster(REF, SPEC, PODS, {}, at(0))
    many = [StorePod(f"tikv-{i}", "Running", True, TIKV) for i in range(50)]
    stats = await monitor.check_cluster(REF, SPEC, many, {}, at(1))
    assert stats.queries == few.queries == 3


async def test_only_pods_matching_the_selector_are_stores(parts: Parts) -> None:
    monitor, store, _, mirror = parts
    neighbours = [StorePod(f"other-{i}", "Pending", False, (("app", "other"),)) for i in range(5)]
    await monitor.check_cluster(REF, SPEC, [*PODS, *neighbours], {}, at(0))
    assert mirror.status["stores"] == {"observed": 2, "ready": 2, "expected": 2, "summary": "2/2 ready"}
    assert store.rows == [], "a neighbour's pods never open tickets here"


async def test_a_human_edit_that_keeps_losing_races_is_retried_never_reported_applied(parts: Parts) -> None:
    monitor, store, metrics, _ = parts
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 0)
    ticket_id = store.rows[0].id
    assert ticket_id is not None

    def always_lose(write: TicketWrite) -> bool:
        store.rows[0] = replace(store.rows[0], version=store.rows[0].version + 1)  # another writer, every time
        return False

    store._apply = always_lose  # type: ignore[method-assign]
    with pytest.raises(TicketStoreUnavailable, match="lost 3 write races"):
        await human(monitor, store.rows[0], 1, UNTOUCHED, hold=True, acknowledged=False)


class FakeEvidence:
    """The API server's view of the store pods: tikv-1 was killed for its memory."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        self.asked.append((namespace, pod))
        status = {"name": "tikv", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                  "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}  # fmt: skip
        body = {"metadata": {"name": pod}, "spec": {"containers": [{"name": "tikv"}]},
                "status": {"phase": "Running", "containerStatuses": [status]}}  # fmt: skip
        return pod_evidence(body, [], None, unreachable=["node n: not found"])

    async def pod_address(self, namespace: str, pod: str, port_name: str, *, timeout: float) -> str | None:
        self.asked.append((namespace, pod))
        return "10.0.0.9:2379" if port_name == "client" else None


class BrokenEvidence(FakeEvidence):
    """An evidence source with a bug: every read raises."""

    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        raise KeyError("status")


async def test_a_gathering_that_raises_is_logged_and_the_ticket_stays_open(caplog: pytest.LogCaptureFixture) -> None:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, evidence=BrokenEvidence())
    await cycle(monitor, 0)
    metrics.latency["tikv-1"] = 900.0
    await cycle(monitor, 1, mirror.status)
    await monitor.evidence_gathered()
    (row,) = store.rows
    assert row.state is TicketState.OPEN
    errors = [r for r in caplog.records if r.getMessage() == "Could not gather the evidence of a Ticket"]
    assert len(errors) == 1 and "KeyError" in errors[0].__dict__["error"], caplog.text


async def test_an_opened_ticket_gets_evidence_and_a_diagnosis_without_the_cycle_waiting() -> None:
    store, metrics, mirror, evidence = FakeStore(), FakeMetrics(), FakeMirror(), FakeEvidence()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, evidence=evidence)
    await cycle(monitor, 0)
    metrics.latency["tikv-1"] = 900.0
    metrics.evidence = {
        '"tikv-1",type!="kv_gc"': [Sample("kv_get", 850.0), Sample("coprocessor", 40.0)],
        '"tikv-0",type!="kv_gc"': [Sample("kv_get", 0.9), Sample("coprocessor", 35.0)],
    }
    await cycle(monitor, 1, mirror.status)
    await monitor.evidence_gathered()
    assert evidence.asked == [("ns", "tikv-1")]
    (row,) = store.rows
    assert row.state is TicketState.DIAGNOSED
    assert row.id is not None
    _, findings, summary, diagnosis = store.evidence[row.id]
    assert [f["rule"] for f in findings] == ["memory-limit", "slow-store"]
    assert (diagnosis or "").startswith("memory limit hit")
    assert summary == (
        "pod Running, 2 restarts; last exit OOMKilled (137); slowest kv_get p99 850.0 ms (others 0.9 ms);"
        " slow score 0; not reachable: node n: not found"
    )
    gathered = store.evidence[row.id][0]
    latency_item = next(i for i in gathered["prometheus"]["items"] if i["name"] == "latency_by_type")
    assert latency_item["status"] == "ok" and "/graph?g0.expr=histogram_quantile" in latency_item["graph"]
    assert [q for q in metrics.queries if "tikv_grpc_msg_fail_total" in q], "failures asked for a latency ticket"
    assert [kind for _, kind, _ in store.history][-1] == "Diagnosed"
    await cycle(monitor, 2, mirror.status)
    await monitor.evidence_gathered()
    assert evidence.asked == [("ns", "tikv-1")], "gathered once per opening, not per cycle"


async def test_pds_count_is_named_by_its_evidence_and_linked_to_the_store_ticket_that_explains_it() -> None:
    store, metrics, mirror, evidence = FakeStore(), FakeMetrics(), FakeMirror(), FakeEvidence()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, evidence=evidence)
    pd_pod = StorePod("pd-0", "Running", True, (("app", "pd"),))
    spec = {**SPEC, "pd": {"selector": {"matchLabels": {"app": "pd"}}}}
    metrics.latency["tikv-1"] = 900.0
    metrics.cluster = {"pd_cluster_status": 1.0}  # PD counts one store slow
    metrics.evidence = {
        'store!=""': [Sample("store_slow_count", 1.0, labels=(("store", "4"),))],
        "pd_scheduler_store_status": [Sample("4", 1.0, labels=(("address", "tikv-1.tikv-peer.ns.svc:20160"),))],
    }
    for second in (0, 1, 2):
        await observed_cycle(monitor, REF, spec, [*PODS, pd_pod], at(second))
        await monitor.evidence_gathered()
    rows = {r.key.invariant: r for r in store.rows}
    latency, pd = rows["latency"], rows["pdStores"]
    assert pd.counted_stores == {"tikv-1": ["slow"]}
    assert pd.cause_id == latency.id and latency.cause_id is None
    assert ("ns", "pd-0") not in evidence.asked and ("ns", "cluster") not in evidence.asked, "no pod for PD's count"
    assert evidence.asked.count(("ns", "tikv-1")) == 2, "the latency ticket's pod, and the pod of the store PD counts"
    assert pd.id is not None
    gathered, findings, _, _ = store.evidence[pd.id]
    assert list(gathered["counted"]) == ["tikv-1"]
    assert [(f["rule"], f["store"]) for f in findings] == [("memory-limit", "tikv-1")], "diagnosed from its own view"
    shown = {o["status"]["invariant"]: o["status"] for o in mirror.objects.values()}
    assert shown["pdStores"]["causeTicketId"] == latency.id
    assert shown["pdStores"]["countedStores"] == "tikv-1 slow"


class FakeTikvStatus:
    """TiKV's status ports: a store's answers only while it runs (``running``); the block cache is unset."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.asked: list[str] = []

    async def tikv_config(self, address: str, *, timeout: float) -> dict[str, Any]:
        self.asked.append(address)
        if address not in self.running:
            return {"readable": False, "why": f"http://{address}/config: ClientConnectorError"}
        return tikv_config_evidence({"storage": {"block-cache": {"capacity": None}}})

    async def pd_stores(
        self, address: str, pods: Sequence[str], first: str | None, *, timeout: float
    ) -> dict[str, Any]:
        """PD's store API: tikv-1 Disconnected (no heartbeat), the others Up; unreachable unless ``running``."""
        self.asked.append(address)
        if address not in self.running:
            return {"readable": False, "why": f"http://{address}/pd/api/v1/stores: ClientConnectorError"}
        stores = [{"store": {"id": n, "address": f"tikv-{n}.basic-tikv-peer.ns.svc:20160",
                             "state_name": "Disconnected" if n == 1 else "Up"},
                   "status": {"capacity": "100GiB", "available": "50GiB", "slow_score": 1}} for n in range(3)]  # fmt: skip
        return pd_stores_evidence({"count": 3, "stores": stores}, pods, first)


class FakeReadyEvidence(FakeEvidence):
    """Every store pod Running and Ready: a store PD does not hear from is hung, not crashed."""

    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        self.asked.append((namespace, pod))
        status = {"name": "tikv", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": "t"}}}
        body = {"metadata": {"name": pod}, "spec": {"containers": [{"name": "tikv"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                           "containerStatuses": [status]}}  # fmt: skip
        return pod_evidence(body, [], None)


@pytest.mark.parametrize("reachable", [True, False])
async def test_an_older_pds_count_is_named_by_its_store_api_and_the_hung_store_diagnosed(reachable: bool) -> None:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    evidence, status = FakeReadyEvidence(), FakeTikvStatus()
    if reachable:
        status.running.add("10.0.0.9:2379")
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, evidence=evidence, tikv=status)
    pd_pod = StorePod("pd-0", "Running", True, (("app", "pd"),))
    spec = {**SPEC, "pd": {"selector": {"matchLabels": {"app": "pd"}}}}
    metrics.cluster = {"pd_cluster_status": 1.0}  # an older PD: a count, no store named by its series
    for second in (0, 1, 2):
        await observed_cycle(monitor, REF, spec, [*PODS, pd_pod], at(second))
        await monitor.evidence_gathered()
    (pd,) = store.rows
    assert pd.id is not None
    gathered, findings, summary, _ = store.evidence[pd.id]
    assert status.asked == ["10.0.0.9:2379"], "one PD pod's store API, at the port it declares"
    if not reachable:
        assert "not reachable: PD's store API: http://10.0.0.9:2379/pd/api/v1/stores: ClientConnectorError" in summary
        assert findings == [] and "counted" not in gathered, "nothing guessed"
        return
    assert pd.counted_stores == {"tikv-1": ["disconnected"]}
    assert list(gathered["counted"]) == ["tikv-1"]
    assert [(f["rule"], f["store"]) for f in findings] == [("store-hung", "tikv-1")]
    assert "tikv-1: PD API: Disconnected" in summary
    assert evidence.asked.count(("ns", "pd-0")) == 1 and evidence.asked.count(("ns", "tikv-1")) == 1


class FakeOomEvidence(FakeEvidence):
    """tikv-1 killed for its memory, with an IP and TiKV's status port; Ready as ``ready`` says."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = False

    async def pod_evidence(self, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
        self.asked.append((namespace, pod))
        state = {"running": {"startedAt": "t"}} if self.ready else {"waiting": {"reason": "CrashLoopBackOff"}}
        status = {"name": "tikv", "ready": self.ready, "restartCount": 1, "state": state,
                  "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}  # fmt: skip
        body = {"metadata": {"name": pod},
                "spec": {"containers": [{"name": "tikv", "resources": {"limits": {"memory": "2Gi"}},
                                         "ports": [{"name": "status", "containerPort": 20180}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.2", "containerStatuses": [status]}}  # fmt: skip
        node = {"metadata": {"name": "n"}, "status": {"capacity": {"memory": "64Gi"}, "conditions": []}}
        return pod_evidence(body, [], node)


async def test_tikvs_config_is_read_for_a_store_killed_for_its_memory_and_again_once_it_runs() -> None:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    evidence, tikv = FakeOomEvidence(), FakeTikvStatus()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, evidence=evidence, tikv=tikv)
    spec = {**SPEC, "invariants": {**SPEC["invariants"], "storesReady": {"for": "0s", "clearFor": "5s"}}}
    down = [PODS[0], StorePod("tikv-1", "Running", False, TIKV)]
    await observed_cycle(monitor, REF, spec, down, at(0))
    await monitor.evidence_gathered()
    (row,) = store.rows
    assert row.id is not None and row.state is TicketState.DIAGNOSED
    _, findings, summary, _ = store.evidence[row.id]
    assert tikv.asked == ["10.0.0.2:20180"]
    assert "TiKV's block cache is not known: its /config was not read" in findings[0]["details"]
    assert "not reachable: TiKV's /config: http://10.0.0.2:20180/config: ClientConnectorError" in summary
    await observed_cycle(monitor, REF, spec, down, at(1))
    await monitor.evidence_gathered()
    assert tikv.asked == ["10.0.0.2:20180"], "read once while the store is down, not every cycle"
    evidence.ready = True
    tikv.running.add("10.0.0.2:20180")
    await observed_cycle(monitor, REF, spec, PODS, at(2))  # Ready again: the ticket starts clearing
    await monitor.evidence_gathered()
    assert tikv.asked == ["10.0.0.2:20180", "10.0.0.2:20180"]
    kept, findings, _, diagnosis = store.evidence[row.id]
    assert kept["tikvConfig"]["readable"] is True
    assert findings[0]["value"] == "OOMKilled (exit code 137); block cache capacity unset"
    assert "sized for the node, not the pod" in (diagnosis or "")
    await observed_cycle(monitor, REF, spec, PODS, at(3))
    await monitor.evidence_gathered()
    assert len(tikv.asked) == 2, "gathered again once, when it started clearing"


async def test_tikvs_config_is_read_again_when_the_ticket_resolves_at_once() -> None:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    evidence, tikv = FakeOomEvidence(), FakeTikvStatus()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, evidence=evidence, tikv=tikv)
    spec = {**SPEC, "invariants": {**SPEC["invariants"], "storesReady": {"for": "0s"}}}  # clearFor 0s
    await observed_cycle(monitor, REF, spec, [PODS[0], StorePod("tikv-1", "Running", False, TIKV)], at(0))
    await monitor.evidence_gathered()
    evidence.ready = True
    tikv.running.add("10.0.0.2:20180")
    await observed_cycle(monitor, REF, spec, PODS, at(1))
    await monitor.evidence_gathered()
    (row,) = store.rows
    assert row.id is not None and row.state is TicketState.RESOLVED
    _, findings, _, _ = store.evidence[row.id]
    assert findings[0]["value"] == "OOMKilled (exit code 137); block cache capacity unset"


async def test_a_sharded_replica_shows_on_the_status_that_it_checks_the_cluster_and_for_which_shard() -> None:
    holders = {"replica": "operator-k8s-a", "shard": 7}
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    settings = ServiceSettings(checked_by=lambda uid: dict(holders) if uid == REF.uid else None)
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror, settings=settings)
    await cycle(monitor, 0)
    assert mirror.status["checkedBy"] == {"replica": "operator-k8s-a", "shard": 7}
    stats = await cycle(monitor, 1, mirror.status)
    assert not stats.status_written, "the same holder writes nothing again"
    holders["replica"] = "operator-k8s-b"  # the shard moved: its new holder's first cycle says so
    await cycle(monitor, 2, mirror.status)
    assert mirror.status["checkedBy"] == {"replica": "operator-k8s-b", "shard": 7}


async def test_one_process_checking_every_cluster_shows_no_holder(parts: Parts) -> None:
    monitor, _, _, mirror = parts
    await cycle(monitor, 0)
    assert "checkedBy" not in mirror.status
