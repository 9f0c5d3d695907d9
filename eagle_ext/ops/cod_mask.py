"""The P-EAGLE COD attention mask: a FlexAttention ``mask_mod``, the dense boolean mask it describes, the
input checks both share, and the depth-major order the BlockMask builder relies on.

A COD (chain-of-drafts) sequence is a flat list of ``n`` elements; element ``i`` stands for the draft slot
at depth ``depth[i]`` of the rollout anchored at original position ``anchor_pos[i]`` (its reference
position is ``anchor_pos[i] + depth[i]``). Documents are looked up at the anchor position.

Query ``q`` sees key ``kv`` iff all of:

- the query's document is real: ``doc[anchor[q]] != -1``;
- both share a document: ``doc[anchor[q]] == doc[anchor[kv]]``;
- either ``kv`` is real context up to the query's anchor (``depth[kv] == 0 and anchor[q] >= anchor[kv]``)
  or ``kv`` is an earlier-or-equal slot of the query's own rollout
  (``anchor[q] == anchor[kv] and depth[q] >= depth[kv]``).

A depth-``d`` element anchored at ``a`` therefore sees the causal depth-0 context of its document up to
``a`` plus the depth 1..d slots of its own rollout, which is what a parallel-drafting runtime sees.

The ``mask_mod`` is what FlexAttention evaluates inside partial blocks; ``dense_cod_mask`` is the same
predicate as a ``[n, n]`` bool tensor (CPU training path through SDPA, and the test reference).
:mod:`eagle_ext.ops.cod_block_mask` builds the BlockMask without materialising it; it needs the elements in
depth-major order (:func:`depth_major_order` checks it and gives the permutation that restores it).
This module lives in ``ops`` (the layer the builder is in); :mod:`eagle_ext.peagle.mask` re-exports it.
"""

from __future__ import annotations

import torch

__all__ = ["check_cod_inputs", "cod_mask_mod", "dense_cod_mask", "depth_major_order"]


