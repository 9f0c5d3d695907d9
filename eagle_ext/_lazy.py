"""Lazy attribute exports for packages whose members pull in heavy or optional dependencies."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, table: dict[str, str]):
    """Return ``(__getattr__, __dir__)`` resolving ``name -> module`` from ``table`` on first access.

    ``table`` maps an exported name to the absolute module that defines it.
    """

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__():
        return sorted(table)

    return __getattr__, __dir__
