"""The per-step EAGLE-3 loss: masked soft cross-entropy of the draft-vocab logits against the target
distribution, plus greedy-match counts.

Two implementations with the same result:

- ``"reference"``: ``logits = draft.compute_logits(h)`` ``[B, T, Vd]``, ``log_softmax`` in fp32, soft CE
  ``-sum_v p_v log q_v`` per position, summed over supervised positions and divided by ``max(valid, 1)``.
- ``"fused"``: :func:`eagle_ext.ops.fused_linear_kl` on ``(lm_head_input(h), lm_head.weight)``, which
  never materialises the ``[N, Vd]`` logits.

``"auto"`` picks ``"fused"`` when ``eagle_ext.ops.linear_kl`` imports, else ``"reference"``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LOSS_IMPLEMENTATIONS", "Eagle3StepLoss", "resolve_loss_impl", "eagle3_step_loss"]

LOSS_IMPLEMENTATIONS = ("auto", "reference", "fused")
_FUSED_MODULE = "eagle_ext.ops.linear_kl"


@dataclass
class Eagle3StepLoss:
    """Result of one TTT step's loss.

    Attributes:
        loss: fp32 scalar: masked mean soft CE (0 when nothing is supervised).
        correct: bool ``[B, T]``: supervised positions whose draft argmax equals the target argmax.
        valid: int64 scalar: number of supervised positions.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    valid: torch.Tensor


def resolve_loss_impl(loss_impl: str) -> str:
    """Map ``"auto"`` to ``"fused"`` (if ``eagle_ext.ops.linear_kl`` imports) or ``"reference"``.

    Raises:
        ValueError: ``loss_impl`` not in ``("auto", "reference", "fused")``.
        ImportError: ``"fused"`` requested but the module does not import.
    """
    if loss_impl not in LOSS_IMPLEMENTATIONS:
        raise ValueError(f"loss_impl must be one of {LOSS_IMPLEMENTATIONS}, got {loss_impl!r}")
    if loss_impl == "reference":
        return loss_impl
    try:
        importlib.import_module(_FUSED_MODULE)
    except ImportError:
        if loss_impl == "fused":
            raise
        return "reference"
    return "fused"


def eagle3_step_loss(
    draft_model: nn.Module,
    hidden: torch.Tensor,
    target_probs: torch.Tensor,
    position_mask: torch.Tensor,
    *,
    loss_impl: str = "reference",
    row_offset: int = 0,
) -> Eagle3StepLoss:
    """Masked soft-CE loss of one TTT step and its greedy-match counts.

    Args:
        draft_model: the draft (uses ``lm_head_input``/``compute_logits`` and ``lm_head.weight``).
        hidden: ``[B, T, H]`` draft output of this step.
        target_probs: fp32 ``[B, T, Vd]`` target distribution over the draft vocab (rows may be
            unnormalised or zero where not supervised).
        position_mask: bool ``[B, T]`` supervised positions (of this step: already shifted).
        loss_impl: ``"reference"``, ``"fused"`` or ``"auto"``.
        row_offset: int ``k >= 0``: slot ``t`` is scored against ``target_probs[:, t + k]`` (zeros for
            ``t + k >= T``), i.e. the target shifted left ``k`` times with zero fill, read in place. The
            TTT unroll passes its step-0 target and ``k`` instead of a shifted copy per step, so the
            vocab-wide memory kept for backward does not grow with the number of steps.

    Returns:
        :class:`Eagle3StepLoss` (loss fp32 ``sum / max(valid, 1)``).

    Raises:
        ValueError: shape mismatches or an unknown ``loss_impl``.
    """
    impl = resolve_loss_impl(loss_impl)
    b, t, h = hidden.shape
    vd = draft_model.lm_head.weight.shape[0]
    if tuple(target_probs.shape) != (b, t, vd):
        raise ValueError(f"target_probs must have shape [B, T, Vd] = {[b, t, vd]}, got {list(target_probs.shape)}")
    if tuple(position_mask.shape) != (b, t):
        raise ValueError(f"position_mask must have shape [B, T] = {[b, t]}, got {list(position_mask.shape)}")
    if isinstance(row_offset, bool) or not isinstance(row_offset, int) or row_offset < 0:
        raise ValueError(f"row_offset must be an int >= 0, got {row_offset!r}")
    mask = position_mask.to(torch.bool)
    valid = mask.sum(dtype=torch.int64)
    denominator = valid.clamp_min(1).to(torch.float32)
    if impl == "fused":
        from eagle_ext.ops.linear_kl import _triton_available, fused_linear_kl

        # On CUDA the recompute kernel ("triton"): the TTT unroll makes ttt_steps calls before one backward,
        # and the gradient-in-forward path ("gemm") would hold a dH and an fp32 dW [Vd, H] per call until
        # then; the recompute kernel keeps three fp32 per row (memory flat in the number of steps).
        res = fused_linear_kl(
            draft_model.lm_head_input(hidden).reshape(b * t, h),
            draft_model.lm_head.weight,
            mask.reshape(b * t),
            target_probs=target_probs.reshape(b * t, vd),
            mode="soft_ce",
            row_offset=row_offset,
            seq_len=t,
            impl="triton" if hidden.is_cuda and _triton_available() else "auto",
        )
        loss = res.loss.to(torch.float32) / denominator
        correct = (res.draft_argmax == res.target_argmax).view(b, t) & mask
        return Eagle3StepLoss(loss=loss, correct=correct, valid=valid)
    logits = draft_model.compute_logits(hidden)
    log_q = torch.log_softmax(logits.float(), dim=-1)
    # slot s < T - k reads target slot s + k; the k tail slots have a zero target (loss 0, argmax 0)
    shown = target_probs[:, row_offset:].float()
    tail = t - shown.shape[1]
    per_position = nn.functional.pad(-(shown * log_q[:, : t - tail]).sum(dim=-1), (0, tail))
    target_argmax = nn.functional.pad(shown.argmax(dim=-1), (0, tail))
    loss = torch.where(mask, per_position, torch.zeros_like(per_position)).sum() / denominator
    correct = (logits.argmax(dim=-1) == target_argmax) & mask
    return Eagle3StepLoss(loss=loss, correct=correct, valid=valid)
