"""Draft vocabulary: which target token ids the draft's ``lm_head`` rows stand for.

Selection (:func:`select_draft_vocab`), in this order, which fixes draft row ``i``:

1. the special tokens, in the order given (``None``, out-of-range ids and duplicates are skipped);
2. the other ids by descending frequency among supervised tokens (``input_ids[loss_mask == 1]``), ties to
   the lower id, ids never seen skipped;
3. when still short, the lowest unseen ids ``0, 1, 2, ...``.

``draft_vocab_size=None`` or ``>= target_vocab_size`` is the identity mapping (no scan). Counts are
``all_reduce``-summed when ``torch.distributed`` is initialised, so every rank derives the same vocabulary.

The cache (:func:`save_eagle3_token_mapping` / :func:`load_eagle3_token_mapping`) is a safetensors file, or
JSON when the path ends in ``.json`` -- never a pickle, which could run code when loaded. It records a
fingerprint of the data, tokenizer and selection settings; unlike the reference recipe, a cache whose
fingerprint does not match is rebuilt (with a warning) instead of being loaded silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import torch

from eagle_ext._io import atomic_path, write_json
from eagle_ext.data.fingerprint import digest

logger = logging.getLogger(__name__)

CACHE_FORMAT = "eagle_ext.eagle3_token_mapping"
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------------------
# Validation and selection
# --------------------------------------------------------------------------------------------------------


def _check_sizes(target_vocab_size, draft_vocab_size) -> None:
    if (
        isinstance(target_vocab_size, bool)
        or not isinstance(target_vocab_size, int)
        or target_vocab_size <= 0
    ):
        raise ValueError(f"target_vocab_size must be an int > 0, got {target_vocab_size!r}")
    if draft_vocab_size is not None and (
        isinstance(draft_vocab_size, bool) or not isinstance(draft_vocab_size, int) or draft_vocab_size <= 0
    ):
        raise ValueError(f"draft_vocab_size must be None or an int > 0, got {draft_vocab_size!r}")


def count_draft_vocab(target_vocab_size: int, draft_vocab_size: int | None) -> int:
    """Number of ids :func:`build_eagle3_token_mapping` selects: ``draft_vocab_size``, or
    ``target_vocab_size`` when it is ``None`` or larger.

    Raises:
        ValueError: ``target_vocab_size`` not an int > 0, ``draft_vocab_size`` neither None nor an int > 0.
    """
    _check_sizes(target_vocab_size, draft_vocab_size)
    if draft_vocab_size is None or draft_vocab_size >= target_vocab_size:
        return target_vocab_size
    return draft_vocab_size


def _is_identity(target_vocab_size: int, draft_vocab_size: int | None) -> bool:
    return count_draft_vocab(target_vocab_size, draft_vocab_size) == target_vocab_size


def tokenizer_special_ids(tokenizer) -> list[int]:
    """The special ids a draft vocabulary always keeps: the tokenizer's bos, eos, pad and unk ids that are set
    (the seed recipe's choice; the recipe and ``precompute`` both use it, so their vocabularies agree)."""
    return [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id) if isinstance(i, int)]


def _valid_specials(special_token_ids, target_vocab_size: int) -> list[int]:
    out: list[int] = []
    for t in special_token_ids or ():
        if t is None or isinstance(t, bool):
            continue
        t = int(t)
        if 0 <= t < target_vocab_size and t not in out:
            out.append(t)
    return out


def select_draft_vocab(
    counts: torch.Tensor, draft_vocab_size: int | None, special_token_ids: Sequence[int | None] | None = None
) -> torch.Tensor:
    """Choose the draft vocabulary from token counts.

    Args:
        counts: int ``[V]`` supervised-token counts (V = target vocabulary size).
        draft_vocab_size: ``Vd``; ``None`` or ``>= V`` gives ``arange(V)``.
        special_token_ids: ids placed first, in this order (``None``, out-of-range and repeated ids skipped).

    Returns:
        int64 ``[Vd]`` target ids (specials, then by frequency with ties to the lower id, then lowest unseen).

    Raises:
        ValueError: bad sizes, or ``counts`` not a 1-D tensor.
    """
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1:
        raise ValueError(
            f"counts must be a 1-D tensor, got {type(counts).__name__} {getattr(counts, 'shape', '')}"
        )
    vocab = int(counts.numel())
    size = count_draft_vocab(vocab, draft_vocab_size)
    if size == vocab:
        return torch.arange(vocab, dtype=torch.int64)
    counts = counts.detach().to("cpu", torch.int64)
    specials = torch.tensor(_valid_specials(special_token_ids, vocab)[:size], dtype=torch.int64)
    taken = torch.zeros(vocab, dtype=torch.bool)
    taken[specials] = True
    order = torch.argsort(counts, descending=True, stable=True)
    frequent = order[(counts[order] > 0) & ~taken[order]][: size - specials.numel()]
    taken[frequent] = True
    fill = torch.nonzero(~taken).flatten()[: size - specials.numel() - frequent.numel()]
    return torch.cat([specials, frequent, fill])


