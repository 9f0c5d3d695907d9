"""Triton kernels that turn COD per-row summaries into all eight FlexAttention BlockMask tensors.

Inputs (built by ``eagle_ext.ops.cod_block_mask`` with O(n * K) torch work):

- ``context_lo`` / ``context_hi`` int32 ``[n]``: query ``i`` sees the depth-0 keys ``[lo_i, hi_i)`` (a
  contiguous range of the flat sequence, empty for padded queries);
- ``rollout_counts`` int32 ``[nb, nb]``: visible (query, key) pairs per block pair among the keys of depth
  >= 1 (the query's own rollout).

Launch 1 (one program per query block) counts the visible pairs of every key block as
``sum_i |[lo_i, hi_i) ∩ block| + rollout_counts``, classifies the pair (0: empty, == BLOCK**2: full, else
partial; ragged edge blocks can never reach BLOCK**2, so they come out partial like in
``create_block_mask``), writes the kv-side tensors and an int8 block grid (0 empty, 1 partial, 2 full). Launch 2 (one program per key
block) reads its column of that grid and writes the q-side tensors. Index rows follow the layout of
``create_block_mask``'s stable descending argsort: used blocks ascending, then the unused ones ascending.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _classify_tile(lo, hi, rollout_row_ptr, cols, col_ok, BLOCK: tl.constexpr):
    """(partial, full) flags of key blocks ``cols`` for one query block."""
    k0 = cols * BLOCK
    overlap = tl.minimum(hi[:, None], k0[None, :] + BLOCK) - tl.maximum(lo[:, None], k0[None, :])
    count = tl.sum(tl.maximum(overlap, 0), axis=0)
    count += tl.load(rollout_row_ptr + cols, mask=col_ok, other=0)
    full = (count == BLOCK * BLOCK) & col_ok
    partial = (count > 0) & (count < BLOCK * BLOCK) & col_ok
    return partial, full


@triton.jit
def _write_ordered_tile(idx_row_ptr, cols, col_ok, used, total_used, used_before, unused_before):
    """Write one tile of an ordered index row; return the updated running counts (per-lane vectors)."""
    used_i = used.to(tl.int32)
    unused_i = ((used_i == 0) & col_ok).to(tl.int32)
    off_used = tl.sum(used_before, axis=0)
    off_unused = tl.sum(unused_before, axis=0)
    pos = tl.where(
        used_i != 0,
        off_used + tl.cumsum(used_i, axis=0) - 1,
        total_used + off_unused + tl.cumsum(unused_i, axis=0) - 1,
    )
    tl.store(idx_row_ptr + pos, cols, mask=col_ok)
    return used_before + used_i, unused_before + unused_i


@triton.jit
def _cod_kv_side_kernel(
    lo_ptr,
    hi_ptr,
    rollout_ptr,
    grid_ptr,
    kv_num_ptr,
    kv_idx_ptr,
    full_kv_num_ptr,
    full_kv_idx_ptr,
    n,
    n_blocks,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    TILE: tl.constexpr,
):
    qb = tl.program_id(0)
    r = tl.arange(0, ROWS)
    rows = qb * BLOCK + r
    row_ok = (r < BLOCK) & (rows < n)
    # Rows outside the sequence get the empty range [0, 0).
    lo = tl.load(lo_ptr + rows, mask=row_ok, other=0)
    hi = tl.load(hi_ptr + rows, mask=row_ok, other=0)
    row_base = qb.to(tl.int64) * n_blocks
    rollout_row_ptr = rollout_ptr + row_base

    # Pass 1: classify, store the block grid, total the used blocks (their count is the offset of the
    # unused tail in pass 2).
    n_partial = tl.zeros([TILE], dtype=tl.int32)
    n_full = tl.zeros([TILE], dtype=tl.int32)
    for start in range(0, n_blocks, TILE):
        cols = start + tl.arange(0, TILE)
        col_ok = cols < n_blocks
        partial, full = _classify_tile(lo, hi, rollout_row_ptr, cols, col_ok, BLOCK)
        kind = tl.where(full, 2, tl.where(partial, 1, 0)).to(tl.int8)
        tl.store(grid_ptr + row_base + cols, kind, mask=col_ok)
        n_partial += partial.to(tl.int32)
        n_full += full.to(tl.int32)
    total_partial = tl.sum(n_partial, axis=0)
    total_full = tl.sum(n_full, axis=0)
    tl.store(kv_num_ptr + qb, total_partial)
    tl.store(full_kv_num_ptr + qb, total_full)

    # Pass 2: recompute the flags (cheaper and safer than re-reading this program's own stores) and
    # write both index rows.
    p_used = tl.zeros([TILE], dtype=tl.int32)
    p_unused = tl.zeros([TILE], dtype=tl.int32)
    f_used = tl.zeros([TILE], dtype=tl.int32)
    f_unused = tl.zeros([TILE], dtype=tl.int32)
    for start in range(0, n_blocks, TILE):
        cols = start + tl.arange(0, TILE)
        col_ok = cols < n_blocks
        partial, full = _classify_tile(lo, hi, rollout_row_ptr, cols, col_ok, BLOCK)
        p_used, p_unused = _write_ordered_tile(
            kv_idx_ptr + row_base, cols, col_ok, partial, total_partial, p_used, p_unused
        )
        f_used, f_unused = _write_ordered_tile(
            full_kv_idx_ptr + row_base, cols, col_ok, full, total_full, f_used, f_unused
        )


@triton.jit
def _cod_q_side_kernel(
    grid_ptr,
    q_num_ptr,
    q_idx_ptr,
    full_q_num_ptr,
    full_q_idx_ptr,
    n_blocks,
    TILE: tl.constexpr,
):
    kb = tl.program_id(0)
    col_base = kb.to(tl.int64) * n_blocks

    n_partial = tl.zeros([TILE], dtype=tl.int32)
    n_full = tl.zeros([TILE], dtype=tl.int32)
    for start in range(0, n_blocks, TILE):
        qbs = start + tl.arange(0, TILE)
        ok = qbs < n_blocks
        kind = tl.load(grid_ptr + qbs.to(tl.int64) * n_blocks + kb, mask=ok, other=0)
        n_partial += (kind == 1).to(tl.int32)
        n_full += (kind == 2).to(tl.int32)
    total_partial = tl.sum(n_partial, axis=0)
    total_full = tl.sum(n_full, axis=0)
    tl.store(q_num_ptr + kb, total_partial)
    tl.store(full_q_num_ptr + kb, total_full)

    p_used = tl.zeros([TILE], dtype=tl.int32)
    p_unused = tl.zeros([TILE], dtype=tl.int32)
    f_used = tl.zeros([TILE], dtype=tl.int32)
    f_unused = tl.zeros([TILE], dtype=tl.int32)
    for start in range(0, n_blocks, TILE):
        qbs = start + tl.arange(0, TILE)
        ok = qbs < n_blocks
        kind = tl.load(grid_ptr + qbs.to(tl.int64) * n_blocks + kb, mask=ok, other=0)
        p_used, p_unused = _write_ordered_tile(
            q_idx_ptr + col_base, qbs, ok, (kind == 1) & ok, total_partial, p_used, p_unused
        )
        f_used, f_unused = _write_ordered_tile(
            full_q_idx_ptr + col_base, qbs, ok, (kind == 2) & ok, total_full, f_used, f_unused
        )


def cod_block_mask_tensors_triton(
    context_lo: torch.Tensor,
    context_hi: torch.Tensor,
    rollout_counts: torch.Tensor,
    block_size: int,
) -> tuple[torch.Tensor, ...]:
    """Run the two launches; return the eight BlockMask tensors (int32, without the B/H dims).

    Args:
        context_lo, context_hi: int32 ``[n]`` contiguous, the depth-0 key range ``[lo, hi)`` per query.
        rollout_counts: int32 ``[nb, nb]`` contiguous (``nb = ceil(n / block_size)``), visible pairs per block
            pair among keys of depth >= 1.
        block_size: query and key block size (any positive int).

    Returns:
        ``(kv_num [nb], kv_idx [nb, nb], full_kv_num, full_kv_idx, q_num [nb], q_idx [nb, nb], full_q_num,
        full_q_idx)`` on the inputs' device, laid out exactly like ``create_block_mask``'s.
    """
    n = context_lo.numel()
    n_blocks = triton.cdiv(n, block_size)
    device = context_lo.device
    rows = triton.next_power_of_2(block_size)
    # One [ROWS, TILE] int32 tile of overlaps per step keeps registers bounded on GPU; under the
    # interpreter a program's cost is per step, so the same cap keeps tests to a step or two.
    kv_tile = max(16, min(triton.next_power_of_2(n_blocks), 4096 // rows))
    q_tile = max(16, min(triton.next_power_of_2(n_blocks), 1024))
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    launch = {} if interpreting else {"num_warps": 4}

    def new(*shape, dtype=torch.int32):
        return torch.empty(shape, dtype=dtype, device=device)

    grid = new(n_blocks, n_blocks, dtype=torch.int8)
    kv_num, full_kv_num, q_num, full_q_num = (new(n_blocks) for _ in range(4))
    kv_idx, full_kv_idx, q_idx, full_q_idx = (new(n_blocks, n_blocks) for _ in range(4))
    _cod_kv_side_kernel[(n_blocks,)](
        context_lo,
        context_hi,
        rollout_counts,
        grid,
        kv_num,
        kv_idx,
        full_kv_num,
        full_kv_idx,
        n,
        n_blocks,
        BLOCK=block_size,
        ROWS=rows,
        TILE=kv_tile,
        **launch,
    )
    _cod_q_side_kernel[(n_blocks,)](
        grid,
        q_num,
        q_idx,
        full_q_num,
        full_q_idx,
        n_blocks,
        TILE=q_tile,
        **launch,
    )
    return kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx
