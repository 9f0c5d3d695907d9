"""Attention kernels of the draft: EAGLE-3 test-time-training (TTT) attention and plain masked attention.

TTT attention (one call per TTT step k, shared ``cache_hidden = [K_list, V_list]`` holding K_0..K_k):
query slot t attends to

- block 1: the step-0 keys ``K_0[s]`` for ``s <= t`` in t's document (key padding excluded, see
  :mod:`eagle_ext.models.masks`), and
- block 2: its own slot's keys from the later steps, ``K_1[t] .. K_k[t]`` (always visible),

with one softmax over both blocks, computed in fp32 (fp64 for fp64 inputs). At k = 0 this is plain
causal attention.

Two implementations with identical semantics:

- :func:`ttt_attention_reference` (``"eager"``): materialises the ``[B, Hq, T, T + k]`` fp32 scores.
  Simple and the test oracle; its memory is the reason SpecForge OOMs at long context.
- :func:`ttt_attention_lean` (``"lean"``): a custom autograd function that walks query chunks of size c.
  For each chunk it builds the block-1 scores only against keys ``[first document start in the chunk,
  chunk end)`` (the causal / document skip roughly halves the work) and the ``k`` diagonal scores, merges
  them in log space (``lse = logaddexp(lse_block, lse_diag)``) and keeps only the fp32
  ``lse [B, Hq, T]`` for backward, which recomputes the chunk scores (FlashAttention-2 style:
  ``dS = P * (dP - rowsum(P * dP))``, the row sum taken over the chunk's fp32 P and dP).

  Memory: the transient peak is about three ``[B, Hq, c, T]`` fp32 buffers (scores/P, dP, dS) with c
  chosen so one buffer stays under 16 MiB (and c <= 128) on CPU / 256 MiB on CUDA, instead of the
  eager kernel's ``[B, Hq, T, T + k]`` fp32 scores and probabilities kept alive per step for backward.
  Saved activations are ``q`` ``[B, Hq, T, D]``, the cache's K/V by reference (``K_1..K_k`` enter as
  separate inputs and are stacked per query chunk only, so a TTT step saves no ``[B, Hkv, T, k, D]`` copy:
  such a copy per step would add up to O(k^2) over the unroll) and ``lse``: nothing quadratic in T or k. GQA is handled by grouping query
  heads, never by repeating K/V. Measured on CPU (``benchmarks/bench_eagle3_step.py``, B=1, Hq=8, Hkv=2,
  T=2048, D=64, k=3, forward + backward): 102 MiB peak vs 652 MiB eager (0.16x), 3.3x faster.

Precision: both kernels keep the scores ``QK^T`` and the backward's ``dP = dO V^T`` in fp32 (bf16/fp16
operands, fp32 products: ``out_dtype=torch.float32`` matmuls where the build has them, fp32 operands
otherwise). Rounding them to bf16 first loses ~3 significant digits, which on peaked rows shifts the
softmax by several percent and makes ``dP - rowsum(dO * O)`` cancel to noise.

Masked attention (P-EAGLE) runs FlexAttention, compiled once per bucket of sequence lengths: see
:func:`masked_attention` and :func:`flex_bucket_length`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from eagle_ext.models.masks import block_causal_visibility

__all__ = [
    "TTT_ATTENTION_IMPLEMENTATIONS",
    "FLEX_RECOMPILE_LIMIT",
    "flex_bucket_length",
    "ttt_attention",
    "ttt_attention_reference",
    "ttt_attention_lean",
    "masked_attention",
]

TTT_ATTENTION_IMPLEMENTATIONS = ("lean", "eager", "flex")

# Query chunk of the lean path: keep one fp32 score chunk [B, Hq, c, T] under this many elements, with
# at most this many query rows. CPU: small chunks stay cache-friendly and let the causal key skip pay off
# (measured at T=512..2048: c=128 is 1.1-2.5x faster than the eager kernel, one big chunk is up to 2x
# slower than it); CUDA: up to 256 MiB per chunk keeps the matmuls large enough to fill the GPU.
_LEAN_SCORE_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
_LEAN_MAX_ROWS = {"cpu": 128, "cuda": 1 << 30}

# (device type, operand dtype) -> whether torch.bmm(..., out_dtype=) runs there (torch >= 2.9 on CUDA;
# CPU builds have no kernel for it). Learnt on first use.
_BMM_OUT_DTYPE: dict[tuple[str, torch.dtype], bool] = {}


def _matmul_acc(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``a @ b`` returned in ``acc`` without rounding the products to the operand dtype first.

    ``a [..., m, k]``, ``b [..., k, n]`` with equal batch dims. bf16/fp16 operands are multiplied with fp32
    accumulation either way; what matters is the output: a bf16 score keeps ~3 significant digits. Uses
    ``torch.bmm(..., out_dtype=acc)`` (same speed as a bf16 matmul) where available, else multiplies fp32
    upcasts (exact products of bf16 values; TF32, if enabled, represents bf16 operands exactly too).
    Autocast is off inside: it would cast fp32 operands back down and round the result.
    """
    with torch.autocast(a.device.type, enabled=False):
        return _matmul_acc_no_autocast(a, b, acc)


