"""FlexAttention BlockMask of the P-EAGLE COD mask, built directly from per-row summaries.

``create_block_mask(mask_mod)`` evaluates the mask on the whole ``n x n`` grid (eager: about 12 bytes per
pair, 12 GiB at n = 32k). Here the grid is never formed. In the depth-major COD layout (depth 0 first,
then depth 1 sorted by anchor, then depth 2, ...; ``depth * L + anchor`` strictly increasing), the keys a
query ``q`` sees are:

- its depth-0 context: the depth-0 elements of its document with anchor <= anchor[q]. Depth 0 is a
  prefix of the layout sorted by anchor and documents are contiguous runs of positions, so this is one
  contiguous range ``[lo_q, hi_q)`` of key indices, found by two binary searches;
- its own rollout at depths 1..depth[q]: at most ``depth[q]`` keys.

Per (query block, key block) the number of visible pairs is then exact and cheap: the range part is
``sum_q |[lo_q, hi_q) ∩ block|`` (a per-row difference array on CPU, a ``BLOCK x tile`` overlap sum in
the Triton kernel), the rollout part a histogram of the ``sum(depth) = O(n * K)`` rollout pairs. A block
pair is empty at 0, full at ``BLOCK**2`` and partial otherwise, which is exactly ``create_block_mask``'s
rule (ragged edge blocks cannot reach ``BLOCK**2``, so they are partial). The index tensors are laid out
like ``create_block_mask``'s (used blocks ascending, then unused ones ascending), so every tensor of the
result equals the reference's. Memory is ``O(n * K + nb**2)`` with ``nb = ceil(n / block_size)`` blocks
per side (the BlockMask itself holds ``4 * nb**2`` indices).

``build_cod_block_mask`` dispatches to the Triton kernels on CUDA and to vectorised torch otherwise;
``cod_block_mask_reference`` is ``create_block_mask`` on the same ``mask_mod``.

Host syncs: the per-element work (validation, context ranges, rollout histogram) runs where the indices
are. Indices that live on the host (COD sampling and dataloader workers produce them there) with
``device="cuda"`` build the BlockMask with no device-to-host sync at all: only the per-element summaries
and the mask_mod's tensors are copied to the device (asynchronously) and the block grid is built there.
Indices already on CUDA cost about four syncs per call (``validate=True``: value ranges, the order check;
always: the rollout member ``nonzero`` and the rollout pair count).
"""

from __future__ import annotations

import os

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from eagle_ext.ops._transfer import to_device_async
from eagle_ext.ops.cod_mask import check_cod_inputs, cod_mask_mod

__all__ = ["build_cod_block_mask", "cod_block_mask_reference"]

_BACKENDS = ("auto", "torch", "triton")
# The eight index tensors of a BlockMask, kv side then q side (what the builder must reproduce exactly).
BLOCK_MASK_TENSORS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return block_size


def _check_layout(
    anchor: torch.Tensor, depth: torch.Tensor, document_ids: torch.Tensor, key: torch.Tensor
) -> None:
    """Raise unless the elements are depth-major and every document is one contiguous run."""
    if key.numel() > 1:
        bad = torch.nonzero(key[1:] <= key[:-1])
        if bad.numel():
            i = int(bad[0, 0]) + 1
            raise ValueError(
                "anchor_pos/depth must be in depth-major COD order (depth non-decreasing, anchors strictly "
                f"increasing within a depth); element {i} has (anchor, depth) = ({int(anchor[i])}, "
                f"{int(depth[i])}) after ({int(anchor[i - 1])}, {int(depth[i - 1])})"
            )
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[1:] = document_ids[1:] != document_ids[:-1]
    run_ids = document_ids[starts]
    run_ids = run_ids[run_ids >= 0].sort().values
    repeated = run_ids[1:][run_ids[1:] == run_ids[:-1]]
    if repeated.numel():
        raise ValueError(
            f"document_ids must hold each document in one contiguous run of positions; document "
            f"{int(repeated[0])} appears in several runs"
        )


def _context_ranges(anchor: torch.Tensor, document_ids: torch.Tensor, key: torch.Tensor):
    """Per query, the depth-0 keys it sees as a half-open index range ``[lo, hi)`` (int64 ``[n]`` each);
    padded queries get the empty range ``[0, 0)``."""
    seq_len = document_ids.numel()
    positions = torch.arange(seq_len, device=anchor.device)
    run_start = torch.ones(seq_len, dtype=torch.bool, device=anchor.device)
    run_start[1:] = document_ids[1:] != document_ids[:-1]
    doc_start = torch.where(run_start, positions, 0).cummax(0).values
    padded = document_ids[anchor] < 0
    # Depth-0 keys are exactly the keys below seq_len, and a depth-0 key is its anchor.
    lo = torch.searchsorted(key, doc_start[anchor]).masked_fill_(padded, 0)
    hi = torch.searchsorted(key, anchor, right=True).masked_fill_(padded, 0)
    return lo, hi


