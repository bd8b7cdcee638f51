"""The people on call, end to end: the operator process, a store fault in the simulator, Debian's Alertmanager 0.25
routing to a local receiver, and a signed webhook. Then the operator is killed for good: the watchdog ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from tests.e2e.support import Scene, SharedOperator, wait_healthy
from tests.receivers import Receiver, alertmanager_for, notifications_file, receiver_in_thread
from tests.stackutil import eventually, report, store_fault, ticket_resources

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