def _matmul_acc_no_autocast(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    if a.dtype == acc:
        return torch.matmul(a, b.to(acc))
    key = (a.device.type, a.dtype)
    if _BMM_OUT_DTYPE.get(key, True):
        batch = a.shape[:-2]
        try:
            out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out_dtype=acc)
        except torch.cuda.OutOfMemoryError:
            raise
        except (TypeError, NotImplementedError, RuntimeError):  # no such overload / no kernel here
            _BMM_OUT_DTYPE[key] = False
        else:
            _BMM_OUT_DTYPE[key] = True
            return out.view(*batch, a.shape[-2], b.shape[-1])
    return torch.matmul(a.to(acc), b.to(acc))


def _check_ttt_inputs(query, keys, values, doc_ids, key_valid) -> tuple[int, int, int, int, int]:
    if not isinstance(query, torch.Tensor) or query.dim() != 4:
        raise ValueError(f"query must be a [B, Hq, T, D] tensor, got {getattr(query, 'shape', type(query))}")
    if len(keys) < 1 or len(keys) != len(values):
        raise ValueError(
            f"keys and values must be equally long non-empty lists (K_0..K_k), got {len(keys)} and {len(values)}"
        )
    b, hq, t, d = query.shape
    hkv = keys[0].shape[1]
    for name, seq in (("keys", keys), ("values", values)):
        for i, x in enumerate(seq):
            if x.dim() != 4 or x.shape[0] != b or x.shape[1] != hkv or x.shape[2] != t or x.shape[3] != d:
                raise ValueError(
                    f"{name}[{i}] must have shape [B, Hkv, T, D] = {[b, hkv, t, d]}, got {list(x.shape)}"
                )
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    for name, x in (("doc_ids", doc_ids), ("key_valid", key_valid)):
        if x is not None and tuple(x.shape) != (b, t):
            raise ValueError(f"{name} must have shape [B, T] = {[b, t]}, got {list(x.shape)}")
    return b, hq, hkv, t, d


def ttt_attention(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    doc_ids: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    implementation: str = "lean",
    query_chunk_size: int | None = None,
    doc_ids_host: torch.Tensor | None = None,
) -> torch.Tensor:
    """TTT attention of step ``k = len(keys) - 1``.

    Args:
        query: ``[B, Hq, T, D]`` (already rotated at positions ``pos + k``).
        keys, values: ``[K_0..K_k]`` and ``[V_0..V_k]``, each ``[B, Hkv, T, D]`` (``Hq % Hkv == 0``).
        doc_ids: int64 ``[B, T]`` document index per slot for packed rows, or None.
        key_valid: bool ``[B, T]`` real-token mask, or None (all real).
        scale: softmax scale, default ``D ** -0.5``.
        implementation: ``"lean"``, ``"eager"`` or ``"flex"`` (CUDA: compiled FlexAttention over ``K_0`` plus
            the diagonal keys merged in log space, :func:`ttt_attention_flex`; elsewhere the lean path, since
            FlexAttention has no CPU backward).
        query_chunk_size: lean path only; default keeps one fp32 score chunk ``[B, Hq, c, T]`` under 4M
            elements and 128 rows on CPU (64M elements on CUDA), at least 16 rows.
        doc_ids_host: lean path only: a host (CPU) copy of ``doc_ids``. The lean chunk plan needs the
            document starts as Python ints; with this copy it reads them without a device-to-host sync
            (otherwise one sync per call when ``doc_ids`` is on CUDA).

    Returns:
        ``[B, Hq, T, D]`` in the query dtype.

    Raises:
        ValueError: inconsistent shapes, empty cache, unknown implementation.
    """
    if implementation == "lean":
        return ttt_attention_lean(
            query, keys, values, doc_ids=doc_ids, key_valid=key_valid, scale=scale,
            query_chunk_size=query_chunk_size, doc_ids_host=doc_ids_host,
        )
    if implementation == "eager":
        return ttt_attention_reference(query, keys, values, doc_ids=doc_ids, key_valid=key_valid, scale=scale)
    if implementation == "flex":
        if query.device.type == "cuda":
            return ttt_attention_flex(query, keys, values, doc_ids=doc_ids, key_valid=key_valid, scale=scale)
        return ttt_attention_lean(  # the CPU fallback: no FlexAttention backward there
            query, keys, values, doc_ids=doc_ids, key_valid=key_valid, scale=scale,
            query_chunk_size=query_chunk_size, doc_ids_host=doc_ids_host,
        )
    raise ValueError(f"implementation must be one of {TTT_ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")


