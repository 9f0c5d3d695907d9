"""EAGLE-3 draft training step with the test-time-training (TTT) unroll."""

from __future__ import annotations

import torch
from torch import nn

from eagle_ext.eagle3.loss import eagle3_step_loss, resolve_loss_impl
from eagle_ext.eagle3.metrics import Eagle3StepMetrics
from eagle_ext.eagle3.targets import compute_target_distribution, shift_left_with_zero

__all__ = ["Eagle3TrainerModule"]


class Eagle3TrainerModule(nn.Module):
    """Draft-side EAGLE-3 trainer: project the aux states once, then unroll ``ttt_steps`` draft steps
    that share one K/V ``cache_hidden`` (so step k attends to the keys of steps 0..k-1 at its slot, as
    at deployment); gradients flow through the whole unroll.

    Step k (0-based), slot t: the hidden input is the draft's own step-(k-1) output at t (hidden states
    are never shifted); ids, target distribution, position mask and loss mask are the step-0 ones shifted
    left k more times; RoPE positions are ``position_ids + k``. The target distribution is never copied
    per step: every step reads the step-0 ``[B, T, Vd]`` tensor at slot ``t + k`` (``row_offset=k`` of the
    step loss), so the vocab-wide memory kept for backward is the same for any ``ttt_steps``. The step loss is the masked mean soft CE
    (:func:`eagle_ext.eagle3.loss.eagle3_step_loss`) and the total is ``sum_k w^k L_k / sum_k w^k`` with
    ``w = step_decay = 0.8``, so the initial loss is about ``ln(Vd)`` whatever ``ttt_steps`` is.

    Packed rows: ``doc_remaining[t]`` (real tokens after t in its document) gates slot t at step k to
    ``k < doc_remaining[t]``; attention stays inside documents through ``seq_lens``.

    Args:
        draft_model: an :class:`eagle_ext.models.DraftModel` (or anything with its trainer API).
        selected_token_ids: int ``[Vd]`` draft row -> target id (stored as a buffer).
        selected_token_mask: bool ``[V]`` draft-vocab membership (stored as a buffer).
        ttt_steps: int >= 1, number of unrolled steps.
        loss_impl: ``"auto"`` (fused when available), ``"reference"`` or ``"fused"``.
        step_decay: per-step weight base ``w`` (0.8).

    Raises:
        ValueError / TypeError: ``ttt_steps < 1`` or not an int, bad vocab tensors, unknown ``loss_impl``.
    """

    def __init__(
        self,
        draft_model: nn.Module,
        *,
        selected_token_ids: torch.Tensor,
        selected_token_mask: torch.Tensor,
        ttt_steps: int,
        loss_impl: str = "auto",
        step_decay: float = 0.8,
    ):
        super().__init__()
        if isinstance(ttt_steps, bool) or not isinstance(ttt_steps, int) or ttt_steps < 1:
            raise ValueError(f"ttt_steps must be an int >= 1, got {ttt_steps!r}")
        if not isinstance(step_decay, (int, float)) or not step_decay > 0:
            raise ValueError(f"step_decay must be a positive number, got {step_decay!r}")
        if not isinstance(selected_token_ids, torch.Tensor) or selected_token_ids.dim() != 1 or (
            selected_token_ids.dtype.is_floating_point or selected_token_ids.dtype == torch.bool
        ):
            raise TypeError(f"selected_token_ids must be a 1-D integer tensor [Vd], got {selected_token_ids!r:.80}")
        if not isinstance(selected_token_mask, torch.Tensor) or selected_token_mask.dim() != 1 or (
            selected_token_mask.dtype != torch.bool
        ):
            raise TypeError(f"selected_token_mask must be a 1-D bool tensor [V], got {selected_token_mask!r:.80}")
        vd = draft_model.lm_head.weight.shape[0]
        if selected_token_ids.numel() != vd:
            raise ValueError(
                f"selected_token_ids must have one id per lm_head row ({vd}), got {selected_token_ids.numel()}"
            )
        v = selected_token_mask.numel()
        ids = selected_token_ids.to(torch.int64)
        if bool(((ids < 0) | (ids >= v)).any()) or not bool(selected_token_mask[ids.cpu()].all()):
            raise ValueError("selected_token_ids must be ids in [0, V) marked True in selected_token_mask")
        if int(selected_token_mask.sum()) != vd:
            raise ValueError(
                f"selected_token_mask must mark exactly Vd={vd} ids, got {int(selected_token_mask.sum())}"
            )
        self.draft_model = draft_model
        self.register_buffer("selected_token_ids", ids.clone())
        self.register_buffer("selected_token_mask", selected_token_mask.clone())
        self.ttt_steps = ttt_steps
        self.step_decay = float(step_decay)
        self.loss_impl = resolve_loss_impl(loss_impl)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        aux_hidden_states: torch.Tensor,
        target_logits: torch.Tensor | None = None,
        *,
        target_probs: torch.Tensor | None = None,
        position_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        seq_lens: torch.Tensor | None = None,
        doc_remaining: torch.Tensor | None = None,
    ) -> Eagle3StepMetrics:
        """Run the unrolled draft loss for one batch (tensors in the target's shifted frame, see
        :mod:`eagle_ext.models.target`).

        Args:
            input_ids: int64 ``[B, T]`` shifted ids.
            attention_mask: ``[B, T]`` real tokens (unshifted; constant across steps).
            loss_mask: ``[B, T]`` shifted assistant mask.
            aux_hidden_states: ``[B, T, 3H_t]`` unshifted.
            target_logits: ``[B, T, V]`` shifted full-vocab target logits (live supervision), or
            target_probs: fp32 ``[B, T, Vd]`` plus position_mask: bool ``[B, T, 1]`` or ``[B, T]``
                (cached / remote supervision). Exactly one source.
            position_ids: int ``[B, T]`` (per document when packed); default ``arange(T)``.
            seq_lens: int ``[B, D]`` packed document lengths; doc_remaining: int ``[B, T]`` gate.

        Returns:
            :class:`Eagle3StepMetrics`.

        Raises:
            ValueError: zero or two supervision sources, or shape mismatches.
        """
        cached = target_probs is not None or position_mask is not None
        if (target_logits is not None) == cached or (cached and (target_probs is None or position_mask is None)):
            raise ValueError(
                "exactly one supervision source is needed: target_logits, or target_probs plus position_mask; got "
                f"target_logits={'set' if target_logits is not None else None}, "
                f"target_probs={'set' if target_probs is not None else None}, "
                f"position_mask={'set' if position_mask is not None else None}"
            )
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {list(input_ids.shape)}")
        b, t = input_ids.shape
        for name, x in (("attention_mask", attention_mask), ("loss_mask", loss_mask),
                        ("doc_remaining", doc_remaining)):
            if x is not None and tuple(x.shape) != (b, t):
                raise ValueError(f"{name} must have shape [B, T] = {[b, t]}, got {list(x.shape)}")
        if aux_hidden_states.shape[:2] != (b, t):
            raise ValueError(f"aux_hidden_states must have shape [B, T, 3H] with B, T = {b, t}, "
                             f"got {list(aux_hidden_states.shape)}")
        if target_logits is not None:
            target_probs, position_mask = compute_target_distribution(
                target_logits, self.selected_token_ids, self.selected_token_mask, loss_mask
            )
        else:
            vd = self.selected_token_ids.numel()
            if tuple(target_probs.shape) != (b, t, vd):
                raise ValueError(f"target_probs must have shape [B, T, Vd] = {[b, t, vd]}, got {list(target_probs.shape)}")
            if position_mask.shape[:2] != (b, t) or position_mask.dim() not in (2, 3):
                raise ValueError(f"position_mask must have shape [B, T, 1] or [B, T], got {list(position_mask.shape)}")
            target_probs = target_probs.float()
        cur_position_mask = position_mask.reshape(b, t).to(torch.bool)
        cur_loss_mask = loss_mask.to(torch.bool)
        cur_ids = input_ids

        draft = self.draft_model
        hidden = draft.project_hidden_states(aux_hidden_states)
        cache_hidden: list[list[torch.Tensor]] = [[], []]
        device = hidden.device
        running_loss = torch.zeros((), dtype=torch.float32, device=device)
        correct_total = torch.zeros((), dtype=torch.int64, device=device)
        valid_total = torch.zeros((), dtype=torch.int64, device=device)
        prefix_correct = torch.ones(b, t, dtype=torch.bool, device=device)
        prefix_valid = torch.ones(b, t, dtype=torch.bool, device=device)
        hits, valid, losses = [], [], []
        rows = draft.ttt_rows(attention_mask, seq_lens, b, t, cur_ids.device)  # the same for every step
        for k in range(self.ttt_steps):
            hidden = draft(cur_ids, hidden, attention_mask, position_ids, cache_hidden, seq_lens, rows=rows)
            step_mask, chain_valid = cur_position_mask, cur_loss_mask
            if doc_remaining is not None:
                in_document = doc_remaining > k
                step_mask = step_mask & in_document
                chain_valid = chain_valid & in_document
            step = eagle3_step_loss(draft, hidden, target_probs, step_mask, loss_impl=self.loss_impl, row_offset=k)
            running_loss = running_loss + step.loss * self.step_decay**k
            correct_total += step.correct.sum()
            valid_total += step.valid
            prefix_correct &= step.correct
            prefix_valid &= chain_valid
            hits.append(prefix_correct.sum())
            valid.append(prefix_valid.sum())
            losses.append(step.loss.detach())
            if k < self.ttt_steps - 1:
                cur_ids = shift_left_with_zero(cur_ids)
                cur_position_mask = shift_left_with_zero(cur_position_mask)
                cur_loss_mask = shift_left_with_zero(cur_loss_mask)
        weight_sum = sum(self.step_decay**k for k in range(self.ttt_steps))
        return Eagle3StepMetrics(
            loss=running_loss / weight_sum,
            accuracy=(correct_total.float() / valid_total.clamp_min(1).float()).detach(),
            valid_tokens=valid_total.detach(),
            step_prefix_hits=torch.stack(hits).to(torch.int64),
            step_valid=torch.stack(valid).to(torch.int64),
            step_losses=torch.stack(losses),
        )
