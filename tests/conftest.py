"""Fixtures for the tiers on the real stack. Unit tests need none of them."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kopf
import pytest
from kopf.testing import KopfRunner

from devstack.host.processes import Process, stop_all
from devstack.world.postgres import PostgresPair
from devstack.world.stack import Stack
from operator_k8s.__main__ import Operator
from operator_k8s.settings import load_notifications, load_settings
from tests.stackutil import InProcessOperator

_names = itertools.count()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The whole local stack, once per test session."""
    started = Stack.start()
    os.environ["KUBECONFIG"] = str(started.kubeconfig)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def namespace(stack: Stack) -> str:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t{os.getpid()}-{next(_names)}"
    stack.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    """Its own two servers (not the stack's Postgres), removed afterwards; /dev/shm, where the postgres user may
    reach them when the tests run as root."""
    workdir = Path(tempfile.mkdtemp(prefix="operator-k8s-pg-pair-", dir="/dev/shm"))
    processes: list[Process] = []
    try:
        yield PostgresPair.start(workdir=workdir, own=processes.append)
    finally:
        stop_all(processes)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def run_operator(stack: Stack, **overrides: str) -> Iterator[InProcessOperator]:
    """Run the operator in this process with KopfRunner, as `python -m operator_k8s` would, against the stack."""
    env = {
        "OPERATOR_K8S_DATABASE_DSN": stack.operator_dsn,
        "OPERATOR_K8S_TICK_SECONDS": "0.5",
        "OPERATOR_K8S_LOG_FORMAT": "text",
        "OPERATOR_K8S_METRICS_PORT": "0",
        **overrides,
    }
    settings = load_settings(env)
    operator = Operator(settings, str(stack.kubeconfig), load_notifications(settings.notifications_file))
    scope = [arg for name in settings.namespaces for arg in ("--namespace", name)] or ["--all-namespaces"]
    runner = KopfRunner(
        ["run", "--standalone", *scope, "--verbose"],
        registry=operator.registry(),
        settings=kopf.OperatorSettings(),
        timeout=60,
    )
    with runner:
        yield InProcessOperator(operator)
    if runner.exception is not None:
        raise runner.exception


@pytest.fixture
def operator(stack: Stack) -> Iterator[InProcessOperator]:
    with run_operator(stack) as running:
        yield running


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A terminated run (CI's timeout, kill) still tears its stacks down: pytest runs finalizers on an interrupt,
    not on SIGTERM's default action."""
    signal.signal(signal.SIGTERM, _interrupt)


LEVELS = {"critical": 0, "high": 1, "medium": 2, "low": 3, "lowest": 4}
"""Test importance levels, after CloudNativePG's: a run at depth N runs every test of level N or more important.
By tier unless a test says otherwise with ``@pytest.mark.level("…")``: unit tests are critical, integration high,
e2e medium, the node tier low."""
TIER_LEVEL = {"unit": "critical", "integration": "high", "e2e": "medium", "node": "low"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--depth",
        default=os.environ.get("TEST_DEPTH", "lowest"),
        choices=list(LEVELS),
        help="run the tests of this importance level and above (default lowest: all; `make quick` runs medium)",
    )


def level_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("level")
    if marker is not None:
        return str(marker.args[0])
    tier = item.path.relative_to(item.config.rootpath / "tests").parts[0]
    return TIER_LEVEL.get(tier, "critical")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the tests below the run's depth: a quick run reports only what it ran."""
    depth = LEVELS[config.getoption("--depth")]
    kept, dropped = [], []
    for item in items:
        level = level_of(item)
        if level not in LEVELS:
            raise pytest.UsageError(f"{item.nodeid}: unknown level {level!r} (one of {', '.join(LEVELS)})")
        (kept if LEVELS[level] <= depth else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Show the stack's component logs under a failing test that used it."""
    if call.excinfo is not None and call.when == "call":
        for started in getattr(item, "funcargs", {}).values():
            if isinstance(started, Stack):
                item.add_report_section("call", "stack logs", started.logs())
