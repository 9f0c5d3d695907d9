"""AdamW with a linear warmup then a cosine decay: the optimiser of the recipe (and of the demo's toy target)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["build_optimizer", "warmup_cosine"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier at ``step`` (0-based): ``(step + 1) / warmup_steps`` during the warmup, then a cosine
    from 1 down to ``min_ratio`` at ``total_steps``; ``min_ratio`` after it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, total_steps: int, *, warmup_steps: int | None = None,
    weight_decay: float = 0.0, min_ratio: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
    fused: bool | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable ``params`` and its per-step scheduler (call ``scheduler.step()`` after each
    ``optimizer.step()``). ``warmup_steps`` defaults to 10% of ``total_steps`` (at least 1). ``fused`` is passed
    to AdamW (None: torch's default; the recipe asks for the fused kernel on CUDA).

    Raises:
        ValueError: ``lr`` <= 0, ``total_steps`` < 1, ``warmup_steps`` < 0, or no trainable parameter.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    warmup = max(1, total_steps // 10) if warmup_steps is None else warmup_steps
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("params holds no parameter with requires_grad=True")
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total_steps, min_ratio)
    )
    return optimizer, scheduler
