"""Supervision tensors of the EAGLE-3 trainer: the one-slot left shift and the draft-vocab target."""

from __future__ import annotations

import torch

from eagle_ext.models.target import (
    shift_left_with_zero,  # the capture applies the first shift; re-exported here
)

__all__ = ["shift_left_with_zero", "compute_target_distribution"]


@torch.no_grad()
def compute_target_distribution(
    target_logits: torch.Tensor,
    selected_token_ids: torch.Tensor,
    selected_token_mask: torch.Tensor,
    loss_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target distribution over the draft vocabulary and the positions it supervises.

    The target is renormalised over the draft vocab: ``softmax(fp32(target_logits[..., ids]))``.
    A position is supervised iff ``loss_mask`` is set and the full-vocab argmax of the target is in the
    draft vocab (``selected_token_mask[argmax]``); positions the draft cannot hit are dropped from the
    loss (they still count as rejections in tau_sim, see the trainer).

    Args:
        target_logits: ``[B, T, V]`` (any float dtype), already in the trainer's shifted frame.
        selected_token_ids: int ``[Vd]`` draft row -> target id.
        selected_token_mask: bool ``[V]`` membership of the draft vocab.
        loss_mask: ``[B, T]`` (any dtype; non-zero = supervised).

    Returns:
        ``(target_probs fp32 [B, T, Vd], position_mask bool [B, T, 1])``, both detached.

    Raises:
        ValueError: shape mismatches.
    """
    if target_logits.dim() != 3:
        raise ValueError(f"target_logits must have shape [B, T, V], got {list(target_logits.shape)}")
    b, t, v = target_logits.shape
    if selected_token_mask.dim() != 1 or selected_token_mask.numel() != v:
        raise ValueError(f"selected_token_mask must have shape [V={v}], got {list(selected_token_mask.shape)}")
    if selected_token_ids.dim() != 1:
        raise ValueError(f"selected_token_ids must have shape [Vd], got {list(selected_token_ids.shape)}")
    if tuple(loss_mask.shape) != (b, t):
        raise ValueError(f"loss_mask must have shape [B, T] = {[b, t]}, got {list(loss_mask.shape)}")
    top = target_logits.argmax(dim=-1)
    position_mask = selected_token_mask.to(target_logits.device, torch.bool)[top] & (loss_mask != 0)
    ids = selected_token_ids.to(target_logits.device, torch.int64)
    target_probs = torch.softmax(target_logits.index_select(-1, ids).float(), dim=-1)
    return target_probs, position_mask.unsqueeze(-1)
