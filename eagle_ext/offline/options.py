"""The options of ``precompute`` (one dataclass; the CLI's defaults come from it) and their validation, which
runs before anything is loaded. Imports nothing heavy."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from eagle_ext._checks import check_int, is_int
from eagle_ext.offline.manifest import cache_dtype

__all__ = ["PrecomputeOptions", "validate_precompute_options"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv", ".txt")


@dataclass(frozen=True)
class PrecomputeOptions:
    """Everything ``precompute`` takes (the CLI flags, one field each; defaults written once, here).

    ``device=None`` picks ``cuda`` when available, else ``cpu``; ``aux_layer_ids=None`` the target's default
    (:func:`eagle_ext.models.default_eagle3_aux_layer_ids`); ``tokenizer=None`` the target's own.
    """

    target_model: str
    input_data: str
    output_dir: str
    seq_length: int = 2048
    draft_vocab_size: int | None = None
    batch_size: int = 4
    shard_size: int = 256
    dtype: str = "bf16"
    target_probs_topk: int = 0
    aux_layer_ids: tuple[int, ...] | None = None
    device: str | None = None
    shuffle_seed: int = 42
    num_workers: int = 0
    split: str | None = None
    mask_reasoning_content: bool = False
    mask_generation_prompt: bool = False
    tokenizer: str | None = None
    token_map: str | None = None  # reuse the draft vocabulary of this cache directory (e.g. the train cache)
    trust_remote_code: bool = False
    resume: bool = False
    show_progress: bool = True


def _check_source(name: str, flag: str, value: Any, *, model: bool) -> None:
    """A local path that exists, or (when it does not) an HF hub id ``owner/name``."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name} ({flag}) must be a path or an HF hub id, got {value!r}")
    path = os.fspath(value)
    if os.path.exists(path):
        if model and not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{name} ({flag}) {path!r} exists but has no config.json; expected an HF model directory")
        return
    if _HUB_ID.match(path) and not path.lower().endswith(_DATA_SUFFIXES):
        return
    raise FileNotFoundError(f"{name} ({flag}) {path!r} does not exist (and is not an HF hub id like owner/name)")


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device (--device) must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device (--device) is {device!r} but no CUDA device is available; pass --device cpu")
    return device


def validate_precompute_options(opts: PrecomputeOptions) -> PrecomputeOptions:
    """Check every option before anything is loaded; returns the options with ``device`` resolved.

    Raises:
        ValueError: a size < 1 (``seq_length`` < 2), ``shard_size`` not a multiple of ``batch_size``,
            ``draft_vocab_size`` neither None nor >= 1, ``target_probs_topk`` < 0, unknown ``dtype`` or
            ``device``, CUDA requested without a device, ``aux_layer_ids`` not 3 distinct ints >= 0,
            ``output_dir`` an existing file.
        FileNotFoundError: ``input_data`` / ``target_model`` / ``tokenizer`` neither an existing path nor an HF
            hub id, or a model directory without ``config.json``.
    """
    check_int("seq_length", opts.seq_length, 2, flag="--seq-length")
    check_int("batch_size", opts.batch_size, 1, flag="--batch-size")
    check_int("shard_size", opts.shard_size, 1, flag="--shard-size")
    if opts.shard_size % opts.batch_size:
        raise ValueError(
            f"shard_size (--shard-size) must be a multiple of batch_size (--batch-size) so that no batch spans two "
            f"shards, got shard_size={opts.shard_size}, batch_size={opts.batch_size}"
        )
    if opts.draft_vocab_size is not None:
        check_int("draft_vocab_size", opts.draft_vocab_size, 1, flag="--draft-vocab-size")
    check_int("target_probs_topk", opts.target_probs_topk, 0, flag="--target-probs-topk")
    check_int("num_workers", opts.num_workers, 0, flag="--num-workers")
    if not is_int(opts.shuffle_seed):
        raise ValueError(f"shuffle_seed (--shuffle-seed) must be an int, got {opts.shuffle_seed!r}")
    cache_dtype(opts.dtype)  # raises on an unknown name
    if opts.aux_layer_ids is not None:
        ids = list(opts.aux_layer_ids)
        if len(ids) != 3 or len(set(ids)) != 3 or any(not is_int(i, 0) for i in ids):
            raise ValueError(f"aux_layer_ids (--aux-layer-ids) must be 3 distinct ints >= 0, got {opts.aux_layer_ids!r}")
    if opts.token_map is not None:
        from eagle_ext.offline.manifest import MANIFEST_FILE

        if not os.path.isfile(os.path.join(os.fspath(opts.token_map), MANIFEST_FILE)):
            raise FileNotFoundError(f"token_map (--token-map) {opts.token_map!r} is not a cache directory (no "
                                    f"{MANIFEST_FILE}); expected the output directory of an earlier precompute")
    device = _resolve_device(opts.device)
    _check_source("input_data", "--input-data", opts.input_data, model=False)
    _check_source("target_model", "--target-model", opts.target_model, model=True)
    if opts.tokenizer is not None:
        _check_source("tokenizer", "--tokenizer", opts.tokenizer, model=False)
    if not isinstance(opts.output_dir, (str, os.PathLike)) or not os.fspath(opts.output_dir):
        raise ValueError(f"output_dir (--output-dir) must be a directory path, got {opts.output_dir!r}")
    if os.path.exists(opts.output_dir) and not os.path.isdir(opts.output_dir):
        raise ValueError(f"output_dir (--output-dir) {os.fspath(opts.output_dir)!r} exists and is not a directory")
    return PrecomputeOptions(**{**asdict(opts), "device": device})
