"""An import-linter contract that import-linter does not ship: no module uses another module's private name.

``private_names`` reads the source of every module in ``containers`` and reports each name starting with one
underscore (not a dunder) that it takes from another module of the graph: ``from a.b import _x``, or ``b._x`` where
``b`` was imported as a module. Private modules are the built-in ``private_modules`` contract's concern.
Registered in pyproject.toml (``contract_types``); ``lint-imports`` runs it with the others.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _source(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_uses(module: str, graph: grimp.ImportGraph) -> list[str]:
    """Each private name of another module of ``graph`` that ``module`` uses, as ``line: text``."""
    path = _source(module)
    if path is None:
        return []
    known = {m for m in graph.modules if not graph.is_module_squashed(m)}  # the root packages' own modules
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> module of the graph it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, path.name == "__init__.py")
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif source in known and source != module and _private(alias.name):
                    found.append(f"{node.lineno}: from {source} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    bound[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and bound[node.value.id] != module
            and _private(node.attr)
        ):
            found.append(f"{node.lineno}: {bound[node.value.id]}.{node.attr}")
    return found


class PrivateNamesContract(Contract):
    """No module in ``containers`` uses a private name of another module."""

    type_name = "private_names"

    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        violations: dict[str, list[str]] = {}
        for container in self.containers:  # type: ignore[attr-defined]
            for module in sorted({container} | graph.find_descendants(container)):
                uses = private_uses(module, graph)
                if uses:
                    violations[module] = uses
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, uses in check.metadata["violations"].items():
            output.print_error(f"{module} uses private names of other modules:")
            output.new_line()
            for use in uses:
                output.print_error(f"-   {use}", bold=False)
            output.new_line()
