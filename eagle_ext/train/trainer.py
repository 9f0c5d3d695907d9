"""The recipe's trainer, one object for EAGLE-3 and P-EAGLE (what differs is the algorithm's strategy,
:mod:`eagle_ext.algorithms`): :meth:`Trainer.setup` builds everything and returns the :class:`RunState`, then
:func:`eagle_ext.train.loop.run_training` drives :meth:`Trainer.train_step` (one micro-batch),
:meth:`Trainer.optimizer_step`, :meth:`Trainer.evaluate` and :meth:`Trainer.save`.

Setup, in the order it runs (the order is part of exact resume: it fixes what each RNG draws):

1. resume check (``resume: auto | PATH``; before anything loads), seeds, ``config.yaml``;
2. the target's config (or the offline cache's), aux layers, what the config contradicts in it, the warm start;
3. tokenizer and train / eval dataloaders (sharded over ranks), the draft vocabulary (cached, all-reduced counts);
4. the frozen target (replicated, or FSDP2-sharded per decoder layer) and its capture wrapper;
5. the draft (sized from the target config, embeddings copied, vocab mapping set) in the algorithm's trainer
   module, in DistributedDataParallel when world > 1; AdamW (fused on CUDA) with warmup + cosine;
6. resume: weights, optimiser, scheduler, every rank's RNG, the data position and the open log window.

A step: micro-batches with ``no_sync`` on all but the last of each accumulation window (a trailing partial
window is rescaled), clipping, optimiser and scheduler steps. Metrics are reduced across ranks from counts (sums
of hits, valid positions, micro-batch losses), never as a mean of per-rank means.

Host syncs: what feeds Python control flow in the step is read from the collated (host) batch, never from a
device copy, which could only be read back after every queued kernel (the target forward) has run: the trainer
module gets the host ``seq_lens`` (document ids -> the lean attention's chunk plan), the target forward the
device copy; P-EAGLE builds its plan from host copies of the masks (its strategy).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer

from eagle_ext._io import write_text
from eagle_ext.algorithms import Algorithm, get_algorithm
from eagle_ext.data import load_or_build_eagle3_token_mapping, tokenizer_special_ids
from eagle_ext.models import TargetCapture
from eagle_ext.ops._transfer import to_device_async
from eagle_ext.train import builders
from eagle_ext.train.checkpoint import (
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_checkpoint,
)
from eagle_ext.train.config import ConfigError, RecipeConfig, config_to_yaml
from eagle_ext.train.distributed import DistContext, all_gather_objects, shard_target_fsdp
from eagle_ext.train.optim import build_optimizer
from eagle_ext.train.reporting import MetricsLog
from eagle_ext.train.resume import (
    check_resume_compatible,
    continue_schedule,
    find_resume_checkpoint,
    resumable_loader,
    rewrite_log_until,
    set_epoch,
)
from eagle_ext.train.target_checks import check_target_for_run, resolve_aux_layer_ids

__all__ = ["Trainer", "RunState", "MetricWindow", "to_device", "host_seq_lens", "weights_digest"]


@dataclass
class RunState:
    """Where a run is: optimiser steps, the epoch and the micro-batches of it consumed, the open accumulation
    and log windows, and what the run has produced so far."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # micro-batches of this epoch already trained (the data position a checkpoint keeps)
    pending: int = 0  # micro-batches in the open accumulation window
    clock: float = 0.0  # perf_counter origin of the open log window
    last_checkpoint: str | None = None
    last_train: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)