def token_mask_from_ids(selected_token_ids: torch.Tensor, target_vocab_size: int) -> torch.Tensor:
    """bool ``[V]`` membership mask (``t2d``) of ``selected_token_ids``."""
    mask = torch.zeros(target_vocab_size, dtype=torch.bool)
    mask[selected_token_ids.to("cpu", torch.int64)] = True
    return mask


def draft_vocab_coverage(counts: torch.Tensor, selected_token_ids: torch.Tensor) -> float:
    """Share of supervised tokens whose id is in the draft vocabulary (1.0 when nothing was counted)."""
    total = int(counts.sum())
    return float(int(counts[selected_token_ids].sum()) / total) if total else 1.0


# --------------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------------


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed
    return None


def _collective_device(dist) -> torch.device:
    """NCCL only moves CUDA tensors; gloo works on CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def count_supervised_tokens(
    dataloader: Iterable, target_vocab_size: int, *, show_progress: bool = True
) -> torch.Tensor:
    """Count supervised token ids over one pass of ``dataloader``.

    Each batch is a mapping with ``input_ids`` and ``loss_mask`` of equal shape (tensors or nested lists);
    ``input_ids[loss_mask != 0]`` is counted, ids outside ``[0, V)`` are ignored. When ``torch.distributed``
    is initialised the counts are ``all_reduce``-summed (on the current CUDA device under NCCL).

    Returns:
        int64 ``[V]`` counts on CPU.

    Raises:
        ValueError: a batch without ``input_ids`` / ``loss_mask``, or with mismatched shapes.
    """
    from tqdm.auto import tqdm

    _check_sizes(target_vocab_size, None)
    dist = _dist()
    counts = torch.zeros(target_vocab_size, dtype=torch.int64)
    try:
        total = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    # The bar is driven by hand: wrapping the loader would call __iter__ twice on streaming loaders.
    bar = tqdm(
        total=total,
        desc="counting draft-vocab tokens",
        unit="batch",
        disable=not show_progress or (dist is not None and dist.get_rank() != 0),
    )
    for step, batch in enumerate(dataloader):
        if not isinstance(batch, dict) or "input_ids" not in batch or "loss_mask" not in batch:
            raise ValueError(
                f"batch {step} must be a dict with input_ids and loss_mask, got "
                f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}"
            )
        ids = torch.as_tensor(batch["input_ids"]).to("cpu", torch.int64)
        mask = torch.as_tensor(batch["loss_mask"]).to("cpu")
        if ids.shape != mask.shape:
            raise ValueError(
                f"batch {step}: input_ids shape {tuple(ids.shape)} != loss_mask shape {tuple(mask.shape)}"
            )
        picked = ids[mask != 0]
        picked = picked[(picked >= 0) & (picked < target_vocab_size)]
        counts += torch.bincount(picked, minlength=target_vocab_size)
        bar.update(1)
    bar.close()
    if dist is not None:
        device = _collective_device(dist)
        reduced = counts.to(device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        counts = reduced.cpu()
    return counts


def _build(dataloader, target_vocab_size, draft_vocab_size, special_token_ids, show_progress):
    counts = count_supervised_tokens(dataloader, target_vocab_size, show_progress=show_progress)
    ids = select_draft_vocab(counts, draft_vocab_size, special_token_ids)
    coverage = draft_vocab_coverage(counts, ids)
    dist = _dist()
    if dist is None or dist.get_rank() == 0:
        logger.info(
            "draft vocabulary: %d of %d ids cover %.2f%% of %d supervised tokens",
            ids.numel(),
            target_vocab_size,
            100.0 * coverage,
            int(counts.sum()),
        )
    return ids, coverage


def build_eagle3_token_mapping(
    dataloader: Iterable,
    target_vocab_size: int,
    draft_vocab_size: int | None,
    special_token_ids: Sequence[int | None] | None = None,
    *,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the draft-vocabulary mapping from supervised-token frequency.

    Args:
        dataloader: yields dicts with ``input_ids`` and ``loss_mask`` (iterated once, unless identity).
        target_vocab_size: V.
        draft_vocab_size: Vd; ``None`` or ``>= V`` returns the identity without scanning.
        special_token_ids: ids placed first (e.g. ``[bos, eos, pad, unk]``).

    Returns:
        ``(selected_token_ids, selected_token_mask)``: int64 ``[Vd]`` (draft row -> target id, not sorted)
        and bool ``[V]``. Rank 0 logs the coverage.

    Raises:
        ValueError: ``target_vocab_size`` not an int > 0, ``draft_vocab_size`` neither None nor an int > 0.
    """
    _check_sizes(target_vocab_size, draft_vocab_size)
    if _is_identity(target_vocab_size, draft_vocab_size):
        return torch.arange(target_vocab_size, dtype=torch.int64), torch.ones(
            target_vocab_size, dtype=torch.bool
        )
    ids, _ = _build(dataloader, target_vocab_size, draft_vocab_size, special_token_ids, show_progress)
    return ids, token_mask_from_ids(ids, target_vocab_size)


