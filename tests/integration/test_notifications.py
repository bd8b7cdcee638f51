"""Notifications on the real dependencies: the Postgres delivery queue, Debian's Alertmanager 0.25 routing to a
local receiver, and a webhook receiver that verifies every signature.

Transitions are decided through the ledger (as the check cycle decides them), so their notices are queued in the
same transaction; the dispatcher then runs as the operator runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from devstack.world.alertmanager import Alertmanager
from devstack.world.postgres import PostgresPair
from devstack.world.stack import Stack
from operator_k8s.adapters.delivery_queue import PostgresDeliveryQueue
from operator_k8s.adapters.receivers_http import ReceiversHttp
from operator_k8s.adapters.ticket_store import PostgresTicketStore, TicketHistory, connect
from operator_k8s.domain.invariants import Finding, Verdict
from operator_k8s.domain.ledger import ClusterRef, CycleStats
from operator_k8s.domain.maintenance import Window, WindowIndex
from operator_k8s.domain.notices import RetryPolicy
from operator_k8s.domain.receivers import NotificationsConfig
from operator_k8s.domain.specs import MaintenanceWindowSpec
from operator_k8s.domain.tickets import HumanEdit, Ticket, TicketKey, Transition, apply_human_intent, transition
from operator_k8s.domain.vocabulary import Severity
from operator_k8s.ledger import Ledger
from operator_k8s.notifier import Notifier
from tests.receivers import KEY, Answer, Receiver, alertmanager_for, start_receiver
from tests.stackutil import create_database, eventually_async, report
from tests.unit.builders import policy

pytestmark = pytest.mark.stack
_databases = itertools.count()
FAST_RETRIES = RetryPolicy(first=timedelta(milliseconds=200), cap=timedelta(seconds=1), attempts=1000)


@pytest.fixture
async def database(stack: Stack) -> str:
    return await create_database(stack, f"notices_{next(_databases)}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await start_receiver()
    yield started
    await started.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "signing-key"
    path.write_text(KEY)
    return str(path)


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[Alertmanager]:
    with alertmanager_for(tmp_path, receiver) as started:
        yield started


def config(receiver: Receiver, key_file: str, alertmanager: Alertmanager | None = None) -> NotificationsConfig:
    receivers: list[dict[str, Any]] = [{"name": "hook", "webhook": {"url": receiver.hook_url, "keyFiles": [key_file],
                                                                      "timeoutSeconds": 2}}]  # fmt: skip
    if alertmanager is not None:
        receivers.append({"name": "am", "alertmanager": {"urls": [alertmanager.url], "resendSeconds": 2}})
    return NotificationsConfig.model_validate({
        "receivers": receivers,
        "routes": [{"receivers": [r["name"] for r in receivers]}],
        "watchdog": ["am"] if alertmanager is not None else [],
        "prometheusUrl": "http://prometheus.example",
    })  # fmt: skip


def notifier(database: str, settings: NotificationsConfig, owner: str = "test") -> Notifier:
    return Notifier(
        settings, PostgresDeliveryQueue(lambda: database), ReceiversHttp(), owner=owner, policy=FAST_RETRIES
    )


@contextlib.asynccontextmanager
async def running(dispatcher: Notifier) -> AsyncIterator[Notifier]:
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()


@pytest.fixture
async def cluster(database: str) -> AsyncIterator[Cluster]:
    decided = Cluster(database)
    yield decided
    await decided.close()


class Unstored(Exception):
    """Postgres did not take a decision (unreachable, read-only, switching over)."""


class Cluster:
    """Decides one cluster's tickets through the ledger, as the check cycle does."""

    def __init__(self, database: str, uid: str = "uid-1", labels: dict[str, str] | None = None) -> None:
        self.store = PostgresTicketStore(database)
        self.ledger = Ledger(self.store, lambda now: now - timedelta(hours=1))
        self.ref = ClusterRef(uid, "tikv-a", "prod", 1, tuple(sorted((labels or {}).items())))

    async def judge(self, store: str, verdict: Verdict, severity: Severity = Severity.WARNING) -> list[Ticket]:
        now = datetime.now(UTC)
        finding = Finding("latency", store, verdict, severity, f"latency of {store}: {verdict}", 1.2, 0.5, "q")
        key = TicketKey(self.ref.uid, "latency", store)

        def plan(current: list[Ticket]) -> list[Transition]:
            mine = next((t for t in current if t.key == key and t.state != "resolved"), None)
            decided = transition(mine, finding, now, policy(), key=key, namespace="prod", cluster_name="tikv-a",
                                 cluster_labels=dict(self.ref.labels))  # fmt: skip
            return [decided] if decided.changed else []

        return await self._decide(plan, now)

    async def acknowledge(self, store: str) -> list[Ticket]:
        """A human acknowledges the store's open ticket (as an edit of its Ticket resource is folded in)."""

        def plan(current: list[Ticket]) -> list[Transition]:
            mine = next(t for t in current if t.key.store == store and t.state.active)
            return [apply_human_intent(mine, HumanEdit(acknowledged=True), actor="sre@example")]

        return await self._decide(plan, datetime.now(UTC))

    async def judge_until_stored(self, store: str, verdict: Verdict, timeout: float = 60) -> None:
        """Judges again each interval until Postgres takes the transition, as the cycles do through an outage."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.judge(store, verdict)
                return
            except Unstored:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # the interval between two cycles

    async def _decide(self, plan: Callable[[list[Ticket]], list[Transition]], now: datetime) -> list[Ticket]:
        async with self.ledger.lock(self.ref.uid):
            decision = await self.ledger.decide(self.ref, plan, CycleStats(), now, 5)
        if decision.error is not None:
            raise Unstored(decision.error)
        return decision.tickets

    async def close(self) -> None:
        await self.store.close()


async def test_a_fault_and_its_heal_reach_the_receiver_through_alertmanager_and_a_signed_webhook(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str, alertmanager: Alertmanager
) -> None:
    async with running(notifier(database, config(receiver, key_file, alertmanager))) as dispatcher:
        (opened,) = await cluster.judge("tikv-0", Verdict.VIOLATED)
        dispatcher.wake()
        ticket_label = f"prod/ticket-{opened.id}"
        await _heard(
            lambda: [h for h in receiver.hooks if h["payload"]["transition"] == "opened"],
            "the signed opened webhook",
            20,
        )
        await _heard(
            lambda: "firing" in receiver.alert_statuses(ticket=ticket_label), "Alertmanager's firing notification", 30
        )
        assert receiver.alert_statuses(alertname="OperatorK8sWatchdog"), "the watchdog fires through Alertmanager"

        await cluster.judge("tikv-0", Verdict.HOLDS)
        dispatcher.wake()
        await _heard(
            lambda: [h for h in receiver.hooks if h["payload"]["status"] == "resolved"],
            "the signed resolved webhook",
            20,
        )
        await _heard(
            lambda: "resolved" in receiver.alert_statuses(ticket=ticket_label),
            "Alertmanager's resolved notification",
            30,
        )
        opened_hook, resolved_hook = receiver.hooks
        assert opened_hook["payload"]["dedup_key"] == resolved_hook["payload"]["dedup_key"] == ticket_label
        assert opened_hook["payload"]["sequence"] < resolved_hook["payload"]["sequence"]
        assert not receiver.refused, "every signature verified"
        history = await _history(database, opened.id)
        assert {(r.receiver, r.kind, r.state) for r in history} == {
            ("hook", "opened", "delivered"), ("hook", "resolved", "delivered"),
            ("am", "opened", "delivered"), ("am", "resolved", "delivered"),
        }  # fmt: skip


async def test_a_route_by_cluster_labels_follows_the_labels_each_ticket_was_recorded_with(
    database: str, receiver: Receiver, key_file: str
) -> None:
    """Through Postgres (migration 0007 keeps the labels with the ticket): the payments cluster's ticket reaches the
    webhook, the search cluster's goes nowhere and says so, and a relabelling before the heal still sends the
    resolution where the opening went."""
    settings = NotificationsConfig.model_validate({
        "receivers": [{"name": "hook", "webhook": {"url": receiver.hook_url, "keyFiles": [key_file]}}],
        "routes": [{"receivers": ["hook"], "clusterSelector": {"matchLabels": {"team": "payments"}}}],
    })  # fmt: skip
    payments = Cluster(database, "uid-payments", {"team": "payments"})
    search = Cluster(database, "uid-search", {"team": "search"})
    try:
        async with running(notifier(database, settings)) as dispatcher:
            (paged,) = await payments.judge("tikv-0", Verdict.VIOLATED)
            (unrouted,) = await search.judge("tikv-0", Verdict.VIOLATED)
            assert (paged.cluster_labels, unrouted.cluster_labels) == ({"team": "payments"}, {"team": "search"})
            dispatcher.wake()
            await _heard(lambda: [h for h in receiver.hooks if h["payload"]["transition"] == "opened"], "the opening")
            payments.ref = replace(payments.ref, labels=(("team", "search"),))  # relabelled while the ticket is open
            await payments.judge("tikv-0", Verdict.HOLDS)
            await search.judge("tikv-0", Verdict.HOLDS)
            dispatcher.wake()
            await _heard(lambda: [h for h in receiver.hooks if h["payload"]["status"] == "resolved"], "the resolution")
            await eventually_async(lambda: _at_least(_history(database, unrouted.id), 2), timeout=20,
                                   what="the search cluster's notices routed")  # fmt: skip
        told = [(h["payload"]["ticket"]["id"], h["payload"]["transition"]) for h in receiver.hooks]
        assert told == [(paged.id, "opened"), (paged.id, "resolved")]
        assert {(r.receiver, r.state) for r in await _history(database, unrouted.id)} == {("(no route)", "suppressed")}
    finally:
        await payments.close()
        await search.close()


async def test_a_receiver_down_loses_nothing_and_duplicates_nothing_after_dedup(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    await receiver.go_down()
    async with running(notifier(database, config(receiver, key_file))) as dispatcher:
        for store in ("tikv-0", "tikv-1", "tikv-2"):
            await cluster.judge(store, Verdict.VIOLATED)
        for store in ("tikv-0", "tikv-1"):
            await cluster.judge(store, Verdict.HOLDS)
        dispatcher.wake()
        await _attempts_made(database, at_least=10)
        assert receiver.hooks == []
        await receiver.come_back()
        hooks = await _heard(
            lambda: len(receiver.unique_hooks()) == 5 and receiver.unique_hooks(),
            "all five transitions after the receiver came back",
            30,
        )
        transitions = sorted((h["payload"]["ticket"]["store"], h["payload"]["transition"]) for h in hooks.values())
        assert transitions == [("tikv-0", "opened"), ("tikv-0", "resolved"), ("tikv-1", "opened"),
                               ("tikv-1", "resolved"), ("tikv-2", "opened")]  # fmt: skip
        assert receiver.duplicates() == 0


@pytest.mark.level("low")  # two minutes: the full run
@pytest.mark.timeout(400)
async def test_a_receiver_down_for_two_minutes_while_tickets_come_and_go_loses_nothing(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    """The production retry policy but its one-minute cap, so the test ends soon after the receiver is back."""
    dispatcher = notifier(database, config(receiver, key_file))
    dispatcher.policy = RetryPolicy(cap=timedelta(seconds=10))
    async with running(dispatcher):
        await receiver.go_down()
        down = time.monotonic()
        flips = 0
        while time.monotonic() - down < 120:  # the outage lasts two minutes, during which tickets come and go
            await cluster.judge(f"tikv-{flips % 4}", Verdict.VIOLATED if flips // 4 % 2 == 0 else Verdict.HOLDS)
            dispatcher.wake()
            flips += 1
            await asyncio.sleep(3)  # the pace of the faults, not a wait for a condition
        await receiver.come_back()
        back = time.monotonic()
        notices = {r["idempotency_key"] for r in await _rows(database, "SELECT idempotency_key FROM notices")}
        await _heard(lambda: set(receiver.unique_hooks()) == notices, "every notice after the outage", 60)
        report("receiver down 2 min", notices=len(notices), delivered_after_s=time.monotonic() - back,
               duplicates=receiver.duplicates())  # fmt: skip
        assert len(notices) >= 20, "too few transitions to prove anything"
        assert receiver.duplicates() == 0


async def test_transitions_committed_while_no_dispatcher_runs_are_delivered_when_one_starts(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    """The crash between a transition's commit and its delivery: the notice waits in Postgres."""
    await cluster.judge("tikv-0", Verdict.VIOLATED)
    await cluster.close()
    async with running(notifier(database, config(receiver, key_file))):
        await _heard(lambda: receiver.hooks, "the notice committed before", 20)


