"""Triton row kernel of the ``impl="gemm"`` path of ``fused_linear_kl``: softmax, loss, argmaxes and dz.

The gradient-in-forward path (see ``eagle_ext.ops.linear_kl``) computes a row chunk's logits ``z`` with a
cuBLAS GEMM, then this kernel makes, per row and in two sweeps over the vocab:

1. online statistics: ``lse = logsumexp(z)``, ``argmax z``; for probability targets ``Σp``, ``Σp·z``,
   ``Σ p·log p`` (KL) and ``argmax p``; for logit targets the online softmax of the target (max, ``Σe``,
   ``Σe·z``, ``Σe·t`` with ``e = exp(t - max_t)``) and ``argmax t``; from them the row loss;
2. (``NEED_GRAD``) ``dz = keep ? Σp·exp(z - lse) - p : 0`` (the gradient for ``grad_output = 1``; the
   caller scales by the real one in backward), written over the logits buffer or into a separate one in
   the GEMM dtype.

One program per row (rows of a chunk are independent); the vocab is swept in ``BLOCK_V`` tiles. All math
in fp32; ties go to the lowest index (``tie_break_left`` within a tile, strict ``>`` across tiles), as
torch.argmax. Row ``n`` (global index ``r0 + row``) reads target row ``n + row_offset`` while
``n % seq_len + row_offset < seq_len`` and a zero target otherwise (the caller removes those rows from
``keep`` and zeroes their target argmax). Its plain-torch twin is
``eagle_ext.ops.linear_kl._rows_torch``; tests compare the two under ``TRITON_INTERPRET=1`` (fp32).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# vocab tile per sweep step: small in the interpreter so that tails and several tiles are exercised
_BLOCK_V = 128 if _INTERPRET else 4096
_NUM_WARPS = 8


@triton.jit
def _rows_kernel(
    z_ptr, t_ptr, keep_ptr, dz_ptr, loss_ptr, zarg_ptr, targ_ptr,
    V, r0, row_offset, seq_len,
    stride_zn, stride_tn, stride_tv, stride_dzn,
    TARGET_LOGITS: tl.constexpr, KL: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_row = r0 + row
    t_row = g_row + row_offset
    # as a block (a scalar condition would not broadcast into a load mask in the interpreter)
    t_ok = (tl.zeros((BLOCK_V,), tl.int64) + (g_row % seq_len) + row_offset) < seq_len
    keep = tl.load(keep_ptr + g_row)
    offs = tl.arange(0, BLOCK_V)
    neg_inf = float("-inf")
    z_row = z_ptr + row * stride_zn
    t_row_ptr = t_ptr + t_row * stride_tn

    # sweep 1: online statistics (scalars per row, carried as 0-dim fp32)
    m = tl.full((), neg_inf, tl.float32)
    s = tl.zeros((), tl.float32)
    z_arg = tl.zeros((), tl.int32)
    t_max = tl.full((), neg_inf, tl.float32)
    t_arg = tl.zeros((), tl.int32)
    acc1 = tl.zeros((), tl.float32)  # probs: Σp      logits: Σe
    acc2 = tl.zeros((), tl.float32)  # probs: Σp·z    logits: Σe·z
    acc3 = tl.zeros((), tl.float32)  # probs: Σp·logp logits: Σe·t   (KL only)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        ok = cols < V
        z = tl.load(z_row + cols, mask=ok, other=neg_inf).to(tl.float32)
        tile_max = tl.max(z, 0)
        tile_arg = tl.argmax(z, 0, tie_break_left=True)
        z_arg = tl.where(tile_max > m, v0 + tile_arg, z_arg)
        m_new = tl.maximum(m, tile_max)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
        z0 = tl.where(ok, z, 0.0)
        tv = tl.load(t_row_ptr + cols * stride_tv, mask=ok & t_ok, other=0.0).to(tl.float32)
        tv_max = tl.where(ok, tv, neg_inf)
        tile_tmax = tl.max(tv_max, 0)
        tile_targ = tl.argmax(tv_max, 0, tie_break_left=True)
        t_arg = tl.where(tile_tmax > t_max, v0 + tile_targ, t_arg)
        if TARGET_LOGITS:
            mt_new = tl.maximum(t_max, tile_tmax)
            mt_safe = tl.where(mt_new == neg_inf, 0.0, mt_new)  # nothing to rescale yet
            alpha = tl.exp(t_max - mt_safe)
            e = tl.exp(tv_max - mt_safe)
            acc1 = acc1 * alpha + tl.sum(e, 0)
            acc2 = acc2 * alpha + tl.sum(e * z0, 0)
            if KL:
                acc3 = acc3 * alpha + tl.sum(e * tl.where(e > 0.0, tv, 0.0), 0)
            t_max = mt_new
        else:
            t_max = tl.maximum(t_max, tile_tmax)
            acc1 += tl.sum(tv, 0)
            acc2 += tl.sum(tv * z0, 0)
            if KL:
                acc3 += tl.sum(tv * tl.log(tl.where(tv > 0.0, tv, 1.0)), 0)  # 0·log 0 = 0

    lse = m + tl.log(s)
    if TARGET_LOGITS:
        tlse = t_max + tl.log(acc1)
        psum = tl.full((), 1.0, tl.float32)
        loss = lse - acc2 / acc1
        if KL:
            loss += acc3 / acc1 - tlse
    else:
        tlse = tl.zeros((), tl.float32)
        psum = acc1
        loss = psum * lse - acc2
        if KL:
            loss += acc3
    tl.store(loss_ptr + g_row, loss)
    tl.store(zarg_ptr + g_row, z_arg.to(tl.int64))
    tl.store(targ_ptr + g_row, t_arg.to(tl.int64))

    if NEED_GRAD:
        # sweep 2: dz for grad_output = 1; tl.where (not a product) so that masked rows write exact zeros
        dz_row = dz_ptr + row * stride_dzn
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + offs
            ok = cols < V
            z = tl.load(z_row + cols, mask=ok, other=0.0).to(tl.float32)
            tv = tl.load(t_row_ptr + cols * stride_tv, mask=ok & t_ok, other=0.0).to(tl.float32)
            if TARGET_LOGITS:
                p = tl.exp(tv - tlse)
            else:
                p = tv
            dz = tl.where(keep != 0, psum * tl.exp(z - lse) - p, 0.0)
            tl.store(dz_row + cols, dz.to(dz_ptr.dtype.element_ty), mask=ok)


def rows(
    z: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    dz: torch.Tensor | None,
    row_loss: torch.Tensor,
    draft_argmax: torch.Tensor,
    target_argmax: torch.Tensor,
    *,
    r0: int,
    is_logits: bool,
    kl: bool,
    row_offset: int,
    seq_len: int,
) -> None:
    """Run the kernel over the ``m`` rows of chunk ``z`` [m, V] (global rows ``r0 .. r0 + m``).

    ``target`` [N, V] (whole, any float dtype and strides), ``keep`` uint8 / bool [N]; writes
    ``row_loss`` fp32, ``draft_argmax`` / ``target_argmax`` int64 at rows ``r0 ..``, and ``dz`` [m, V]
    (may be ``z`` itself) when given. Inputs are trusted (validated by the caller).
    """
    m, v = z.shape
    if m == 0:
        return
    out = dz if dz is not None else z  # unused without NEED_GRAD
    _rows_kernel[(m,)](
        z, target, keep, out, row_loss, draft_argmax, target_argmax,
        v, r0, row_offset, seq_len,
        z.stride(0), target.stride(0), target.stride(1), out.stride(0),
        TARGET_LOGITS=is_logits, KL=kl, NEED_GRAD=dz is not None, BLOCK_V=_BLOCK_V, num_warps=_NUM_WARPS,
    )
