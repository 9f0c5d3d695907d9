"""Argument checks shared across eagle_ext: one wording for every "must be an int >= N" error.

A leaf module: it imports nothing from eagle_ext, so any layer (ops excepted, which keep their own TypeError-raising
checks in :mod:`eagle_ext.ops._checks`) can use it without an import cycle.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_int", "check_ratio", "is_int"]


def is_int(value: Any, minimum: int | None = None) -> bool:
    """Whether ``value`` is an int (a bool is not) and, when ``minimum`` is given, ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum is None or value >= minimum


def check_int(name: str, value: Any, minimum: int, *, flag: str | None = None) -> int:
    """Return ``value`` when it is an int ``>= minimum`` (a bool is not an int here).

    Raises:
        ValueError: ``"{name} must be an int >= {minimum}, got {value!r}"``; with ``flag`` (the command-line option
            that set it) ``"{name} ({flag}) must be ..."``.
    """
    if not is_int(value, minimum):
        where = name if flag is None else f"{name} ({flag})"
        raise ValueError(f"{where} must be an int >= {minimum}, got {value!r}")
    return value


def check_ratio(name: str, value: Any) -> float:
    """Return ``value`` as a float when it is a real number in (0, 1].

    Raises:
        ValueError: ``"{name} must be a float in (0, 1], got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a float in (0, 1], got {value!r}")
    return float(value)
