"""The first thin slice: StoresReady follows the simulator's store pods through a kopf index."""

from __future__ import annotations

import json

import pytest

from devstack.world.stack import Stack
from tests.stackutil import InProcessOperator, condition_status, eventually, monitored_cluster, simulator

pytestmark = pytest.mark.stack


def test_stores_ready_flips_with_a_store_outage(stack: Stack, namespace: str, operator: InProcessOperator) -> None:
    simulator(stack, "PUT", f"/clusters/{namespace}/tikv", {"stores": 3, "labels": {"app": "tikv"}})
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(monitored_cluster("tikv", namespace, stack)))

    eventually(lambda: condition_status(stack, namespace, "tikv", "StoresReady") == "True", what="StoresReady=True")

    simulator(stack, "PUT", f"/clusters/{namespace}/tikv/stores/tikv-1/faults/down")
    eventually(lambda: condition_status(stack, namespace, "tikv", "StoresReady") == "False", what="StoresReady=False")

    simulator(stack, "DELETE", f"/clusters/{namespace}/tikv/stores/tikv-1/faults/down")
    eventually(
        lambda: condition_status(stack, namespace, "tikv", "StoresReady") == "True", what="StoresReady=True again"
    )