def _check_index_vector(name: str, t, *, device: torch.device | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{name} must have an integer dtype (int64 expected), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected the device of anchor_pos ({device})")
    return t.long()


def check_cod_inputs(
    anchor_pos, depth, document_ids, *, check_values: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the COD triple and return it as int64 tensors.

    Checks types, 1-D shapes, integer dtypes, one device, ``len(depth) == len(anchor_pos) >= 1`` and
    ``len(document_ids) >= 1``; with ``check_values`` also ``0 <= anchor_pos < len(document_ids)``,
    ``depth >= 0`` and ``document_ids >= -1`` (these read values back, a host sync on CUDA).

    Raises:
        TypeError / ValueError naming the argument, the value received and what was expected.
    """
    anchor_pos = _check_index_vector("anchor_pos", anchor_pos)
    device = anchor_pos.device
    depth = _check_index_vector("depth", depth, device=device)
    document_ids = _check_index_vector("document_ids", document_ids, device=device)
    if depth.shape != anchor_pos.shape:
        raise ValueError(
            f"depth has shape {tuple(depth.shape)}, expected the shape of anchor_pos {tuple(anchor_pos.shape)}"
        )
    if anchor_pos.numel() == 0:
        raise ValueError("anchor_pos is empty, expected at least one COD element")
    seq_len = document_ids.numel()
    if seq_len == 0:
        raise ValueError("document_ids is empty, expected one document id per original position")
    if not check_values:
        return anchor_pos, depth, document_ids
    # One read-back for all four bounds.
    a_min, a_max, d_min, doc_min = torch.stack(
        [anchor_pos.min(), anchor_pos.max(), depth.min(), document_ids.min()]
    ).tolist()
    if a_min < 0 or a_max >= seq_len:
        raise ValueError(
            f"anchor_pos values span [{a_min}, {a_max}], expected them in [0, {seq_len - 1}] "
            f"(len(document_ids) = {seq_len})"
        )
    if d_min < 0:
        raise ValueError(f"depth has a negative value ({d_min}), expected depth >= 0")
    if doc_min < -1:
        raise ValueError(f"document_ids has value {doc_min}, expected ids >= 0 and -1 on padding")
    return anchor_pos, depth, document_ids


def _check_pad_to(pad_to, n: int) -> int:
    if pad_to is None:
        return n
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < n:
        raise ValueError(f"pad_to must be an int >= the number of COD elements ({n}), got {pad_to!r}")
    return pad_to


def cod_mask_mod(
    anchor_pos: torch.Tensor,
    depth: torch.Tensor,
    document_ids: torch.Tensor,
    *,
    validate: bool = True,
    pad_to: int | None = None,
):
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` of the COD mask (see the module docstring).

    Args:
        anchor_pos: int64 ``[n]``, anchors in ``[0, L)``.
        depth: int64 ``[n]``, depths ``>= 0``.
        document_ids: int64 ``[L]`` over original positions, -1 on padding.
        validate: check value ranges too (a host sync on CUDA); shapes and dtypes are always checked.
        pad_to: optional ``N >= n``: the mask covers ``N`` elements, the ``N - n`` extra ones belonging to
            no document (they see nothing and nobody sees them). Used to run flex attention at a few
            bucketed lengths (:func:`eagle_ext.models.attention.flex_bucket_length`).

    Returns:
        a ``mask_mod`` closing over per-element tensors (on the inputs' device); ``q_idx``/``kv_idx`` must
        lie in ``[0, N)``. Works under ``create_block_mask`` (vmap) and compiled flex attention.

    Raises:
        TypeError / ValueError naming the argument on bad shapes, dtypes, devices, value ranges or pad_to.
    """
    anchor_pos, depth, document_ids = check_cod_inputs(anchor_pos, depth, document_ids, check_values=validate)
    n = anchor_pos.numel()
    extra = _check_pad_to(pad_to, n) - n
    anchor_doc = document_ids[anchor_pos]  # doc of each element, looked up once instead of per pair
    if extra:
        anchor_pos = torch.cat([anchor_pos, anchor_pos.new_zeros(extra)])
        depth = torch.cat([depth, depth.new_zeros(extra)])
        anchor_doc = torch.cat([anchor_doc, anchor_doc.new_full((extra,), -1)])

    def peagle_cod_mask(b, h, q_idx, kv_idx):
        q_anchor, kv_anchor = anchor_pos[q_idx], anchor_pos[kv_idx]
        q_depth, kv_depth = depth[q_idx], depth[kv_idx]
        q_doc = anchor_doc[q_idx]
        context = (kv_depth == 0) & (q_anchor >= kv_anchor)
        own_chain = (q_anchor == kv_anchor) & (q_depth >= kv_depth)
        return (q_doc != -1) & (q_doc == anchor_doc[kv_idx]) & (context | own_chain)

    return peagle_cod_mask


def dense_cod_mask(
    anchor_pos: torch.Tensor, depth: torch.Tensor, document_ids: torch.Tensor, *, validate: bool = True
) -> torch.Tensor:
    """The COD mask as a dense bool ``[n, n]`` tensor (True = query row may attend to key column).

    This is the reference for the BlockMask builders and the attention mask of the CPU SDPA path. It
    holds ``n*n`` bytes (about ``3*n*n`` at peak while it is built); rows of padded queries are all
    False, so SDPA users must handle empty rows. Any element order is accepted.

    Args / Raises: as ``cod_mask_mod`` (``validate=False`` skips the value-range read-back).
    """
    anchor_pos, depth, document_ids = check_cod_inputs(anchor_pos, depth, document_ids, check_values=validate)
    doc = document_ids[anchor_pos]
    mask = (anchor_pos[:, None] >= anchor_pos[None, :]) & (depth == 0)[None, :]
    mask |= (anchor_pos[:, None] == anchor_pos[None, :]) & (depth[:, None] >= depth[None, :])
    mask &= doc[:, None] == doc[None, :]
    mask &= (doc != -1)[:, None]
    return mask


def depth_major_order(anchor_pos: torch.Tensor, depth: torch.Tensor, seq_len: int) -> torch.Tensor | None:
    """Check the depth-major COD order (depth non-decreasing, anchors strictly increasing within a depth,
    i.e. ``depth * seq_len + anchor`` strictly increasing) and give the permutation that restores it.

    Meant for host (CPU) copies of the indices: on CUDA the checks read values back (host syncs).

    Args:
        anchor_pos, depth: int ``[n]`` (``0 <= anchor_pos < seq_len``, ``depth >= 0``; not re-checked).
        seq_len: the row width ``L``.

    Returns:
        None when the elements are already in order, else int64 ``[n]`` indices such that
        ``anchor_pos[perm], depth[perm]`` is in order (a stable sort by ``(depth, anchor)``). Every tensor
        indexed by element (ids, hidden states, targets, loss positions) must be permuted the same way.

    Raises:
        ValueError: an ``(anchor, depth)`` pair occurs twice (no order can make the key strictly
            increasing); the message names the pair.
    """
    key = depth.long() * seq_len + anchor_pos.long()
    if key.numel() < 2 or bool((key[1:] > key[:-1]).all()):
        return None
    perm = torch.sort(key, stable=True).indices
    sorted_key = key[perm]
    repeated = torch.nonzero(sorted_key[1:] == sorted_key[:-1]).flatten()
    if repeated.numel():
        i = int(perm[int(repeated[0]) + 1])
        raise ValueError(
            f"COD element {i} repeats (anchor, depth) = ({int(anchor_pos[i])}, {int(depth[i])}); each pair "
            "may occur once"
        )
    return perm
