"""The offline cache's layout on disk: manifest, file names, checksum sidecars, compatibility and integrity.

A cache directory holds

- ``manifest.json``: what produced the cache (see :func:`build_manifest`); written before any shard;
- ``target_config.json``: the target's HF config (the draft is sized from it; no target is loaded);
- ``target_embeddings.safetensors``: the target's input embeddings, key ``weight``, fp32 ``[V, H]``;
- ``shard-000000.safetensors``, ``shard-000001.safetensors``, ...: samples ``[s * shard_size, ...)``;
- one sidecar ``<stem>.index.json`` per safetensors file (``shard-000000.index.json``,
  ``target_embeddings.index.json``): ``{"file", "bytes", "sha256", ...}``. The sidecar is written after its
  file is in place, so a file without a sidecar is an interrupted write; ``sha256`` is the plain digest of
  the file (``sha256sum shard-000000.safetensors`` prints the same);
- ``draft_vocab.safetensors``: the draft-vocabulary cache of :func:`eagle_ext.data.load_or_build_eagle3_token_mapping`
  (lets ``--resume`` skip the counting pass; the manifest's ``selected_token_ids`` are authoritative).

This module imports nothing heavy (the CLI imports it to build its parser).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from eagle_ext._io import write_json

FORMAT = "eagle_ext.eagle3_offline_cache"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TARGET_CONFIG_FILE = "target_config.json"
EMBEDDINGS_FILE = "target_embeddings.safetensors"
DRAFT_VOCAB_FILE = "draft_vocab.safetensors"
CACHE_DTYPES = ("bf16", "fp16", "fp32")
CHECKSUM = "sha256"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.(safetensors|index\.json)$")

#: Manifest fields that describe the run but do not shape the shards; ``--resume`` ignores them.
_NOT_COMPARED = ("format_version", "created_with")


class CacheIntegrityError(ValueError):
    """A cache file is missing, truncated, modified or without its checksum sidecar (the message names it)."""


def cache_dtype(name: str):
    """``"bf16" | "fp16" | "fp32"`` -> the torch dtype of the cached hidden states and probabilities.

    Raises:
        ValueError: unknown name.
    """
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"dtype (--dtype) must be one of {list(CACHE_DTYPES)}, got {name!r}")
    return dtypes[name]


def shard_name(index: int) -> str:
    """``shard-000042.safetensors`` for ``index=42``."""
    return f"shard-{index:06d}.safetensors"


def sidecar_name(file_name: str) -> str:
    """``shard-000042.index.json`` for ``shard-000042.safetensors``."""
    stem = file_name[: -len(".safetensors")] if file_name.endswith(".safetensors") else file_name
    return f"{stem}.index.json"


def num_shards_for(num_samples: int, shard_size: int) -> int:
    """``ceil(num_samples / shard_size)``; sample ``i`` lives in shard ``i // shard_size``."""
    return -(-num_samples // shard_size)


def shard_sample_count(index: int, num_samples: int, shard_size: int) -> int:
    """Samples in shard ``index`` (``shard_size`` except for the last shard)."""
    return max(0, min(shard_size, num_samples - index * shard_size))


def existing_shard_files(cache_dir: str) -> dict[int, set[str]]:
    """``{shard index: {"safetensors", "index.json"}}`` of the shard files present in ``cache_dir``."""
    found: dict[int, set[str]] = {}
    if not os.path.isdir(cache_dir):
        return found
    for name in os.listdir(cache_dir):
        m = _SHARD_RE.match(name)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


def finished_shards(cache_dir: str) -> set[int]:
    """Shards whose file and sidecar are both present (a file without sidecar is an interrupted write)."""
    return {i for i, kinds in existing_shard_files(cache_dir).items() if kinds == {"safetensors", "index.json"}}


# ---------------------------------------------------------------------------------------------- manifest


def build_manifest(
    *,
    target_model: str,
    target_fingerprint: str,
    model_type: str,
    target_vocab_size: int,
    target_hidden_size: int,
    target_dtype: str,
    draft_vocab_size: int,
    selected_token_ids: Sequence[int],
    seq_length: int,
    dtype: str,
    num_samples: int,
    shard_size: int,
    target_probs_topk: int,
    aux_layer_ids: Sequence[int],
    pad_token_id: int,
    input_data: str,
    split: str | None,
    shuffle_seed: int,
    data_fingerprint: str,
    mask_reasoning_content: bool,
    mask_generation_prompt: bool,
) -> dict[str, Any]:
    """The manifest of a cache (a JSON object; every field but ``format_version`` / ``created_with`` is
    compared on ``--resume``).

    ``draft_vocab_size`` is the effective Vd (``len(selected_token_ids)``); ``target_probs_topk`` the effective
    k (0 = lossless ``target_probs``; else ``min(k, Vd)``); ``data_fingerprint`` is the dataloader's
    (:attr:`eagle_ext.data.loader.Eagle3DataLoader.data_fingerprint`: data content, tokenizer, chat template,
    mask options, truncation length). ``layout`` says how samples are stored (see :mod:`eagle_ext.offline.writer`).
    """
    from eagle_ext import __version__

    ids = [int(i) for i in selected_token_ids]
    if len(ids) != draft_vocab_size:
        raise ValueError(f"selected_token_ids holds {len(ids)} ids, draft_vocab_size is {draft_vocab_size}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_with": f"eagle_ext {__version__}",
        "layout": "trimmed",
        "checksum": CHECKSUM,
        "target_model": target_model,
        "target_fingerprint": target_fingerprint,
        "model_type": model_type,
        "target_vocab_size": int(target_vocab_size),
        "target_hidden_size": int(target_hidden_size),
        "target_dtype": target_dtype,
        "draft_vocab_size": int(draft_vocab_size),
        "selected_token_ids": ids,
        "seq_length": int(seq_length),
        "dtype": dtype,
        "num_samples": int(num_samples),
        "shard_size": int(shard_size),
        "num_shards": num_shards_for(int(num_samples), int(shard_size)),
        "target_probs_topk": int(target_probs_topk),
        "aux_layer_ids": [int(i) for i in aux_layer_ids],
        "aux_hidden_dim": 3 * int(target_hidden_size),
        "pad_token_id": int(pad_token_id),
        "input_data": input_data,
        "split": split,
        "shuffle_seed": int(shuffle_seed),
        "data_fingerprint": data_fingerprint,
        "mask_reasoning_content": bool(mask_reasoning_content),
        "mask_generation_prompt": bool(mask_generation_prompt),
    }


def write_manifest(cache_dir: str, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (sorted keys)."""
    write_json(os.path.join(cache_dir, MANIFEST_FILE), manifest, indent=1, sort_keys=True)


def read_cache_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``cache_dir/manifest.json``.

    Returns:
        the manifest dict (fields: :func:`build_manifest`).

    Raises:
        FileNotFoundError: no such directory or no manifest.
        ValueError: not JSON, not an eagle_ext offline cache, or a format version this code cannot read.
    """
    cache_dir = os.fspath(cache_dir)
    path = os.path.join(cache_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"cache_dir {cache_dir!r} has no {MANIFEST_FILE}; expected a directory written by `eagle-ext precompute`"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} manifest (format {manifest.get('format')!r:.60})"
                         if isinstance(manifest, dict) else f"{path} is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest.get('format_version')!r}; this eagle_ext reads version "
            f"{FORMAT_VERSION}: rerun `eagle-ext precompute` into a new directory"
        )
    return manifest


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} values: {', '.join(map(str, value[:4]))}, ...]"
    return repr(value)


