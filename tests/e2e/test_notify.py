"""The people on call, end to end: the operator process, a store fault in the simulator, Debian's Alertmanager 0.25
routing to a local receiver, and a signed webhook. Then the operator is killed for good: the watchdog ends."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.host.processes import Process
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.e2e.support import (
    TIDB_CLUSTER_CRD,
    Scene,
    SharedOperator,
    install_tidb_cluster_crd,
    set_tidb_phase,
    wait_healthy,
)
from tests.receivers import Receiver, alertmanager_for, notifications_file, receiver_in_thread
from tests.stackutil import (
    LogFollower,
    eventually,
    get_json,
    open_in_db,
    report,
    store_fault,
    ticket_resources,
    tickets_in_db,
)

pytestmark = pytest.mark.stack
RESEND_SECONDS = 2.0
WATCHDOG_ENDS_AFTER = 4 * RESEND_SECONDS
"""The watchdog's documented end: four resend intervals after the operator last sent it."""


def _hooks(receiver: Receiver, store: str, transition: str) -> list[float]:
    return [
        hook["received_at"]
        for hook in receiver.hooks
        if hook["payload"]["ticket"]["store"] == store and hook["payload"]["transition"] == transition
    ]


def _alerts(receiver: Receiver, status: str, **labels: str) -> list[float]:
    return [
        notification["received_at"]
        for notification in receiver.notifications
        for alert in notification["alerts"]
        if alert["status"] == status and all(alert["labels"].get(k) == v for k, v in labels.items())
    ]


def _last_notifications(stack: Stack, namespace: str) -> list[str]:
    return [t["status"].get("lastNotification", "") for t in ticket_resources(stack, namespace)] or ["none yet"]


def test_a_fault_reaches_people_through_alertmanager_and_a_signed_webhook_and_a_dead_operator_is_noticed(
    stack: Stack, shared: SharedOperator, scene: Scene, tmp_path: Path
) -> None:
    shared.stop()  # one operator in this namespace, with this notifications file
    namespace = scene.namespace("notify")
    stores = scene.stores(namespace, "notify")
    with receiver_in_thread() as receiver, alertmanager_for(tmp_path, receiver) as alertmanager:
        config = notifications_file(tmp_path, receiver, namespace, alertmanager=alertmanager.url,
                                    resend_seconds=RESEND_SECONDS)  # fmt: skip
        operator = operator_process(
            stack, "operator-notify.log", OPERATOR_K8S_NAMESPACES=namespace,
            OPERATOR_K8S_NOTIFICATIONS_FILE=str(config),
        )  # fmt: skip
        try:
            scene.cluster(namespace, "notify", interval="1s",
                          invariants={"latency": {"enabled": False}, "diskUsage": {"clearFor": "0s"}})  # fmt: skip
            wait_healthy(stack, namespace, "notify")
            faulted = time.time()
            store_fault(stack, namespace, "notify", stores[0], "disk", {"percent": 95})
            eventually(lambda: _hooks(receiver, stores[0], "opened"), what="the signed opening", timeout=60)
            eventually(lambda: _alerts(receiver, "firing", store=stores[0], invariant="diskUsage"),
                       what="Alertmanager's firing notification", timeout=60)  # fmt: skip
            healed = time.time()
            store_fault(stack, namespace, "notify", stores[0], "disk", heal=True)
            eventually(lambda: _hooks(receiver, stores[0], "resolved"), what="the signed resolution", timeout=60)
            eventually(lambda: _alerts(receiver, "resolved", store=stores[0], invariant="diskUsage"),
                       what="Alertmanager's resolved notification", timeout=60)  # fmt: skip
            assert _alerts(receiver, "firing", alertname="OperatorK8sWatchdog"), "the watchdog fires meanwhile"
            eventually(
                lambda: all("resolved to" in shown for shown in _last_notifications(stack, namespace)),
                what="the Ticket showing its last notification", timeout=30,
            )  # fmt: skip
        finally:
            operator.kill()
            stack.processes.remove(operator)
        killed = time.time()
        ended = eventually(lambda: [t for t in _alerts(receiver, "resolved", alertname="OperatorK8sWatchdog")
                                    if t > killed], what="the watchdog's end", timeout=60)  # fmt: skip
        report(
            "notify",
            fault_to_webhook_s=_hooks(receiver, stores[0], "opened")[0] - faulted,
            fault_to_alertmanager_receiver_s=_alerts(receiver, "firing", store=stores[0])[0] - faulted,
            heal_to_webhook_s=_hooks(receiver, stores[0], "resolved")[0] - healed,
            kill_to_watchdog_end_s=ended[0] - killed,
        )
        # Its end is due four resend intervals after the last send; Alertmanager flushes a group each second.
        assert ended[0] - killed <= WATCHDOG_ENDS_AFTER + 5