def _range_block_counts(lo: torch.Tensor, hi: torch.Tensor, block_size: int) -> torch.Tensor:
    """``out[qb, kb] = sum over queries q of block qb of |[lo_q, hi_q) ∩ key block kb|`` (int64 ``[nb, nb]``).

    The indicator of ``[lo, hi)`` is ``step(lo) - step(hi)``; a step at ``p = b * block + r`` covers
    ``block - r`` keys of block ``b`` and all of every later block, i.e. it adds ``block - r`` at column
    ``b`` and ``r`` at ``b + 1`` of a per-row difference array. Four scatter-adds per query and one cumsum
    over the block grid: O(n + nb**2).
    """
    n = lo.numel()
    nb = -(-n // block_size)
    width = nb + 2  # room for the ``b + 1`` column of steps at the very end
    row = torch.arange(n, device=lo.device) // block_size * width
    lo_block, lo_rest = lo // block_size, lo % block_size
    hi_block, hi_rest = hi // block_size, hi % block_size
    where = torch.cat([row + lo_block, row + lo_block + 1, row + hi_block, row + hi_block + 1])
    amount = torch.cat([block_size - lo_rest, lo_rest, hi_rest - block_size, -hi_rest])
    delta = torch.zeros(nb * width, dtype=torch.long, device=lo.device).index_add_(0, where, amount)
    return delta.view(nb, width).cumsum(-1)[:, :nb]


def _rollout_block_counts(
    anchor: torch.Tensor, depth: torch.Tensor, document_ids: torch.Tensor, block_size: int, nb: int
) -> torch.Tensor:
    """Visible (query, key) pairs with key depth >= 1 per block pair (int64 ``[nb, nb]``).

    A query sees exactly the depth 1..depth[q] elements of its own rollout. Grouping the real depth >= 1
    elements by anchor (stable, so depth ascends inside a group) makes that the group's prefix ending at
    the query; the pairs are enumerated (``sum(depth)`` of them, ``O(n * K)``) and binned.
    """
    device = anchor.device
    members = torch.nonzero((depth > 0) & (document_ids[anchor] >= 0)).flatten()
    counts = torch.zeros(nb * nb, dtype=torch.long, device=device)
    if members.numel() == 0:
        return counts.view(nb, nb)
    members = members[torch.sort(anchor[members], stable=True).indices]
    group_anchor = anchor[members]
    slot = torch.arange(members.numel(), device=device)
    new_group = torch.ones_like(slot, dtype=torch.bool)
    new_group[1:] = group_anchor[1:] != group_anchor[:-1]
    group_start = torch.where(new_group, slot, 0).cummax(0).values
    visible = slot - group_start + 1  # keys each member sees inside its rollout (itself included)
    pairs = int(visible.sum())  # read once: repeat_interleave would otherwise read it back itself
    query = torch.repeat_interleave(slot, visible, output_size=pairs)
    pair_start = visible.cumsum(0) - visible  # first pair of each member in ``query`` order
    key_slot = torch.arange(pairs, device=device) - (pair_start - group_start)[query]
    member_block = members // block_size
    return counts.index_add_(
        0, member_block[query] * nb + member_block[key_slot], torch.ones_like(query)
    ).view(nb, nb)


def _ordered(used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count int32 [..., R], indices int32 [..., R, C])`` of a bool ``[..., R, C]`` grid, laid out like
    ``create_block_mask``'s stable descending argsort: used columns ascending, then unused ascending."""
    cols = used.shape[-1]
    seen = used.to(torch.int32).cumsum(-1, dtype=torch.int32)
    count = seen[..., -1]
    col = torch.arange(cols, dtype=torch.int32, device=used.device)
    slot = torch.where(used, seen - 1, count[..., None] + col - seen)
    indices = torch.empty(used.shape, dtype=torch.int32, device=used.device)
    indices.scatter_(-1, slot.long(), col.expand(used.shape))
    return count, indices


def _tensors_torch(lo, hi, rollout, block_size: int) -> tuple[torch.Tensor, ...]:
    counts = _range_block_counts(lo, hi, block_size) + rollout
    full = counts == block_size * block_size
    partial = (counts > 0) & ~full
    # Q_LEN == KV_LEN, so the kv-side grids and their transposes (the q side) order in one call.
    count, indices = _ordered(torch.stack([partial, full, partial.t(), full.t()]))
    return (count[0], indices[0], count[1], indices[1], count[2], indices[2], count[3], indices[3])


def _tensors_triton(lo, hi, rollout, block_size: int) -> tuple[torch.Tensor, ...]:
    from eagle_ext.ops.triton.cod_block_mask import cod_block_mask_tensors_triton

    return cod_block_mask_tensors_triton(
        lo.to(torch.int32), hi.to(torch.int32), rollout.to(torch.int32).contiguous(), block_size
    )


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def build_cod_block_mask(
    anchor_pos: torch.Tensor,
    depth: torch.Tensor,
    document_ids: torch.Tensor,
    *,
    block_size: int = 128,
    backend: str = "auto",
    validate: bool = True,
    pad_to: int | None = None,
    device: torch.device | str | None = None,
) -> BlockMask:
    """BlockMask of the COD mask over ``n`` flat elements, without a dense ``n x n`` grid.

    Every tensor of the result (partial and full kv / q counts and indices) equals the one of
    ``create_block_mask(cod_mask_mod(..., pad_to=pad_to), None, None, N, N, BLOCK_SIZE=block_size)``
    (``N = pad_to or n``); ``seq_lengths`` is ``(N, N)`` and ``mask_mod`` is the COD ``mask_mod``
    (FlexAttention applies it inside partial blocks).

    Args:
        anchor_pos: int ``[n]`` anchors in ``[0, L)``, depth-major COD order (as produced by
            ``generate_cod_sample_indices``): ``depth * L + anchor`` strictly increasing. Indices in
            another order must be permuted first (:func:`eagle_ext.ops.cod_mask.depth_major_order`).
        depth: int ``[n]`` depths ``>= 0``, same device.
        document_ids: int ``[L]`` document id per original position, -1 on padding; each document must be
            one contiguous run of positions (packed rows are).
        block_size: query and key block size (FlexAttention's default is 128).
        backend: ``"auto"`` (Triton on CUDA when triton imports, torch otherwise), ``"torch"`` or
            ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        validate: check value ranges, the depth-major order and contiguous documents (free on host
            indices, host syncs on CUDA ones). With ``validate=False`` a bad layout gives a wrong mask
            instead of an error.
        pad_to: optional ``N >= n``: the mask covers ``N`` elements, the extra ones belonging to no
            document (their rows and columns are empty), so flex attention can run on inputs zero-padded
            to a few bucketed lengths (see :func:`eagle_ext.models.attention.masked_attention`).
        device: where the BlockMask lives (default: the inputs' device). Host indices with a CUDA device
            build it without any device-to-host sync (see the module docstring).

    Returns:
        ``BlockMask`` with B = H = 1 (broadcast over batch and heads), int32 tensors on ``device``.

    Raises:
        TypeError / ValueError naming the argument on bad types, shapes, devices, values, order, backend
        or pad_to.
    """
    anchor_pos, depth, document_ids = check_cod_inputs(anchor_pos, depth, document_ids, check_values=validate)
    block_size = _check_block_size(block_size)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    n = anchor_pos.numel()
    if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < n):
        raise ValueError(f"pad_to must be an int >= the number of COD elements ({n}), got {pad_to!r}")
    padded = n if pad_to is None else pad_to
    device = anchor_pos.device if device is None else torch.device(device)
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and _triton_available() else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs a CUDA device (or TRITON_INTERPRET=1 before triton is imported), "
            f"got {device}"
        )
    key = depth * document_ids.numel() + anchor_pos
    if validate:
        _check_layout(anchor_pos, depth, document_ids, key)
    lo, hi = _context_ranges(anchor_pos, document_ids, key)
    if padded > n:  # padded queries see nothing: the empty range [0, 0)
        lo = torch.cat([lo, lo.new_zeros(padded - n)])
        hi = torch.cat([hi, hi.new_zeros(padded - n)])
    rollout = _rollout_block_counts(anchor_pos, depth, document_ids, block_size, -(-padded // block_size))
    # Host-to-device copies of freshly made host tensors: pinned, asynchronous, no sync.
    lo, hi, rollout = (to_device_async(t, device) for t in (lo, hi, rollout))
    build = _tensors_triton if backend == "triton" else _tensors_torch
    tensors = [t[None, None] for t in build(lo, hi, rollout, block_size)]
    kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx = tensors
    mask_inputs = (to_device_async(t, device) for t in (anchor_pos, depth, document_ids))
    return BlockMask(
        seq_lengths=(padded, padded),
        kv_num_blocks=kv_num,
        kv_indices=kv_idx,
        full_kv_num_blocks=full_kv_num,
        full_kv_indices=full_kv_idx,
        q_num_blocks=q_num,
        q_indices=q_idx,
        full_q_num_blocks=full_q_num,
        full_q_indices=full_q_idx,
        BLOCK_SIZE=(block_size, block_size),
        mask_mod=cod_mask_mod(*mask_inputs, validate=False, pad_to=pad_to),
    )


def cod_block_mask_reference(
    anchor_pos: torch.Tensor,
    depth: torch.Tensor,
    document_ids: torch.Tensor,
    *,
    block_size: int = 128,
    pad_to: int | None = None,
) -> BlockMask:
    """``create_block_mask`` (eager) of the COD ``mask_mod``: the reference ``build_cod_block_mask`` must
    equal. Materialises the ``N x N`` mask (about 12 bytes per pair); arguments as ``build_cod_block_mask``
    (any element order is accepted here)."""
    mask_mod = cod_mask_mod(anchor_pos, depth, document_ids, pad_to=pad_to)
    n = anchor_pos.numel() if pad_to is None else pad_to
    return create_block_mask(
        mask_mod, None, None, n, n, device=anchor_pos.device, BLOCK_SIZE=_check_block_size(block_size)
    )
