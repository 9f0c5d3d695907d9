"""Resuming a run: which checkpoint, whether it fits this config, the data position and the LR schedule.

A resume is exact (the same weights, optimiser, schedule, every rank's RNG, data order and open log window as
the uninterrupted run) unless the step budget changed, which is announced. Checkpoints written by older
versions of this module resume the same way (their ``meta.json`` / ``config.yaml`` schema is unchanged; a run
from before the ``draft`` config section gets that section's defaults).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import yaml
from torch.utils.data import BatchSampler, DataLoader, Sampler

from eagle_ext._io import write_text
from eagle_ext.train.checkpoint import (
    RUN_CONFIG_FILE,
    list_checkpoints,
    read_checkpoint_meta,
    resolve_checkpoint,
)
from eagle_ext.train.config import ConfigError, RecipeConfig, config_to_dict, diff_configs
from eagle_ext.train.distributed import DistContext
from eagle_ext.train.optim import warmup_cosine
from eagle_ext.train.reporting import read_metrics

__all__ = ["RESUME_MAY_CHANGE", "SkippingBatchSampler", "resumable_loader", "set_epoch", "find_resume_checkpoint",
           "check_resume_compatible", "continue_schedule", "rewrite_log_until"]

RESUME_MAY_CHANGE = (
    "resume", "output_dir", "train.epochs", "train.max_steps", "train.log_every_steps", "train.eval_every_steps",
    "train.eval_batches", "train.eval_at_start", "train.progress", "train.tensorboard", "checkpoint", "data.num_workers", "data.cache_dir",
    "data.vocab_cache_path", "data.eval_path", "data.eval_split",
)

class SkippingBatchSampler(Sampler[list[int]]):
    """Batches of ``sampler`` with the first ``skip`` batches left out (a resumed epoch continues where the
    checkpoint stopped, without loading the skipped rows). The loop sets ``skip`` before each epoch; it is not
    reset by ``__iter__``, which DataLoader may call more than once per epoch."""

    def __init__(self, sampler: Sampler, batch_size: int):
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)
        self.skip = 0

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return len(self.batches)

def resumable_loader(loader: DataLoader) -> tuple[DataLoader, SkippingBatchSampler]:
    """The same data, order and workers as ``loader`` with a batch sampler that can skip a prefix."""
    batch_sampler = SkippingBatchSampler(loader.sampler, loader.batch_size)
    kwargs: dict[str, Any] = {"batch_sampler": batch_sampler, "collate_fn": loader.collate_fn,
                              "num_workers": loader.num_workers, "pin_memory": loader.pin_memory}
    if loader.num_workers > 0:
        kwargs["persistent_workers"] = loader.persistent_workers
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **kwargs), batch_sampler

def set_epoch(sampler: Sampler, epoch: int) -> None:
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)

def find_resume_checkpoint(cfg: RecipeConfig) -> str | None:
    """The checkpoint to resume from (``resume: auto`` finds the latest under ``output_dir``; ``None`` refuses a run
    directory that already holds checkpoints, so a fresh run never overwrites one by accident)."""
    checkpoints = os.path.join(cfg.output_dir, "checkpoints")
    if cfg.resume is None:
        if list_checkpoints(checkpoints):
            raise ConfigError(f"output_dir {cfg.output_dir!r} already holds checkpoints; set resume=auto to continue "
                              "that run, or choose another output_dir")
        return None
    if cfg.resume == "auto":
        try:
            return resolve_checkpoint(cfg.output_dir)
        except FileNotFoundError:
            return None
    return resolve_checkpoint(cfg.resume)

def check_resume_compatible(checkpoint: str, cfg: RecipeConfig, ctx: DistContext) -> dict:
    """The checkpoint's meta.json, after refusing (listing the differing fields) a checkpoint whose config or
    world size does not match this run."""
    meta = read_checkpoint_meta(checkpoint)
    with open(os.path.join(checkpoint, RUN_CONFIG_FILE)) as f:
        saved = yaml.safe_load(f)
    if isinstance(saved, dict) and "draft" not in saved:  # a run from before the draft section: its defaults
        saved["draft"] = config_to_dict(RecipeConfig())["draft"]
    differences = diff_configs(saved, config_to_dict(cfg), ignore=RESUME_MAY_CHANGE)
    if meta.get("world_size") != ctx.world_size:
        differences.append(f"world_size: {meta.get('world_size')!r} -> {ctx.world_size!r} (the data position is "
                           "per rank)")
    if differences:
        raise ConfigError(f"cannot resume from {checkpoint!r}: its run differs from this config in\n  "
                          + "\n  ".join(differences))
    return meta

def continue_schedule(meta: dict, step: int, total_steps: int, warmup: int, o, optimizer, scheduler,
                      ctx: DistContext) -> None:
    """A resumed run whose step budget changed (``train.max_steps`` or ``train.epochs``, which a resume may
    change) continues on the warmup-cosine schedule recomputed over the new budget, from the current step on (the
    LR of the next step included), and says so; the checkpoint's optimiser state is kept. Same budget: nothing
    changes (the resume stays exact)."""
    old_total, old_warmup = meta.get("total_steps"), meta.get("warmup_steps")
    if old_total is None or old_total == total_steps:
        return
    factor = warmup_cosine(step, warmup, total_steps, o.min_lr_ratio)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    was = o.lr * warmup_cosine(step, old_warmup if old_warmup is not None else warmup, old_total, o.min_lr_ratio)
    if ctx.is_main:
        print(f"resume: the step budget changed from {old_total} to {total_steps} steps (train.max_steps / "
              f"train.epochs); the LR schedule continues recomputed over {total_steps} steps (warmup {warmup}): "
              f"LR of step {step + 1} is {o.lr * factor:.3g} (it was {was:.3g} on the {old_total}-step schedule)",
              flush=True)


def rewrite_log_until(path: str, step: int) -> None:
    """Drop records after ``step`` (logged by a run that died before its next checkpoint) from a metrics log."""
    if not os.path.isfile(path):
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