def _notify_operator(stack: Stack, namespace: str, config: Path) -> Process:
    return operator_process(
        stack, "operator-notify.log", OPERATOR_K8S_NAMESPACES=namespace, OPERATOR_K8S_NOTIFICATIONS_FILE=str(config)
    )


def _stop(stack: Stack, operator: Process) -> None:
    operator.stop()
    stack.processes.remove(operator)


def _at_second(low: int, high: int) -> None:
    """Wait for the wall clock to be within [low, high) seconds of a minute (recurring windows are wall-clock)."""
    eventually(lambda: low <= datetime.now(UTC).second < high, what=f"second {low}-{high} of a minute",
               timeout=70, interval=0.2)  # fmt: skip


@pytest.mark.level("low")  # up to two minutes of waiting for the clock
def test_a_recurring_window_holds_notifications_back_only_inside_it(
    stack: Stack, shared: SharedOperator, scene: Scene, tmp_path: Path
) -> None:
    """A window every minute for its first 30 s: a fault inside it is recorded at once and told when it ends; a
    fault outside it is told at once. ``kubectl get maintenancewindows`` shows it."""
    shared.stop()
    namespace = scene.namespace("window")
    stores = scene.stores(namespace, "window")
    window = {
        "apiVersion": "operator-k8s.io/v1alpha1", "kind": "MaintenanceWindow",
        "metadata": {"name": "every-minute", "namespace": namespace},
        "spec": {"clusterSelector": {"matchLabels": {"tier": "maintained"}}, "schedule": "* * * * *",
                 "duration": "30s", "timeZone": "UTC"},
    }  # fmt: skip
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(window))
    with receiver_in_thread() as receiver:
        operator = _notify_operator(stack, namespace, notifications_file(tmp_path, receiver, namespace))
        try:
            scene.cluster(namespace, "window", interval="1s", labels={"tier": "maintained"},
                          invariants={"latency": {"enabled": False}, "diskUsage": {"clearFor": "0s"}})  # fmt: skip
            wait_healthy(stack, namespace, "window")
            eventually(lambda: get_json(stack, "mw", "every-minute", "-n", namespace).get("status", {}).get("nextStart"),
                       what="the window's status written", timeout=60)  # fmt: skip
            shown = stack.kubectl("get", "mw", "-n", namespace).stdout
            _at_second(2, 12)
            inside = time.time()
            store_fault(stack, namespace, "window", stores[0], "disk", {"percent": 95})
            eventually(lambda: open_in_db(stack, namespace, "diskUsage"), what="the ticket recorded", timeout=20)
            # The occurrence ends at second 30 of the minute, on the whole second (not ``inside``'s fraction past it).
            window_end = math.floor(inside) - datetime.fromtimestamp(inside, UTC).second + 30
            told = eventually(lambda: _hooks(receiver, stores[0], "opened"), what="the opening told", timeout=60)
            _at_second(35, 45)
            outside = time.time()
            store_fault(stack, namespace, "window", stores[1], "disk", {"percent": 95})
            later = eventually(lambda: _hooks(receiver, stores[1], "opened"), what="told at once", timeout=20)
            report("recurring window", held_back_s=told[0] - inside, told_after_window_end_s=told[0] - window_end,
                   outside_told_s=later[0] - outside)  # fmt: skip
            assert told[0] >= window_end, "told inside the window"
            assert later[0] - outside < 10, "outside the window, nothing waits"
            assert shown.split("\n")[0].split() == ["NAME", "ACTIVE", "UNTIL", "NEXT-START", "AGE"], shown
            assert "every-minute" in shown
        finally:
            _stop(stack, operator)


