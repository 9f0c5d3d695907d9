"""Reading the offline cache: a memory-mapped dataset over the shards and what a training run needs from it.

The recipe's cached mode calls, in this order:

- :func:`read_cache_manifest` and :func:`check_cache_compatible` (reject a cache made for another config);
- :func:`load_cached_target_config` (size the draft), :func:`load_cached_embeddings` (seed its embeddings),
  :func:`load_cached_token_mapping` (its vocabulary); no target model is loaded;
- :func:`build_cached_dataloader`, whose batches are exactly the keyword arguments of
  :meth:`eagle_ext.eagle3.Eagle3TrainerModule.forward` in cached mode.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from eagle_ext.offline.manifest import (
    EMBEDDINGS_FILE,
    TARGET_CONFIG_FILE,
    CacheIntegrityError,
    cache_dtype,
    check_file,
    read_cache_manifest,
    shard_name,
    shard_sample_count,
)

__all__ = [
    "CACHED_BATCH_KEYS",
    "CachedEagle3Dataset",
    "build_cached_dataloader",
    "load_cached_embeddings",
    "load_cached_target_config",
    "load_cached_token_mapping",
]

#: Keys of a cached batch = keyword arguments of ``Eagle3TrainerModule.forward`` in cached mode.
CACHED_BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask", "aux_hidden_states", "target_probs", "position_mask")
VERIFY_MODES = ("full", "size", "none")


class CachedEagle3Dataset(Dataset):
    """The samples of an offline cache, padded back to ``seq_length`` exactly like the live padded loader.

    Shards are opened lazily (per process, so it works in dataloader workers) with safetensors ``safe_open``,
    which memory-maps the file; a sample reads only its own token range of each tensor. Top-k shards are
    scattered back to the full ``Vd`` width (zeros elsewhere).

    Item ``i`` (negative indices wrap): ``input_ids`` int64 ``[T]`` (shifted; padding = the loader's pad id
    and 0 in the last slot, as the live shift gives), ``attention_mask`` / ``loss_mask`` int64 ``[T]``,
    ``aux_hidden_states`` ``[T, 3H]`` and ``target_probs`` ``[T, Vd]`` in the cache dtype (zeros on padding;
    the trainer casts the probabilities to fp32), ``position_mask`` bool ``[T, 1]``. ``T = seq_length``.

    Args:
        cache_dir: a directory written by ``eagle-ext precompute``.
        verify: ``"full"`` hashes every shard and the embeddings once, here (reads the whole cache);
            ``"size"`` checks presence, sidecars and sizes only; ``"none"`` checks presence only. Every shard's
            size is checked again when a process first opens it.

    Raises:
        FileNotFoundError / ValueError: no readable manifest; unknown ``verify``.
        CacheIntegrityError: missing, truncated or corrupted shards (all listed, by name) or missing sidecars.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, verify: str = "full", show_progress: bool = True):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.manifest = read_cache_manifest(self.cache_dir)
        m = self.manifest
        self.num_samples, self.shard_size, self.num_shards = m["num_samples"], m["shard_size"], m["num_shards"]
        self.seq_length, self.pad_token_id = m["seq_length"], m["pad_token_id"]
        self.draft_vocab_size, self.topk = m["draft_vocab_size"], m["target_probs_topk"]
        self.dtype = cache_dtype(m["dtype"])
        self._sizes = self._check_shards(verify, show_progress)
        self._open: dict[int, tuple[Any, torch.Tensor]] = {}

    def _check_shards(self, verify: str, show_progress: bool) -> dict[int, int]:
        from tqdm.auto import tqdm

        problems, sizes = [], {}
        names = [shard_name(s) for s in range(self.num_shards)]
        bar = tqdm(names, desc="verifying offline cache", unit="shard", disable=not show_progress or verify != "full")
        for s, name in enumerate(bar):
            try:
                if verify == "none":
                    if not os.path.isfile(os.path.join(self.cache_dir, name)):
                        raise CacheIntegrityError(f"{name}: missing from {self.cache_dir}")
                    continue
                entry = check_file(self.cache_dir, name, full=verify == "full")
                expected = shard_sample_count(s, self.num_samples, self.shard_size)
                if entry.get("num_samples") != expected:
                    raise CacheIntegrityError(f"{name}: holds {entry.get('num_samples')} samples, expected {expected}")
                sizes[s] = entry["bytes"]
            except CacheIntegrityError as exc:
                problems.append(str(exc))
        if problems:
            raise CacheIntegrityError(
                f"offline cache {self.cache_dir} is damaged or incomplete ({len(problems)} problem(s)): "
                + "; ".join(problems)
            )
        return sizes

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}  # file handles stay in the process that opened them
        return state

    def _shard(self, s: int) -> tuple[Any, torch.Tensor]:
        if s not in self._open:
            from safetensors import safe_open

            name = shard_name(s)
            path = os.path.join(self.cache_dir, name)
            if not os.path.isfile(path):
                raise CacheIntegrityError(f"{name}: missing from {self.cache_dir}")
            if s in self._sizes and os.path.getsize(path) != self._sizes[s]:
                raise CacheIntegrityError(f"{name}: size changed since the cache was verified (truncated?)")
            try:
                handle = safe_open(path, framework="pt")
                offsets = handle.get_tensor("offsets")
            except Exception as exc:  # safetensors raises its own error types for damaged headers
                raise CacheIntegrityError(f"{name}: unreadable ({type(exc).__name__}: {exc})") from exc
            self._open[s] = (handle, offsets)
        return self._open[s]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"sample index {i} out of range for {self.num_samples} samples")
        i %= self.num_samples
        handle, offsets = self._shard(i // self.shard_size)
        j = i % self.shard_size
        a, b = int(offsets[j]), int(offsets[j + 1])
        n, t = b - a, self.seq_length

        def rows(key: str) -> torch.Tensor:
            return handle.get_slice(key)[a:b]

        input_ids = torch.full((t,), self.pad_token_id, dtype=torch.int64)
        input_ids[:n] = rows("input_ids")
        input_ids[-1] = 0  # the shift's zero tail (a full-length sample already has 0 there)
        attention_mask = torch.zeros(t, dtype=torch.int64)
        attention_mask[:n] = rows("attention_mask")
        loss_mask = torch.zeros(t, dtype=torch.int64)
        loss_mask[:n] = rows("loss_mask")
        position_mask = torch.zeros(t, 1, dtype=torch.bool)
        position_mask[:n, 0] = rows("position_mask")
        aux = rows("aux_hidden_states")
        aux_hidden_states = torch.zeros(t, aux.shape[-1], dtype=aux.dtype)
        aux_hidden_states[:n] = aux
        target_probs = torch.zeros(t, self.draft_vocab_size, dtype=self.dtype)
        if self.topk:
            target_probs[:n].scatter_(1, rows("target_probs_indices").to(torch.int64), rows("target_probs_values"))
        else:
            target_probs[:n] = rows("target_probs")
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "aux_hidden_states": aux_hidden_states,
            "target_probs": target_probs,
            "position_mask": position_mask,
        }


