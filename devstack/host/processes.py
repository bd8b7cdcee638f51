"""Start a child process with its output in a log file, wait for readiness, stop it by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def log(message: str) -> None:
    """The stack's progress lines on stdout (they are what a user waits on: builds, start-up, timings)."""
    print(f"[devstack] {message}", flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_checked(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout, or an error naming ``what`` with the tail of its output."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}")
    return result.stdout.strip()


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, parents first, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue += children.get(pid, [])
    return found


class ComponentFailed(RuntimeError):
    """A component did not become ready; the message carries the tail of its log."""


@dataclass
class Process:
    """One child process of the stack, owned and stopped by pid."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    user: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            user=self.user,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it is true; fail early with the log if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ComponentFailed(f"{self.name} exited before {what}; its log:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:
                time.sleep(0.1)
                continue
            time.sleep(0.1)
        raise ComponentFailed(f"{self.name} not {what} after {timeout:.0f}s; its log:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the process and its descendants have used so far: each live process's own and
        its reaped children's (a Postgres backend that ended is counted in the postmaster that reaped it)."""
        if not self.alive():
            return 0.0
        ticks = 0
        for pid in _tree(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile: its parent reaps it and counts it next time
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def freeze(self) -> None:
        """SIGSTOP the process and every descendant (Postgres backends each start a session of their own): it keeps
        its sockets open and answers nothing, like a hung dependency."""
        for pid in _tree(self.pid):
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in _tree(self.pid):
            os.kill(pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash), and reap it."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process by pid, then SIGKILL its group if it lingers."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.thaw()  # a frozen process cannot act on SIGTERM
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=grace)


def stop_all(processes: list[Process]) -> None:
    """Stop ``processes`` newest first; one that fails to stop is reported and the others still stop."""
    for process in reversed(processes):
        try:
            process.stop()
        except Exception as error:
            log(f"Stopping {process.name} failed: {error}")
    processes.clear()
