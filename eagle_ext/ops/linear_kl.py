"""Draft-vocab projection fused with the soft-target cross-entropy (EAGLE-3) or KL (P-EAGLE) loss.

``fused_linear_kl`` computes, per row ``n`` with ``z = hidden @ weight.T`` (fp32 accumulation) and a target
distribution ``p`` over the draft vocab:

- ``mode="soft_ce"``: ``-Σ_v p·log_softmax(z)``
- ``mode="kl"``:      ``Σ_v p·(log p - log_softmax(z))`` with ``0·log 0 = 0``

and returns the SUM over the rows selected by ``mask`` (the caller divides by its own count), plus the
per-row ``argmax z`` and ``argmax p`` for accuracy / tau_sim, without holding the ``[N, Vd]`` logits.

Four implementations with the same semantics (``impl``):

- ``"gemm"``: gradient computed in the forward pass (Liger-style), default on CUDA. Per row chunk: the
  logits ``z`` by a cuBLAS GEMM (fp32 output where torch allows it), then one Triton row kernel
  (``eagle_ext.ops.triton.linear_kl_rows``; its torch twin ``_rows_torch`` off CUDA) for the softmax,
  the row loss, the argmaxes and ``dz`` (for ``grad_output = 1``, in the GEMM dtype), then cuBLAS
  ``dH[chunk] = dz @ W`` and ``dW += dz.T @ hidden`` into ONE fp32 ``[Vd, H]`` buffer. Backward only
  scales the saved ``dH`` / ``dW`` by ``grad_output`` (6·N·H·Vd FLOPs in all, the 3-GEMM bound). A
  weight in a wider dtype than the GEMM's (an fp32 master weight under bf16 autocast) is cast once and the
  cast is cached until the weight changes (keyed on the tensor and its version counter: once per
  optimiser step). Memory: ``dH`` + the fp32 ``dW`` (+ the cached cast) are held from forward to backward
  PER CALL, so a TTT unroll of k calls before one backward holds k of them.
- ``"triton"``: ``eagle_ext.ops.triton.linear_kl`` (tiled online softmax, z recomputed in backward;
  the module docstring justifies that choice for the TTT unroll): three fp32 per row kept per call, for
  when memory is the constraint -- the EAGLE-3 TTT unroll uses it on CUDA.
- ``"chunked"``: a torch ``autograd.Function`` over row chunks, O(chunk x Vd) extra memory, all math in
  fp32. Like the Triton path it keeps only three fp32 per row for backward and recomputes the logits
  chunk by chunk there (4 GEMMs instead of 3): keeping dW [Vd, H] from forward would hold one fp32
  vocab-wide tensor per call until backward, i.e. memory growing with the TTT unroll. Default off CUDA.
- ``"reference"``: plain torch ``linear -> log_softmax -> (p · ...)`` in fp32 (``fused_linear_kl_reference``).

TTT row offset: with ``row_offset = k`` and ``seq_len = T`` (the rows being ``B`` sequences of ``T``), row
``n`` is scored against target row ``n + k`` while ``n % T + k < T``; the other rows count as unselected
(no loss, no gradient, ``target_argmax`` 0) -- exactly a target and mask shifted left by ``k`` with zero
fill, without the shifted copy: every TTT step reads the same step-0 target.

On CUDA the Triton path runs ``tl.dot`` in the autocast dtype when fp32 operands arrive under autocast
(tiles are cast in the kernel: no bf16 copy of an fp32 master weight is made); fp32 outside autocast uses
TF32 iff torch matmul would (``matmul_allows_tf32``) and otherwise warns once that the dot runs without
tensor cores (``triton_dot_dtype``).

Gradients flow to ``hidden`` and ``weight`` only: the target is a constant (no gradient is ever returned for
``target_probs`` / ``target_logits``, even if they require grad). ``dL/dz = Σp·softmax(z) - p`` per selected
row -- exact also for unnormalised ``p`` -- and zero for unselected rows, times ``grad_output``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from eagle_ext.ops._checks import check_int

MODES = ("soft_ce", "kl")
IMPLS = ("auto", "gemm", "triton", "chunked", "reference")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Rows per chunk of the chunked path: about 64 MiB of fp32 logits per chunk buffer, at least 64 rows
# (enough for efficient GEMMs) -- tuned on CPU at N=4096, H=1024, Vd=32000 (benchmarks/bench_fused_linear_kl.py).
_CHUNK_BYTES = 64 * 2**20
_MIN_CHUNK_ROWS = 64
# Rows per chunk of the gemm path: about 64 MiB of fp32 logits (Vd = 32768: 512 rows, still a GEMM of
# 512 x H x Vd that fills the GPU; the bf16 dz of the chunk adds half of that).
_GEMM_CHUNK_BYTES = 64 * 2**20


class FusedLinearKLResult(NamedTuple):
    """``loss``: fp32 0-dim, differentiable w.r.t. hidden and weight (sum over selected rows);
    ``draft_argmax`` / ``target_argmax``: int64 [N] for every row (no grad; ties -> lowest index)."""

    loss: Tensor
    draft_argmax: Tensor
    target_argmax: Tensor


def _validate(
    hidden, weight, mask, target_probs, target_logits, mode, row_offset=0, seq_len=None
) -> tuple[Tensor, bool, Tensor, Tensor | None]:
    """Check the inputs; return ``(target, is_logits, keep, valid)``: ``keep`` the bool [N] row selection
    (already restricted to ``valid``), ``valid`` the bool [N] rows whose offset target exists (None when
    ``row_offset`` is 0)."""
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
    check_int("row_offset", row_offset, minimum=0)
    if seq_len is not None:
        check_int("seq_len", seq_len, minimum=1)
        if n % seq_len:
            raise ValueError(f"seq_len must divide N = hidden.shape[0] = {n}, got seq_len={seq_len}")
    keep = mask if mask.dtype == torch.bool else mask != 0
    valid = None
    if row_offset:
        period = seq_len or max(n, 1)
        valid = torch.arange(n, device=hidden.device) % period + row_offset < period
        keep = keep & valid
    return target.detach(), is_logits, keep, valid


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)`` for [m, V] operands without an [m, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def matmul_allows_tf32(backends=None) -> bool:
    """Whether torch's CUDA fp32 matmuls may use TF32, read without ever raising.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` (``"tf32"`` / ``"ieee"``, or ``"none"``
    to inherit from ``torch.backends.cuda`` and then ``torch.backends``); reading the legacy
    ``allow_tf32`` there raises once the new API has been used. Older torch only has ``allow_tf32``.
    ``backends`` (default ``torch.backends``) is a parameter so the reading can be tested.
    """
    backends = torch.backends if backends is None else backends
    cuda = getattr(backends, "cuda", None)
    matmul = getattr(cuda, "matmul", None)
    for owner in (matmul, cuda, backends):
        try:
            precision = getattr(owner, "fp32_precision", None)
        except Exception:  # noqa: BLE001 -- any failure to read means "not set here"
            precision = None
        if precision in ("tf32", "ieee"):
            return precision == "tf32"
    try:
        return bool(getattr(matmul, "allow_tf32", False))
    except Exception:  # noqa: BLE001
        return False


def triton_dot_dtype(
    hidden_dtype: torch.dtype,
    weight_dtype: torch.dtype,
    *,
    autocast_dtype: torch.dtype | None,
    tf32: bool,
) -> tuple[torch.dtype, bool]:
    """Operand dtype of the Triton path's ``tl.dot`` on CUDA, and whether to warn about it.

    Half-precision inputs keep their (promoted) dtype. fp32 inputs (an fp32 master weight with bf16
    activations, an fp32 RMSNorm output) run in ``autocast_dtype`` when autocast is on (the caller passes
    ``torch.get_autocast_dtype("cuda")`` then, else None), like a ``linear`` under autocast; otherwise they
    stay fp32 and the result asks for a warning unless TF32 is allowed: an fp32 FMA dot has no tensor
    cores and runs several times slower.

    Returns:
        ``(dot_dtype, warn)``.
    """
    dtype = torch.promote_types(hidden_dtype, weight_dtype)
    if dtype != torch.float32:
        return dtype, False
    if autocast_dtype in (torch.bfloat16, torch.float16):
        return autocast_dtype, False
    return torch.float32, not tf32


_FP32_DOT_WARNING = (
    "fused_linear_kl: fp32 hidden/weight reached the Triton kernel outside autocast with TF32 disabled; "
    "its tl.dot runs in fp32 without tensor cores. Run under torch.autocast('cuda', dtype=torch.bfloat16), "
    "pass bf16 inputs, or allow TF32 (torch.backends.cuda.matmul.fp32_precision = 'tf32')."
)
_warned_fp32_dot = False


def _warn_fp32_dot_once() -> None:
    global _warned_fp32_dot
    if not _warned_fp32_dot:
        _warned_fp32_dot = True
        warnings.warn(_FP32_DOT_WARNING, RuntimeWarning, stacklevel=4)


def _shift_rows(target: Tensor, row_offset: int, valid: Tensor | None) -> Tensor:
    """Reference of the row offset: row n of the result is target row n + k where ``valid``, else zeros."""
    if valid is None:
        return target
    n = target.shape[0]
    src = (torch.arange(n, device=target.device) + row_offset).clamp(max=max(n - 1, 0))
    return torch.where(valid.unsqueeze(1), target.index_select(0, src), torch.zeros((), dtype=target.dtype, device=target.device))


def fused_linear_kl_reference(
    hidden: Tensor,
    weight: Tensor,
    mask: Tensor,
    *,
    target_probs: Tensor | None = None,
    target_logits: Tensor | None = None,
    mode: str = "soft_ce",
    row_offset: int = 0,
    seq_len: int | None = None,
) -> FusedLinearKLResult:
    """Plain-torch reference of ``fused_linear_kl`` (same arguments, same semantics, fp32 throughout).

    Materialises ``z`` [N, Vd], ``log_softmax(z)``, the per-element loss in fp32 and, with a row offset,
    the shifted zero-filled target; used by tests and as the benchmark baseline.
    """
    target, is_logits, keep, valid = _validate(
        hidden, weight, mask, target_probs, target_logits, mode, row_offset, seq_len
    )
    z = hidden.float() @ weight.float().t()
    log_q = torch.log_softmax(z, dim=-1)
    t = _shift_rows(target, row_offset, valid).float()
    p = torch.softmax(t, dim=-1) if is_logits else t
    per_element = -(p * log_q)
    if mode == "kl":
        per_element = per_element + torch.xlogy(p, p)
    row_loss = per_element.sum(-1)
    loss = torch.where(keep, row_loss, torch.zeros_like(row_loss)).sum()
    return FusedLinearKLResult(loss, z.detach().argmax(-1), t.argmax(-1))


class _Options(NamedTuple):
    """Non-tensor arguments of the autograd Functions."""

    is_logits: bool
    kl: bool
    chunk_size: int | None
    need_dh: bool
    need_dw: bool
    row_offset: int
    seq_len: int | None
    dot_dtype: torch.dtype | None  # Triton only
    tf32: bool  # Triton only


def _chunk_rows(n: int, v: int, chunk_size: int | None) -> int:
    rows = chunk_size if chunk_size is not None else max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // (4 * v))
    return max(1, min(rows, n))


def _target_chunk(target: Tensor, r0: int, r1: int, row_offset: int) -> Tensor:
    """Target rows ``r0 + k .. r1 + k`` as [r1 - r0, V]: a view, or (past the end, at most once or twice per
    call) a copy padded with zero rows. Rows whose offset target belongs to the next sequence are read as
    they are; the caller has removed them from ``keep``."""
    a, b = r0 + row_offset, r1 + row_offset
    n = target.shape[0]
    if b <= n:
        return target[a:b]
    return torch.cat((target[min(a, n) : n], target.new_zeros(b - max(a, n), target.shape[1])))


def _chunk_probs(t: Tensor, p_buf: Tensor | None, m: int, v: int) -> Tensor:
    """fp32 [m, V] target chunk: ``t`` itself when no conversion buffer is in use, else its copy in ``p_buf``."""
    if p_buf is None:
        return t
    p = p_buf[: m * v].view(m, v)
    p.copy_(t)
    return p


def _chunked_forward(hidden, weight, keep, target, opt: _Options, need_stats: bool):
    """Loss, argmaxes and (``need_stats``) the per-row softmax statistics for backward, one row chunk at a
    time: ``lse = logsumexp(z)``, ``psum = Σp`` and, for logit targets, ``target_lse``.

    Peak extra memory: up to three [chunk, Vd] fp32 buffers (logits; converted / softmaxed target when it
    is not already fp32 probabilities; a scratch buffer for KL) plus the fp32 copies of hidden / weight
    when they are half precision. The buffers are allocated once and every step works in place: on CPU a
    fresh [chunk, Vd] allocation per chunk costs page faults comparable to the elementwise work itself.
    """
    n = hidden.shape[0]
    v = weight.shape[0]
    dev = hidden.device
    is_logits, kl = opt.is_logits, opt.kl
    h32 = hidden.detach().float()
    w32 = weight.detach().float()
    f32 = dict(dtype=torch.float32, device=dev)
    rows = _chunk_rows(n, v, opt.chunk_size)
    z_buf = torch.empty(rows * v, **f32)
    p_buf = torch.empty(rows * v, **f32) if is_logits or target.dtype != torch.float32 else None
    scratch = torch.empty(rows * v, **f32) if kl else None
    loss = torch.zeros((), **f32)
    draft_argmax = torch.empty(n, dtype=torch.int64, device=dev)
    target_argmax = torch.empty(n, dtype=torch.int64, device=dev)
    lse = torch.empty(n, **f32) if need_stats else None
    psum = torch.empty(n, **f32) if need_stats else None
    target_lse = torch.empty(n, **f32) if need_stats and is_logits else None
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        m = r1 - r0
        z = z_buf[: m * v].view(m, v)
        torch.mm(h32[r0:r1], w32.t(), out=z)
        z_max, draft_argmax[r0:r1] = torch.max(z, dim=1)
        z.sub_(z_max.unsqueeze(1))  # z - max: the max cancels in Σp·lse - Σp·z
        t = _target_chunk(target, r0, r1, opt.row_offset)
        entropy_term = None
        if is_logits:
            tt = _chunk_probs(t, p_buf, m, v)
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
            if need_stats:
                target_lse[r0:r1] = t_max + torch.log(e_sum)
        else:
            p = _chunk_probs(t, p_buf, m, v)
            target_argmax[r0:r1] = p.argmax(1)
            p_sum = p.sum(1)
            if kl:
                entropy_term = torch.xlogy(p, p, out=scratch[: m * v].view(m, v)).sum(1)
        pz = _rowdot(p, z)
        s = z.exp_().sum(1)
        log_s = torch.log(s)
        row_loss = p_sum * log_s - pz
        if entropy_term is not None:
            row_loss = row_loss + entropy_term
        loss += torch.where(keep[r0:r1], row_loss, torch.zeros_like(row_loss)).sum()
        if need_stats:
            lse[r0:r1] = z_max + log_s
            psum[r0:r1] = p_sum
    return loss, draft_argmax, target_argmax, lse, psum, target_lse


def _chunked_backward(hidden, weight, keep, target, lse, psum, target_lse, grad_loss, opt: _Options):
    """fp32 ``dH [N, H]`` / ``dW [Vd, H]`` (None where not needed) scaled by ``grad_loss``, recomputing the
    logits one row chunk at a time from the forward statistics: ``dz = g·keep·(Σp·exp(z - lse) - p)``."""
    n = hidden.shape[0]
    v = weight.shape[0]
    dev = hidden.device
    f32 = dict(dtype=torch.float32, device=dev)
    h32 = hidden.detach().float()
    w32 = weight.detach().float()
    rows = _chunk_rows(n, v, opt.chunk_size)
    z_buf = torch.empty(rows * v, **f32)
    p_buf = torch.empty(rows * v, **f32) if opt.is_logits or target.dtype != torch.float32 else None
    dh = torch.zeros(n, hidden.shape[1], **f32) if opt.need_dh else None
    dw = torch.zeros(v, hidden.shape[1], **f32) if opt.need_dw else None
    g = grad_loss.detach().to(**f32)
    keep_f = keep.to(torch.float32)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        m = r1 - r0
        keep_c = keep[r0:r1]
        if not bool(keep_c.any()):
            continue  # dh rows stay zero, nothing to add to dw
        z = z_buf[: m * v].view(m, v)
        torch.mm(h32[r0:r1], w32.t(), out=z)
        z.sub_(lse[r0:r1].unsqueeze(1)).exp_()  # softmax(z)
        p = _chunk_probs(_target_chunk(target, r0, r1, opt.row_offset), p_buf, m, v)
        if opt.is_logits:
            p.sub_(target_lse[r0:r1].unsqueeze(1)).exp_()
        # dz = softmax(z)·(g·keep·Σp) - p·(g·keep), formed in place
        z.mul_(torch.where(keep_c, psum[r0:r1] * g, torch.zeros((), **f32)).unsqueeze(1))
        z.addcmul_(p, (keep_f[r0:r1] * g).unsqueeze(1), value=-1.0)
        if dh is not None:
            torch.mm(z, w32, out=dh[r0:r1])
        if dw is not None:
            dw.addmm_(z.t(), h32[r0:r1])
    return dh, dw


class _ChunkedFusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, keep, target, opt):
        need_stats = opt.need_dh or opt.need_dw
        loss, draft_argmax, target_argmax, lse, psum, target_lse = _chunked_forward(
            hidden, weight, keep, target, opt, need_stats
        )
        if need_stats:
            # the inputs (held by the caller anyway) and three fp32 per row: nothing vocab-wide of its own
            ctx.save_for_backward(hidden, weight, keep, target, lse, psum, target_lse)
        ctx.opt = opt
        ctx.mark_non_differentiable(draft_argmax, target_argmax)
        return loss, draft_argmax, target_argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_draft_argmax, _grad_target_argmax):
        hidden, weight, keep, target, lse, psum, target_lse = ctx.saved_tensors
        dh, dw = _chunked_backward(hidden, weight, keep, target, lse, psum, target_lse, grad_loss, ctx.opt)
        grad_h = None if dh is None else dh.to(hidden.dtype)
        grad_w = None if dw is None else dw.to(weight.dtype)
        return grad_h, grad_w, None, None, None


class _TritonFusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, keep, target, opt):
        from eagle_ext.ops.triton import linear_kl as kernels

        fwd = kernels.forward(
            hidden, weight, target, is_logits=opt.is_logits, kl=opt.kl, dot_dtype=opt.dot_dtype,
            tf32=opt.tf32, row_offset=opt.row_offset, seq_len=opt.seq_len,
        )
        loss = torch.where(keep, fwd.row_loss, torch.zeros_like(fwd.row_loss)).sum()
        ctx.save_for_backward(hidden, weight, target, keep, fwd.row_loss, fwd.lse, fwd.psum, fwd.target_lse)
        ctx.opt = opt
        ctx.mark_non_differentiable(fwd.draft_argmax, fwd.target_argmax)
        return loss, fwd.draft_argmax, fwd.target_argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_draft_argmax, _grad_target_argmax):
        from eagle_ext.ops.triton import linear_kl as kernels

        hidden, weight, target, keep, row_loss, lse, psum, target_lse = ctx.saved_tensors
        opt = ctx.opt
        fwd = kernels.ForwardResult(row_loss, lse, psum, target_lse, None, None)
        dh, dw = kernels.backward(
            hidden, weight, target, keep, fwd, grad_loss,
            is_logits=opt.is_logits, need_dh=opt.need_dh, need_dw=opt.need_dw, dot_dtype=opt.dot_dtype,
            tf32=opt.tf32, width=opt.chunk_size, row_offset=opt.row_offset, seq_len=opt.seq_len,
        )
        return dh, dw, None, None, None


# ---------------------------------------------------------------------------------------------- gemm path


def _rows_torch(z, target, keep, dz, row_loss, draft_argmax, target_argmax, *, r0, is_logits, kl, row_offset,
                seq_len):
    """Plain-torch twin of ``eagle_ext.ops.triton.linear_kl_rows.rows`` (same arguments, same outputs):
    the row kernel of the gemm path off CUDA, and its reference in the tests."""
    m, v = z.shape
    if m == 0:
        return
    r1 = r0 + m
    zf = z.float()
    lse = torch.logsumexp(zf, dim=1)
    draft_argmax[r0:r1] = zf.argmax(1)
    rows = torch.arange(r0, r1, device=z.device)
    valid = rows % seq_len + row_offset < seq_len
    t = _target_chunk(target, r0, r1, row_offset).float()
    t = torch.where(valid.unsqueeze(1), t, torch.zeros((), device=t.device))
    target_argmax[r0:r1] = t.argmax(1)
    if is_logits:
        t_lse = torch.logsumexp(t, dim=1, keepdim=True)
        p = torch.exp(t - t_lse)
        psum = torch.ones(m, device=z.device)
    else:
        p = t
        psum = p.sum(1)
    loss = psum * lse - _rowdot(p, zf)
    if kl:
        loss = loss + torch.xlogy(p, p).sum(1)
    row_loss[r0:r1] = loss
    if dz is not None:
        grad = psum.unsqueeze(1) * torch.exp(zf - lse.unsqueeze(1)) - p
        dz.copy_(torch.where(keep[r0:r1].bool().unsqueeze(1), grad, torch.zeros((), device=z.device)))


def _row_kernel(device: torch.device):
    """The gemm path's row kernel: Triton on CUDA (or CPU tensors under ``TRITON_INTERPRET=1``), else the
    torch twin."""
    if _triton_available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        from eagle_ext.ops.triton.linear_kl_rows import rows

        return rows
    return _rows_torch


class _WeightCast(NamedTuple):
    ref: object  # weakref to the weight
    version: int
    data_ptr: int
    cast: Tensor


_WEIGHT_CASTS: dict[tuple[int, torch.dtype], _WeightCast] = {}
_MAX_WEIGHT_CASTS = 4


def cast_weight_cached(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight.detach().to(dtype)``, made once per version of the weight.

    The cast is reused while the same tensor object keeps its storage and its version counter (every
    in-place update -- an optimiser step, ``copy_`` -- bumps it), so an fp32 master weight is cast to bf16
    once per optimiser step however many times the loss reads it (TTT steps, P-EAGLE segments, gradient
    accumulation). At most four casts are kept (least recently made dropped first)."""
    import weakref

    if weight.dtype == dtype:
        return weight.detach()
    key = (id(weight), dtype)
    hit = _WEIGHT_CASTS.get(key)
    if (hit is not None and hit.ref() is weight and hit.version == weight._version
            and hit.data_ptr == weight.data_ptr()):
        return hit.cast
    cast = weight.detach().to(dtype)
    _WEIGHT_CASTS.pop(key, None)
    while len(_WEIGHT_CASTS) >= _MAX_WEIGHT_CASTS:
        _WEIGHT_CASTS.pop(next(iter(_WEIGHT_CASTS)))
    _WEIGHT_CASTS[key] = _WeightCast(weakref.ref(weight), weight._version, weight.data_ptr(), cast)
    return cast


