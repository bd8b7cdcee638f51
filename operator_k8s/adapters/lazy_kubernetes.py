"""kubernetes-asyncio's client packages imported lazily: each API class and model on first use.

Why: ``kubernetes_asyncio.client`` (and its ``api`` and ``models`` packages) import every generated API and model
when imported — about 860 modules and 33 MiB of a process whose whole idle size is about 100 MiB — although the
operator uses a handful (CustomObjectsApi, CoreV1Api, the ApiClient, V1ObjectMeta for kopf). kopf imports the client
as soon as it is itself imported, so the lazy packages must be in place before: the package ``operator_k8s``
installs them when it is first imported.

Each lazy package is the real package (its ``__path__``, so ``import kubernetes_asyncio.client.rest`` works as
before) whose ``__init__`` is not run; a module ``__getattr__`` (PEP 562) imports a name from the module the real
``__init__`` would have imported it from, read from that file's ``from X import Name`` lines. Should a release of
the library change that shape (no such line found), nothing is installed and the client is imported as usual.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

PACKAGES = ("kubernetes_asyncio.client", "kubernetes_asyncio.client.api", "kubernetes_asyncio.client.models")
"""The packages whose ``__init__`` imports every generated module."""

_FROM_IMPORT = re.compile(r"^from (kubernetes_asyncio\.client[\w.]*) import (\w+)\s*(?:#.*)?$", re.MULTILINE)
_VERSION = re.compile(r"^__version__ = \"([^\"]+)\"$", re.MULTILINE)


def exported_names(init_source: str) -> dict[str, str]:
    """Name → module that defines it, as a generated package ``__init__`` imports them."""
    return {name: module for module, name in _FROM_IMPORT.findall(init_source)}


class _LazyPackage(types.ModuleType):
    """A generated package whose names are imported when first read."""

    def __init__(self, name: str, path: str, names: dict[str, str], version: str | None) -> None:
        super().__init__(name)
        self.__path__ = [path]
        self.__package__ = name
        self.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        self.__spec__.submodule_search_locations = [path]
        self.__all__ = list(names)
        self._lazy_names = names
        if version is not None:
            self.__version__ = version

    def __getattr__(self, name: str) -> Any:
        module = self._lazy_names.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(self, name, value)  # read once: later reads are plain attribute lookups
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._lazy_names))


def install() -> bool:
    """Put the lazy packages in ``sys.modules`` unless the client is already imported; whether they are in place."""
    if any(name in sys.modules for name in PACKAGES):
        return all(isinstance(sys.modules.get(name), _LazyPackage) for name in PACKAGES)
    root = importlib.util.find_spec("kubernetes_asyncio")
    if root is None or not root.submodule_search_locations:
        return False
    client_dir = Path(next(iter(root.submodule_search_locations))) / "client"
    packages: list[_LazyPackage] = []
    for name, directory in zip(PACKAGES, (client_dir, client_dir / "api", client_dir / "models"), strict=True):
        try:
            source = (directory / "__init__.py").read_text(encoding="utf-8")
        except OSError:
            return False
        names = exported_names(source)
        if not names:
            return False
        version = _VERSION.search(source)
        packages.append(_LazyPackage(name, str(directory), names, version.group(1) if version else None))
    client, api, models = packages
    setattr(client, "api", api)  # noqa: B010 - as the import system sets a loaded subpackage on its parent
    setattr(client, "models", models)  # noqa: B010
    for package in packages:
        sys.modules[package.__name__] = package
    return True
