"""Observe, don't remember, on the real API server: what a restart and a state change cost, counted by the API
server itself (``apiserver_request_total``), and Tickets someone else changed restored by the running operator."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import pytest

from devstack.host.paths import REPO_ROOT
from devstack.world.stack import Stack
from tests.conftest import run_operator
from tests.stackutil import OPEN_STATES, apply, eventually, get_json, metric_samples, monitored_cluster, tickets_in_db

pytestmark = pytest.mark.stack
STORES = 500
WRITES = ("POST", "PUT", "PATCH", "DELETE")
ONLY_STORES_READY = {"storesReady": {"for": "0s", "clearFor": "0s"}, "latency": {"enabled": False},
                     "diskUsage": {"enabled": False}, "criticalErrors": {"enabled": False},
                     "writeStall": {"enabled": False}}  # fmt: skip


def ticket_writes(stack: Stack) -> float:
    """Every write request the API server has answered for Tickets, whoever sent it."""
    return sum(ticket_writes_by_answer(stack).values())


def ticket_writes_by_answer(stack: Stack) -> dict[tuple[str, str], float]:
    """The same, by verb and HTTP code: a write that changed nothing shows which it was (a refused create, a
    conflict, a patch equal to what is there)."""
    text = stack.kubectl("get", "--raw", "/metrics").stdout
    counts: dict[tuple[str, str], float] = {}
    for sample in metric_samples(text):
        labels = sample.labels
        if (
            sample.name == "apiserver_request_total"
            and labels.get("resource") == "tickets"
            and labels.get("verb") in WRITES
        ):
            key = (labels["verb"], labels.get("code", ""))
            counts[key] = counts.get(key, 0) + sample.value
    return counts


def pending_store(name: str, namespace: str) -> dict[str, Any]:
    """A store pod no node runs: Pending, so storesReady is violated and opens a ticket."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "big"}},
        "spec": {"automountServiceAccountToken": False, "containers": [{"name": "tikv", "image": "tikv:v8"}]},
    }


def shown(stack: Stack, namespace: str) -> dict[str, dict[str, Any]]:
    return {t["metadata"]["name"]: t for t in get_json(stack, "tickets", "-n", namespace)["items"]}


def _key(ticket: dict[str, Any]) -> tuple[str, str]:
    return ticket["metadata"]["namespace"], ticket["metadata"]["name"]


