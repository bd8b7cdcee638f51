"""A node-mode run killed outright (SIGKILL: no finalizer, no stop) is cleaned up by the next one, as the README says.

The killed run leaves its whole stack running (API server, kubelet, containerd, pods) and its bridge, chains, mounts,
cgroups and kernel settings in place; the next run's first step must stop and undo all of it from the record the
killed run kept, and then start.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from typing import IO

import pytest

from devstack.host import hoststate
from devstack.host.hoststate import HostState
from devstack.host.paths import REPO_ROOT
from devstack.world.node import Node

pytestmark = pytest.mark.stack


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    """The process's output lines up to the first containing ``text``; fails if it exits or the time runs out.

    A thread reads the lines: polling the pipe instead would miss lines already in the reader's buffer."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, args=(process.stdout,), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise AssertionError(f"exited ({process.wait()}) before {text!r}:\n{''.join(seen[-30:])}")
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {timeout}s:\n{''.join(seen[-30:])}")


@pytest.mark.timeout(600)  # may rebuild the operator image, then start a whole node-mode stack
def test_a_killed_run_is_cleaned_up_by_the_next() -> None:
    Node.check_machine()
    Node.prepare()
    before = HostState.capture()
    up = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up", "--node"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        try:
            wait_for_line(up, "The stack is up", timeout=200)
        finally:
            up.kill()  # the python process only: its stack lives on, as after kill -9 or an OOM kill
            up.wait()
        [record] = hoststate.records()
        left_running = hoststate.recorded_processes(record)
        assert len(left_running) >= 8, "the killed run's components still run"
        assert before.differences() != [], "the killed run's changes are still on the machine"

        recovered = time.monotonic()
        Node.check_machine()  # the next run's first step
        print(f"[measured] a killed run cleaned up by the next: {time.monotonic() - recovered:.1f}s", flush=True)
        assert hoststate.records() == []
        still = [pid for pid in left_running if os.path.exists(f"/proc/{pid}") and _not_zombie(pid)]
        assert still == [], f"processes of the killed run still alive: {still}"
        assert before.differences() == [], "the machine is as it was before the killed run"
    finally:
        if hoststate.records():  # the test failed midway: leave no stack behind for the next test or run
            Node.check_machine()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_node_mode_refusals_are_one_message_not_a_traceback() -> None:
    """A second node-mode run while one holds the lock is refused in one readable line."""
    fd = hoststate.lock()
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "devstack", "up", "--node"], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"devstack: Another node-mode stack runs on this machine (it holds {hoststate.LOCK_FILE})"
    ]
