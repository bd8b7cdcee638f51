"""The dispatcher against small fakes of the queue and the receivers' HTTP: what it sends when Postgres goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from operator_k8s.domain.maintenance import OperatorReport, WindowIndex
from operator_k8s.domain.notices import SendOutcome
from operator_k8s.domain.receivers import NotificationsConfig
from operator_k8s.domain.tickets import TicketState
from operator_k8s.notifier import Notifier
from tests.unit.builders import ticket


class FakeQueue:
    """The delivery queue with one open ticket; ``down`` makes every call fail as an unreachable Postgres does."""

    def __init__(self) -> None:
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise OSError("Postgres unreachable (fake)")

    async def claim(self, *_: Any, **__: Any) -> list[Any]:
        self._check()
        return []

    async def open_tickets(self) -> list[Any]:
        self._check()
        return [ticket(TicketState.OPEN, id=42, opened_at=datetime.now().astimezone())]

    async def told_firing(self, receiver: str) -> set[int]:
        """The one open ticket fired an hour ago, and Alertmanager heard it."""
        self._check()
        return {42}

    async def recent_endings(self, *_: Any) -> list[Any]:
        self._check()
        return []

    async def route(self, *_: Any, **__: Any) -> int:
        self._check()
        return 0

    async def deferred(self, **_: Any) -> list[Any]:
        self._check()
        return []

    async def disabled(self) -> dict[str, str]:
        self._check()
        return {}

    async def prune(self, *_: Any) -> int:
        self._check()
        return 0

    async def pending(self) -> dict[str, int]:
        self._check()
        return {}

    async def reset(self) -> None:
        pass


class FakeAlertmanager:
    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self._posted = asyncio.Event()

    async def posted(self, count: int) -> None:
        """Until it has been sent ``count`` POSTs in all."""
        while len(self.posts) < count:
            self._posted.clear()
            await self._posted.wait()

    async def alerts(
        self, url: str, alerts: Sequence[dict[str, Any]], timeout: float, token_file: str = ""
    ) -> SendOutcome:
        self.posts.append(list(alerts))
        self._posted.set()
        return SendOutcome(True, "HTTP 200", status=200)


async def test_while_postgres_is_away_alertmanager_keeps_hearing_what_was_firing() -> None:
    config = NotificationsConfig.model_validate({
        "receivers": [{"name": "am", "alertmanager": {"urls": ["http://am:9093"], "resendSeconds": 1}}],
        "routes": [{"receivers": ["am"]}], "watchdog": ["am"], "instance": "prod",
    })  # fmt: skip
    queue, client = FakeQueue(), FakeAlertmanager()
    notifier = Notifier(config, queue, client, owner="test")  # type: ignore[arg-type]
    notifier.start()
    try:
        async with asyncio.timeout(10):
            await client.posted(1)
            queue.down = True
            await client.posted(len(client.posts) + 2)
    finally:
        await notifier.stop()
    first, last = client.posts[0], client.posts[-1]
    assert {a["labels"]["alertname"] for a in last} == {"OperatorK8sTicket", "OperatorK8sWatchdog"}
    assert [a["labels"] for a in last] == [a["labels"] for a in first], "the same alerts, from memory"
    ends = [datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00")) for a in last]
    assert all(end > datetime.now().astimezone() + timedelta(seconds=2) for end in ends), "still ahead"


async def test_an_automatic_window_never_withdraws_an_alert_that_fired_before_the_scale_began() -> None:
    """Review finding (issue 17 item 5): a TidbCluster that has been NotReady since an outage, then scaled out to fix
    it, opens an automatic window whose start is backdated to the Ready condition's transition. A ticket opened
    during the outage (and already firing in Alertmanager) must keep firing; leaving it out of the POST lets its
    ``endsAt`` pass, and Alertmanager then tells the on-call the outage resolved."""
    now = datetime.now().astimezone()
    windows = WindowIndex()
    windows.attach(
        {}, {("ns", "tikv"): [{}]}, {("ns", "tikv"): ["basic"]},
        {("ns", "basic"): [OperatorReport((("tikv", "Scale"), ("pd", "Normal")), now - timedelta(hours=2))]},
    )  # fmt: skip
    config = NotificationsConfig.model_validate({
        "receivers": [{"name": "am", "alertmanager": {"urls": ["http://am:9093"], "resendSeconds": 1}}],
        "routes": [{"receivers": ["am"]}], "instance": "prod",
    })  # fmt: skip
    notifier = Notifier(
        config, FakeQueue(), FakeAlertmanager(), owner="test",  # type: ignore[arg-type]
        covering=lambda notice, at: windows.covered(notice.namespace, notice.cluster, notice.invariant,
                                                    notice.store, at),
    )  # fmt: skip
    opened_during_the_outage = ticket(TicketState.OPEN, id=42, opened_at=now - timedelta(hours=1))

    class Queue(FakeQueue):
        async def open_tickets(self) -> list[Any]:
            return [opened_during_the_outage]

    notifier.queue = Queue()  # type: ignore[assignment]
    alerting = await notifier._alerting(config.receivers[0], now)
    assert [t.id for t in alerting] == [42], "an alert that fired an hour before the scale began was withdrawn"