async def test_two_replicas_side_by_side_deliver_each_row_once(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    settings = config(receiver, key_file)
    replica_a, replica_b = notifier(database, settings, owner="replica-a"), notifier(database, settings, owner="b")
    async with running(replica_a), running(replica_b):
        for round_ in range(3):
            for store in range(10):
                await cluster.judge(f"tikv-{store}", Verdict.VIOLATED if round_ % 2 == 0 else Verdict.HOLDS)
            replica_a.wake()
            replica_b.wake()
        await _heard(lambda: len(receiver.unique_hooks()) == 30, "30 transitions delivered", 60)
        assert receiver.duplicates() == 0, "a row was delivered twice"


async def test_a_postgres_switchover_while_notices_flow_loses_none_and_repeats_none_after_dedup(
    pair: PostgresPair, receiver: Receiver, key_file: str
) -> None:
    """The queue lives in Postgres, so its failover is the queue's: the primary shuts down fast mid-delivery, the
    standby is promoted, and transitions keep coming. Every notice committed on either primary reaches the receiver,
    once per ``webhook-id`` (a delivery whose "delivered" mark died with the old primary may be sent again: at
    least once)."""
    dsn = pair.dsn()
    decided = Cluster(dsn)
    try:
        async with running(notifier(dsn, config(receiver, key_file))) as dispatcher:
            for store in range(3):
                await decided.judge(f"tikv-{store}", Verdict.VIOLATED)
            dispatcher.wake()
            await _heard(lambda: len(receiver.hooks) >= 3, "the first deliveries before the switchover", 20)
            await receiver.go_down()  # the next ones are claimed and retried when the primary goes
            for store in range(3, 6):
                await decided.judge(f"tikv-{store}", Verdict.VIOLATED)
            dispatcher.wake()
            await _attempts_made(dsn, at_least=6)
            pair.primary.shut_down_fast()  # mid-delivery: no primary until the standby is promoted
            promoting = asyncio.create_task(asyncio.to_thread(pair.promote))
            for store in range(3):  # heals during the switchover, stored once a primary takes them
                await decided.judge_until_stored(f"tikv-{store}", Verdict.HOLDS)
            await promoting
            await receiver.come_back()
            for store in range(3, 6):
                await decided.judge(f"tikv-{store}", Verdict.HOLDS)
            dispatcher.wake()
            notices = {r["idempotency_key"] for r in await _rows(dsn, "SELECT idempotency_key FROM notices")}
            assert len(notices) == 12, "six openings and six resolutions, each stored once"
            await _heard(lambda: set(receiver.unique_hooks()) == notices, "every notice after the switchover", 60)
            assert not receiver.refused, "every signature verified"
            report("queue across a switchover", notices=len(notices), sent_again=receiver.duplicates())
    finally:
        await decided.close()


async def test_a_410_disables_the_receiver_and_says_so(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    receiver.answer = Answer(410)
    async with running(notifier(database, config(receiver, key_file))) as dispatcher:
        await cluster.judge("tikv-0", Verdict.VIOLATED)
        dispatcher.wake()
        await eventually_async(
            lambda: _rows(database, "SELECT 1 FROM disabled_receivers WHERE receiver = 'hook'"), timeout=20,
            what="the receiver disabled",
        )  # fmt: skip
        await cluster.judge("tikv-1", Verdict.VIOLATED)
        dispatcher.wake()
        rows = await eventually_async(
            lambda: _at_least(_rows(database, "SELECT state, result FROM deliveries ORDER BY id"), 2), timeout=20,
            what="the second notice routed",
        )  # fmt: skip
        assert [r["state"] for r in rows] == ["dead", "dead"]
        assert "410" in rows[0]["result"]
        assert "disabled" in rows[1]["result"]
        assert receiver.refused["410"] == 1, "nothing is sent to a receiver that said it is gone"


async def test_a_429_is_retried_no_sooner_than_it_asks(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    receiver.answer = Answer(429, {"Retry-After": "3"})
    async with running(notifier(database, config(receiver, key_file))) as dispatcher:
        await cluster.judge("tikv-0", Verdict.VIOLATED)
        dispatcher.wake()
        await _heard(lambda: receiver.refused["429"] >= 1, "the first 429", 20)
        refused_at = time.monotonic()
        receiver.answer = Answer(200)
        await _heard(lambda: receiver.hooks, "the retry", 20)
        assert time.monotonic() - refused_at >= 2.5, "the retry came before Retry-After"


async def test_a_redirect_to_another_origin_is_not_followed(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    elsewhere = await start_receiver()
    receiver.answer = Answer(307, {"Location": elsewhere.hook_url})
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(elsewhere.stop)
        dispatcher = await cleanup.enter_async_context(running(notifier(database, config(receiver, key_file))))
        await cluster.judge("tikv-0", Verdict.VIOLATED)
        dispatcher.wake()
        await _heard(lambda: receiver.refused["307"] >= 2, "two attempts", 20)
        assert elsewhere.hooks == [] and not elsewhere.refused, "nothing, signed or not, reached the other origin"
        (row,) = await _rows(database, "SELECT state, result FROM deliveries")
        assert "not followed" in row["result"]


# -- helpers -----------------------------------------------------------------------------------------------------


async def _true(value: Any) -> Any:
    return value


async def _heard(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """What ``probe`` returns once it is truthy (it reads what the receiver has heard so far)."""
    return await eventually_async(lambda: _true(probe()), timeout=timeout, what=what)


async def _at_least(rows: Any, count: int) -> Any:
    found = await rows
    return found if len(found) >= count else None


async def _rows(database: str, sql: str) -> list[asyncpg.Record]:
    connection = await connect(database)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def _attempts_made(database: str, at_least: int) -> None:
    async def attempts() -> bool:
        rows = await _rows(database, "SELECT coalesce(sum(attempts), 0) AS n FROM deliveries")
        return bool(rows[0]["n"] >= at_least)

    await eventually_async(attempts, timeout=30, what=f"{at_least} failed attempts")


async def _history(database: str, ticket_id: int | None) -> list[Any]:
    assert ticket_id is not None
    record = await TicketHistory(database).show(ticket_id)
    assert record is not None
    return record.deliveries


async def test_a_window_holds_notices_back_to_its_end_and_drops_what_resolved_inside_it(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    now = datetime.now(UTC)
    ends = now + timedelta(seconds=8)
    spec = MaintenanceWindowSpec.model_validate(
        {"clusterSelector": {}, "start": (now - timedelta(minutes=1)).isoformat(), "end": ends.isoformat()}
    )
    windows = WindowIndex()
    windows.attach({"prod": [Window("upgrade", "prod", spec)]}, {("prod", "tikv-a"): [{"env": "prod"}]})
    dispatcher = notifier(database, config(receiver, key_file))
    dispatcher.covering = lambda notice, at: windows.covered(
        notice.namespace, notice.cluster, notice.invariant, notice.store, at
    )
    async with running(dispatcher):
        await cluster.judge("tikv-0", Verdict.VIOLATED)  # outlasts the window
        await cluster.judge("tikv-1", Verdict.VIOLATED)  # opens and resolves inside it
        await cluster.judge("tikv-1", Verdict.HOLDS)
        dispatcher.wake()
        rows = await eventually_async(
            lambda: _at_least(_rows(database, "SELECT deferred_by, due_at FROM deliveries"), 3), timeout=20,
            what="three deliveries routed",
        )  # fmt: skip
        assert {r["deferred_by"] for r in rows} == {"upgrade"}
        assert receiver.hooks == [], "nobody is told inside the window"
        await _heard(lambda: receiver.hooks, "the held-back opening at the end", 30)
        assert datetime.now(UTC) >= ends
        await cluster.judge("tikv-2", Verdict.VIOLATED)  # after the window: at once
        dispatcher.wake()
        await _heard(lambda: len(receiver.hooks) == 2, "the opening after it", 20)
        told = sorted((h["payload"]["ticket"]["store"], h["payload"]["transition"]) for h in receiver.hooks)
        assert told == [("tikv-0", "opened"), ("tikv-2", "opened")]
        suppressed = await _rows(database, "SELECT result FROM deliveries WHERE state = 'suppressed'")
        assert len(suppressed) == 2 and all("maintenance window" in r["result"] for r in suppressed)


async def _alertmanager_get(alertmanager: Alertmanager, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{alertmanager.url}{path}") as answer:
        return await answer.json()


async def test_an_acknowledgement_mirrors_as_a_silence_until_the_ticket_resolves(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str, alertmanager: Alertmanager
) -> None:
    """What Alertmanager 0.25 does, observed: the acknowledged ticket's alert is silenced (no repeat), the silence
    is expired before the resolution is sent, and the resolution then reaches the receiver."""
    settings = config(receiver, key_file, alertmanager)
    settings = settings.model_copy(update={"receivers": [
        r.model_copy(update={"alertmanager": r.alertmanager.model_copy(update={"silence_acknowledged": True})})
        if r.alertmanager is not None else r for r in settings.receivers
    ]})  # fmt: skip
    async with running(notifier(database, settings)) as dispatcher:
        (opened,) = await cluster.judge("tikv-0", Verdict.VIOLATED)
        key = f"prod/ticket-{opened.id}"
        dispatcher.wake()
        await _heard(lambda: "firing" in receiver.alert_statuses(ticket=key), "the firing notification", 30)
        await cluster.acknowledge("tikv-0")

        async def ours(state: str) -> list[Any]:
            found = await _alertmanager_get(alertmanager, "/api/v2/silences")
            return [
                s
                for s in found
                if s["createdBy"] == "operator-k8s"
                and s["status"]["state"] == state
                and {"name": "ticket", "value": key, "isRegex": False, "isEqual": True} in s["matchers"]
            ]

        (silence,) = await eventually_async(lambda: ours("active"), timeout=20, what="the mirrored silence")
        assert "Acknowledged in Ticket prod/" in silence["comment"]
        alerts = await _alertmanager_get(alertmanager, f'/api/v2/alerts?filter=ticket="{key}"')
        assert [a["status"]["state"] for a in alerts] == ["suppressed"]
        assert silence["id"] in alerts[0]["status"]["silencedBy"]

        await cluster.judge("tikv-0", Verdict.HOLDS)
        dispatcher.wake()
        await eventually_async(lambda: ours("expired"), timeout=20, what="the silence expired on resolution")
        await _heard(
            lambda: "resolved" in receiver.alert_statuses(ticket=key),
            "Alertmanager's resolution after the silence ended",
            30,
        )
        assert receiver.alert_statuses(ticket=key).count("firing") == 1, "the silenced alert was not repeated"


async def test_a_window_deleted_early_releases_what_it_held(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str
) -> None:
    now = datetime.now(UTC)
    spec = MaintenanceWindowSpec.model_validate(
        {"clusterSelector": {}, "start": (now - timedelta(minutes=1)).isoformat(),
         "end": (now + timedelta(hours=2)).isoformat()}
    )  # fmt: skip
    live: dict[str, list[Window]] = {"prod": [Window("long-upgrade", "prod", spec)]}
    windows = WindowIndex()
    windows.attach(live, {("prod", "tikv-a"): [{}]})
    dispatcher = notifier(database, config(receiver, key_file))
    dispatcher.covering = lambda notice, at: windows.covered(
        notice.namespace, notice.cluster, notice.invariant, notice.store, at
    )
    async with running(dispatcher):
        await cluster.judge("tikv-0", Verdict.VIOLATED)
        dispatcher.wake()
        await eventually_async(
            lambda: _rows(database, "SELECT 1 FROM deliveries WHERE deferred_by = 'long-upgrade'"), timeout=20,
            what="the opening held back for two hours",
        )  # fmt: skip
        deleted = time.monotonic()
        live["prod"] = []  # the upgrade finished early: its window is deleted
        await _heard(lambda: receiver.hooks, "the opening told once the window is gone", 30)
        report("window deleted early", released_after_s=time.monotonic() - deleted)


async def test_a_ticket_firing_before_a_window_starts_keeps_firing_through_it(
    database: str, cluster: Cluster, receiver: Receiver, key_file: str, alertmanager: Alertmanager
) -> None:
    """Without it, the alert would not be re-sent inside the window and Alertmanager would resolve it after its
    ``endsAt`` (four resends: 8 s here), telling people of a resolution that did not happen."""
    live: dict[str, list[Window]] = {}
    windows = WindowIndex()
    windows.attach(live, {("prod", "tikv-a"): [{}]})
    dispatcher = notifier(database, config(receiver, key_file, alertmanager))
    dispatcher.covering = lambda notice, at: windows.covered(
        notice.namespace, notice.cluster, notice.invariant, notice.store, at
    )
    async with running(dispatcher):
        (opened,) = await cluster.judge("tikv-0", Verdict.VIOLATED)
        key = f"prod/ticket-{opened.id}"
        dispatcher.wake()
        await _heard(lambda: "firing" in receiver.alert_statuses(ticket=key), "the firing notification", 30)
        now = datetime.now(UTC)
        spec = {"clusterSelector": {}, "start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat()}
        live["prod"] = [Window("late-upgrade", "prod", MaintenanceWindowSpec.model_validate(spec))]
        await asyncio.sleep(15)  # the scenario's length: past the alert's endsAt twice over, what Alertmanager does
        assert "resolved" not in receiver.alert_statuses(ticket=key), "a window is no resolution"
        alerts = await _alertmanager_get(alertmanager, f'/api/v2/alerts?filter=ticket="{key}"')
        assert [a["status"]["state"] for a in alerts] == ["active"]