def _gemm_forward(hidden, weight_dot, keep, target, opt: _Options):
    """Row losses, argmaxes and (when gradients are needed) ``dH`` (hidden's dtype) and fp32 ``dW`` for
    ``grad_output = 1``, one row chunk at a time. ``hidden`` and ``weight_dot`` share the GEMM dtype."""
    from eagle_ext.ops._gemm import _addmm_into, _fp32_out_supported, _mm_into

    n, h = hidden.shape
    v = weight_dot.shape[0]
    dev = hidden.device
    need_grad = opt.need_dh or opt.need_dw
    row_loss = torch.empty(n, dtype=torch.float32, device=dev)
    draft_argmax = torch.empty(n, dtype=torch.int64, device=dev)
    target_argmax = torch.empty(n, dtype=torch.int64, device=dev)
    dh = torch.empty(n, h, dtype=hidden.dtype, device=dev) if opt.need_dh else None
    dw = torch.zeros(v, h, dtype=torch.float32, device=dev) if opt.need_dw else None
    if n == 0:
        return row_loss, draft_argmax, target_argmax, dh, dw
    rows = opt.chunk_size if opt.chunk_size is not None else max(_MIN_CHUNK_ROWS, _GEMM_CHUNK_BYTES // (4 * v))
    rows = max(1, min(rows, n))
    fp32_logits = hidden.dtype == torch.float32 or _fp32_out_supported(dev.type, hidden.dtype)
    z_buf = torch.empty(rows * v, dtype=torch.float32 if fp32_logits else hidden.dtype, device=dev)
    dz_buf = None
    if need_grad:
        dz_buf = z_buf if z_buf.dtype == hidden.dtype else torch.empty(rows * v, dtype=hidden.dtype, device=dev)
    keep_u8 = keep.to(torch.uint8)
    kernel = _row_kernel(dev)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        m = r1 - r0
        z = z_buf[: m * v].view(m, v)
        _mm_into(z, hidden[r0:r1], weight_dot.t())
        dz = None if dz_buf is None else dz_buf[: m * v].view(m, v)
        kernel(z, target, keep_u8, dz, row_loss, draft_argmax, target_argmax, r0=r0, is_logits=opt.is_logits,
               kl=opt.kl, row_offset=opt.row_offset, seq_len=opt.seq_len or n)
        if dh is not None:
            torch.mm(dz, weight_dot, out=dh[r0:r1])
        if dw is not None:
            _addmm_into(dw, dz.t(), hidden[r0:r1])
    return row_loss, draft_argmax, target_argmax, dh, dw


class _GemmFusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, keep, target, opt):
        weight_dot = cast_weight_cached(weight, hidden.dtype)
        row_loss, draft_argmax, target_argmax, dh, dw = _gemm_forward(hidden, weight_dot, keep, target, opt)
        loss = torch.where(keep, row_loss, torch.zeros_like(row_loss)).sum()
        # the gradients themselves, not inputs: kept on ctx (no version checks needed, freed after use)
        ctx.grads = (dh, dw)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(draft_argmax, target_argmax)
        return loss, draft_argmax, target_argmax

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_draft_argmax, _grad_target_argmax):
        if ctx.grads is None:
            raise RuntimeError("fused_linear_kl(impl='gemm'): backward ran twice; its gradients are computed in "
                               "forward and used once (use impl='triton' or 'chunked' with retain_graph)")
        dh, dw = ctx.grads
        ctx.grads = None
        g = grad_loss.detach()
        grad_h = None if dh is None else dh.mul_(g)
        grad_w = None if dw is None else dw.mul_(g).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _cuda_autocast_dtype() -> torch.dtype | None:
    if not torch.is_autocast_enabled("cuda"):
        return None
    return torch.get_autocast_dtype("cuda")


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
    row_offset: int = 0,
    seq_len: int | None = None,
) -> FusedLinearKLResult:
    """Masked sum of the soft-CE / KL loss of ``hidden @ weight.T`` against a target, plus argmaxes.

    Args:
        hidden: [N, H] float32 / float16 / bfloat16 draft hidden states (N may be 0).
        weight: [Vd, H] float32 / float16 / bfloat16 draft lm-head weight. Mixed dtypes compute in the wider
            one (e.g. bf16 hidden + fp32 master weight computes in fp32), except on the Triton path under
            CUDA autocast, where fp32 operands run in the autocast dtype (see the module docstring).
        mask: [N] bool or 0/1 integer; rows with a nonzero entry count in the loss.
        target_probs: [N, Vd] float target probabilities (need not be normalised; exact zeros allowed).
        target_logits: [N, Vd] float target logits; ``p = softmax(float32(target_logits))`` is formed
            inside (no fp32 [N, Vd] tensor on the fused paths). Give exactly one of the two targets; both
            are treated as constants (no gradient is returned for them).
        mode: ``"soft_ce"`` (``-Σ p·log_softmax(z)``) or ``"kl"`` (``Σ p·(log p - log_softmax(z))``).
        impl: ``"auto"`` (``"gemm"`` on CUDA, chunked elsewhere), ``"gemm"`` (gradient in forward; any
            device: the row kernel is Triton on CUDA and under ``TRITON_INTERPRET=1``, its torch twin
            elsewhere), ``"triton"`` (recompute in backward; CUDA, or CPU tensors under
            ``TRITON_INTERPRET=1``), ``"chunked"`` or ``"reference"``. See the module docstring for when
            each is the right one (``"triton"`` where memory is the constraint).
        chunk_size: chunked and gemm paths: rows per chunk; Triton path: vocab columns per backward chunk;
            None picks a default (see the implementations). Ignored by the reference.
        row_offset: int >= 0: row ``n`` reads target row ``n + row_offset``; rows whose offset target lies
            past the end of their sequence are unselected (see the module docstring). 0 by default.
        seq_len: rows per sequence for ``row_offset`` (N must be a multiple); None: one sequence of N rows.

    Returns:
        ``FusedLinearKLResult(loss, draft_argmax, target_argmax)``: ``loss`` fp32 0-dim, the SUM over masked
        rows, differentiable w.r.t. ``hidden`` and ``weight`` (gradients in their dtypes; 0 and zero
        gradients when N = 0 or no row is selected); ``draft_argmax`` int64 [N] = ``argmax z``;
        ``target_argmax`` int64 [N] = argmax of the (offset) target probs / logits, 0 for rows without
        one. Argmax ties go to the lowest index.

    Raises:
        TypeError: a non-tensor argument, a dtype outside the lists above, a non-int ``row_offset`` /
            ``seq_len``.
        ValueError: shape mismatches, both or neither target, a non-1-D mask or one of the wrong length,
            an unknown ``mode`` / ``impl``, a non-positive ``chunk_size``, a negative ``row_offset``, a
            ``seq_len`` < 1 or not dividing N, tensors on different devices, or ``impl="triton"`` where
            Triton cannot run.

    Warns:
        RuntimeWarning (once per process): fp32 operands reach the Triton kernel on CUDA outside autocast
        with TF32 disabled.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    if impl == "reference":
        return fused_linear_kl_reference(
            hidden, weight, mask, target_probs=target_probs, target_logits=target_logits, mode=mode,
            row_offset=row_offset, seq_len=seq_len,
        )
    target, is_logits, keep, valid = _validate(
        hidden, weight, mask, target_probs, target_logits, mode, row_offset, seq_len
    )
    if impl == "auto":
        impl = "gemm" if hidden.is_cuda and _triton_available() else "chunked"
    elif impl == "triton":
        if not _triton_available():
            raise ValueError("impl='triton' needs the triton package, which is not installed")
        if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got device {hidden.device}"
            )
    grad_on = torch.is_grad_enabled()
    need_dh = grad_on and hidden.requires_grad
    need_dw = grad_on and weight.requires_grad
    dot_dtype, tf32 = None, False
    if impl == "gemm":
        # the GEMMs run in the (autocast / promoted) dtype of a torch linear; the weight is cast once per
        # optimiser step (cast_weight_cached), hidden [N, H] here (autograd casts its gradient back)
        autocast = _cuda_autocast_dtype() if hidden.is_cuda else None
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
        if dtype == torch.float32 and autocast in (torch.bfloat16, torch.float16):
            dtype = autocast
        hidden = hidden.to(dtype)
    if impl == "triton":
        if hidden.is_cuda:
            tf32 = matmul_allows_tf32()
            dot_dtype, warn = triton_dot_dtype(
                hidden.dtype, weight.dtype, autocast_dtype=_cuda_autocast_dtype(), tf32=tf32
            )
            if warn:
                _warn_fp32_dot_once()
        else:
            dot_dtype = torch.promote_types(hidden.dtype, weight.dtype)
        # hidden [N, H] is cast here (autograd casts its gradient back); the weight is cast tile by tile
        # inside the kernels, so no copy of [Vd, H] is made or kept
        hidden = hidden.to(dot_dtype)
    opt = _Options(is_logits, mode == "kl", chunk_size, need_dh, need_dw, row_offset, seq_len, dot_dtype, tf32)
    fn = {"triton": _TritonFusedLinearKL, "gemm": _GemmFusedLinearKL}.get(impl, _ChunkedFusedLinearKL)
    loss, draft_argmax, target_argmax = fn.apply(hidden, weight, keep, target, opt)
    if valid is not None:
        target_argmax = torch.where(valid, target_argmax, torch.zeros_like(target_argmax))
    return FusedLinearKLResult(loss, draft_argmax, target_argmax)
