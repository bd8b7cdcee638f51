"""The unit tier's shared fixture: a Monitor wired to the fakes."""

from __future__ import annotations

import pytest

from operator_k8s.service import Monitor
from tests.unit.cycles import Parts
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore


@pytest.fixture
def parts() -> Parts:
    store, metrics, mirror = FakeStore(), FakeMetrics(), FakeMirror()
    return Monitor(store=store, metrics=metrics, mirror=mirror), store, metrics, mirror
