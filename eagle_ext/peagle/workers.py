"""COD sampling in dataloader workers, so the training step never waits on it.

:class:`CODIndexedDataset` wraps a dataset of unpacked samples (dicts with ``loss_mask`` and
``attention_mask``, unshifted, as the data pipeline yields them) and attaches each sample's COD indices,
drawn with a per-sample seed ``derive_seed(seed, epoch, index)``: the draw does not depend on the worker
that makes it, and :meth:`CODIndexedDataset.set_epoch` changes it every epoch (the epoch lives in shared
memory, so persistent workers see it). :func:`collate_with_cod_indices` moves the indices into the batch as
``cod_indices``, the argument of :meth:`PEagleTrainerModule.forward` / ``build_peagle_plan``.

The indices are sampled on the shifted loss mask (``loss_mask[1:]`` plus a zero), exactly what the trainer
receives from the target capture, over the sample's own length (padding needs no COD element).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from eagle_ext.ops.cod import derive_seed, generate_cod_sample_indices

__all__ = ["CODIndexedDataset", "collate_with_cod_indices", "COD_KEYS"]

COD_KEYS = ("cod_anchor_pos", "cod_depth")


class CODIndexedDataset(Dataset):
    """``dataset[i]`` plus ``cod_anchor_pos`` / ``cod_depth`` (int64 ``[n]``) for P-EAGLE.

    Args:
        dataset: map-style dataset of dicts with ``loss_mask`` ``[T]`` and ``attention_mask`` ``[T]``.
        num_depths, down_sample_ratio, down_sample_ratio_min, max_anchors: COD settings (as the trainer's).
        seed: base seed of the per-sample draws.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        num_depths: int,
        down_sample_ratio: float = 0.7,
        down_sample_ratio_min: float = 0.2,
        max_anchors: int | None = None,
        seed: int = 0,
    ):
        self.dataset = dataset
        self.num_depths = num_depths
        self.down_sample_ratio, self.down_sample_ratio_min = down_sample_ratio, down_sample_ratio_min
        self.max_anchors, self.seed = max_anchors, seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` in the per-sample seeds (visible to already running workers)."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        for key in ("loss_mask", "attention_mask"):
            if key not in sample:
                raise KeyError(f"CODIndexedDataset needs samples with {key!r}, sample {index} has {sorted(sample)}")
        loss_mask = torch.as_tensor(sample["loss_mask"]).reshape(-1)
        attention = torch.as_tensor(sample["attention_mask"]).reshape(-1)
        shifted = torch.cat([loss_mask[1:], loss_mask.new_zeros(1)]) * (attention != 0)
        document_ids = torch.where(attention != 0, 0, -1).to(torch.int64)
        anchor, depth = generate_cod_sample_indices(
            shifted.numel(), shifted, self.num_depths, self.down_sample_ratio, self.down_sample_ratio_min,
            document_ids=document_ids, max_anchors=self.max_anchors,
            seed=derive_seed(self.seed, int(self._epoch[0]), index),
        )
        sample[COD_KEYS[0]], sample[COD_KEYS[1]] = anchor, depth
        return sample


def collate_with_cod_indices(collate_fn: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Wrap ``collate_fn`` so samples from :class:`CODIndexedDataset` become a batch with ``cod_indices``
    (a list of per-row ``(anchor_pos, depth)``) next to what ``collate_fn`` builds from the other keys."""

    def collate(samples: list[dict]) -> dict:
        cod = []
        rest = []
        for sample in samples:
            sample = dict(sample)
            cod.append((sample.pop(COD_KEYS[0]), sample.pop(COD_KEYS[1])))
            rest.append(sample)
        batch = collate_fn(rest)
        batch["cod_indices"] = cod
        return batch

    return collate