def test_a_flapping_store_is_told_once_that_it_flaps_not_a_pair_per_flap(
    stack: Stack, shared: SharedOperator, scene: Scene, tmp_path: Path
) -> None:
    shared.stop()
    namespace = scene.namespace("flap")
    stores = scene.stores(namespace, "flap")
    with receiver_in_thread() as receiver:
        operator = _notify_operator(stack, namespace, notifications_file(tmp_path, receiver, namespace))
        try:
            scene.cluster(namespace, "flap", interval="1s",
                          invariants={"latency": {"enabled": False}, "diskUsage": {"clearFor": "0s"}})  # fmt: skip
            wait_healthy(stack, namespace, "flap")
            flaps = 0
            for _ in range(10):  # a disk filling and emptying every few seconds
                store_fault(stack, namespace, "flap", stores[2], "disk", {"percent": 95})
                eventually(lambda: open_in_db(stack, namespace, "diskUsage"), what="the fault seen", timeout=20)
                store_fault(stack, namespace, "flap", stores[2], "disk", heal=True)
                eventually(lambda: not open_in_db(stack, namespace, "diskUsage"), what="the heal seen", timeout=20)
                flaps += 1
            eventually(lambda: _hooks(receiver, stores[2], "flapping_stopped"), what="flapping stopped",
                       timeout=90)  # fmt: skip
            told = [h["payload"]["transition"] for h in receiver.hooks if h["payload"]["ticket"]["store"] == stores[2]]
            (ticket,) = [t for t in tickets_in_db(stack, namespace) if t["store"] == stores[2]]
            report("flapping", flaps=flaps, told=len(told), transitions=" ".join(told),
                   occurrences=ticket["occurrences"])  # fmt: skip
            assert told.count("flapping_started") == told.count("flapping_stopped") == 1
            changes = [t for t in told if t != "diagnosed"]
            assert len(changes) <= 6, f"a pair per flap: {told}"
            # each opening told before it flapped is diagnosed once; none while it flaps
            assert told.count("diagnosed") <= told.count("opened") + told.count("reopened"), told
            assert ticket["occurrences"] >= flaps, "occurrences keep counting while it flaps"
            stopped = next(h for h in receiver.hooks if h["payload"]["transition"] == "flapping_stopped")
            assert stopped["payload"]["status"] == "resolved"
        finally:
            _stop(stack, operator)


def test_a_rolling_upgrade_tidb_operator_reports_holds_notifications_back_until_it_ends(
    stack: Stack, shared: SharedOperator, scene: Scene, tmp_path: Path
) -> None:
    """A MonitoredCluster naming its TidbCluster (``spec.maintenance.tidbCluster``), routed to the webhook by its
    labels: while TiDB Operator reports ``tikv Upgrade`` a store fault is recorded, marked in maintenance, and told
    to nobody; when the phase is ``Normal`` again with the fault still there, the webhook hears of it."""
    shared.stop()
    install_tidb_cluster_crd(stack)  # before the operator starts: kopf sees TiDB Operator's CRD as installed
    namespace = scene.namespace("tidb")
    stores = scene.stores(namespace, "tidb")
    routed = {"matchLabels": {"team": "payments"}}
    try:
        set_tidb_phase(
            stack, namespace, "basic", "Upgrade", ready_since=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        with receiver_in_thread() as receiver:
            operator = _notify_operator(
                stack, namespace, notifications_file(tmp_path, receiver, namespace, cluster_selector=routed)
            )
            try:
                with LogFollower(operator.log_path) as log:
                    scene.cluster(namespace, "tidb", interval="1s", labels={"team": "payments"},
                                  maintenance={"tidbCluster": "basic"},
                                  invariants={"latency": {"enabled": False}, "diskUsage": {"clearFor": "0s"}})  # fmt: skip
                    eventually(lambda: [r for _, r in log.records if str(r.get("message", "")).startswith(
                        "In a maintenance window by TidbCluster/basic (tikv Upgrade)")],
                        what="the operator saying the cluster is in maintenance", timeout=60)  # fmt: skip
                wait_healthy(stack, namespace, "tidb")
                faulted = time.time()
                store_fault(stack, namespace, "tidb", stores[0], "disk", {"percent": 95})
                eventually(lambda: open_in_db(stack, namespace, "diskUsage"), what="the ticket recorded", timeout=30)
                # The last notice is the opening, or its diagnosis right after it: both held back alike.
                held = "to hook: pending (deferred: maintenance by TidbCluster/basic (tikv Upgrade) until it ends)"
                eventually(lambda: any(held in s for s in _last_notifications(stack, namespace)),
                           what="the Ticket marked in maintenance", timeout=30)  # fmt: skip
                assert _hooks(receiver, stores[0], "opened") == [], "told during the upgrade"
                normal = time.time()
                set_tidb_phase(stack, namespace, "basic", "Normal")
                told = eventually(lambda: _hooks(receiver, stores[0], "opened"), what="the opening told after it",
                                  timeout=60)  # fmt: skip
                assert open_in_db(stack, namespace, "diskUsage"), "the fault is still there"
                report("tidb upgrade window", fault_to_marked_s=normal - faulted, normal_to_webhook_s=told[0] - normal)
            finally:
                _stop(stack, operator)
    finally:
        stack.kubectl("delete", "crd", TIDB_CLUSTER_CRD, "--wait=false", check=False)
