"""Metrics of one EAGLE-3 step and the simulated acceptance length (tau_sim)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Eagle3StepMetrics", "simulated_accept_length"]


@dataclass
class Eagle3StepMetrics:
    """Aggregated metrics from one EAGLE-3 training step.

    Attributes:
        loss: fp32 scalar with grad: ``sum_k 0.8^k L_k / sum_k 0.8^k``, ``L_k`` the masked mean soft CE
            of step k.
        accuracy: fp32 scalar, detached: greedy matches over supervised positions, all steps together.
        valid_tokens: int64 scalar: supervised positions summed over steps.
        step_prefix_hits: int64 ``[ttt]``: slots whose greedy chain was right at every step <= k.
        step_valid: int64 ``[ttt]``: slots whose (shifted, gated) loss mask held at every step <= k;
            out-of-draft-vocab targets stay here, so they count as rejections.
        step_losses: fp32 ``[ttt]``, detached: the per-step losses ``L_k``.

    Counters are int64 and the loss fp32 on every device (the seed's bf16 counters rounded 2049 to 2048).
    """

    loss: torch.Tensor
    accuracy: torch.Tensor
    valid_tokens: torch.Tensor
    step_prefix_hits: torch.Tensor
    step_valid: torch.Tensor
    step_losses: torch.Tensor | None = None

    @property
    def simulated_accept_length(self) -> float:
        """tau_sim of this step alone (see :func:`simulated_accept_length`)."""
        return simulated_accept_length(self.step_prefix_hits, self.step_valid)


def simulated_accept_length(hits: torch.Tensor | Sequence[float], valid: torch.Tensor | Sequence[float]) -> float:
    """``tau_sim = 1 + sum_k hits[k] / max(valid[k], 1)``: the acceptance length greedy chain drafting
    would reach if every step-k proposal were accepted exactly when the draft's prefix is right.

    Sum ``hits``/``valid`` over a logging window (and ranks) before calling. Oracles: hits ``[2, 1]``,
    valid ``[4, 4]`` -> 1.75; a step with valid 0 contributes 0.

    Args:
        hits, valid: equally long 1-D sequences / tensors of non-negative counts.

    Raises:
        ValueError: different lengths, not 1-D, negative counts, or ``hits > valid``.
    """
    h = torch.as_tensor(hits, dtype=torch.float64).detach().cpu()
    v = torch.as_tensor(valid, dtype=torch.float64).detach().cpu()
    if h.dim() != 1 or v.dim() != 1 or h.numel() != v.numel():
        raise ValueError(f"hits and valid must be 1-D and equally long, got shapes {list(h.shape)} and {list(v.shape)}")
    if bool((h < 0).any()) or bool((v < 0).any()):
        raise ValueError(f"hits and valid must be non-negative, got {h.tolist()} and {v.tolist()}")
    if bool((h > v).any()):
        raise ValueError(f"hits must not exceed valid, got {h.tolist()} and {v.tolist()}")
    return float(1.0 + (h / v.clamp_min(1.0)).sum())