class MetricWindow:
    """Sums over micro-batches, kept on the device (no host sync per step) and reduced across ranks as counts.
    What an algorithm counts and reports comes from its strategy (``metric_counts`` / ``summarize``)."""

    def __init__(self, algorithm: Algorithm, width: int, device: torch.device):
        self.algorithm, self.width, self.device = algorithm, width, device
        # [loss_sum, micro_batches, correct, valid, tokens, *hits[width], *valid_k[width]]
        self.sums = torch.zeros(5 + 2 * width, dtype=torch.float64, device=device)

    def add(self, metrics: Any, tokens: torch.Tensor) -> None:
        s, w = self.sums, self.width
        correct, valid, hits, valid_k = self.algorithm.metric_counts(metrics)
        s[0] += metrics.loss.detach().double()
        s[1] += 1
        s[2] += correct
        s[3] += valid
        s[5:5 + w] += hits
        s[5 + w:] += valid_k
        s[4] += tokens.double()

    def restore(self, saved: dict | None, ctx: DistContext) -> float:
        """Load this rank's sums of a checkpoint's open window (``meta.json`` ``metric_window``); returns the
        seconds that window had run (0 when the checkpoint has none or another shape)."""
        if not saved:
            return 0.0
        sums = saved.get("sums") or []
        if len(sums) != ctx.world_size or len(sums[ctx.rank]) != self.sums.numel():
            return 0.0
        self.sums.copy_(torch.tensor(sums[ctx.rank], dtype=torch.float64))
        return float(saved.get("seconds", 0.0))

    def reduce(self, ctx: DistContext) -> dict[str, Any]:
        """Sum over ranks, then loss (mean over micro-batches of all ranks), accuracy, the algorithm's own fields
        (tau_sim, per-depth accuracy) and the token count; resets the window."""
        sums = self.sums.clone()
        if ctx.distributed:
            torch.distributed.all_reduce(sums)
        self.sums.zero_()
        s = sums.cpu().tolist()
        w = self.width
        out: dict[str, Any] = {
            "loss": s[0] / max(s[1], 1.0),
            "accuracy": s[2] / max(s[3], 1.0),
            "valid_tokens": int(s[3]),
            "tokens": int(s[4]),
        }
        out.update(self.algorithm.summarize(s[5:5 + w], s[5 + w:]))
        return out


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device``; host-to-CUDA copies go through pinned memory (asynchronous)."""
    return {k: to_device_async(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def host_seq_lens(batch: dict) -> torch.Tensor | None:
    """The collated batch's ``seq_lens`` when it is a host tensor (what the trainer module reads without a sync)."""
    seq_lens = batch.get("seq_lens")
    return seq_lens if isinstance(seq_lens, torch.Tensor) and seq_lens.device.type == "cpu" else None


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the module's parameters and buffers, bit for bit (to compare DDP replicas)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _TensorBoard:
    """Scalars of each metrics record under ``split/key`` (a no-op without a log directory)."""

    def __init__(self, log_dir: str | None):
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: the [tensorboard] extra
        except (ImportError, ModuleNotFoundError):
            return
        self.writer = SummaryWriter(log_dir)

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        split, step = record["split"], record["step"]
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                self.writer.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """One training run of ``cfg`` on this rank (see the module docstring)."""

    def __init__(self, cfg: RecipeConfig, ctx: DistContext):
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        self.algorithm = get_algorithm(cfg.algorithm)
        self.show = cfg.train.progress and ctx.is_main
        self.log = self.board = self.bar = None

    def say(self, message: str) -> None:
        """Print on the main rank."""
        if self.ctx.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> RunState:
        """Build data, models, optimiser and logs; restore a checkpoint when resuming. Returns the run's state.

        Raises:
            ConfigError: an incompatible resume checkpoint or a config the loaded models contradict (e.g. aux layer
                ids beyond the target's depth, a mask token outside its vocabulary).
        """
        resume_from = self._check_resume()
        seed = self.cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        os.makedirs(self.cfg.output_dir, exist_ok=True)
        if self.ctx.is_main:
            write_text(os.path.join(self.cfg.output_dir, "config.yaml"), config_to_yaml(self.cfg))
        self._read_target_config()
        # a warm start (a fresh run only) is checked against the run before any data is read or model loads
        warm = (builders.load_init_draft(self.cfg, self.text_config, self.aux_layer_ids)
                if self.cfg.init_from is not None and resume_from is None else None)
        self._build_data()
        resume_state = load_training_state(resume_from, rank=self.ctx.rank) if resume_from is not None else None
        self._build_vocabulary(resume_state, warm)
        self._build_models(warm, fresh=resume_state is None)
        self._build_optimizer()
        state = RunState(last_checkpoint=resume_from)
        if resume_state is not None:
            self._restore(resume_state, resume_from, state)
        self._open_logs(resume_from, state)
        return state

    def _check_resume(self) -> str | None:
        """The checkpoint this run resumes (None: a fresh run), checked before anything loads."""
        cfg = self.cfg
        resume_from = find_resume_checkpoint(cfg)
        self.saved_meta: dict[str, Any] = {}
        if resume_from is not None:
            self.saved_meta = check_resume_compatible(resume_from, cfg, self.ctx)
            if cfg.train.max_steps is not None and cfg.train.max_steps < self.saved_meta.get("step", 0):
                raise ConfigError(f"train.max_steps must be >= the step of the checkpoint it resumes ("
                                  f"{self.saved_meta['step']}, {resume_from}), got {cfg.train.max_steps}; raise it "
                                  "to train further, or export that checkpoint (eagle-ext export)")
        return resume_from

    def _read_target_config(self) -> None:
        """The target's config (from the offline cache when training from one), aux layers, and what this config
        contradicts in it."""
        cfg, t, cache = self.cfg, self.cfg.target, self.cfg.data.cached_target_path
        self.manifest = None
        if cache is not None:
            from eagle_ext.offline import load_cached_target_config, read_cache_manifest

            self.manifest = read_cache_manifest(cache)
            self.target_config = load_cached_target_config(cache)
            self.target_name = self.manifest["target_model"]
        else:
            self.target_config = AutoConfig.from_pretrained(t.name_or_path, trust_remote_code=t.trust_remote_code)
            self.target_name = t.name_or_path
        text = getattr(self.target_config, "get_text_config", lambda: self.target_config)()
        self.text_config, self.vocab_size, self.num_layers = text, int(text.vocab_size), int(text.num_hidden_layers)
        cached_ids = self.manifest["aux_layer_ids"] if self.manifest is not None else None
        self.aux_layer_ids = resolve_aux_layer_ids(cfg, self.num_layers, cached_ids)
        check_target_for_run(cfg, self.target_config)  # mask token, draft vocabulary, packing, draft shape, RoPE

    def _build_data(self) -> None:
        cfg, ctx, t = self.cfg, self.ctx, self.cfg.target
        self.tokenizer = None
        if self.manifest is not None:
            self.train_loader, self.eval_loader = builders.build_cached_loaders(
                cfg, ctx, self.manifest, self.vocab_size, self.aux_layer_ids, int(self.text_config.hidden_size),
                show_progress=self.show)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(t.tokenizer or t.name_or_path,
                                                           trust_remote_code=t.trust_remote_code)
            self.train_loader, self.eval_loader = builders.build_loaders(cfg, self.tokenizer, ctx,
                                                                         show_progress=self.show)

    def _build_vocabulary(self, resume_state: dict | None, warm: tuple | None) -> None:
        """The draft vocabulary: the checkpoint's, the cache's, the warm start's, or counted over the data."""
        cfg, cache = self.cfg, self.cfg.data.cached_target_path
        if resume_state is not None:
            ids, mask = resume_state["selected_token_ids"], resume_state["selected_token_mask"]
        elif cache is not None:
            from eagle_ext.offline import load_cached_token_mapping

            ids, mask = load_cached_token_mapping(cache)
            if warm is not None:  # the cache's supervision is in its own vocabulary order: the head rows follow it
                builders.check_same_vocabulary(warm[1], ids, cfg.init_from, f"the offline cache {cache!r}")
        elif warm is not None:  # the warm start keeps the vocabulary its head was trained on
            ids, mask = warm[1], warm[2]
        else:
            ids, mask = load_or_build_eagle3_token_mapping(
                self.train_loader, self.vocab_size, cfg.data.draft_vocab_size, tokenizer_special_ids(self.tokenizer),
                cache_path=cfg.data.vocab_cache_path or os.path.join(cfg.output_dir, "draft_vocab.safetensors"),
                show_progress=self.show,
            )
        self.selected_ids, self.selected_mask = ids, mask
        self.draft_vocab = int(ids.numel())

    def _build_models(self, warm: tuple | None, *, fresh: bool) -> None:
        """Target (and its capture), draft, and the algorithm's trainer module (in DDP when distributed)."""
        cfg, ctx, t, device = self.cfg, self.ctx, self.cfg.target, self.device
        if self.manifest is not None:  # the cache holds the target's outputs and its input embeddings: no target
            from eagle_ext.offline import load_cached_embeddings

            hf_target, self.target, embeddings = None, None, load_cached_embeddings(cfg.data.cached_target_path)
        else:
            hf_target = builders.load_target(cfg, torch.device("cpu") if t.sharding == "fsdp" else device)
            embeddings = hf_target
        torch.manual_seed(cfg.train.seed)  # the draft's initial weights depend on the seed only (equal on every rank)
        vd = self.draft_vocab
        self.draft = draft = builders.build_draft(cfg, self.target_config, vd if vd < self.vocab_size else None)
        draft.copy_embeddings_from(embeddings)
        draft.set_vocab_mapping(self.selected_ids)
        del embeddings
        if warm is not None:
            builders.load_warm_weights(draft, warm[0], warm[1], self.selected_ids, cfg.init_from)
            self.say(f"init_from: draft weights and vocabulary from {cfg.init_from} (fresh optimiser and schedule)")
        elif self.algorithm.init_head_from_target(cfg) and fresh:
            builders.init_head_from_target(draft, hf_target, self.selected_ids)
        if hf_target is not None:
            if t.sharding == "fsdp":
                if not ctx.distributed:
                    raise ConfigError("target.sharding: fsdp needs several processes (launch with torchrun)")
                shard_target_fsdp(hf_target, ctx)
            hf_target.to(device)
            self.target = TargetCapture(hf_target, aux_layer_ids=self.aux_layer_ids)
        draft.to(device)
        self.generator = self.algorithm.make_generator(cfg.train.seed, ctx.rank)
        self.model = builders.build_trainer(cfg, draft, self.selected_ids.to(device), self.selected_mask.to(device),
                                            self.generator)
        self.module: torch.nn.Module = builders.wrap_ddp(self.model) if ctx.distributed else self.model

    def _build_optimizer(self) -> None:
        """The resumable loader over the train data, the step budget, AdamW and its warmup-cosine schedule."""
        cfg, o = self.cfg, self.cfg.optim
        self.accumulation = o.grad_accumulation_steps
        self.loader, self.skipper = resumable_loader(self.train_loader)
        self.batches_per_epoch = len(self.loader)
        steps_per_epoch = math.ceil(self.batches_per_epoch / self.accumulation)
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * steps_per_epoch
        self.warmup = max(1, int(o.warmup_ratio * self.total_steps)) if o.warmup_ratio > 0 else 0
        self.optimizer, self.scheduler = build_optimizer(
            self.model.parameters(), o.lr, self.total_steps, warmup_steps=self.warmup, weight_decay=o.weight_decay,
            min_ratio=o.min_lr_ratio, betas=tuple(o.betas), fused=True if self.device.type == "cuda" else None,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.generators = {"cod": self.generator} if self.generator is not None else {}

    def _restore(self, resume_state: dict, resume_from: str, state: RunState) -> None:
        """Weights, optimiser, scheduler, RNG and data position of the checkpoint (a changed budget is announced)."""
        self.draft.load_state_dict({k: v.to(self.device) for k, v in resume_state["draft_state"].items()}, strict=True)
        self.optimizer.load_state_dict(resume_state["optimizer"])
        self.scheduler.load_state_dict(resume_state["scheduler"])
        restore_rng_state(resume_state["rng"], self.generators)
        meta = self.saved_meta = resume_state["meta"]
        state.step, state.epoch, state.consumed = meta["step"], meta["epoch"], meta["batches_in_epoch"]
        self.say(f"resumed from {resume_from} (step {state.step}, epoch {state.epoch}, {state.consumed} batches into it)")
        continue_schedule(meta, state.step, self.total_steps, self.warmup, self.cfg.optim, self.optimizer,
                          self.scheduler, self.ctx)

    def _open_logs(self, resume_from: str | None, state: RunState) -> None:
        """The run summary line, the metric window (the interrupted run's open one, so log lines fall on the same
        steps and cover the same micro-batches as in an uninterrupted run), the metrics log, tensorboard, the bar."""
        cfg, ctx = self.cfg, self.ctx
        n_trainable = sum(p.numel() for p in self.params)
        n_frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        self.say(f"{cfg.algorithm}: draft {n_trainable:,} trainable / {n_frozen:,} frozen parameters; "
                 f"{self.batches_per_epoch} micro-batches per epoch per rank x {ctx.world_size} rank(s); "
                 f"{self.total_steps} optimiser steps (accumulation {self.accumulation}); device {self.device}")
        self.window = MetricWindow(self.algorithm, self.algorithm.depth(cfg), self.device)
        self.window_seconds = self.window.restore(self.saved_meta.get("metric_window"), ctx)
        metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
        if ctx.is_main and resume_from is not None:
            rewrite_log_until(metrics_path, state.step)
        self.log = MetricsLog(metrics_path, append=resume_from is not None) if ctx.is_main else None
        board_dir = os.path.join(cfg.output_dir, "tensorboard") if cfg.train.tensorboard and ctx.is_main else None
        self.board = _TensorBoard(board_dir)
        self.checkpoint_dir = os.path.join(cfg.output_dir, "checkpoints")
        self.config_yaml = config_to_yaml(cfg)
        self.bar = tqdm(total=self.total_steps, initial=state.step, desc=f"train {cfg.algorithm}", unit="step",
                        disable=not self.show, dynamic_ncols=True)
        self.model.train()

    # ------------------------------------------------------------------------------------------ steps

    def autocast(self):
        """The forward's autocast context (``train.autocast``; auto: bf16 on CUDA, none on CPU)."""
        mode = self.cfg.train.autocast
        if mode == "auto":
            mode = "bf16" if self.device.type == "cuda" else "none"
        if mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)  # fp16 is refused by the config

    def capture(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """``(trainer inputs, real-token count)`` of a collated batch: the target's capture on the device (or the
        cached batch as it is), with the host ``seq_lens``."""
        seq_lens = host_seq_lens(batch)
        batch = to_device(batch, self.device)
        tokens = batch["attention_mask"].sum()
        if self.target is None:  # cached: the batch already holds the trainer's inputs
            inputs = batch
        else:
            with torch.no_grad():
                inputs = self.target.generate_batch(**batch).to_trainer_inputs()
        if seq_lens is not None and "seq_lens" in inputs:
            inputs["seq_lens"] = seq_lens
        return inputs, tokens

    def epoch_batches(self, state: RunState):
        """This epoch's remaining micro-batches (a resumed epoch skips those its checkpoint had consumed)."""
        set_epoch(self.loader.batch_sampler.batches.sampler, state.epoch)
        self.skipper.skip = state.consumed
        return self.loader

    def train_step(self, batch: dict, state: RunState) -> bool:
        """Forward and backward of one micro-batch (gradients all-reduced only on the last micro-batch of an
        accumulation window: the DDP ``no_sync`` lives here); returns whether it closed the window."""
        closes = (state.consumed + 1) % self.accumulation == 0 or state.consumed + 1 == self.batches_per_epoch
        sync = contextlib.nullcontext() if closes or not self.ctx.distributed else self.module.no_sync()
        inputs, tokens = self.capture(batch)
        with sync:
            metrics = self.algorithm.train_step(self.module, self.model, batch, inputs,
                                                accumulation=self.accumulation, autocast=self.autocast)
        self.window.add(metrics, tokens)
        state.pending += 1
        state.consumed += 1
        return closes

    def optimizer_step(self, state: RunState) -> torch.Tensor | None:
        """Clip, step the optimiser and the schedule, advance the state; returns the gradient norm (None without
        clipping). The epoch's trailing partial window is rescaled: each of its losses was divided by the full
        accumulation."""
        if state.pending < self.accumulation:
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.accumulation / state.pending)
        max_norm = self.cfg.optim.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm) if max_norm > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.pending = 0
        state.step += 1
        self.end_epoch(state)
        self.bar.update(1)
        return grad_norm

    def end_epoch(self, state: RunState) -> None:
        """Roll over to the next epoch once every micro-batch of this one is consumed."""
        if state.consumed == self.batches_per_epoch:
            state.epoch, state.consumed = state.epoch + 1, 0

    def log_train(self, state: RunState, grad_norm: torch.Tensor | None) -> None:
        """Reduce the open window into a train record (log, tensorboard, the bar's postfix)."""
        now = time.perf_counter()
        record = self.window.reduce(self.ctx)
        record.update(tokens_per_s=record["tokens"] / max(now - state.clock, 1e-9),
                      lr=self.scheduler.get_last_lr()[0])
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        state.clock = now
        state.last_train = record
        self.emit({"phase": self.cfg.algorithm, "split": "train", "step": state.step, "epoch": state.epoch, **record})
        post = {"loss": f"{record['loss']:.3f}", "acc": f"{record['accuracy']:.3f}"}
        if "tau_sim" in record:
            post["tau"] = f"{record['tau_sim']:.2f}"
        post.update(tok_s=f"{record['tokens_per_s']:.0f}", lr=f"{record['lr']:.2e}")
        self.bar.set_postfix(post)

    def emit(self, record: dict) -> None:
        if self.log is not None:
            self.log.write(record)
            self.board.write(record)

    def evaluate(self, state: RunState) -> dict[str, Any]:
        """Metrics over the eval set (``train.eval_batches`` caps it), logged; ``{}`` without an eval set."""
        if self.eval_loader is None:
            return {}
        window = MetricWindow(self.algorithm, self.algorithm.depth(self.cfg), self.device)
        self.model.eval()
        with torch.no_grad(), self.autocast():
            for i, batch in enumerate(self.eval_loader):
                if self.cfg.train.eval_batches is not None and i >= self.cfg.train.eval_batches:
                    break
                inputs, tokens = self.capture(batch)
                window.add(self.algorithm.eval_step(self.model, inputs), tokens)
        self.model.train()
        result = window.reduce(self.ctx)
        self.emit({"phase": self.cfg.algorithm, "split": "eval", "step": state.step, "epoch": state.epoch, **result})
        return result

    # ------------------------------------------------------------------------------------------ state

    def run_meta(self, state: RunState) -> dict[str, Any]:
        """The checkpoint's meta.json (less the step and format version) at this point of the run; its
        algorithm fields (depth, mask token) come from the strategy."""
        text = self.text_config
        return {
            "epoch": state.epoch, "batches_in_epoch": state.consumed, "world_size": self.ctx.world_size,
            "algorithm": self.cfg.algorithm, "aux_layer_ids": self.aux_layer_ids,
            "target": {"name_or_path": self.target_name, "model_type": getattr(text, "model_type", None),
                       "num_hidden_layers": self.num_layers, "hidden_size": int(text.hidden_size),
                       "vocab_size": self.vocab_size},
            "draft_vocab_size": self.draft_vocab,
            **self.algorithm.checkpoint_meta(self.cfg),
            "total_steps": self.total_steps, "warmup_steps": self.warmup,
        }

    def state_dict(self, state: RunState) -> dict[str, Any]:
        """What a checkpoint holds (the keyword arguments of ``save_training_checkpoint``). A collective: every
        rank calls it (RNG states, open metric windows and weight digests are gathered from all ranks)."""
        ctx = self.ctx
        rng_states = all_gather_objects(capture_rng_state(self.generators), ctx)
        open_window = {"sums": all_gather_objects(self.window.sums.cpu().tolist(), ctx),
                       "seconds": time.perf_counter() - state.clock}
        digests = all_gather_objects(weights_digest(self.draft), ctx)
        if len(set(digests)) > 1:
            warnings.warn(f"draft weights differ across ranks at step {state.step} (digests {digests}); DDP replicas "
                          "diverged", RuntimeWarning, stacklevel=1)
        meta = {"rank_weight_digests": digests, **self.run_meta(state), "metric_window": open_window}
        return {"step": state.step, "draft": self.draft, "selected_token_ids": self.selected_ids,
                "selected_token_mask": self.selected_mask, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "rng_states": rng_states, "meta": meta, "config_yaml": self.config_yaml}

    def save(self, state: RunState) -> str:
        """Write a checkpoint of this step (main rank; every rank joins); returns its directory."""
        content = self.state_dict(state)
        path = None
        if self.ctx.is_main:
            path = save_training_checkpoint(self.checkpoint_dir, keep=self.cfg.checkpoint.keep, **content)
        if self.ctx.distributed:
            torch.distributed.barrier()
        return path or os.path.join(self.checkpoint_dir, f"step_{state.step:08d}")

    def export(self, state: RunState) -> dict[str, str]:
        """The end-of-run exports (``checkpoint.export_formats``; main rank): ``{format: directory}``."""
        exports: dict[str, str] = {}
        if not (self.ctx.is_main and self.cfg.checkpoint.export_formats):
            return exports
        from eagle_ext.serve.export import (
            export_trained_draft,  # serving sits beside the recipe, loaded on demand
        )

        for fmt in self.cfg.checkpoint.export_formats:
            exports[fmt] = export_trained_draft(self.draft, {"step": state.step, **self.run_meta(state)},
                                                os.path.join(self.cfg.output_dir, "export", fmt), format=fmt,
                                                checkpoint=state.last_checkpoint)
            self.say(f"exported {fmt}: {exports[fmt]}")
        return exports

    def close(self) -> None:
        """Close the bar, the metrics log and tensorboard."""
        for thing in (self.bar, self.log, self.board):
            if thing is not None:
                thing.close()
