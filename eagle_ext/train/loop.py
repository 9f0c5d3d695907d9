"""The training recipe: one loop for every algorithm, single process or under torchrun.

:func:`run_training` sets up the process group and a :class:`~eagle_ext.train.trainer.Trainer` (which builds
data, models and optimiser, and restores a checkpoint when resuming), then runs the loop below: micro-batches,
optimiser steps, and on step boundaries logging, eval and checkpoints; a final eval, checkpoint and, when
configured, exports. What differs between EAGLE-3 and P-EAGLE is the algorithm's strategy
(:mod:`eagle_ext.algorithms`), asked by the trainer; the loop never names an algorithm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from eagle_ext._progress import library_progress_bars
from eagle_ext.train.config import RecipeConfig
from eagle_ext.train.distributed import init_distributed
from eagle_ext.train.resume import RESUME_MAY_CHANGE
from eagle_ext.train.trainer import RunState, Trainer

__all__ = ["TrainResult", "run_training", "train_loop", "RESUME_MAY_CHANGE"]


@dataclass
class TrainResult:
    """What a run ends with: the final ``step``, the last checkpoint, exports, and the last train / eval metrics."""

    step: int
    checkpoint: str | None
    exports: dict[str, str] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)


def _every(step: int, period: int | None) -> bool:
    return period is not None and step % period == 0


def train_loop(trainer: Trainer, state: RunState) -> TrainResult:
    """Train from ``state`` to the step budget, then the final eval, checkpoint and exports."""
    cfg, total = trainer.cfg, trainer.total_steps
    if cfg.train.eval_at_start and state.step == 0:
        trainer.evaluate(state)
    state.clock = time.perf_counter() - trainer.window_seconds  # a resumed log window keeps its elapsed time
    while state.step < total:
        for batch in trainer.epoch_batches(state):
            if not trainer.train_step(batch, state):
                continue  # inside an accumulation window
            grad_norm = trainer.optimizer_step(state)
            if _every(state.step, cfg.train.log_every_steps) or state.step == total:
                trainer.log_train(state, grad_norm)
            if _every(state.step, cfg.train.eval_every_steps) and state.step < total:
                state.last_eval = trainer.evaluate(state)
            if _every(state.step, cfg.checkpoint.every_steps) and state.step < total:
                state.last_checkpoint = trainer.save(state)
            if state.step >= total:
                break
        trainer.end_epoch(state)  # a loader that ended exactly on a window close (or had nothing left)
    trainer.bar.close()
    state.last_eval = trainer.evaluate(state) or state.last_eval
    if state.last_checkpoint is None or not state.last_checkpoint.endswith(f"step_{state.step:08d}"):
        state.last_checkpoint = trainer.save(state)
    exports = trainer.export(state)
    return TrainResult(step=state.step, checkpoint=state.last_checkpoint, exports=exports,
                       train_metrics=state.last_train, eval_metrics=state.last_eval)


def _train(cfg: RecipeConfig, ctx) -> TrainResult:
    """Set up and run one Trainer. The trainer (its DDP draft, its possibly FSDP-sharded target, the loaders) is
    freed when this returns, so DDP / FSDP state is destroyed before its process group is, never at interpreter
    exit after it."""
    trainer = Trainer(cfg, ctx)
    try:
        return train_loop(trainer, trainer.setup())
    finally:
        trainer.close()


def run_training(cfg: RecipeConfig) -> TrainResult:
    """Train a draft as ``cfg`` says (see the module docstring). Call under torchrun for several processes.

    Raises:
        ConfigError: an incompatible resume checkpoint or a config the loaded models contradict (e.g. aux layer
            ids beyond the target's depth, a mask token outside its vocabulary).
    """
    ctx = init_distributed(cfg.train.device)
    try:
        with library_progress_bars(cfg.train.progress and ctx.is_main):
            result = _train(cfg, ctx)
    except BaseException:
        if ctx.distributed and torch.distributed.is_initialized():  # no barrier: other ranks may never reach one
            torch.distributed.destroy_process_group()
        raise
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result