# --------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------


def token_mapping_fingerprint(
    data_fingerprint: str,
    target_vocab_size: int,
    draft_vocab_size: int | None,
    special_token_ids: Sequence[int | None] | None = None,
) -> str:
    """Cache key of a mapping: the data/tokenizer fingerprint (e.g. ``dataloader.data_fingerprint``), the
    vocabulary sizes and the special ids (their order fixes draft rows)."""
    return digest(
        {
            "data": data_fingerprint,
            "target_vocab_size": target_vocab_size,
            "draft_vocab_size": count_draft_vocab(target_vocab_size, draft_vocab_size),
            "special_token_ids": _valid_specials(special_token_ids, target_vocab_size),
        }
    )


def _is_json_path(path: str) -> bool:
    return os.fspath(path).lower().endswith(".json")


def save_eagle3_token_mapping(
    path: str | os.PathLike,
    selected_token_ids: torch.Tensor,
    target_vocab_size: int,
    *,
    fingerprint: str | None = None,
    coverage: float | None = None,
) -> None:
    """Write the mapping atomically (temp file in the same directory, then ``os.replace``).

    The file is safetensors (tensor ``selected_token_ids`` plus string metadata), or JSON when ``path`` ends
    in ``.json``. Parent directories are created. Only the ids are stored; the mask follows from them.

    Raises:
        ValueError: ``target_vocab_size`` invalid; ids not a 1-D integer tensor of distinct values in ``[0, V)``.
    """
    _check_sizes(target_vocab_size, None)
    ids = _validated_ids(selected_token_ids, target_vocab_size)
    if ids is None:
        raise ValueError(
            f"selected_token_ids must be a 1-D integer tensor of distinct ids in [0, {target_vocab_size}), got "
            f"{selected_token_ids!r}"
        )
    path = os.fspath(path)
    meta = {
        "format": CACHE_FORMAT,
        "version": str(CACHE_VERSION),
        "target_vocab_size": str(target_vocab_size),
        "draft_vocab_size": str(ids.numel()),
        "fingerprint": fingerprint or "",
        "coverage": "" if coverage is None else repr(float(coverage)),
    }
    if _is_json_path(path):
        write_json(path, {**meta, "selected_token_ids": ids.tolist()})
        return
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"selected_token_ids": ids.contiguous()}, tmp, metadata=meta)


def _validated_ids(ids, target_vocab_size: int) -> torch.Tensor | None:
    if (
        not isinstance(ids, torch.Tensor)
        or ids.dim() != 1
        or ids.dtype in (torch.bool,)
        or ids.is_floating_point()
    ):
        return None
    ids = ids.detach().to("cpu", torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= target_vocab_size):
        return None
    if torch.unique(ids).numel() != ids.numel():
        return None
    return ids


def _read_cache(path: str) -> tuple[dict, torch.Tensor]:
    if _is_json_path(path):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("selected_token_ids"), list):
            raise ValueError("not a token-mapping JSON object")
        ids = torch.tensor(data.pop("selected_token_ids"), dtype=torch.int64)
        return {k: str(v) for k, v in data.items()}, ids
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        ids = f.get_tensor("selected_token_ids")
    return meta, ids


