"""COD sampling and sequence-partition assignment for P-EAGLE (C++: csrc/cod.cpp).

The plain torch reference of both ops is tests/reference/cod.py; the two agree exactly for the same seed.
"""

from __future__ import annotations

import torch

from eagle_ext._ext import load_extension
from eagle_ext.ops._checks import as_index_vector, check_int, check_ratio

_U64 = 1 << 64
_MASK64 = _U64 - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for the sub-stream ``keys`` of ``seed`` (e.g. ``(epoch, sample_index)``), so per-sample
    COD draws are independent of which process or worker makes them and of the order they are made in."""
    z = _mix64((seed + _GAMMA) & _MASK64)
    for key in keys:
        z = _mix64(((z ^ (key % _U64)) + _GAMMA) & _MASK64)
    return z


def resolve_seed(seed: int | None = None, generator: torch.Generator | None = None) -> int:
    """Return the 64-bit seed for counter-based sampling.

    An explicit ``seed`` wins; otherwise one int64 is drawn from ``generator`` (or from torch's global RNG
    when neither is given, so ``torch.manual_seed`` makes the draw reproducible).
    """
    if seed is not None and generator is not None:
        raise ValueError("pass at most one of seed and generator, got both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        return seed % _U64
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device)) % _U64


def generate_cod_sample_indices(
    seq_length: int,
    loss_mask: torch.Tensor,
    num_depths: int = 8,
    down_sample_ratio: float = 0.7,
    down_sample_ratio_min: float = 0.2,
    filter_position_zero: bool = True,
    *,
    document_ids: torch.Tensor | None = None,
    max_anchors: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the COD (conditional-on-distribution) elements of one row for P-EAGLE parallel drafting.

    Depth 0 is every position ``0..L-1`` (padding and unsupervised positions included; their loss is
    masked later). Depth ``d >= 1`` keeps ``int(max(0, N - d) * max(r**d, r_min))`` reference positions
    (``N`` = number of supervised positions, or ``max_anchors`` when that caps it), sampled among the
    supervised successors ``p + 1`` of the depth ``d-1`` sample; a smaller pool is kept whole, and sampling
    stops at the first size ``<= 0``. Every chain is therefore a complete prefix: an element of depth ``d``
    with anchor ``a`` exists only together with ``(a, 0..d-1)``, and its reference position is ``a + d``.

    Differences from the reference recipe, on purpose:
      * no negative anchors: position 0 never starts a depth >= 1 chain (``filter_position_zero`` is kept for
        signature compatibility; ``False`` cannot re-enable the anchor ``-1`` defect);
      * with ``document_ids`` no chain crosses a packed document boundary (``ref`` and ``anchor`` always
        share a real document);
      * ``max_anchors`` caps the depth-1 pool to a random subset of that size;
      * randomness is counter based (splitmix64 of seed, depth, position): the same (seed, inputs) gives the
        same indices on every machine, and the Python reference in tests/ reproduces them exactly.

    Args:
        seq_length: L, the (padded) row length.
        loss_mask: ``[L]`` or ``[1, L]`` mask of supervised positions (non-zero = supervised); in training
            this is the *shifted* loss mask from the target capture.
        num_depths: K >= 1 parallel depths.
        down_sample_ratio: r in (0, 1].
        down_sample_ratio_min: r_min in (0, 1], the retention floor.
        filter_position_zero: must be a bool; see above.
        document_ids: optional int ``[L]`` document id per position, ``-1`` on padding.
        max_anchors: optional cap (>= 1) on the depth-1 candidate pool.
        generator: optional ``torch.Generator`` one seed is drawn from.
        seed: optional explicit 64-bit seed (exclusive with ``generator``).

    Returns:
        ``(anchor_pos, depth)``, int64 ``[n]`` each on ``loss_mask``'s device, depth-major (all depth-0
        elements first, then depth 1 sorted by position, ...).
    """
    seq_length = check_int("seq_length", seq_length, minimum=0)
    num_depths = check_int("num_depths", num_depths, minimum=1)
    down_sample_ratio = check_ratio("down_sample_ratio", down_sample_ratio)
    down_sample_ratio_min = check_ratio("down_sample_ratio_min", down_sample_ratio_min)
    if not isinstance(filter_position_zero, bool):
        raise TypeError(f"filter_position_zero must be a bool, got {filter_position_zero!r}")
    if not isinstance(loss_mask, torch.Tensor):
        raise TypeError(f"loss_mask must be a torch.Tensor, got {type(loss_mask).__name__}")
    device = loss_mask.device
    if loss_mask.dim() == 2 and loss_mask.shape[0] == 1:
        loss_mask = loss_mask[0]
    if loss_mask.dim() != 1:
        raise ValueError(f"loss_mask must have shape [L] or [1, L], got {tuple(loss_mask.shape)}")
    if loss_mask.numel() != seq_length:
        raise ValueError(f"loss_mask must have seq_length = {seq_length} entries, got {loss_mask.numel()}")
    valid = (loss_mask.detach() != 0).to("cpu").contiguous()
    if document_ids is None:
        doc = torch.empty(0, dtype=torch.int64)
    else:
        doc = as_index_vector("document_ids", document_ids)
        if doc.numel() != seq_length:
            raise ValueError(f"document_ids must have seq_length = {seq_length} entries, got {doc.numel()}")
    cap = -1 if max_anchors is None else check_int("max_anchors", max_anchors, minimum=1)
    anchor, depth = load_extension().generate_cod_sample_indices(
        seq_length,
        valid,
        num_depths,
        down_sample_ratio,
        down_sample_ratio_min,
        doc,
        cap,
        resolve_seed(seed, generator),
    )
    return anchor.to(device), depth.to(device)


def assign_cod_segments(
    anchor_pos: torch.Tensor, depth: torch.Tensor, seq_length: int, num_segments: int
) -> torch.Tensor:
    """Assign every COD element to one of ``num_segments`` sequence partitions (P-EAGLE Algorithm 1).

    Closed form of the algorithm's phases 1-2: a depth-0 element is bucketed by its position ``anchor``, a
    depth ``>= 1`` element by its rollout's depth-1 position ``anchor + 1`` (every deeper element inherits
    its parent's segment); ``segment = clamp(bucket * S // L, 0, S - 1)``. Phase 3 (causal completion: a
    segment also reads every depth-0 element up to its right boundary) is applied by the caller.

    Args:
        anchor_pos: int ``[n]`` chain-start positions.
        depth: int ``[n]`` depths.
        seq_length: L >= 1.
        num_segments: S >= 1.

    Returns:
        int64 ``[n]`` segment ids in ``[0, S)`` on ``anchor_pos``'s device.

    Oracle: L=8, S=2, anchors 0..7 at depth 0 give ``[0,0,0,0,1,1,1,1]``.
    """
    if not isinstance(anchor_pos, torch.Tensor):
        raise TypeError(f"anchor_pos must be a torch.Tensor, got {type(anchor_pos).__name__}")
    device = anchor_pos.device
    anchor = as_index_vector("anchor_pos", anchor_pos)
    dep = as_index_vector("depth", depth)
    if anchor.numel() != dep.numel():
        raise ValueError(
            f"anchor_pos and depth must have the same length, got {anchor.numel()} and {dep.numel()}"
        )
    seq_length = check_int("seq_length", seq_length, minimum=1)
    num_segments = check_int("num_segments", num_segments, minimum=1)
    return load_extension().assign_cod_segments(anchor, dep, seq_length, num_segments).to(device)
