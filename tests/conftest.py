"""Fixtures for the tiers on the real stack. Unit tests need none of them."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import kopf
import pytest
from kopf.testing import KopfRunner

from devstack.stack import Stack
from operator_k8s.__main__ import Operator
from operator_k8s.settings import load_settings
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


@contextmanager
def run_operator(stack: Stack, **overrides: str) -> Iterator[InProcessOperator]:
    """Run the operator in this process with KopfRunner, as `python -m operator_k8s` would, against the stack."""
    env = {
        "OPERATOR_K8S_DATABASE_DSN": stack.postgres_dsn,
        "OPERATOR_K8S_TICK_SECONDS": "0.5",
        "OPERATOR_K8S_LOG_FORMAT": "text",
        "OPERATOR_K8S_METRICS_PORT": "0",
        **overrides,
    }
    settings = load_settings(env)
    operator = Operator(settings, str(stack.kubeconfig))
    runner = KopfRunner(
        ["run", "--standalone", "--all-namespaces", "--verbose"],
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


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Show the stack's component logs under a failing test that used it."""
    if call.excinfo is not None and call.when == "call":
        for started in getattr(item, "funcargs", {}).values():
            if isinstance(started, Stack):
                item.add_report_section("call", "stack logs", started.logs())