class TicketWatch:
    """Every change the API server makes to Tickets, in every namespace (the API server counts writes for all of
    them: other tests' clusters may still be checked), as its watch reports them from a listed version on: what a
    write changed is read off the change itself, so a lastSeen refresh landing at any moment is told apart from a
    state change, and a write that changed nothing shows as a write without an event."""

    def __init__(self, stack: Stack) -> None:
        path = "/apis/operator-k8s.io/v1alpha1/tickets"
        # The API's own list, not kubectl's (a client-side List has no resourceVersion to watch from).
        listed = json.loads(stack.kubectl("get", "--raw", path).stdout)
        self.state = {_key(t): t for t in listed["items"]}
        self.changes: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (event type, before, after)
        self._lock = threading.Lock()
        path += f"?watch=1&resourceVersion={listed['metadata']['resourceVersion']}"
        command = [str(stack.binaries.kubectl), "--kubeconfig", str(stack.kubeconfig), "get", "--raw", path]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            ticket = event["object"]
            with self._lock:
                before = self.state.get(_key(ticket), {})
                self.changes.append((event["type"], before, ticket))
                self.state[_key(ticket)] = ticket

    def since(self, mark: int, namespace: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """The changes from ``mark`` on to ``namespace``'s Tickets."""
        with self._lock:
            return [c for c in self.changes[mark:] if c[2]["metadata"]["namespace"] == namespace]

    def count(self) -> int:
        with self._lock:
            return len(self.changes)

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


def changed_status(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    old, new = before.get("status", {}), after.get("status", {})
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def settled_writes(stack: Stack) -> float:
    """The Ticket writes the API server has answered, once two reads a second apart agree: requests a stopped
    operator had in flight are answered (and counted) a moment after it stops."""
    reads: list[float] = []

    def settled() -> float | None:
        reads.append(ticket_writes(stack))
        return reads[-1] if len(reads) > 1 and reads[-1] == reads[-2] else None

    return eventually(settled, timeout=30, interval=1, what="no more Ticket writes from the stopped operator")


def writes_seen_as_changes(stack: Stack, watch: TicketWatch, writes_before: float, mark: int, what: str) -> None:
    """Every write the API server answered made a change its watch reported (a write that changed nothing would
    leave the two apart for good); polled, because an event reaches the watch just after the write is counted."""
    counted: list[tuple[float, int]] = []

    def matched() -> bool:
        counted.append((ticket_writes(stack) - writes_before, watch.count() - mark))
        return counted[-1][0] == counted[-1][1]

    try:
        eventually(matched, timeout=10, what=what)
    except AssertionError as error:
        answers = ticket_writes_by_answer(stack)
        raise AssertionError(
            f"{error}: (writes, changes) last {counted[-1]}; writes so far by answer {answers}"
        ) from None


@pytest.mark.level("low")  # 500 pods and Tickets: the full run
def test_a_restart_with_500_open_tickets_writes_none_and_a_state_change_costs_one(stack: Stack, namespace: str) -> None:
    apply(stack, *(pending_store(f"big-{n}", namespace) for n in range(STORES)))
    spec = {"interval": "2s", "stores": {"selector": {"matchLabels": {"app": "big"}}},
            "invariants": ONLY_STORES_READY}  # fmt: skip
    cluster = monitored_cluster("big", namespace, stack, **spec)
    own = {"OPERATOR_K8S_NAMESPACES": namespace}  # other tests' clusters are not this count's business
    try:
        measured = count_a_restart_and_a_state_change(stack, namespace, cluster, own)
    finally:  # 500 pods and open tickets would weigh on every later test's operator
        with run_operator(stack, **own):
            stack.kubectl("delete", "mc", "big", "-n", namespace, "--timeout=50s", check=False)
        stack.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
    print(f"[measured] {measured}; one state change: 1 Ticket write")  # outside KopfRunner, which captures stdout


def count_a_restart_and_a_state_change(
    stack: Stack, namespace: str, cluster: dict[str, Any], own: dict[str, str]
) -> str:
    """What a restart with every Ticket open writes, and what one state change writes; returns the measurement."""
    with run_operator(stack, **own) as operator:
        apply(stack, cluster)
        eventually(lambda: sum(1 for t in shown(stack, namespace).values() if t["status"]["state"] in OPEN_STATES) == STORES,
                   timeout=180, what=f"{STORES} open Tickets")  # fmt: skip
        # Each opening's evidence lands on its Ticket a moment later (a task of its own): the restart starts settled.
        eventually(lambda: all("evidence" in t["status"] for t in shown(stack, namespace).values()),
                   timeout=180, what=f"the evidence of {STORES} Tickets shown")  # fmt: skip
        operator.checked_after(namespace, "big", 3)
    watch = TicketWatch(stack)
    try:
        before = settled_writes(stack)  # the stopped operator's last requests answered, whatever they were
        with run_operator(stack, **own) as restarted:
            restarted.checked_after(namespace, "big", 6)
            writes_seen_as_changes(stack, watch, before, 0, "every Ticket write of the restart seen as a change")
            restart = watch.since(0, namespace)
            # The only change a restart may meet is the clock: a lastSeen a minute old is refreshed, restart or not.
            assert {kind for kind, _, _ in restart} <= {"MODIFIED"}, "a restart creates and deletes no Ticket"
            changed = [changed_status(old, new) for _, old, new in restart]
            assert all(fields <= {"lastSeen", "message"} for fields in changed), changed
            measured = f"restart with {STORES} open Tickets: {len(restart)} Ticket writes, all lastSeen refreshes"
            before, mark = ticket_writes(stack), watch.count()
            healed = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
            stack.kubectl("patch", "pod", "big-7", "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps(healed))  # fmt: skip
            eventually(lambda: [t for t in shown(stack, namespace).values() if t["status"]["state"] == "resolved"],
                       timeout=60, what="the healed store's ticket resolved")  # fmt: skip
            restarted.checked_after(namespace, "big", 4)
            writes_seen_as_changes(stack, watch, before, mark, "every Ticket write after the heal seen as a change")
        state_changes = [
            (old, new) for _, old, new in watch.since(mark, namespace) if "state" in changed_status(old, new)
        ]
        assert len(state_changes) == 1, f"resolving one ticket is one write: {state_changes}"
        [(old, new)] = state_changes
        assert new["status"]["store"] == "big-7" and new["status"]["state"] == "resolved"
        assert new["metadata"]["labels"]["state"] == "resolved", "its label and status in the same write"
        others = [changed_status(o, n) for _, o, n in watch.since(mark, namespace) if (o, n) != (old, new)]
        assert all(changed <= {"lastSeen", "message"} for changed in others), others
    finally:
        watch.close()
    return measured


@pytest.mark.parametrize(
    "tamper",
    [
        {"status": {"state": "resolved", "resolvedAt": "2026-01-01T00:00:00.5Z"}},
        {"metadata": {"ownerReferences": None, "labels": {"operator-k8s.io/cluster-uid": None, "state": "x"}}},
    ],
    ids=["status", "owner-and-labels"],
)
def test_a_tampered_ticket_is_restored_and_a_hold_set_on_it_is_honoured(
    stack: Stack, namespace: str, tamper: dict[str, Any]
) -> None:
    apply(stack, pending_store("tikv-0", namespace))
    spec = {"interval": "1s", "stores": {"selector": {"matchLabels": {"app": "big"}}},
            "invariants": ONLY_STORES_READY}  # fmt: skip
    cluster = monitored_cluster("big", namespace, stack, **spec)
    with run_operator(stack) as operator:
        apply(stack, cluster)
        [(name, wanted)] = eventually(lambda: list(shown(stack, namespace).items()), what="the Ticket")
        stack.kubectl("patch", "ticket", name, "-n", namespace, "--type=merge", "-p", json.dumps(tamper))
        stack.kubectl("patch", "ticket", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"hold":true}}')

        def restored() -> dict[str, Any] | None:
            current = shown(stack, namespace)[name]
            same = (current["status"]["state"], current["metadata"].get("ownerReferences"),
                    current["metadata"]["labels"]) == ("open", wanted["metadata"]["ownerReferences"],
                                                       wanted["metadata"]["labels"])  # fmt: skip
            return current if same and "resolvedAt" not in current["status"] else None

        eventually(restored, timeout=10, what="the Ticket restored")
        healed = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
        stack.kubectl("patch", "pod", "tikv-0", "-n", namespace, "--subresource=status", "--type=merge",
                      "-p", json.dumps(healed))  # fmt: skip
        operator.checked_after(namespace, "big", 3)
        current = shown(stack, namespace)[name]
        assert current["spec"]["hold"] is True and current["status"]["state"] in OPEN_STATES, "held: stays open"


def test_tickets_are_rebuilt_after_their_crd_is_deleted_and_recreated_a_held_one_held(
    stack: Stack, namespace: str
) -> None:
    """dfbc121 never rebuilt the held ticket's Ticket (it remembered having written it) and took 39 s for the
    other. Deleting the CRD deletes every Ticket of the stack; the test restores the CRD whatever happens."""
    apply(stack, pending_store("tikv-0", namespace), pending_store("tikv-1", namespace))
    spec = {"interval": "1s", "stores": {"selector": {"matchLabels": {"app": "big"}}}, "invariants": ONLY_STORES_READY}
    cluster = monitored_cluster("big", namespace, stack, **spec)
    crd = REPO_ROOT / "crds" / "tickets.operator-k8s.io.yaml"
    with run_operator(stack) as operator:
        apply(stack, cluster)
        names = eventually(lambda: sorted(shown(stack, namespace)) if len(shown(stack, namespace)) == 2 else None,
                           what="two Tickets")  # fmt: skip
        held = names[0]
        stack.kubectl("patch", "ticket", held, "-n", namespace, "--type=merge", "-p", '{"spec":{"hold":true}}')
        eventually(lambda: any(r["hold"] for r in tickets_in_db(stack, namespace)), what="the hold in Postgres")
        try:
            stack.kubectl("delete", "crd", "tickets.operator-k8s.io", "--wait=true", "--timeout=60s")
        finally:
            stack.kubectl("apply", "--server-side", "-f", str(crd))
            stack.kubectl("wait", "--for=condition=Established", "crd/tickets.operator-k8s.io", "--timeout=60s")
        recreated = time.monotonic()
        rebuilt = eventually(lambda: (t := shown(stack, namespace)) and sorted(t) == names and t, timeout=60,
                             what="both Tickets rebuilt")  # fmt: skip
        took = time.monotonic() - recreated
        assert rebuilt[held]["spec"]["hold"] is True and rebuilt[held]["status"]["state"] in OPEN_STATES
        assert rebuilt[names[1]]["spec"]["hold"] is False
        operator.checked_after(namespace, "big", 2)
    print(f"[measured] Tickets CRD re-created → both Tickets rebuilt: {took:.1f}s")