def load_eagle3_token_mapping(
    path: str | os.PathLike,
    target_vocab_size: int,
    draft_vocab_size: int | None,
    *,
    fingerprint: str | None = None,
) -> torch.Tensor | None:
    """Load cached ``selected_token_ids`` (int64 ``[Vd]``, CPU), or ``None`` so the caller rebuilds.

    ``None`` (with a warning, except for a missing file) when the file is missing, unreadable, not a
    token-mapping file of this format, built for another ``target_vocab_size`` or draft size, holds invalid
    ids, or -- when ``fingerprint`` is given -- was built for a different fingerprint (other data, tokenizer
    or settings). ``fingerprint=None`` skips that check (the reference recipe's behaviour).

    Raises:
        ValueError: invalid sizes.
    """
    _check_sizes(target_vocab_size, draft_vocab_size)
    path = os.fspath(path)
    if not os.path.exists(path):
        logger.info("no draft-vocab cache at %s; building it", path)
        return None
    try:
        meta, ids = _read_cache(path)
    except Exception as exc:  # corrupted, truncated, a pickle, ...
        logger.warning(
            "cannot read draft-vocab cache %s (%s: %s); rebuilding it", path, type(exc).__name__, exc
        )
        return None
    expected = count_draft_vocab(target_vocab_size, draft_vocab_size)
    problem = None
    if meta.get("format") != CACHE_FORMAT:
        problem = f"format {meta.get('format')!r} is not {CACHE_FORMAT!r}"
    elif meta.get("target_vocab_size") != str(target_vocab_size):
        problem = f"built for target_vocab_size={meta.get('target_vocab_size')}, not {target_vocab_size}"
    elif ids.numel() != expected:
        problem = f"holds {ids.numel()} ids, expected {expected}"
    elif fingerprint is not None and meta.get("fingerprint") != fingerprint:
        problem = (
            f"built for other data, tokenizer or settings (fingerprint {meta.get('fingerprint') or 'none'!r}, "
            f"expected {fingerprint!r})"
        )
    else:
        checked = _validated_ids(ids, target_vocab_size)
        if checked is None:
            problem = "holds ids that are out of range or repeated"
        ids = checked
    if problem is not None:
        logger.warning("draft-vocab cache %s is stale: %s; rebuilding it", path, problem)
        return None
    if meta.get("coverage"):
        logger.info(
            "loaded draft vocabulary from %s (coverage %.2f%%)", path, 100.0 * float(meta["coverage"])
        )
    return ids


def _broadcast_cached_ids(path, target_vocab_size, draft_vocab_size, fingerprint) -> torch.Tensor | None:
    """Rank 0 loads and validates the cache, then broadcasts the ids (or "rebuild") to every rank.

    Only rank 0 touches the filesystem, so the load-or-build decision is the same on all ranks even when
    ``path`` is node-local; were it not, ranks that rebuild would block in the counting ``all_reduce``
    while the others have moved on.
    """
    dist = _dist()
    if dist is None:
        return load_eagle3_token_mapping(path, target_vocab_size, draft_vocab_size, fingerprint=fingerprint)
    device = _collective_device(dist)
    ids = None
    if dist.get_rank() == 0:
        ids = load_eagle3_token_mapping(path, target_vocab_size, draft_vocab_size, fingerprint=fingerprint)
    count = torch.tensor([0 if ids is None else ids.numel()], dtype=torch.int64, device=device)
    dist.broadcast(count, src=0)
    n = int(count.item())
    if n == 0:
        return None
    payload = ids.to(device) if ids is not None else torch.empty(n, dtype=torch.int64, device=device)
    dist.broadcast(payload, src=0)
    return payload.cpu()


def load_or_build_eagle3_token_mapping(
    dataloader: Iterable,
    target_vocab_size: int,
    draft_vocab_size: int | None,
    special_token_ids: Sequence[int | None] | None = None,
    cache_path: str | os.PathLike | None = None,
    *,
    fingerprint: str | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`build_eagle3_token_mapping`, reusing a valid cache at ``cache_path`` and writing one otherwise.

    The cache key is :func:`token_mapping_fingerprint` of ``fingerprint`` -- or, when that is ``None``, of
    ``dataloader.data_fingerprint`` (set by :func:`eagle_ext.data.build_dataloader`; it covers the
    data, tokenizer, chat template, mask options and truncation) -- with the sizes and special ids. Without
    either, no fingerprint is checked. Rank 0 reads the cache and broadcasts (see above); after a build,
    rank 0 (or the only process) writes it. The identity case never touches the cache.

    Returns:
        ``(selected_token_ids int64 [Vd], selected_token_mask bool [V])``.

    Raises:
        ValueError: invalid sizes.
    """
    _check_sizes(target_vocab_size, draft_vocab_size)
    if cache_path is None or _is_identity(target_vocab_size, draft_vocab_size):
        return build_eagle3_token_mapping(
            dataloader, target_vocab_size, draft_vocab_size, special_token_ids, show_progress=show_progress
        )
    data_fp = fingerprint if fingerprint is not None else getattr(dataloader, "data_fingerprint", None)
    key = (
        None
        if data_fp is None
        else token_mapping_fingerprint(data_fp, target_vocab_size, draft_vocab_size, special_token_ids)
    )
    ids = _broadcast_cached_ids(cache_path, target_vocab_size, draft_vocab_size, key)
    if ids is None:
        ids, coverage = _build(
            dataloader, target_vocab_size, draft_vocab_size, special_token_ids, show_progress
        )
        dist = _dist()
        if dist is None or dist.get_rank() == 0:
            save_eagle3_token_mapping(cache_path, ids, target_vocab_size, fingerprint=key, coverage=coverage)
    return ids, token_mask_from_ids(ids, target_vocab_size)
