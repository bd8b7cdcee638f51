"""The bench's environment CPU: a process tree's own seconds, a child that already ended included (a Postgres
backend is reaped by the postmaster, whose counters then carry it)."""

from __future__ import annotations

import sys
from pathlib import Path

from devstack.host.processes import Process

BURN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3:\n    pass\n"


def test_cpu_seconds_count_a_reaped_child(tmp_path: Path) -> None:
    log = tmp_path / "burner.log"
    script = f"{sys.executable} -c '{BURN}' && echo burned && exec sleep 60"
    process = Process("burner", ["sh", "-c", script], log).start()
    try:
        process.wait_until(lambda: "burned" in log.read_text(), 30, "done burning")
        assert process.cpu_seconds() >= 0.25
    finally:
        process.stop()
    assert process.cpu_seconds() == 0.0  # stopped: nothing left to read