def manifest_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"field: cache <old>, now <new>"`` for every compared field that differs (sorted by field)."""
    keys = sorted((set(recorded) | set(wanted)) - set(_NOT_COMPARED))
    out = []
    for key in keys:
        old, new = recorded.get(key, "<absent>"), wanted.get(key, "<absent>")
        if old != new:
            out.append(f"{key}: cache {_show(old)}, now {_show(new)}")
    return out


def check_cache_compatible(
    manifest: dict[str, Any],
    *,
    target_vocab_size: int | None = None,
    draft_vocab_size: int | None = None,
    seq_length: int | None = None,
    aux_layer_ids: Sequence[int] | None = None,
    target_hidden_size: int | None = None,
    mask_reasoning_content: bool | None = None,
    mask_generation_prompt: bool | None = None,
    selected_token_ids: Sequence[int] | None = None,
) -> None:
    """Reject a cache that was produced for another configuration than the training run's.

    Each keyword given (not ``None``) is compared with the manifest. ``draft_vocab_size`` is compared as the
    effective size (a value >= the target vocabulary means the full vocabulary, as in
    :func:`eagle_ext.data.count_draft_vocab`); ``target_hidden_size`` is checked through ``aux_hidden_dim = 3H``.

    Raises:
        ValueError: one message listing every differing field with the cache's and the configuration's value.
    """
    v = int(manifest["target_vocab_size"])
    wanted: dict[str, Any] = {}
    if target_vocab_size is not None:
        wanted["target_vocab_size"] = int(target_vocab_size)
    if draft_vocab_size is not None:
        wanted["draft_vocab_size"] = min(int(draft_vocab_size), int(target_vocab_size or v))
    if seq_length is not None:
        wanted["seq_length"] = int(seq_length)
    if aux_layer_ids is not None:
        wanted["aux_layer_ids"] = [int(i) for i in aux_layer_ids]
    if target_hidden_size is not None:
        wanted["aux_hidden_dim"] = 3 * int(target_hidden_size)
    if mask_reasoning_content is not None:
        wanted["mask_reasoning_content"] = bool(mask_reasoning_content)
    if mask_generation_prompt is not None:
        wanted["mask_generation_prompt"] = bool(mask_generation_prompt)
    if selected_token_ids is not None:
        wanted["selected_token_ids"] = [int(i) for i in selected_token_ids]
    diffs = [
        f"{key}: cache {_show(manifest.get(key, '<absent>'))}, config {_show(value)}"
        for key, value in wanted.items()
        if manifest.get(key) != value
    ]
    if diffs:
        raise ValueError(
            "the offline cache does not match the training configuration (rerun `eagle-ext precompute` or fix "
            "the config): " + "; ".join(diffs)
        )


# ---------------------------------------------------------------------------------------------- checksums


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    from eagle_ext.data.fingerprint import _file_sha256

    return _file_sha256(path)


def write_sidecar(cache_dir: str, file_name: str, **extra: Any) -> dict[str, Any]:
    """Hash ``cache_dir/file_name`` and write its sidecar atomically; returns the sidecar's content."""
    path = os.path.join(cache_dir, file_name)
    entry = {"file": file_name, "bytes": os.path.getsize(path), CHECKSUM: file_sha256(path), **extra}
    write_json(os.path.join(cache_dir, sidecar_name(file_name)), entry, indent=1, sort_keys=True)
    return entry


