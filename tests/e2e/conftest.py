"""Fixtures of the e2e tier's scenarios (tests/e2e/support.py has what they share)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.world.stack import Stack
from tests.e2e.support import Scene, SharedOperator


@pytest.fixture(scope="module")
def shared(stack: Stack) -> Iterator[SharedOperator]:
    operator = SharedOperator(stack)
    try:
        yield operator
    finally:
        operator.stop()


@pytest.fixture
def scene(stack: Stack) -> Iterator[Scene]:
    created = Scene(stack)
    try:
        yield created
    finally:
        created.cleanup()
