"""The P-EAGLE COD attention mask for trainer code: document ids of packed rows and the ``mask_mod`` of
documents given by their lengths.

The predicate itself (``cod_mask_mod``), its dense form (``dense_cod_mask``) and their input checks
(``check_cod_inputs``) live in :mod:`eagle_ext.ops.cod_mask`, next to the BlockMask builder that uses them
(ops import nothing above them); they are re-exported here so ``eagle_ext.peagle.mask.cod_mask_mod`` and
``eagle_ext.peagle.cod_mask_mod`` keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eagle_ext.ops.cod_mask import check_cod_inputs, cod_mask_mod, dense_cod_mask, depth_major_order

__all__ = [
    "check_cod_inputs",
    "cod_mask_mod",
    "create_peagle_mask_mod",
    "dense_cod_mask",
    "depth_major_order",
    "document_ids_from_lengths",
]


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
    doc[:used] = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=used
    )
    return doc


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
