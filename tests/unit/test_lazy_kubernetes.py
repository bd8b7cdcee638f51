"""kubernetes-asyncio's client imported lazily: the operator loads only the API classes and models it uses, and every
name the real packages export still resolves to the very object the real package would give."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from operator_k8s.adapters.lazy_kubernetes import exported_names

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    import operator_k8s.__main__  # everything the running operator imports at start
    loaded = sum(1 for name in sys.modules if name.startswith("kubernetes_asyncio.client."))
    from operator_k8s.adapters.lazy_kubernetes import PACKAGES
    mismatched, checked = [], 0
    for package in PACKAGES:
        lazy = sys.modules[package]
        for name, module in lazy._lazy_names.items():
            checked += 1
            if getattr(lazy, name) is not getattr(importlib.import_module(module), name):
                mismatched.append(f"{package}.{name}")
    print(json.dumps({"loaded": loaded, "lazy": type(sys.modules["kubernetes_asyncio.client"]).__name__,
                      "checked": checked, "mismatched": mismatched}))
    """
)


def test_the_operator_imports_a_few_client_modules_and_every_name_still_resolves() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
    )
    found = json.loads(result.stdout)
    assert found["lazy"] == "_LazyPackage"
    assert found["loaded"] < 60, "the operator imports the client's generated modules wholesale again"
    assert found["checked"] > 800
    assert found["mismatched"] == []


def test_names_are_read_from_from_import_lines() -> None:
    source = (
        "from kubernetes_asyncio.client.api.core_v1_api import CoreV1Api\n"
        "from kubernetes_asyncio.client.models.v1_pod import V1Pod  # noqa: E501\n"
        "import os\n"
        "from os import path\n"
    )
    assert exported_names(source) == {
        "CoreV1Api": "kubernetes_asyncio.client.api.core_v1_api",
        "V1Pod": "kubernetes_asyncio.client.models.v1_pod",
    }