def _cached_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into ``[B, ...]`` tensors under :data:`CACHED_BATCH_KEYS`."""
    return {k: torch.stack([s[k] for s in samples]) for k in CACHED_BATCH_KEYS}


def build_cached_dataloader(
    cache_dir: str | os.PathLike,
    batch_size: int,
    *,
    shuffle: bool = True,
    shuffle_seed: int = 42,
    distributed: bool = False,
    num_workers: int = 0,
    dp_mesh=None,
    verify: str = "full",
    show_progress: bool = True,
):
    """The training dataloader of an offline cache.

    Sampling follows :func:`eagle_ext.data.build_dataloader`: a
    :class:`~eagle_ext.data.loader.SeededShuffleSampler` (seeded with ``shuffle_seed + epoch``), or with
    ``distributed`` a ``DistributedSampler`` over ``dp_mesh`` (when given) or the whole world; call
    ``loader.set_epoch(epoch)`` once per epoch.

    Args:
        cache_dir: written by ``eagle-ext precompute``.
        batch_size: samples per batch (>= 1).
        shuffle, shuffle_seed, distributed, num_workers, dp_mesh: as in ``build_dataloader``.
        verify: see :class:`CachedEagle3Dataset` (``"full"`` hashes the whole cache once before training).

    Returns:
        an :class:`eagle_ext.data.loader.Eagle3DataLoader` (``data_fingerprint`` = the manifest's, ``stats`` with
        ``num_samples`` / ``num_shards``, ``dataset.manifest``); batches are dicts with exactly
        :data:`CACHED_BATCH_KEYS`: ``input_ids``, ``attention_mask``, ``loss_mask`` int64 ``[B, T]``,
        ``aux_hidden_states`` ``[B, T, 3H]`` and ``target_probs`` ``[B, T, Vd]`` (cache dtype),
        ``position_mask`` bool ``[B, T, 1]``.

    Raises:
        ValueError: ``batch_size`` < 1, ``num_workers`` < 0, ``distributed`` without a process group or mesh;
            the errors of :class:`CachedEagle3Dataset`.
    """
    from eagle_ext._checks import check_int
    from eagle_ext.data.loader import Eagle3DataLoader, SeededShuffleSampler

    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and dp_mesh is None and not initialised:
        raise ValueError("distributed=True needs an initialised torch.distributed process group or a dp_mesh")
    dataset = CachedEagle3Dataset(cache_dir, verify=verify, show_progress=show_progress)
    sampler: Sampler
    if distributed:
        replicas = {} if dp_mesh is None else {"num_replicas": dp_mesh.size(), "rank": dp_mesh.get_local_rank()}
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=shuffle_seed, drop_last=False, **replicas)
    else:
        sampler = SeededShuffleSampler(len(dataset), seed=shuffle_seed, shuffle=shuffle)
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"batch_size": batch_size, "sampler": sampler, "collate_fn": _cached_collate,
                              "num_workers": num_workers, "drop_last": False, "pin_memory": cuda}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        if cuda:
            kwargs["multiprocessing_context"] = "forkserver"
    stats = {"num_samples": dataset.num_samples, "num_shards": dataset.num_shards, "cache_dir": dataset.cache_dir}
    return Eagle3DataLoader(dataset, data_fingerprint=dataset.manifest["data_fingerprint"], stats=stats, **kwargs)


def load_cached_embeddings(cache_dir: str | os.PathLike) -> torch.Tensor:
    """The target's input embeddings stored in the cache (checksum verified).

    Returns:
        fp32 ``[V, H]`` (for :meth:`eagle_ext.models.DraftModel.copy_embeddings_from`).

    Raises:
        CacheIntegrityError: file missing, truncated, corrupted or of the wrong shape.
    """
    from safetensors import safe_open

    cache_dir = os.fspath(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    check_file(cache_dir, EMBEDDINGS_FILE, full=True)
    with safe_open(os.path.join(cache_dir, EMBEDDINGS_FILE), framework="pt") as f:
        weight = f.get_tensor("weight")
    expected = (manifest["target_vocab_size"], manifest["target_hidden_size"])
    if tuple(weight.shape) != expected:
        raise CacheIntegrityError(f"{EMBEDDINGS_FILE}: shape {list(weight.shape)}, the manifest says {list(expected)}")
    return weight


def load_cached_token_mapping(cache_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft vocabulary the cache's ``target_probs`` columns follow.

    Returns:
        ``(selected_token_ids int64 [Vd], selected_token_mask bool [V])``.
    """
    from eagle_ext.data.vocab import token_mask_from_ids

    manifest = read_cache_manifest(cache_dir)
    ids = torch.tensor(manifest["selected_token_ids"], dtype=torch.int64)
    return ids, token_mask_from_ids(ids, manifest["target_vocab_size"])


def load_cached_target_config(cache_dir: str | os.PathLike):
    """The target's HF config saved with the cache (``transformers.PretrainedConfig``), to size the draft
    (:meth:`eagle_ext.models.DraftModel.from_target_config`) without the target's files.

    Raises:
        FileNotFoundError: no ``target_config.json``.
    """
    import json

    from transformers import AutoConfig

    path = os.path.join(os.fspath(cache_dir), TARGET_CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; the cache was not written completely")
    with open(path) as f:
        data = json.load(f)
    return AutoConfig.for_model(data.pop("model_type"), **data)
