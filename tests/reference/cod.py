"""Plain torch/numpy reference of COD sampling and segment assignment (csrc/cod.cpp).

Follows the reference recipe's algorithm step by step (per-depth sizes, keep-all when the pool is short,
stop at size <= 0, next pool = supervised successors), with this project's fixes (no negative anchor, no
cross-document chain, optional anchor cap) and the same counter-based keys, so it matches the C++ exactly.
"""

from __future__ import annotations

import numpy as np
import torch

GAMMA = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


def keys(positions, seed: int, stream: int) -> np.ndarray:
    """uint64 sampling keys of ``positions`` under (seed, stream)."""
    with np.errstate(over="ignore"):
        s = np.array([seed % (1 << 64)], dtype=np.uint64)
        base = _mix64(_mix64(s + GAMMA) ^ (np.uint64(stream) * GAMMA))
        p = np.asarray(positions, dtype=np.int64).astype(np.uint64)
        return _mix64(base + (p + np.uint64(1)) * GAMMA)


def _sample(pool: torch.Tensor, size: int, seed: int, stream: int) -> torch.Tensor:
    if pool.numel() <= size:
        return pool
    k = keys(pool.numpy(), seed, stream)
    order = np.lexsort((pool.numpy(), k))[:size]  # smallest keys, ties by position
    return torch.sort(pool[torch.from_numpy(order)]).values


def cod_reference(seq_length, loss_mask, num_depths=8, r=0.7, r_min=0.2, *, document_ids=None,
                  max_anchors=None, seed=0):
    valid = torch.as_tensor(loss_mask).reshape(-1) != 0
    L = seq_length
    doc = None if document_ids is None else torch.as_tensor(document_ids).reshape(-1).long()

    def extends(q: torch.Tensor) -> torch.Tensor:
        ok = (q > 0) & (q < L)
        qc = q.clamp(0, max(L - 1, 0))
        ok &= valid[qc] if L else ok
        if doc is not None and L:
            ok &= (doc[qc] >= 0) & (doc[qc] == doc[(qc - 1).clamp_min(0)])
        return ok

    positions = torch.arange(L)
    pool = positions[extends(positions)] if L else positions
    n_seed = int(valid.sum())
    if max_anchors is not None and n_seed > max_anchors:
        n_seed = max_anchors
        pool = _sample(pool, max_anchors, seed, 0)
    anchors, depths = [positions], [torch.zeros(L, dtype=torch.int64)]
    for d in range(1, num_depths):
        size = int(max(0, n_seed - d) * max(r**d, r_min))
        if size <= 0:
            break
        sel = _sample(pool, size, seed, d)
        anchors.append(sel - d)
        depths.append(torch.full_like(sel, d))
        nxt = sel + 1
        pool = nxt[extends(nxt)]
    return torch.cat(anchors), torch.cat(depths)


def segments_reference(anchor_pos, depth, seq_length, num_segments):
    bucket = torch.where(depth == 0, anchor_pos, anchor_pos + 1)
    return torch.clamp(torch.div(bucket * num_segments, seq_length, rounding_mode="floor"), 0, num_segments - 1)


def cod_seed_algorithm(seq_length, loss_mask, num_depths=8, r=0.7, r_min=0.2, generator=None):
    """The reference recipe's algorithm as it runs there (randperm + isin on torch tensors): the timing
    baseline of benchmarks/bench_cod.py. Different randomness, same per-depth sizes."""
    valid = torch.nonzero(torch.as_tensor(loss_mask).reshape(-1) == 1).flatten()
    L = seq_length
    anchors, depths = [torch.arange(L)], [torch.zeros(L, dtype=torch.int64)]
    prev = valid[valid != 0]
    for d in range(1, num_depths):
        size = int(max(0, valid.numel() - d) * max(r**d, r_min))
        if size <= 0:
            break
        if prev.numel() >= size:
            sel = torch.sort(prev[torch.randperm(prev.numel(), generator=generator)[:size]]).values
        else:
            sel = prev
        nxt = (sel + 1) % L
        nxt = nxt[nxt != 0]
        prev = nxt[torch.isin(nxt, valid)]
        anchors.append(sel - d)
        depths.append(torch.full_like(sel, d))
    return torch.cat(anchors), torch.cat(depths)