def ttt_attention_reference(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    doc_ids: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Eager TTT attention (the reference): full ``[B, Hq, T, T + k]`` fp32 scores. Same contract as
    :func:`ttt_attention`."""
    b, hq, hkv, t, d = _check_ttt_inputs(query, keys, values, doc_ids, key_valid)
    scale = d**-0.5 if scale is None else scale
    groups = hq // hkv
    k0 = keys[0].repeat_interleave(groups, dim=1)
    v0 = values[0].repeat_interleave(groups, dim=1)
    acc = _accumulation_dtype(query.dtype)
    scores = _matmul_acc(query, k0.transpose(-1, -2), acc) * scale
    visible = block_causal_visibility(doc_ids, key_valid, (0, t), (0, t), device=query.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    steps = len(keys) - 1
    if steps:
        kd = torch.stack([k.repeat_interleave(groups, dim=1) for k in keys[1:]], dim=3)  # [B,Hq,T,k,D]
        vd = torch.stack([v.repeat_interleave(groups, dim=1) for v in values[1:]], dim=3)
        diag = _matmul_acc(query[..., None, :], kd.transpose(-1, -2), acc)[..., 0, :] * scale
        scores = torch.cat((scores, diag), dim=-1)
    # P @ V in the accumulation dtype too, so that autograd's dP = dO V^T stays fp32 as well.
    probs = torch.softmax(scores, dim=-1)
    out = _matmul_acc(probs[..., :t], v0, acc)
    if steps:
        out = out + _matmul_acc(probs[..., None, t:], vd, acc)[..., 0, :]
    return out.to(query.dtype)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax dtype: fp32, or fp64 for fp64 inputs (so gradcheck can run at full precision)."""
    return torch.promote_types(dtype, torch.float32)


def _document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, T]``: index of the first slot of each slot's document."""
    t = doc_ids.shape[1]
    idx = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    is_start = torch.ones_like(doc_ids, dtype=torch.bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values


def _chunk_plan(t: int, chunk: int, doc_ids: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """``(q0, q1, k0)`` per query chunk; keys before ``k0`` are invisible to the whole chunk.

    Reads document starts back to Python: pass a host copy of ``doc_ids`` to keep this sync-free."""
    starts = list(range(0, t, chunk))
    if doc_ids is None:
        lows = [0] * len(starts)
    else:
        # Document starts are non-decreasing in t, so the chunk's first slot has the smallest one.
        lows = _document_starts(doc_ids)[:, starts].amin(dim=0).tolist()
    return [(q0, min(q0 + chunk, t), lo) for q0, lo in zip(starts, lows, strict=True)]


class _ChunkContext:
    """Tensors shared by the forward and backward chunk loops of the lean kernel.

    Query-side tensors use the layout ``[B, Hkv, T, G, D]`` (G = Hq / Hkv query heads per K/V head), so a
    query chunk ``[:, :, q0:q1]`` flattens to ``[B, Hkv, c * G, D]`` without a copy and every product below
    is a plain (batched) matmul: block scores ``[B, Hkv, c * G, Kc]``, diagonal scores ``[B, Hkv, c, G, k]``.
    """

    def __init__(self, qg, k0, v0, kd, vd, doc_ids, key_valid, scale):
        self.b, self.hkv, self.t, self.g, self.d = qg.shape
        # kd / vd: the lists K_1..K_k, V_1..V_k ([B, Hkv, T, D] each), or None at step 0. They are never
        # stacked whole (a [B, Hkv, T, k, D] copy per TTT step, saved for backward, is O(k^2) over the
        # unroll); a chunk stacks its own rows only, a transient [B, Hkv, c, k, D].
        self.qg, self.k0, self.v0, self.kd, self.vd = qg, k0, v0, kd, vd
        self.doc_ids, self.key_valid, self.scale = doc_ids, key_valid, scale
        self.acc = _accumulation_dtype(qg.dtype)

    def rows(self, x: torch.Tensor, q0: int, q1: int) -> torch.Tensor:
        """``x[:, :, q0:q1]`` of a ``[B, Hkv, T, G, D]`` tensor as ``[B, Hkv, c * G, D]`` (a view)."""
        return x[:, :, q0:q1].reshape(self.b, self.hkv, (q1 - q0) * self.g, x.shape[-1])

    @staticmethod
    def diag_rows(xs: list[torch.Tensor], q0: int, q1: int) -> torch.Tensor:
        """Rows ``q0..q1`` of ``K_1..K_k`` (or the values) as ``[B, Hkv, c, k, D]``: a chunk-sized stack."""
        return torch.stack([x[:, :, q0:q1] for x in xs], dim=3)

    def probs(self, q0: int, q1: int, lo: int, lse: torch.Tensor | None):
        """Block and diagonal probabilities of one chunk (and the chunk lse when ``lse`` is None).

        Returns ``(P [B,Hkv,c,G,Kc], Pd [B,Hkv,c,G,k] | None, lse [B,Hkv,c,G])``, all in the accumulation
        dtype.
        """
        b, hkv, g, c, kc_len = self.b, self.hkv, self.g, q1 - q0, q1 - lo
        scores = _matmul_acc(self.rows(self.qg, q0, q1), self.k0[:, :, lo:q1].transpose(-1, -2), self.acc)
        scores = scores.mul_(self.scale).view(b, hkv, c, g, kc_len)
        visible = block_causal_visibility(self.doc_ids, self.key_valid, (q0, q1), (lo, q1), device=scores.device)
        scores.masked_fill_(~visible[:, :, :, None], float("-inf"))
        diag = None
        if self.kd is not None:
            diag = _matmul_acc(self.qg[:, :, q0:q1], self.diag_rows(self.kd, q0, q1).transpose(-1, -2), self.acc)
            diag = diag.mul_(self.scale)
        if lse is None:
            lse = torch.logsumexp(scores, dim=-1)
            if diag is not None:
                lse = torch.logaddexp(lse, torch.logsumexp(diag, dim=-1))
        probs = scores.sub_(lse[..., None]).exp_()
        probs_diag = None if diag is None else diag.sub_(lse[..., None]).exp_()
        return probs, probs_diag, lse


def _grouped(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """``[B, Hq, T, D] -> [B, Hkv, T, G, D]`` (contiguous)."""
    b, hq, t, d = x.shape
    return x.reshape(b, hkv, hq // hkv, t, d).transpose(2, 3).contiguous()


class _LeanTTTAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k0, v0, doc_ids, key_valid, scale, chunk, doc_ids_host, steps, *extra):
        # extra: K_1..K_steps then V_1..V_steps, each [B, Hkv, T, D], as separate inputs (no stacked copy)
        kd, vd = (list(extra[:steps]), list(extra[steps:])) if steps else (None, None)
        b, hq, t, d = q.shape
        qg = _grouped(q, k0.shape[1])
        cc = _ChunkContext(qg, k0, v0, kd, vd, doc_ids, key_valid, scale)
        plan = _chunk_plan(t, chunk, doc_ids if doc_ids_host is None else doc_ids_host)
        dtype = q.dtype
        out = torch.empty_like(qg)
        lse = qg.new_empty(qg.shape[:-1], dtype=cc.acc)
        for q0, q1, lo in plan:
            probs, probs_diag, lse_c = cc.probs(q0, q1, lo, None)
            c = q1 - q0
            # P in the input dtype for the tensor-core product (as FlashAttention), fp32 results summed
            # and rounded once.
            o = _matmul_acc(probs.view(b, cc.hkv, c * cc.g, q1 - lo).to(dtype), v0[:, :, lo:q1], cc.acc)
            o = o.view(b, cc.hkv, c, cc.g, d)
            if probs_diag is not None:
                o += _matmul_acc(probs_diag.to(dtype), cc.diag_rows(vd, q0, q1), cc.acc)
            out[:, :, q0:q1] = o
            lse[:, :, q0:q1] = lse_c
        ctx.save_for_backward(qg, k0, v0, doc_ids, key_valid, lse, *extra)
        ctx.scale, ctx.plan, ctx.steps = scale, plan, steps
        return out.transpose(2, 3).reshape(b, hq, t, d)

    @staticmethod
    def backward(ctx, grad_out):
        qg, k0, v0, doc_ids, key_valid, lse, *extra = ctx.saved_tensors
        steps = ctx.steps
        kd, vd = (extra[:steps], extra[steps:]) if steps else (None, None)
        cc = _ChunkContext(qg, k0, v0, kd, vd, doc_ids, key_valid, ctx.scale)
        b, hkv, g, d, acc, dtype = cc.b, cc.hkv, cc.g, cc.d, cc.acc, qg.dtype
        go_g = _grouped(grad_out.to(dtype), hkv)
        dq = torch.empty_like(qg)
        dk0 = torch.zeros(k0.shape, dtype=acc, device=qg.device)
        dv0 = torch.zeros(v0.shape, dtype=acc, device=qg.device)
        dkd = [torch.empty_like(k) for k in kd] if steps else []
        dvd = [torch.empty_like(v) for v in vd] if steps else []
        for q0, q1, lo in ctx.plan:
            c, kc_len = q1 - q0, q1 - lo
            probs, probs_diag, _ = cc.probs(q0, q1, lo, lse[:, :, q0:q1])
            go_rows = cc.rows(go_g, q0, q1)
            probs_rows = probs.view(b, hkv, c * g, kc_len)
            dv0[:, :, lo:q1] += _matmul_acc(probs_rows.transpose(-1, -2).to(dtype), go_rows, acc)
            # dS = P * (dP - delta) with delta = rowsum(P * dP): a chunk holds whole rows (block and
            # diagonal keys), so delta comes from the fp32 P and dP here rather than from rowsum(dO * O)
            # with O rounded to the input dtype, which cancels as badly as a bf16 dP would.
            pdp = _matmul_acc(go_rows, v0[:, :, lo:q1].transpose(-1, -2), acc).view(b, hkv, c, g, kc_len)
            pdp.mul_(probs)  # P * dP, in the dP buffer
            delta = pdp.sum(dim=-1, keepdim=True)
            pdp_diag = None
            if probs_diag is not None:
                go, kd_c, vd_c = go_g[:, :, q0:q1], cc.diag_rows(kd, q0, q1), cc.diag_rows(vd, q0, q1)
                dvd_c = torch.matmul(probs_diag.transpose(-1, -2).to(dtype), go)  # [B, Hkv, c, k, D]
                for j, dv in enumerate(dvd):
                    dv[:, :, q0:q1] = dvd_c[:, :, :, j]
                pdp_diag = _matmul_acc(go, vd_c.transpose(-1, -2), acc).mul_(probs_diag)
                delta += pdp_diag.sum(dim=-1, keepdim=True)
            ds = pdp.sub_(probs.mul_(delta)).mul_(ctx.scale).to(dtype)  # P*dP - P*delta, in place
            ds_rows = ds.view(b, hkv, c * g, kc_len)
            dqc = _matmul_acc(ds_rows, k0[:, :, lo:q1], acc).view(b, hkv, c, g, d)
            dk0[:, :, lo:q1] += _matmul_acc(ds_rows.transpose(-1, -2), cc.rows(qg, q0, q1), acc)
            if pdp_diag is not None:
                dsd = pdp_diag.sub_(probs_diag.mul_(delta)).mul_(ctx.scale).to(dtype)
                dqc += _matmul_acc(dsd, kd_c, acc)
                dkd_c = torch.matmul(dsd.transpose(-1, -2), qg[:, :, q0:q1])
                for j, dk in enumerate(dkd):
                    dk[:, :, q0:q1] = dkd_c[:, :, :, j]
            dq[:, :, q0:q1] = dqc
        dq = dq.transpose(2, 3).reshape(b, hkv * g, cc.t, d)
        return (dq, dk0.to(k0.dtype), dv0.to(v0.dtype), None, None, None, None, None, None, *dkd, *dvd)


def ttt_attention_lean(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    doc_ids: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    query_chunk_size: int | None = None,
    doc_ids_host: torch.Tensor | None = None,
) -> torch.Tensor:
    """Memory-lean TTT attention (chunked over queries, recomputing in backward). Same contract and
    results as :func:`ttt_attention_reference`; see the module docstring for the memory it needs.

    Raises:
        ValueError: as :func:`ttt_attention`, ``query_chunk_size < 1``, or ``doc_ids_host`` not a CPU
            ``[B, T]`` tensor.
    """
    b, hq, hkv, t, d = _check_ttt_inputs(query, keys, values, doc_ids, key_valid)
    scale = d**-0.5 if scale is None else scale
    if query_chunk_size is None:
        kind = query.device.type if query.device.type in _LEAN_MAX_ROWS else "cpu"
        query_chunk_size = min(_LEAN_MAX_ROWS[kind], max(16, _LEAN_SCORE_ELEMENTS[kind] // max(1, b * hq * t)))
    elif not isinstance(query_chunk_size, int) or query_chunk_size < 1:
        raise ValueError(f"query_chunk_size must be a positive int, got {query_chunk_size!r}")
    chunk = min(query_chunk_size, t)
    if doc_ids is not None:
        doc_ids = doc_ids.to(torch.int64)
    if doc_ids_host is not None:
        if doc_ids is None or doc_ids_host.device.type != "cpu" or doc_ids_host.shape != doc_ids.shape:
            raise ValueError(
                f"doc_ids_host must be a CPU copy of doc_ids {[b, t]}, got "
                f"{list(doc_ids_host.shape)} on {doc_ids_host.device}" + (" without doc_ids" if doc_ids is None else "")
            )
    if key_valid is not None:
        key_valid = key_valid.to(torch.bool)
    steps = len(keys) - 1
    return _LeanTTTAttention.apply(
        query, keys[0], values[0], doc_ids, key_valid, scale, chunk, doc_ids_host, steps, *keys[1:], *values[1:]
    )


# Most FlexAttention compilations one process may make (one per length bucket in the worst case: 18
# buckets cover n <= 64k at block size 128). Past it Dynamo would silently run flex eagerly, which
# materialises the full score matrix (out of memory at n = 8k); we turn that into an error instead.
FLEX_RECOMPILE_LIMIT = 32
_compiled_flex: Any = None


def flex_bucket_length(n: int, block_size: int = 128) -> int:
    """Length FlexAttention runs at for ``n`` elements: the smallest ``N >= n`` on the ladder
    ``block_size * {1, 2, 3, 4, 6, 8, 12, 16, 24, ...}`` (powers of two and 1.5 times them).

    P-EAGLE's COD length changes with every row, segment and step; padding it to a bucket keeps the
    compiled flex kernels to ``2 * log2(n / block_size) + 1`` shapes at most. The padding costs little:
    padded elements belong to no document, so their blocks are empty and flex skips them; the waste is
    at most a third of the q/k/v rows (and the BlockMask's ``O(N**2 / block_size**2)`` indices).

    Raises:
        ValueError: ``n < 1`` or ``block_size < 1`` (or not ints).
    """
    for name, value in (("n", n), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    blocks = -(-n // block_size)
    bucket = 1 << (blocks - 1).bit_length()  # smallest power of two >= blocks
    if bucket >= 4 and blocks <= 3 * bucket // 4:
        bucket = 3 * bucket // 4
    return bucket * block_size


def _flex_attention():
    """flex_attention, compiled with dynamic shapes on CUDA (eager elsewhere; CPU has no flex backward)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not torch.cuda.is_available() or torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def _flex_compile_settings() -> dict[str, Any]:
    """Dynamo settings for our flex calls: the recompile limit raised to :data:`FLEX_RECOMPILE_LIMIT`
    and a limit hit made fatal. The option names moved between torch 2.6 (``cache_size_limit``,
    ``fail_on_cache_limit_hit``) and 2.7+ (``recompile_limit``, ``fail_on_recompile_limit_hit``)."""
    import torch._dynamo.config as dynamo_config

    settings: dict[str, Any] = {}
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            settings[name] = max(int(getattr(dynamo_config, name)), FLEX_RECOMPILE_LIMIT)
            break
    # Dynamo refuses fail_on_* together with suppress_errors; a user who asked for suppression keeps it.
    if not getattr(dynamo_config, "suppress_errors", False):
        for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
            if hasattr(dynamo_config, name):
                settings[name] = True
                break
    return settings


@functools.cache
def _flex_has_aux() -> bool:
    import inspect

    from torch.nn.attention.flex_attention import flex_attention

    return "return_aux" in inspect.signature(flex_attention).parameters


def _run_flex(query, key, value, block_mask, scale, enable_gqa, return_lse=False):
    flex = _flex_attention()
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)
    aux = return_lse and _flex_has_aux()
    if return_lse:
        # torch >= 2.9: return_aux=AuxRequest(lse=True) (return_lse is deprecated there); before: return_lse
        if aux:
            from torch.nn.attention.flex_attention import AuxRequest

            kwargs["return_aux"] = AuxRequest(lse=True)
        else:
            kwargs["return_lse"] = True

    def call():
        result = flex(query, key, value, **kwargs)
        return (result[0], result[1].lse) if aux else result

    if flex is not _compiled_flex:
        return call()
    try:
        with torch._dynamo.config.patch(**_flex_compile_settings()):
            return call()
    except Exception as exc:
        if type(exc).__name__ not in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit"):
            raise
        raise RuntimeError(
            f"compiled flex attention hit its recompile limit ({FLEX_RECOMPILE_LIMIT}) at sequence length "
            f"{query.shape[-2]}; instead of falling back to eager flex (which materialises the full score "
            "matrix), this is an error. Pad lengths to flex_bucket_length(n, block_size) buckets "
            "(build_cod_block_mask(..., pad_to=...)), or look for what else changes between calls "
            "(TORCH_LOGS=recompiles)."
        ) from exc


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain attention under an arbitrary mask (used by P-EAGLE's parallel-drafting forward).

    Args:
        query: ``[B, Hq, n, D]``; key, value: ``[B, Hkv, n, D]`` (``Hq % Hkv == 0``).
        attention_mask: a flex-attention ``BlockMask`` (CUDA path; forward-only on CPU) or a dense bool
            tensor broadcastable to ``[B, Hq, n, n]``, True where the query may attend to the key (the CPU
            training path and the reference). Queries that see no key get a zero output, as in flex.
            A BlockMask may be built for a padded length ``N >= n`` whose rows and columns past ``n`` are
            empty (``build_cod_block_mask(..., pad_to=flex_bucket_length(n))``): q, k and v are then
            zero-padded to ``N`` for the flex call and the output cut back to ``n``, so the compiled
            kernel only ever sees bucketed lengths.
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        ``[B, Hq, n, D]`` in the query dtype.

    Raises:
        TypeError: ``attention_mask`` is neither a BlockMask nor a bool tensor.
        ValueError: head counts that do not divide, or a BlockMask shorter than ``n`` or not square.
        RuntimeError: compiled flex attention hit :data:`FLEX_RECOMPILE_LIMIT` (see ``_run_flex``).
    """
    hq, hkv = query.shape[1], key.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if isinstance(attention_mask, torch.Tensor):
        if attention_mask.dtype != torch.bool or attention_mask.dim() != 4:
            raise TypeError(
                f"a dense attention_mask must be a 4-D bool tensor [B, 1|Hq, n, n], got "
                f"{attention_mask.dtype} {list(attention_mask.shape)}"
            )
        sees_any = attention_mask.any(dim=-1, keepdim=True)
        # SDPA returns NaN for rows without a visible key; let such rows see everything, then zero them.
        safe = attention_mask | ~sees_any
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=safe, scale=scale, enable_gqa=hq != hkv
        )
        return out.masked_fill(~sees_any, 0.0)
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask):
        raise TypeError(
            f"attention_mask must be a flex-attention BlockMask or a bool tensor, got {type(attention_mask).__name__}"
        )
    n = query.shape[-2]
    q_len, kv_len = attention_mask.seq_lengths
    if q_len != kv_len or q_len < n:
        raise ValueError(
            f"the BlockMask covers seq_lengths {(q_len, kv_len)}, expected a square mask of at least the "
            f"sequence length n = {n}"
        )
    if q_len == n:
        return _run_flex(query, key, value, attention_mask, scale, hq != hkv)
    pad = (0, 0, 0, q_len - n)
    out = _run_flex(F.pad(query, pad), F.pad(key, pad), F.pad(value, pad), attention_mask, scale, hq != hkv)
    return out[:, :, :n]


# ---------------------------------------------------------------------------------------------- TTT on flex

_ttt_block_mask_cache: tuple | None = None


def ttt_block_mask(doc_ids: torch.Tensor | None, key_valid: torch.Tensor | None, batch: int, seq_len: int,
                   device: torch.device, *, block_size: int = 128):
    """FlexAttention ``BlockMask`` of the TTT step-0 block (``Q`` against ``K_0``): query ``q`` sees key
    ``kv`` iff ``kv <= q``, both in the same document and ``kv`` a real token; a slot always sees itself
    (the visibility of :func:`eagle_ext.models.masks.block_causal_visibility`).

    Built by ``create_block_mask`` on ``device`` (no host sync) and cached for the same ``doc_ids`` /
    ``key_valid`` objects, which a TTT unroll passes at every step: one build per unroll."""
    global _ttt_block_mask_cache
    import weakref

    from torch.nn.attention.flex_attention import create_block_mask

    key = (batch, seq_len, str(device), block_size)
    cached = _ttt_block_mask_cache
    if (cached is not None and cached[0] == key and cached[1]() is doc_ids and cached[2]() is key_valid):
        return cached[3]

    def mask_mod(b, h, q, kv):
        visible = kv <= q
        if doc_ids is not None:
            visible = visible & (doc_ids[b, q] == doc_ids[b, kv])
        if key_valid is not None:
            visible = visible & key_valid[b, kv]
        return visible | (q == kv)

    per_row = doc_ids is not None or key_valid is not None
    mask = create_block_mask(mask_mod, batch if per_row else None, None, seq_len, seq_len, device=device,
                             BLOCK_SIZE=block_size)

    def ref(t):
        return (lambda: None) if t is None else weakref.ref(t)

    _ttt_block_mask_cache = (key, ref(doc_ids), ref(key_valid), mask)
    return mask


def ttt_attention_flex(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    doc_ids: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    block_mask: Any = None,
) -> torch.Tensor:
    """TTT attention with FlexAttention for the ``T x T`` part: same contract and results as
    :func:`ttt_attention_reference`.

    The keys are ``[K_0 | K_1..K_k]``: ``K_0`` under the block-causal document mask (a ``BlockMask``:
    flex skips the empty blocks) and ``K_1..K_k`` on the diagonal only (slot ``t`` sees ``K_j[t]``). The
    ``K_0`` part runs in one (compiled, on CUDA) flex call that also returns its row ``lse``; the diagonal
    part is ``k`` dot products per row, merged in log space: ``lse = logaddexp(lse_0, logsumexp(d))``,
    ``out = exp(lse_0 - lse)·out_0 + Σ_j exp(d_j - lse)·V_j[t]``. Autograd runs through both (flex's
    backward takes the gradient of its ``lse``). Nothing is concatenated or stacked across steps: the
    cache's ``K_j`` / ``V_j`` are read (and saved) by reference, so the unroll copies no K/V.

    CUDA with gradients; the forward also runs on CPU (FlexAttention has no CPU backward: the CPU training
    path is :func:`ttt_attention_lean`, which :func:`ttt_attention` falls back to).

    Raises:
        ValueError: as :func:`ttt_attention`.
    """
    b, hq, hkv, t, d = _check_ttt_inputs(query, keys, values, doc_ids, key_valid)
    scale = d**-0.5 if scale is None else scale
    if block_mask is None:
        block_mask = ttt_block_mask(doc_ids, key_valid.to(torch.bool) if key_valid is not None else None, b, t,
                                    query.device)
    out0, lse0 = _run_flex(query, keys[0], values[0], block_mask, scale, hq != hkv, return_lse=True)
    if len(keys) == 1:
        return out0
    acc = _accumulation_dtype(query.dtype)
    g = hq // hkv
    qg = _grouped(query, hkv)  # [B, Hkv, T, G, D]
    # d_j[b, h, t, g] = q[b, h*g, t] . K_j[b, h, t] * scale, as [B, Hkv, T, G, k]
    diag = torch.cat([_matmul_acc(qg, k.unsqueeze(-1), acc) for k in keys[1:]], dim=-1).mul(scale)
    lse_0 = lse0.to(acc).view(b, hkv, g, t).transpose(2, 3)  # [B, Hkv, T, G]
    lse = torch.logaddexp(lse_0, torch.logsumexp(diag, dim=-1))
    weights = torch.exp(diag - lse.unsqueeze(-1))  # [B, Hkv, T, G, k]
    # fp32 weights times the operands in their own dtype: the products promote to fp32, and autograd saves
    # the weights and references to V_j, not fp32 copies of them
    out = _grouped(out0, hkv) * torch.exp(lse_0 - lse).unsqueeze(-1)
    for j, v in enumerate(values[1:]):
        out = out + weights[..., j : j + 1] * v.unsqueeze(3)
    return out.transpose(2, 3).reshape(b, hq, t, d).to(query.dtype)
