"""Observe, don't remember: what Kubernetes shows is a diff of Postgres against what the watch observes.

Each test reproduces a defect found on dfbc121 (the issue names them) against the fakes, which apply merge patches
as the API server does (a key is removed only when the patch says null).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from operator_k8s.adapters.kube import observed_ticket
from operator_k8s.domain.observations import QueryFailure, StorePod, samples_of
from operator_k8s.domain.tickets import TicketState
from operator_k8s.domain.vocabulary import INTENT_ANNOTATION, Label
from operator_k8s.handlers import fold_ticket_edit
from operator_k8s.service import Monitor
from tests.unit.builders import at
from tests.unit.cycles import PODS, REF, SPEC, TIKV, Parts, condition, conditions, cycle, run
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore, observed_cycle

NAME = "tikv-latency-tikv-1-1"
FAST = {**SPEC, "invariants": {"latency": {"thresholdMs": 100, "clearFor": "0s"}, "diskUsage": {"enabled": False}}}


async def open_ticket(parts: Parts, spec: dict[str, Any] | None = None) -> None:
    """tikv-1 slow from second 0: its latency ticket is open (and shown) by second 3."""
    _, store, metrics, mirror = parts
    metrics.latency["tikv-1"] = 900.0
    await run(parts, [0, 1, 2, 3], spec)
    assert [(r.key.store, r.state) for r in store.rows] == [("tikv-1", TicketState.OPEN)]
    assert mirror.resources[NAME]["state"] == "open"


async def test_a_reopened_ticket_shows_no_resolved_at(parts: Parts) -> None:
    """dfbc121 merge-patched the desired status, which cannot remove a key: a reopen kept the old resolvedAt."""
    _, store, metrics, mirror = parts
    await open_ticket(parts, FAST)
    metrics.latency["tikv-1"] = 5.0
    await run(parts, [4], FAST)
    assert "resolvedAt" in mirror.resources[NAME]
    metrics.latency["tikv-1"] = 900.0
    await run(parts, [5], FAST)
    assert store.rows[0].state is TicketState.OPEN and store.rows[0].occurrences == 2
    assert mirror.resources[NAME]["state"] == "open"
    assert "resolvedAt" not in mirror.resources[NAME]
    assert mirror.objects[NAME]["metadata"]["labels"][Label.STATE] == "open"


async def test_stale_cluster_status_keys_are_removed(parts: Parts) -> None:
    """A status key the cycle no longer writes (store counts of an invalid spec) is removed, not left stale."""
    monitor, _, _, mirror = parts
    await run(parts, [0])
    assert "stores" in mirror.status
    await cycle(monitor, 1, spec={**SPEC, "interval": "never"})
    assert "stores" not in mirror.status and "openTickets" not in mirror.status


async def test_a_restart_with_500_open_tickets_writes_nothing_when_nothing_changed() -> None:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    metrics.latency = {f"tikv-{n}": 900.0 for n in range(500)}
    pods = [StorePod(f"tikv-{n}", "Running", True, TIKV) for n in range(500)]
    spec = {**SPEC, "stores": {"selector": {"matchLabels": {"app": "tikv"}}}}
    first = Monitor(store=store, metrics=metrics, mirror=mirror)
    for second in range(3):
        await observed_cycle(first, REF, spec, pods, at(second))
    assert len(mirror.objects) == 500
    before = mirror.writes
    restarted = Monitor(store=store, metrics=metrics, mirror=mirror)
    stats = await observed_cycle(restarted, REF, spec, pods, at(30))
    assert mirror.writes == before, "a restart observes the Tickets: nothing differs, nothing is written"
    assert stats.ticket_writes == 0


async def test_a_state_change_costs_exactly_one_ticket_write(parts: Parts) -> None:
    """Labels and status in one merge patch (no status subresource; no diff-base annotation)."""
    _, _, metrics, mirror = parts
    await open_ticket(parts, FAST)
    before = mirror.writes
    metrics.latency["tikv-1"] = 5.0
    await run(parts, [4], FAST)
    assert mirror.resources[NAME]["state"] == "resolved"
    assert mirror.writes == before + 1


@pytest.mark.parametrize(
    "tamper",
    [
        {"status": {"state": "resolved"}},
        {"status": {"state": None, "occurrences": "many", "extra": 1}},
        {"metadata": {"ownerReferences": None}},
        {"metadata": {"labels": {Label.STATE: "resolved", Label.CLUSTER_UID: None}}},
    ],
    ids=["state", "garbage", "owner-removed", "labels"],
)
async def test_a_tampered_ticket_is_restored_within_one_interval(parts: Parts, tamper: dict[str, Any]) -> None:
    _, _, _, mirror = parts
    await open_ticket(parts)
    wanted = mirror.objects[NAME]
    mirror.human_patch(NAME, tamper)
    await run(parts, [4])
    restored = mirror.objects[NAME]
    assert restored["status"] == wanted["status"] | {"lastSeen": restored["status"]["lastSeen"]}
    assert restored["metadata"]["labels"] == wanted["metadata"]["labels"]
    assert restored["metadata"]["ownerReferences"] == wanted["metadata"]["ownerReferences"]


async def test_a_hold_set_after_the_owner_reference_was_removed_is_honoured(parts: Parts) -> None:
    """dfbc121 ignored it (the Ticket was no longer 'the operator's') and auto-resolved a held ticket."""
    _, store, metrics, mirror = parts
    await open_ticket(parts, FAST)
    mirror.human_patch(NAME, {"metadata": {"ownerReferences": None}})
    mirror.human_patch(NAME, {"spec": {"hold": True}})
    metrics.latency["tikv-1"] = 5.0
    await run(parts, [4, 5, 6], FAST)
    assert store.rows[0].hold and store.rows[0].state is TicketState.OPEN
    assert ("Held" in [kind for _, kind, _ in store.history]) and mirror.specs[NAME]["hold"] is True


async def test_tickets_deleted_with_their_crd_are_rebuilt_held_one_included(parts: Parts) -> None:
    _, store, metrics, mirror = parts
    metrics.latency = {"tikv-0": 900.0, "tikv-1": 900.0}
    await run(parts, [0, 1, 2, 3], FAST)
    held, other = sorted(mirror.objects)
    mirror.human_patch(held, {"spec": {"hold": True}})
    await run(parts, [4], FAST)
    assert [r.hold for r in store.rows] == [True, False]
    mirror.objects.clear()  # the CRD deleted and re-created: every Ticket gone
    await run(parts, [5], FAST)
    assert sorted(mirror.objects) == [held, other]
    assert mirror.specs[held]["hold"] is True and mirror.resources[held]["state"] == "open"


async def test_intent_changed_elsewhere_shows_on_the_ticket_and_is_not_taken_for_an_edit(parts: Parts) -> None:
    """The CLI or another replica set a hold in Postgres: the Ticket's spec is corrected, the hold kept."""
    _, store, _, mirror = parts
    await open_ticket(parts)
    store.rows[0] = replace(store.rows[0], hold=True, version=store.rows[0].version + 1)
    await run(parts, [4])
    assert mirror.specs[NAME]["hold"] is True
    assert store.rows[0].hold, "the Ticket's old spec (hold false) was not folded back as an edit"
    assert '"hold": true' in mirror.objects[NAME]["metadata"]["annotations"][INTENT_ANNOTATION]


async def test_a_human_edit_during_a_postgres_outage_is_applied_when_it_returns(parts: Parts) -> None:
    """Not lost across a restart either: the edit stays on the Ticket until Postgres holds it."""
    _, store, metrics, mirror = parts
    await open_ticket(parts, FAST)
    store.down = True
    mirror.human_patch(NAME, {"spec": {"hold": True}})
    metrics.latency["tikv-1"] = 5.0
    await run(parts, [4, 5], FAST)
    restarted = Monitor(store=store, metrics=metrics, mirror=mirror)
    store.down = False
    for second in (6, 7, 8):
        await observed_cycle(restarted, REF, FAST, PODS, at(second))
    assert store.rows[0].hold and store.rows[0].state is TicketState.OPEN
    assert [(kind, reason) for _, kind, reason in store.history if kind == "Held"] == [("Held", "hold set to True")]
    assert mirror.resources[NAME]["state"] == "open"


async def test_an_invariant_removed_releases_its_held_ticket_on_both_sides(parts: Parts) -> None:
    _, store, _, mirror = parts
    await open_ticket(parts)
    mirror.human_patch(NAME, {"spec": {"hold": True}})
    await run(parts, [4])
    without = {**SPEC, "invariants": {"latency": {"enabled": False}, "diskUsage": {"enabled": False}}}
    await run(parts, [5], without)
    assert store.rows[0].state is TicketState.RESOLVED and not store.rows[0].hold
    kinds = [kind for _, kind, _ in store.history]
    assert kinds[-2:] == ["Released", "Resolved"]
    assert mirror.specs[NAME]["hold"] is False and mirror.resources[NAME]["state"] == "resolved"


@pytest.mark.parametrize(
    "last_check",
    ["2026-01-01T12:00:00.5Z", "2026-01-01T12:00:00+00:00", "2026-01-01T13:00:00+01:00", "yesterday", 17, None, []],
)
async def test_a_foreign_status_never_stops_a_cycle(parts: Parts, last_check: Any) -> None:
    """dfbc121 parsed lastCheckTime with one format, outside the cycle's guard: every cycle raised for ever."""
    monitor, _, _, mirror = parts
    foreign = {
        "lastCheckTime": last_check,
        "conditions": [{"type": "Healthy", "status": "True", "lastTransitionTime": last_check}, "junk", 3],
        "stores": "many",
        "unknownKey": {"x": 1},
    }
    stats = await cycle(monitor, 0, foreign)
    assert stats.errors == [] and stats.status_written
    assert conditions(mirror.status)["Healthy"] == "True"
    assert "unknownKey" not in mirror.status and isinstance(mirror.status["stores"], dict)


async def test_a_status_conflict_rereads_and_writes_the_diff_keeping_transition_times(parts: Parts) -> None:
    """A status written since the watch's copy (a peer, or our own write not yet seen): the write conflicts, the
    status is read again, and the diff from it is written; a condition whose status did not flip keeps the time
    the fresh status shows, and nothing is written when the fresh status already says it all."""
    monitor, _, metrics, mirror = parts
    await run(parts, [0])
    healthy_since = condition(mirror.status, "Healthy")["lastTransitionTime"]
    stale = {"conditions": [{"type": "Healthy", "status": "True", "lastTransitionTime": "2026-01-01T11:00:00Z"}]}
    stats = await monitor.check_cluster(REF, SPEC, PODS, stale, at(30), tickets_shown=mirror.observed(),
                                        resource_version="1")  # fmt: skip
    assert stats.conflicts == 1 and not stats.status_written, "the fresh status already shows this cycle's verdict"
    metrics.latency["tikv-1"] = 900.0
    stats = await monitor.check_cluster(REF, SPEC, PODS, stale, at(31), tickets_shown=mirror.observed(),
                                        resource_version="1")  # fmt: skip
    assert stats.conflicts == 1 and stats.status_written and stats.errors == []
    assert condition(mirror.status, "StoresReady")["lastTransitionTime"] == healthy_since


async def test_a_selection_of_zero_pods_is_not_healthy(parts: Parts) -> None:
    monitor, _, _, mirror = parts
    spec = {**SPEC, "stores": {"selector": {"matchLabels": {"app": "tivk"}}}}  # a typo, no expected count
    await observed_cycle(monitor, REF, spec, [], at(0))
    ready = condition(mirror.status, "StoresReady")
    assert (ready["status"], ready["reason"]) == ("Unknown", "NoStoresSelected")
    assert "app=tivk" in ready["message"]
    assert conditions(mirror.status)["Healthy"] == "Unknown"


async def test_a_list_valued_store_label_is_survived_and_stores_ready_still_judged(parts: Parts) -> None:
    """dfbc121 raised TypeError on every cycle and never ticketed a store that went down meanwhile. The adapter
    reads answers with ``samples_of`` (the bad series counted, never judged); storesReady is judged from the pods
    whatever the queries return, failures included."""
    monitor, store, metrics, mirror = parts
    samples, malformed = samples_of([{"metric": {"pod": ["tikv-0"]}, "value": [0, "1"]}], "pod", "namespace")
    assert (samples, malformed) == ((), 1)
    metrics.failure = QueryFailure.ERROR
    down = [PODS[0], StorePod("tikv-1", "Failed", False, TIKV)]
    for second in (0, 1, 2):
        stats = await observed_cycle(monitor, REF, SPEC, down, at(second))
        assert "cycle_failed" not in stats.errors
    assert [(r.key.invariant, r.key.store, r.state) for r in store.rows] == [
        ("storesReady", "tikv-1", TicketState.OPEN)
    ]
    assert conditions(mirror.status)["StoresReady"] == "False"


async def test_drop_caches_at_every_await_point_changes_no_outcome() -> None:
    """The cache may be dropped at any point: a run that drops it before every call to Postgres and Kubernetes
    ends with the same rows, Tickets and status as an undisturbed one."""

    async def scenario(disturb: bool) -> tuple[Any, ...]:
        store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
        monitor = Monitor(store=store, metrics=metrics, mirror=mirror)
        if disturb:
            for port, names in ((store, ["sync"]), (mirror, ["create", "patch", "delete", "write_status"])):
                for name in names:
                    original = getattr(port, name)

                    async def dropping(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                        monitor.drop_caches()
                        result = await _original(*args, **kwargs)
                        monitor.drop_caches()
                        return result

                    setattr(port, name, dropping)
        for second in range(12):
            metrics.latency["tikv-1"] = 900.0 if 2 <= second < 6 or second >= 9 else 5.0
            if second == 7:
                mirror.human_patch(NAME, {"spec": {"acknowledged": True}})
            await observed_cycle(monitor, REF, FAST, PODS, at(second))
        rows = [(r.key, r.state, r.occurrences, r.hold, r.acknowledged, r.resolved_at) for r in store.rows]
        tickets = {n: (o["metadata"]["labels"], o["spec"], o["status"]) for n, o in mirror.objects.items()}
        status = {k: v for k, v in mirror.status.items() if k != "lastCheckTime"}
        return rows, tickets, status, store.history

    undisturbed = await scenario(False)
    assert undisturbed[0][0][1].active and undisturbed[0][0][2] == 2, "the scenario reopens"
    assert await scenario(True) == undisturbed


async def test_a_lasting_violation_whose_value_drifts_is_written_once_a_minute(parts: Parts) -> None:
    """Its message carries the value: shown to the minute, like lastSeen, not one write per cycle."""
    _, _, metrics, mirror = parts
    await open_ticket(parts)
    before, opening = mirror.writes, mirror.resources[NAME]["message"]
    for second in range(4, 124):
        metrics.latency["tikv-1"] = 900.0 + second  # a new value, so a new message, every cycle
        await cycle(parts[0], second, mirror.status)
    assert 1 <= mirror.writes - before <= 2, "two minutes of a drifting value: a write a minute"
    assert mirror.resources[NAME]["message"] != opening, "the figures are refreshed, a minute at a time"


class GatedMetrics(FakeMetrics):
    """Prometheus that holds every query until the test opens the gate (a check in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def query(self, *args: Any, **kwargs: Any) -> Any:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        return await super().query(*args, **kwargs)


async def test_a_check_in_flight_when_its_cluster_is_deleted_reopens_nothing() -> None:
    """The deletion waits for the check's lock and then retires the cluster, so the check (or one still waiting
    for the lock) writes nothing: found by review, where the deletion dropped the lock first."""
    store, metrics, mirror = FakeStore(), GatedMetrics(), FakeMirror()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror)
    metrics.latency["tikv-0"] = 500.0
    for second in range(3):
        await cycle(monitor, second, mirror.status)
    metrics.gate = asyncio.Event()
    in_flight = asyncio.create_task(cycle(monitor, 10, mirror.status))
    waiting = asyncio.create_task(cycle(monitor, 11, mirror.status))
    await metrics.entered.wait()
    deletion = asyncio.create_task(monitor.cluster_deleted(REF, at(12)))
    metrics.gate.set()
    assert await deletion == 1
    await asyncio.gather(in_flight, waiting)
    assert [r.state for r in store.rows] == [TicketState.RESOLVED]
    assert [kind for _, kind, _ in store.history][-1] == "Resolved" and "TicketReopened" not in {
        e.reason for e in mirror.posted
    }
    assert monitor.ledger.memories == {}


async def test_an_edit_undone_before_the_next_check_is_not_lost(parts: Parts) -> None:
    """The edit's event folds it and shows it as stored at once, so undoing it is an edit too (found by review:
    the stale annotation equalled the undone spec, and the next check wrote the first edit back)."""
    monitor, store, _, mirror = parts
    await open_ticket(parts)
    mirror.human_patch(NAME, {"spec": {"hold": True}})
    await fold_ticket_edit(monitor, observed_ticket(mirror.objects[NAME]))
    assert store.rows[0].hold
    mirror.human_patch(NAME, {"spec": {"hold": False}})
    await fold_ticket_edit(monitor, observed_ticket(mirror.objects[NAME]))
    assert not store.rows[0].hold
    await run(parts, [4])
    assert mirror.specs[NAME]["hold"] is False and not store.rows[0].hold


class ContendedStore(FakeStore):
    """Another writer bumps every row just before each write lands: every compare-and-set loses."""

    contend = False

    async def sync(self, cluster_uid: str, writes: Any, horizon: Any, *, deadline: float) -> Any:
        if self.contend and writes:
            self.rows = [replace(r, version=r.version + 1) for r in self.rows]
        return await super().sync(cluster_uid, writes, horizon, deadline=deadline)


async def test_a_decision_that_loses_every_race_never_writes_an_edit_back() -> None:
    store, metrics, mirror = ContendedStore(), FakeMetrics(), FakeMirror()
    monitor = Monitor(store=store, metrics=metrics, mirror=mirror)
    parts = (monitor, store, metrics, mirror)
    await open_ticket(parts)
    mirror.human_patch(NAME, {"spec": {"acknowledged": True}})
    store.contend = True
    stats = await cycle(monitor, 4, mirror.status)
    assert stats.conflicts == 3 and mirror.specs[NAME]["acknowledged"] is True, "the edit stays on the Ticket"
    store.contend = False
    await run(parts, [5])
    assert store.rows[0].acknowledged and mirror.specs[NAME]["acknowledged"] is True


def test_an_edit_is_credited_to_its_human_even_in_the_operators_second() -> None:
    """managedFields times have a second's resolution: a tie with the operator's write is the human's edit (found by
    the stranger's review, where such edits were recorded as the operator's)."""
    body = {"metadata": {"name": "t-1", "namespace": "ns", "managedFields": [
        {"manager": "kubectl-patch", "time": "2026-12-06T21:00:00Z", "fieldsV1": {"f:spec": {"f:note": {}}}},
        {"manager": "operator-k8s", "time": "2026-12-06T21:00:00Z", "fieldsV1": {"f:spec": {}, "f:status": {}}},
    ]}}  # fmt: skip
    assert observed_ticket(body).spec_actor == "kubernetes:kubectl-patch"
    only_ours = {"metadata": {"name": "t-1", "managedFields": [body["metadata"]["managedFields"][1]]}}
    assert observed_ticket(only_ours).spec_actor == "kubernetes:operator-k8s"


async def test_an_acknowledgement_is_shown_in_one_write(parts: Parts) -> None:
    monitor, store, _, mirror = parts
    await open_ticket(parts)
    mirror.human_patch(NAME, {"spec": {"acknowledged": True}})
    before = mirror.writes
    await fold_ticket_edit(monitor, observed_ticket(mirror.objects[NAME]))
    await run(parts, [4])
    assert store.rows[0].state is TicketState.ACKNOWLEDGED
    assert mirror.resources[NAME]["state"] == "acknowledged" and mirror.writes == before + 1


async def test_removing_the_expected_count_ends_its_ticket_and_zero_pods_are_unknown(parts: Parts) -> None:
    monitor, store, _, mirror = parts
    spec = {**SPEC, "stores": {"selector": {"matchLabels": {"app": "tivk"}}, "expected": 3}}
    for second in range(3):
        await observed_cycle(monitor, REF, spec, [], at(second))
    assert [(r.key.store, r.state) for r in store.rows] == [("cluster", TicketState.OPEN)]
    without = {**spec, "stores": {"selector": {"matchLabels": {"app": "tivk"}}}}
    for second in range(3, 6):
        await observed_cycle(monitor, REF, without, [], at(second))
    assert store.rows[0].state is TicketState.RESOLVED
    assert store.history[-1][1:] == ("Resolved", "No expected store count is set any more for 0s")
    ready, latency = condition(mirror.status, "StoresReady"), condition(mirror.status, "LatencyWithinBudget")
    assert (ready["status"], ready["reason"]) == ("Unknown", "NoStoresSelected")
    assert (latency["status"], latency["reason"]) == ("Unknown", "NoStoresSelected"), "nothing judged is not health"
