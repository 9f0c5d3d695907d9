"""Draft-vocab projection fused with the soft-target cross-entropy (EAGLE-3) or KL (P-EAGLE) loss.

``fused_linear_kl`` computes, per row ``n`` with ``z = hidden @ weight.T`` (fp32 accumulation) and a target
distribution ``p`` over the draft vocab:

- ``mode="soft_ce"``: ``-Σ_v p·log_softmax(z)``
- ``mode="kl"``:      ``Σ_v p·(log p - log_softmax(z))`` with ``0·log 0 = 0``

and returns the SUM over the rows selected by ``mask`` (the caller divides by its own count), plus the
per-row ``argmax z`` and ``argmax p`` for accuracy / tau_sim, without holding the ``[N, Vd]`` logits.

Three implementations with the same semantics (``impl``):

- ``"triton"``: ``eagle_ext.ops.triton.fused_linear_kl`` (tiled online softmax, z recomputed in backward;
  the module docstring justifies that choice for the TTT unroll). Default on CUDA.
- ``"chunked"``: a torch ``autograd.Function`` over row chunks, O(chunk x Vd) extra memory, all math in
  fp32. It forms the gradient in forward (3 GEMMs, like the reference), because on CPU the extra GEMM of a
  recompute design would cost ~1.33x time; it therefore keeps dH [N, H] and an fp32 dW [Vd, H] per call
  until backward. Default off CUDA.
- ``"reference"``: plain torch ``linear -> log_softmax -> (p · ...)`` in fp32 (``fused_linear_kl_reference``).

Gradients flow to ``hidden`` and ``weight`` only: the target is a constant (no gradient is ever returned for
``target_probs`` / ``target_logits``, even if they require grad). ``dL/dz = Σp·softmax(z) - p`` per selected
row -- exact also for unnormalised ``p`` -- and zero for unselected rows, times ``grad_output``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import torch
from torch import Tensor

from eagle_ext.ops._checks import check_int

MODES = ("soft_ce", "kl")
IMPLS = ("auto", "triton", "chunked", "reference")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Rows per chunk of the chunked path: about 64 MiB of fp32 logits per chunk buffer, at least 64 rows
# (enough for efficient GEMMs) -- tuned on CPU at N=4096, H=1024, Vd=32000 (benchmarks/bench_fused_linear_kl.py).
_CHUNK_BYTES = 64 * 2**20
_MIN_CHUNK_ROWS = 64


class FusedLinearKLResult(NamedTuple):
    """``loss``: fp32 0-dim, differentiable w.r.t. hidden and weight (sum over selected rows);
    ``draft_argmax`` / ``target_argmax``: int64 [N] for every row (no grad; ties -> lowest index)."""

    loss: Tensor
    draft_argmax: Tensor
    target_argmax: Tensor


def _validate(hidden, weight, mask, target_probs, target_logits, mode) -> tuple[Tensor, bool, Tensor]:
    """Check the inputs; return ``(target, is_logits, keep)`` with ``keep`` a bool [N] row selection."""
    for name, t in (("hidden", hidden), ("weight", weight), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    n, h = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != h:
        raise ValueError(
            f"weight must be 2-D [Vd, H] with H = hidden.shape[1] = {h}, got shape {tuple(weight.shape)}"
        )
    if h == 0 or weight.shape[0] == 0:
        raise ValueError(f"hidden size and draft vocab must be >= 1, got H={h}, Vd={weight.shape[0]}")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {t.dtype}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mask.dim() != 1:
        raise ValueError(f"mask must be 1-D [N], got shape {tuple(mask.shape)}")
    if mask.shape[0] != n:
        raise ValueError(f"mask must have length N = hidden.shape[0] = {n}, got length {mask.shape[0]}")
    if mask.dtype not in _MASK_DTYPES:
        raise TypeError(f"mask must be a bool or 0/1 integer tensor, got dtype {mask.dtype}")
    if (target_probs is None) == (target_logits is None):
        got = "both" if target_probs is not None else "neither"
        raise ValueError(f"exactly one of target_probs / target_logits must be given, got {got}")
    is_logits = target_logits is not None
    name = "target_logits" if is_logits else "target_probs"
    target = target_logits if is_logits else target_probs
    if not isinstance(target, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(target).__name__}")
    if tuple(target.shape) != (n, weight.shape[0]):
        raise ValueError(
            f"{name} must have shape [N, Vd] = {(n, weight.shape[0])}, got {tuple(target.shape)}"
        )
    if not target.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {target.dtype}")
    for name_, t in (("weight", weight), ("mask", mask), (name, target)):
        if t.device != hidden.device:
            raise ValueError(f"{name_} must be on hidden's device {hidden.device}, got {t.device}")
    keep = mask if mask.dtype == torch.bool else mask != 0
    return target.detach(), is_logits, keep


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)`` for [m, V] operands without an [m, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def fused_linear_kl_reference(
    hidden: Tensor,
    weight: Tensor,
    mask: Tensor,
    *,
    target_probs: Tensor | None = None,
    target_logits: Tensor | None = None,
    mode: str = "soft_ce",
) -> FusedLinearKLResult:
    """Plain-torch reference of ``fused_linear_kl`` (same arguments, same semantics, fp32 throughout).

    Materialises ``z`` [N, Vd], ``log_softmax(z)`` and the per-element loss in fp32; used by tests and as the
    benchmark baseline.
    """
    target, is_logits, keep = _validate(hidden, weight, mask, target_probs, target_logits, mode)
    z = hidden.float() @ weight.float().t()
    log_q = torch.log_softmax(z, dim=-1)
    t = target.float()
    p = torch.softmax(t, dim=-1) if is_logits else t
    per_element = -(p * log_q)
    if mode == "kl":
        per_element = per_element + torch.xlogy(p, p)
    row_loss = per_element.sum(-1)
    loss = torch.where(keep, row_loss, torch.zeros_like(row_loss)).sum()
    return FusedLinearKLResult(loss, z.detach().argmax(-1), t.argmax(-1))


def _chunked_forward(
    hidden: Tensor,
    weight: Tensor,
    keep: Tensor,
    target: Tensor,
    is_logits: bool,
    kl: bool,
    chunk_size: int | None,
    need_dh: bool,
    need_dw: bool,
):
    """Loss, argmaxes and (when asked) the unscaled fp32 gradients, one row chunk at a time.

    Peak extra memory: up to three [chunk, Vd] fp32 buffers (logits; converted / softmaxed target when it
    is not already fp32 probabilities; a scratch buffer for KL) + dH [N, H] + dW [Vd, H] in fp32. The
    buffers are allocated once and every step works in place: on CPU a fresh [chunk, Vd] allocation per
    chunk costs page faults comparable to the elementwise work itself.
    """
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    h32 = hidden.detach().float()
    w32 = weight.detach().float()
    f32 = dict(dtype=torch.float32, device=dev)
    rows = chunk_size if chunk_size is not None else max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // (4 * v))
    rows = max(1, min(rows, n))
    z_buf = torch.empty(rows * v, **f32)
    p_buf = torch.empty(rows * v, **f32) if is_logits or target.dtype != torch.float32 else None
    scratch = torch.empty(rows * v, **f32) if kl else None
    loss = torch.zeros((), **f32)
    draft_argmax = torch.empty(n, dtype=torch.int64, device=dev)
    target_argmax = torch.empty(n, dtype=torch.int64, device=dev)
    dh = torch.empty(n, h, **f32) if need_dh else None
    dw = torch.zeros(v, h, **f32) if need_dw else None
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        m = r1 - r0
        keep_c = keep[r0:r1]
        z = z_buf[: m * v].view(m, v)
        torch.mm(h32[r0:r1], w32.t(), out=z)
        z_max, draft_argmax[r0:r1] = torch.max(z, dim=1)
        z.sub_(z_max.unsqueeze(1))  # z - max: the max cancels in Σp·lse - Σp·z
        t = target[r0:r1]
        entropy_term = None
        if is_logits:
            tt = p_buf[: m * v].view(m, v)
            tt.copy_(t)
            t_max, target_argmax[r0:r1] = torch.max(tt, dim=1)
            tt.sub_(t_max.unsqueeze(1))
            if kl:
                p = scratch[: m * v].view(m, v)
                torch.exp(tt, out=p)
                e_sum = p.sum(1)
                tt.clamp_(min=torch.finfo(torch.float32).min)  # -inf logits have e = 0; avoid 0·inf
                entropy_term = _rowdot(p, tt) / e_sum - torch.log(e_sum)  # Σ p·log p
            else:
                p = tt.exp_()
                e_sum = p.sum(1)
            p.div_(e_sum.unsqueeze(1))
            p_sum = torch.ones(m, **f32)
        else:
            if p_buf is None:
                p = t
            else:
                p = p_buf[: m * v].view(m, v)
                p.copy_(t)
            target_argmax[r0:r1] = p.argmax(1)
            p_sum = p.sum(1)
            if kl:
                entropy_term = torch.xlogy(p, p, out=scratch[: m * v].view(m, v)).sum(1)
        pz = _rowdot(p, z)
        z.exp_()
        s = z.sum(1)
        row_loss = p_sum * torch.log(s) - pz
        if entropy_term is not None:
            row_loss = row_loss + entropy_term
        loss += torch.where(keep_c, row_loss, torch.zeros_like(row_loss)).sum()
        if not (need_dh or need_dw):
            continue
        if not bool(keep_c.any()):
            if need_dh:
                dh[r0:r1].zero_()
            continue
        # z now holds exp(z - max); dz = keep·(Σp·exp(z - max)/s - p), formed in place
        z.mul_(torch.where(keep_c, p_sum / s, torch.zeros_like(s)).unsqueeze(1))
        z.addcmul_(p, keep_c.to(torch.float32).unsqueeze(1), value=-1.0)
        if need_dh:
            torch.mm(z, w32, out=dh[r0:r1])
        if need_dw:
            dw.addmm_(z.t(), h32[r0:r1])
    return loss, draft_argmax, target_argmax, dh, dw


class _ChunkedFusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, keep, target, is_logits, kl, chunk_size, need_dh, need_dw):
        loss, draft_argmax, target_argmax, dh, dw = _chunked_forward(
            hidden, weight, keep, target, is_logits, kl, chunk_size, need_dh, need_dw
        )
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(draft_argmax, target_argmax)
        return loss, draft_argmax, target_argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_draft_argmax, _grad_target_argmax):
        dh, dw = ctx.saved_tensors
        g = grad_loss.to(torch.float32)
        grad_h = None if dh is None else (dh * g).to(ctx.dtypes[0])
        grad_w = None if dw is None else (dw * g).to(ctx.dtypes[1])
        return grad_h, grad_w, None, None, None, None, None, None, None


class _TritonFusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, keep, target, is_logits, kl, chunk_size, need_dh, need_dw):
        from eagle_ext.ops.triton import fused_linear_kl as kernels

        fwd = kernels.forward(hidden, weight, target, is_logits=is_logits, kl=kl)
        loss = torch.where(keep, fwd.row_loss, torch.zeros_like(fwd.row_loss)).sum()
        ctx.save_for_backward(hidden, weight, target, keep, fwd.row_loss, fwd.lse, fwd.psum, fwd.target_lse)
        ctx.options = (is_logits, chunk_size, need_dh, need_dw)
        ctx.mark_non_differentiable(fwd.draft_argmax, fwd.target_argmax)
        return loss, fwd.draft_argmax, fwd.target_argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_draft_argmax, _grad_target_argmax):
        from eagle_ext.ops.triton import fused_linear_kl as kernels

        hidden, weight, target, keep, row_loss, lse, psum, target_lse = ctx.saved_tensors
        is_logits, chunk_size, need_dh, need_dw = ctx.options
        fwd = kernels.ForwardResult(row_loss, lse, psum, target_lse, None, None)
        dh, dw = kernels.backward(
            hidden,
            weight,
            target,
            keep,
            fwd,
            grad_loss,
            is_logits=is_logits,
            need_dh=need_dh,
            need_dw=need_dw,
            width=chunk_size,
        )
        return dh, dw, None, None, None, None, None, None, None


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def fused_linear_kl(
    hidden: Tensor,
    weight: Tensor,
    mask: Tensor,
    *,
    target_probs: Tensor | None = None,
    target_logits: Tensor | None = None,
    mode: str = "soft_ce",
    impl: str = "auto",
    chunk_size: int | None = None,
) -> FusedLinearKLResult:
    """Masked sum of the soft-CE / KL loss of ``hidden @ weight.T`` against a target, plus argmaxes.

    Args:
        hidden: [N, H] float32 / float16 / bfloat16 draft hidden states (N may be 0).
        weight: [Vd, H] float32 / float16 / bfloat16 draft lm-head weight. With mixed dtypes both are
            promoted to the wider one (e.g. bf16 hidden + fp32 master weight computes in fp32).
        mask: [N] bool or 0/1 integer; rows with a nonzero entry count in the loss.
        target_probs: [N, Vd] float target probabilities (need not be normalised; exact zeros allowed).
        target_logits: [N, Vd] float target logits; ``p = softmax(float32(target_logits))`` is formed
            inside (no fp32 [N, Vd] tensor on the fused paths). Give exactly one of the two targets; both
            are treated as constants (no gradient is returned for them).
        mode: ``"soft_ce"`` (``-Σ p·log_softmax(z)``) or ``"kl"`` (``Σ p·(log p - log_softmax(z))``).
        impl: ``"auto"`` (Triton on CUDA, chunked elsewhere), ``"triton"`` (CUDA, or CPU tensors under
            ``TRITON_INTERPRET=1``), ``"chunked"`` or ``"reference"``.
        chunk_size: chunked path: rows per chunk; Triton path: vocab columns per backward chunk; None picks
            a default (see the implementations). Ignored by the reference.

    Returns:
        ``FusedLinearKLResult(loss, draft_argmax, target_argmax)``: ``loss`` fp32 0-dim, the SUM over masked
        rows, differentiable w.r.t. ``hidden`` and ``weight`` (gradients in their dtypes; 0 and zero
        gradients when N = 0 or no row is selected); ``draft_argmax`` int64 [N] = ``argmax z``;
        ``target_argmax`` int64 [N] = argmax of the target probs / logits. Argmax ties go to the lowest index.

    Raises:
        TypeError: a non-tensor argument, or a dtype outside the lists above.
        ValueError: shape mismatches, both or neither target, a non-1-D mask or one of the wrong length,
            an unknown ``mode`` / ``impl``, a non-positive ``chunk_size``, tensors on different devices, or
            ``impl="triton"`` where Triton cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    if impl == "reference":
        return fused_linear_kl_reference(
            hidden, weight, mask, target_probs=target_probs, target_logits=target_logits, mode=mode
        )
    target, is_logits, keep = _validate(hidden, weight, mask, target_probs, target_logits, mode)
    if impl == "auto":
        impl = "triton" if hidden.is_cuda and _triton_available() else "chunked"
    elif impl == "triton":
        if not _triton_available():
            raise ValueError("impl='triton' needs the triton package, which is not installed")
        if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got device {hidden.device}"
            )
    compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    hidden = hidden.to(compute_dtype)
    weight = weight.to(compute_dtype)
    grad_on = torch.is_grad_enabled()
    need_dh = grad_on and hidden.requires_grad
    need_dw = grad_on and weight.requires_grad
    fn = _TritonFusedLinearKL if impl == "triton" else _ChunkedFusedLinearKL
    loss, draft_argmax, target_argmax = fn.apply(
        hidden, weight, keep, target, is_logits, mode == "kl", chunk_size, need_dh, need_dw
    )
    return FusedLinearKLResult(loss, draft_argmax, target_argmax)
