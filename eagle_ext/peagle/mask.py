"""The P-EAGLE COD attention mask: a FlexAttention ``mask_mod`` and the dense boolean mask it describes.

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
``eagle_ext.ops.cod_block_mask`` builds the BlockMask without materialising it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_cod_inputs",
    "cod_mask_mod",
    "create_peagle_mask_mod",
    "dense_cod_mask",
    "document_ids_from_lengths",
]


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


def document_ids_from_lengths(lengths, total_seq_len: int, *, device=None) -> torch.Tensor:
    """Document id of every original position for documents packed back to back.

    Args:
        lengths: per-document lengths (sequence of ints or 1-D integer tensor, all >= 0).
        total_seq_len: row width ``L``; must be >= ``sum(lengths)``.
        device: output device (default: that of ``lengths`` if it is a tensor, else CPU).

    Returns:
        int64 ``[L]``: ``repeat_interleave(arange(len(lengths)), lengths)`` padded with -1.

    Raises:
        TypeError / ValueError naming ``lengths`` or ``total_seq_len`` on bad input.
    """
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() > 1 or lengths.dtype == torch.bool or lengths.dtype.is_floating_point:
            raise ValueError(
                f"lengths must be a 0-D/1-D integer tensor, got shape {tuple(lengths.shape)} and {lengths.dtype}"
            )
        device = lengths.device if device is None else torch.device(device)
        lengths = lengths.reshape(-1).to(device=device, dtype=torch.long)
    elif isinstance(lengths, Sequence) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in lengths
    ):
        lengths = torch.tensor(list(lengths), dtype=torch.long, device=device)
    else:
        raise TypeError(f"lengths must be a sequence of ints or an integer tensor, got {lengths!r}")
    if isinstance(total_seq_len, bool) or not isinstance(total_seq_len, int) or total_seq_len < 1:
        raise ValueError(f"total_seq_len must be a positive int, got {total_seq_len!r}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    used = int(lengths.sum())
    if used > total_seq_len:
        raise ValueError(f"lengths sum to {used}, which exceeds total_seq_len={total_seq_len}")
    doc = torch.full((total_seq_len,), -1, dtype=torch.long, device=lengths.device)
    doc[:used] = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    return doc


def cod_mask_mod(
    anchor_pos: torch.Tensor, depth: torch.Tensor, document_ids: torch.Tensor, *, validate: bool = True
):
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` of the COD mask (see the module docstring).

    Args:
        anchor_pos: int64 ``[n]``, anchors in ``[0, L)``.
        depth: int64 ``[n]``, depths ``>= 0``.
        document_ids: int64 ``[L]`` over original positions, -1 on padding.
        validate: check value ranges too (a host sync on CUDA); shapes and dtypes are always checked.

    Returns:
        a ``mask_mod`` closing over the three tensors (on their device); ``q_idx``/``kv_idx`` must lie in
        ``[0, n)``. Works under ``create_block_mask`` (vmap) and compiled flex attention.

    Raises:
        TypeError / ValueError naming the argument on bad shapes, dtypes, devices or value ranges.
    """
    anchor_pos, depth, document_ids = check_cod_inputs(anchor_pos, depth, document_ids, check_values=validate)
    anchor_doc = document_ids[anchor_pos]  # doc of each element, looked up once instead of per pair

    def peagle_cod_mask(b, h, q_idx, kv_idx):
        q_anchor, kv_anchor = anchor_pos[q_idx], anchor_pos[kv_idx]
        q_depth, kv_depth = depth[q_idx], depth[kv_idx]
        q_doc = anchor_doc[q_idx]
        context = (kv_depth == 0) & (q_anchor >= kv_anchor)
        own_chain = (q_anchor == kv_anchor) & (q_depth >= kv_depth)
        return (q_doc != -1) & (q_doc == anchor_doc[kv_idx]) & (context | own_chain)

    return peagle_cod_mask


def create_peagle_mask_mod(anchor_pos: torch.Tensor, depth: torch.Tensor, lengths, total_seq_len: int):
    """COD ``mask_mod`` for documents of the given ``lengths`` packed from position 0 of a row.

    Args:
        anchor_pos: int64 ``[n]`` COD anchors (original positions, ``0 <= a < total_seq_len``).
        depth: int64 ``[n]`` COD depths (``>= 0``).
        lengths: per-document lengths (ints or 1-D integer tensor); positions past ``sum(lengths)`` are
            padding (document -1) and their queries see nothing.
        total_seq_len: the row width ``L``.

    Returns:
        ``mask_mod(b, h, q_idx, kv_idx) -> bool`` for ``create_block_mask(mask_mod, None, None, n, n)``.

    Raises:
        TypeError / ValueError naming the argument on bad input (see ``document_ids_from_lengths`` and
        ``cod_mask_mod``).
    """
    if not isinstance(anchor_pos, torch.Tensor):
        raise TypeError(f"anchor_pos must be a torch.Tensor, got {type(anchor_pos).__name__}")
    document_ids = document_ids_from_lengths(lengths, total_seq_len, device=anchor_pos.device)
    return cod_mask_mod(anchor_pos, depth, document_ids)


def dense_cod_mask(anchor_pos: torch.Tensor, depth: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """The COD mask as a dense bool ``[n, n]`` tensor (True = query row may attend to key column).

    This is the reference for the BlockMask builders and the attention mask of the CPU SDPA path. It
    holds ``n*n`` bytes (about ``3*n*n`` at peak while it is built); rows of padded queries are all
    False, so SDPA users must handle empty rows.

    Args / Raises: as ``cod_mask_mod``.
    """
    anchor_pos, depth, document_ids = check_cod_inputs(anchor_pos, depth, document_ids)
    doc = document_ids[anchor_pos]
    mask = (anchor_pos[:, None] >= anchor_pos[None, :]) & (depth == 0)[None, :]
    mask |= (anchor_pos[:, None] == anchor_pos[None, :]) & (depth[:, None] >= depth[None, :])
    mask &= doc[:, None] == doc[None, :]
    mask &= (doc != -1)[:, None]
    return mask