def read_sidecar(cache_dir: str, file_name: str) -> dict[str, Any]:
    """The sidecar of ``file_name``.

    Raises:
        CacheIntegrityError: sidecar missing or unreadable (named).
    """
    path = os.path.join(cache_dir, sidecar_name(file_name))
    try:
        with open(path) as f:
            entry = json.load(f)
    except FileNotFoundError:
        raise CacheIntegrityError(
            f"{file_name}: no checksum sidecar {sidecar_name(file_name)} (an interrupted write; "
            "`eagle-ext precompute --resume` rewrites it)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CacheIntegrityError(f"{file_name}: unreadable sidecar {sidecar_name(file_name)}: {exc}") from exc
    if not isinstance(entry, dict) or entry.get("file") != file_name or not isinstance(entry.get("bytes"), int):
        raise CacheIntegrityError(f"{file_name}: malformed sidecar {sidecar_name(file_name)}")
    return entry


def check_file(cache_dir: str, file_name: str, *, full: bool) -> dict[str, Any]:
    """Check ``file_name`` against its sidecar: present, same size, and (``full``) same sha256.

    Returns:
        the sidecar entry.

    Raises:
        CacheIntegrityError: naming the file and what is wrong (missing, truncated / extended, bit rot).
    """
    path = os.path.join(cache_dir, file_name)
    if not os.path.isfile(path):
        raise CacheIntegrityError(f"{file_name}: missing from {cache_dir}")
    entry = read_sidecar(cache_dir, file_name)
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise CacheIntegrityError(
            f"{file_name}: {size} bytes, its sidecar records {entry['bytes']} (truncated or partial copy)"
        )
    if full and file_sha256(path) != entry.get(CHECKSUM):
        raise CacheIntegrityError(f"{file_name}: {CHECKSUM} differs from its sidecar (bit rot or a modified file)")
    return entry


def verify_cache(cache_dir: str | os.PathLike, *, full: bool = True, show_progress: bool = True) -> list[str]:
    """Check a whole cache: manifest, embeddings, every shard ``0..num_shards-1`` (present, sidecar, size,
    sample count and, when ``full``, sha256) and no stray shard beyond the last.

    Returns:
        the problems found, one string per file (empty when the cache is intact).

    Raises:
        FileNotFoundError / ValueError: no readable manifest (see :func:`read_cache_manifest`).
    """
    from tqdm.auto import tqdm

    cache_dir = os.fspath(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    n, size, count = manifest["num_samples"], manifest["shard_size"], manifest["num_shards"]
    problems = []
    names = [EMBEDDINGS_FILE] + [shard_name(i) for i in range(count)]
    for i, name in enumerate(tqdm(names, desc="verifying cache", unit="file", disable=not show_progress)):
        try:
            entry = check_file(cache_dir, name, full=full)
        except CacheIntegrityError as exc:
            problems.append(str(exc))
            continue
        expected = shard_sample_count(i - 1, n, size) if i else None
        if expected is not None and entry.get("num_samples") != expected:
            problems.append(f"{name}: holds {entry.get('num_samples')} samples, expected {expected}")
    stray = sorted(i for i in existing_shard_files(cache_dir) if i >= count)
    if stray:
        problems.append(f"shards beyond the manifest's {count}: {[shard_name(i) for i in stray]}")
    if not os.path.isfile(os.path.join(cache_dir, TARGET_CONFIG_FILE)):
        problems.append(f"{TARGET_CONFIG_FILE}: missing from {cache_dir}")
    return problems
