"""Input validation shared by the op wrappers: every error names the argument, the value and what was expected."""

from __future__ import annotations

import torch

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def as_index_vector(name: str, t, *, allow_bool: bool = False) -> torch.Tensor:
    """Return ``t`` as a contiguous 1-D int64 CPU tensor; raise if it is not a 1-D integer tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype not in _INT_DTYPES and not (allow_bool and t.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.int64).contiguous()


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """Return ``value`` as int; raise if it is not an int (bools rejected) or below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_ratio(name: str, value) -> float:
    """Return ``value`` as float; raise unless it is a real number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)
