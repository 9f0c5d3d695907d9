"""The EAGLE-3 training dataloader: tokenised chats as padded samples or packed rows, sharded by data rank.

Samples are read lazily from the (memory-mapped) tokenised Arrow dataset, so neither layout holds the
whole corpus as tensors: a padded sample is sliced and padded on access; a packed row is written on access
by the C++ packer from the documents a :class:`~eagle_ext.data.packing.PackingPlan` assigned to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from eagle_ext._checks import check_int
from eagle_ext.data.fingerprint import digest
from eagle_ext.data.packing import (
    PACKING_STRATEGIES,
    check_packing_args,
    pack_collate,
    pack_row,
    pad_collate,
    plan_packing,
)
from eagle_ext.data.tokenization import TokenizedChats, tokenize_chat_dataset

logger = logging.getLogger(__name__)


def _fetch_documents(docs, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat ``(token_ids int64, loss_mask int64, offsets int64 [k+1])`` of rows ``indices`` of an
    arrow-formatted tokenised dataset."""
    import pyarrow.compute as pc

    table = docs[indices]
    ids, loss = table.column("input_ids"), table.column("loss_mask")
    lengths = torch.from_numpy(pc.list_value_length(ids).to_numpy().astype(np.int64))
    offsets = torch.zeros(len(indices) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    token_ids = torch.from_numpy(pc.list_flatten(ids).to_numpy().astype(np.int64))
    loss_mask = torch.from_numpy(pc.list_flatten(loss).to_numpy().astype(np.int64))
    return token_ids, loss_mask, offsets


def _supervised_within(tokenized, max_length: int) -> np.ndarray:
    """Indices of samples that keep a supervised token after truncation to ``max_length`` tokens."""
    first = np.asarray(tokenized.with_format("arrow")["first_supervised"].to_numpy(), dtype=np.int64)
    return np.flatnonzero((first >= 0) & (first < max_length))


class ChatSampleDataset(Dataset):
    """Padded samples: item ``i`` is ``{"input_ids", "loss_mask", "attention_mask"}``, int64 ``[seq_length]``,
    truncated to ``seq_length`` and right-padded with ``pad_token_id`` (loss and attention 0 on pad).

    Samples without a supervised token in their first ``seq_length`` tokens are left out.
    """

    def __init__(self, tokenized, seq_length: int, pad_token_id: int):
        self._docs = tokenized.with_format("arrow")
        self._index = _supervised_within(tokenized, seq_length)
        self.seq_length = seq_length
        self.pad_token_id = pad_token_id
        self.num_dropped = len(tokenized) - len(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, loss, _ = _fetch_documents(self._docs, [int(self._index[i])])
        n = min(ids.numel(), self.seq_length)
        pad = self.seq_length - n
        attention = torch.zeros(self.seq_length, dtype=torch.int64)
        attention[:n] = 1
        return {
            "input_ids": torch.nn.functional.pad(ids[:n], (0, pad), value=self.pad_token_id),
            "loss_mask": torch.nn.functional.pad(loss[:n], (0, pad), value=0),
            "attention_mask": attention,
        }


class PackedChatDataset(Dataset):
    """Packed rows of width ``packed_sequence_size`` (see :func:`eagle_ext.data.build_packed_eagle3_dataset`),
    planned once with ``strategy`` and written on access.

    Samples longer than the row are truncated; those left without a supervised token are left out.
    """

    def __init__(self, tokenized, packed_sequence_size: int, pad_token_id: int, strategy: str = "greedy"):
        check_packing_args(packed_sequence_size, strategy)
        self._docs = tokenized.with_format("arrow")
        self._index = _supervised_within(tokenized, packed_sequence_size)
        lengths = np.asarray(self._docs["num_tokens"].to_numpy(), dtype=np.int64)[self._index]
        self.plan = plan_packing(torch.from_numpy(lengths), packed_sequence_size, strategy)
        self.packed_sequence_size = packed_sequence_size
        self.pad_token_id = pad_token_id
        self.num_dropped = len(tokenized) - len(self._index)
        real = int(np.minimum(lengths, packed_sequence_size).sum())
        self.padding_fraction = 1.0 - real / max(1, self.plan.num_rows * packed_sequence_size)

    def __len__(self) -> int:
        return self.plan.num_rows

    def __getitem__(self, r: int) -> dict[str, Any]:
        docs = self._index[self.plan.docs_of_row(r).numpy()].tolist()
        token_ids, loss_mask, offsets = _fetch_documents(self._docs, docs)
        return pack_row(token_ids, loss_mask, offsets, self.packed_sequence_size, self.pad_token_id)


class SeededShuffleSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled (when ``shuffle``) by a permutation seeded with ``seed + epoch``.

    Like ``DistributedSampler``, the order changes only through :meth:`set_epoch`, so a run is reproducible
    and a resumed epoch replays the same order.
    """

    def __init__(self, num_samples: int, *, seed: int = 42, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class Eagle3DataLoader(DataLoader):
    """A ``DataLoader`` that also carries what built it.

    Attributes:
        data_fingerprint: identity of the data, tokenizer, template, mask options and truncation length
            (:func:`eagle_ext.data.load_or_build_eagle3_token_mapping` uses it to key its cache).
        stats: row counts (source rows, skipped by reason, samples, packed rows, padding fraction).
    """

    def __init__(self, dataset, *, data_fingerprint: str, stats: Mapping[str, Any], **kwargs):
        super().__init__(dataset, **kwargs)
        self.data_fingerprint = data_fingerprint
        self.stats = dict(stats)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call once per epoch, before iterating)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed
    return None


def _tokenize(data_path, tokenizer, *, cache_dir, show_progress, **kwargs) -> TokenizedChats:
    """Tokenise; in a distributed run with a cache, rank 0 first, then the others read its cache.

    Rank 0 broadcasts whether it succeeded, so a failure there raises on every rank instead of leaving
    the others waiting. A rank whose ``cache_dir`` is node-local and lacks the cache tokenises by itself.
    """
    dist = _dist()
    if dist is None or cache_dir is None or dist.get_world_size() == 1:
        return tokenize_chat_dataset(
            data_path, tokenizer, cache_dir=cache_dir, show_progress=show_progress, **kwargs
        )
    status: list[Any] = [None]
    result = None
    if dist.get_rank() == 0:
        try:
            result = tokenize_chat_dataset(
                data_path, tokenizer, cache_dir=cache_dir, show_progress=show_progress, **kwargs
            )
            status = ["ok"]
        except Exception as exc:
            dist.broadcast_object_list([f"{type(exc).__name__}: {exc}"], src=0)
            raise
    dist.broadcast_object_list(status, src=0)
    if dist.get_rank() != 0:
        if status[0] != "ok":
            raise RuntimeError(f"rank 0 failed to tokenise {data_path!r}: {status[0]}")
        result = tokenize_chat_dataset(
            data_path, tokenizer, cache_dir=cache_dir, show_progress=False, **kwargs
        )
    return result


def _resolve_pad_token_id(tokenizer, pad_token_id: int | None) -> int:
    if pad_token_id is not None:
        return int(pad_token_id)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _check_loader_args(seq_length: int, batch_size: int, num_workers: int, packed_sequence_size: int,
                       packing_strategy: str, distributed: bool, dp_mesh) -> None:
    check_int("seq_length", seq_length, 2)
    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)
    check_int("packed_sequence_size", packed_sequence_size, 0)
    if packed_sequence_size == 1:
        raise ValueError("packed_sequence_size must be 0 (no packing) or an int >= 2, got 1")
    if packing_strategy not in PACKING_STRATEGIES:
        raise ValueError(f"packing_strategy must be one of {PACKING_STRATEGIES}, got {packing_strategy!r}")
    if distributed and dp_mesh is None and _dist() is None:
        raise ValueError("distributed=True needs an initialised torch.distributed process group or a dp_mesh")


def _row_layout(tokenized: TokenizedChats, data_path, seq_length: int, packed_sequence_size: int,
                packing_strategy: str, pad: int) -> tuple[Dataset, Any, int, dict[str, Any]]:
    """The dataset of padded samples or packed rows, its collate function, the truncation length and the
    loader's ``stats``.

    Raises:
        ValueError: no sample keeps an assistant token within the truncation length.
    """
    stats: dict[str, Any] = {
        "num_source_rows": tokenized.num_source_rows,
        "skipped": dict(tokenized.skipped),
        "num_samples": len(tokenized.dataset),
    }
    if packed_sequence_size > 0:
        max_length = packed_sequence_size
        dataset: Dataset = PackedChatDataset(tokenized.dataset, packed_sequence_size, pad, packing_strategy)
        collate = pack_collate
        stats.update(num_rows=len(dataset), padding_fraction=dataset.padding_fraction)
        logger.info(
            "packed %d samples into %d rows of %d tokens (%s): %.1f%% padding",
            len(tokenized.dataset),
            len(dataset),
            packed_sequence_size,
            packing_strategy,
            100.0 * dataset.padding_fraction,
        )
    else:
        max_length = seq_length
        dataset = ChatSampleDataset(tokenized.dataset, seq_length, pad)
        collate = partial(pad_collate, pad_token_id=pad)
    stats["dropped_by_truncation"] = dataset.num_dropped
    if dataset.num_dropped:
        logger.warning(
            "%d samples have no assistant token within the first %d tokens and are left out",
            dataset.num_dropped,
            max_length,
        )
    if len(dataset) == 0:
        raise ValueError(
            f"no sample of {data_path!r} keeps an assistant token within the first {max_length} tokens; raise "
            f"{'packed_sequence_size' if packed_sequence_size else 'seq_length'} (now {max_length})"
        )
    return dataset, collate, max_length, stats


def _sampler(dataset: Dataset, *, distributed: bool, dp_mesh, shuffle: bool, seed: int) -> Sampler:
    """A ``DistributedSampler`` over ``dp_mesh`` (or the whole world) when ``distributed``, else the seeded
    per-epoch shuffle."""
    if not distributed:
        return SeededShuffleSampler(len(dataset), seed=seed, shuffle=shuffle)
    if dp_mesh is not None:
        return DistributedSampler(
            dataset,
            num_replicas=dp_mesh.size(),
            rank=dp_mesh.get_local_rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)


def _worker_kwargs(num_workers: int) -> dict[str, Any]:
    """``DataLoader`` keywords for the workers: kept alive across epochs, started with ``forkserver`` when CUDA is
    available (fork would inherit an initialised CUDA context), batches in pinned memory with CUDA."""
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"num_workers": num_workers, "drop_last": False, "pin_memory": cuda}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        if cuda:
            kwargs["multiprocessing_context"] = "forkserver"
    return kwargs


def build_dataloader(
    data_path, tokenizer, seq_length: int, batch_size: int, shuffle: bool = True, num_workers: int = 0,
    split: str | None = None, distributed: bool = False, shuffle_seed: int = 42, mask_reasoning_content: bool = False,
    mask_generation_prompt: bool = False, packed_sequence_size: int = 0, dp_mesh=None, *,
    packing_strategy: str = "greedy", chat_template: str | None = None, template_kwargs: Mapping[str, Any] | None = None,
    pad_token_id: int | None = None, cache_dir: str | os.PathLike | None = None, num_proc: int | None = None,
    show_progress: bool = True,
) -> Eagle3DataLoader:
    """Build the training dataloader from chat data (EAGLE-3 and P-EAGLE alike; ``build_eagle3_dataloader`` is
    the same function under its public-API name).

    Args:
        data_path: chat rows (see :func:`eagle_ext.data.sources.load_chat_source`: JSONL / JSON / parquet,
            a directory, a ``save_to_disk`` directory, an HF dataset name, a ``datasets.Dataset`` or a list).
        tokenizer: the *target's* tokenizer (its chat template renders the conversations).
        seq_length: padded layout: samples are truncated and right-padded to this many tokens (>= 2).
        batch_size: samples (or packed rows) per batch.
        shuffle: shuffle each epoch (seeded with ``shuffle_seed + epoch``; call ``loader.set_epoch``).
        num_workers: dataloader workers; > 0 keeps them alive across epochs and, when CUDA is available,
            starts them with ``forkserver`` (fork would inherit an initialised CUDA context).
        split: HF split spec, slices included (``"train[:1000]"``).
        distributed: shard with a ``DistributedSampler``: over ``dp_mesh`` when given (``num_replicas =
            dp_mesh.size()``, ``rank = dp_mesh.get_local_rank()``, so the context-parallel ranks of one data
            group get identical samples; a DP size of 1 means one replica), else over the whole world.
        mask_reasoning_content, mask_generation_prompt: see :class:`eagle_ext.data.chat.ChatTokenizer`.
        packed_sequence_size: > 0 packs samples into rows of this width (the row width replaces
            ``seq_length`` as the truncation length) and yields :func:`~eagle_ext.data.pack_collate` batches
            with ``position_ids``, ``doc_remaining`` and ``seq_lens``; 0 yields padded
            :func:`~eagle_ext.data.pad_collate` batches.
        packing_strategy: ``"greedy"`` (reference layout) or ``"best_fit"`` (less padding).
        chat_template, template_kwargs: template override and extra template variables.
        pad_token_id: defaults to the tokenizer's pad, else eos, else 0.
        cache_dir: cache the tokenised data here (keyed by a fingerprint of data, tokenizer and options);
            in a distributed run rank 0 tokenises first and the other ranks read its cache.
        num_proc: tokenisation processes (see :func:`eagle_ext.data.tokenization.tokenize_chat_dataset`).
        show_progress: progress bars while tokenising.

    Returns:
        an :class:`Eagle3DataLoader` (``drop_last=False``; ``pin_memory`` when CUDA is available) with
        ``data_fingerprint`` and ``stats``. Batches are int64: padded ``input_ids, loss_mask,
        attention_mask`` ``[B, seq_length]``, or packed ``[B, W]`` plus ``position_ids``, ``doc_remaining``
        and ``seq_lens [B, max_docs]``.

    Raises:
        ValueError: ``seq_length`` < 2, ``batch_size`` < 1, ``num_workers`` < 0, ``packed_sequence_size``
            neither 0 nor >= 2, unknown ``packing_strategy``, ``distributed=True`` without a process group or
            ``dp_mesh``, a tokenizer without chat template, a template that is not prefix-stable, no usable
            rows; FileNotFoundError for a missing ``data_path``; ValueError for an unknown file format.
    """
    _check_loader_args(seq_length, batch_size, num_workers, packed_sequence_size, packing_strategy, distributed,
                       dp_mesh)
    tokenized = _tokenize(
        data_path, tokenizer, split=split, chat_template=chat_template, mask_reasoning_content=mask_reasoning_content,
        mask_generation_prompt=mask_generation_prompt, template_kwargs=template_kwargs, num_proc=num_proc,
        cache_dir=cache_dir, show_progress=show_progress,
    )
    pad = _resolve_pad_token_id(tokenizer, pad_token_id)
    dataset, collate, max_length, stats = _row_layout(tokenized, data_path, seq_length, packed_sequence_size,
                                                      packing_strategy, pad)
    sampler = _sampler(dataset, distributed=distributed, dp_mesh=dp_mesh, shuffle=shuffle, seed=shuffle_seed)
    data_fingerprint = digest({"tokenized": tokenized.fingerprint, "max_length": max_length})
    return Eagle3DataLoader(dataset, data_fingerprint=data_fingerprint, stats=stats, batch_size=batch_size,
                            sampler=sampler, collate_fn=collate, **_worker_kwargs(num_workers))


#: The public-API name (DESIGN.md §3): the same function.
build_eagle3_dataloader = build_dataloader
