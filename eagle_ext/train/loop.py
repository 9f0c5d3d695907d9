"""The training recipe: one loop for EAGLE-3 and P-EAGLE, single process or under torchrun.

In the order it runs (:func:`run_training`):

1. process group and device (:mod:`eagle_ext.train.distributed`), seeds;
2. tokenizer, train / eval dataloaders (sharded over ranks), the draft vocabulary (cached, all-reduced counts);
3. the frozen target (replicated, or FSDP2-sharded per decoder layer) and its capture wrapper;
4. the draft (sized from the target config, embeddings copied, vocab mapping set) in its trainer module, in
   DistributedDataParallel when world > 1; AdamW (fused on CUDA) with warmup + cosine;
5. resume (``resume: auto | PATH``): weights, optimiser, scheduler, every rank's RNG and the data position, after
   checking the checkpoint's config against this one;
6. the loop: micro-batches with ``no_sync`` on all but the last of each accumulation window (a trailing partial
   window is rescaled), clipping, optimiser and scheduler steps; logging, eval and checkpoints on step
   boundaries; a final checkpoint and, when configured, exports.

Metrics are reduced across ranks from counts (sums of hits, valid positions, micro-batch losses), never as a
mean of per-rank means.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from eagle_ext._io import write_text
from eagle_ext.train.checkpoint import (
    capture_rng_state,
    list_checkpoints,
    load_training_state,
    resolve_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from eagle_ext.train.config import ConfigError, RecipeConfig, config_to_dict, config_to_yaml, diff_configs
from eagle_ext.train.distributed import DistContext, all_gather_objects, init_distributed, shard_target_fsdp
from eagle_ext.train.optim import build_optimizer
from eagle_ext.train.reporting import MetricsLog, read_metrics

__all__ = ["TrainResult", "run_training", "RESUME_MAY_CHANGE"]

#: config keys a resumed run may change; every other difference makes the checkpoint incompatible
RESUME_MAY_CHANGE = (
    "resume", "output_dir", "train.epochs", "train.max_steps", "train.log_every_steps", "train.eval_every_steps",
    "train.eval_batches", "train.eval_at_start", "train.progress", "train.tensorboard", "checkpoint", "data.num_workers", "data.cache_dir",
    "data.vocab_cache_path", "data.eval_path", "data.eval_split",
)


@dataclass
class TrainResult:
    """What a run ends with: the final ``step``, the last checkpoint, exports, and the last train / eval metrics."""

    step: int
    checkpoint: str | None
    exports: dict[str, str] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data position


class _SkippingBatchSampler(Sampler[list[int]]):
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


def _resumable(loader: DataLoader) -> tuple[DataLoader, _SkippingBatchSampler]:
    """The same data, order and workers as ``loader`` with a batch sampler that can skip a prefix."""
    batch_sampler = _SkippingBatchSampler(loader.sampler, loader.batch_size)
    kwargs: dict[str, Any] = {"batch_sampler": batch_sampler, "collate_fn": loader.collate_fn,
                              "num_workers": loader.num_workers, "pin_memory": loader.pin_memory}
    if loader.num_workers > 0:
        kwargs["persistent_workers"] = loader.persistent_workers
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **kwargs), batch_sampler


def _set_epoch(sampler: Sampler, epoch: int) -> None:
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


# ---------------------------------------------------------------------------------------------- metrics


class MetricWindow:
    """Sums over micro-batches, kept on the device (no host sync per step) and reduced across ranks as counts."""

    def __init__(self, algorithm: str, width: int, device: torch.device):
        self.algorithm, self.width, self.device = algorithm, width, device
        # [loss_sum, micro_batches, correct, valid, tokens, *hits[width], *valid_k[width]]
        self.sums = torch.zeros(5 + 2 * width, dtype=torch.float64, device=device)

    def add(self, metrics: Any, tokens: torch.Tensor) -> None:
        s = self.sums
        s[0] += metrics.loss.detach().double()
        s[1] += 1
        if self.algorithm == "eagle3":
            s[2] += (metrics.accuracy.double() * metrics.valid_tokens.double()).round()
            s[3] += metrics.valid_tokens.double()
            s[5:5 + self.width] += metrics.step_prefix_hits.double()
            s[5 + self.width:] += metrics.step_valid.double()
        else:
            s[2] += metrics.depth_correct.sum().double()
            s[3] += metrics.depth_valid.sum().double()
            s[5:5 + self.width] += metrics.depth_correct.double()
            s[5 + self.width:] += metrics.depth_valid.double()
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
        """Sum over ranks, then loss (mean over micro-batches of all ranks), accuracy, tau_sim or per-depth
        accuracy, and the token count; resets the window."""
        from eagle_ext.eagle3 import simulated_accept_length

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
        hits, valid = s[5:5 + w], s[5 + w:]
        if self.algorithm == "eagle3":
            out["tau_sim"] = simulated_accept_length(hits, valid)
        else:
            out["depth_accuracy"] = [h / max(v, 1.0) for h, v in zip(hits, valid)]
        return out


# ---------------------------------------------------------------------------------------------- pieces


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _autocast(cfg: RecipeConfig, device: torch.device):
    mode = cfg.train.autocast
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)  # fp16 is refused by the config (no GradScaler)


def _to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device``; host-to-CUDA copies go through pinned memory (asynchronous)."""
    from eagle_ext.ops._transfer import to_device_async

    return {k: to_device_async(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# Host syncs: what feeds Python control flow in the step is read from the collated (host) batch, never from
# a device copy, which could only be read back after every queued kernel (the target forward) has run.
# - seq_lens: the trainer gets the host tensor (document ids -> the lean attention's chunk plan);
#   the target forward gets the device copy (its mask is built there, with device-side checks only).
# - P-EAGLE: the plan (COD sampling, segments, counts) is built from host copies of the shifted loss mask
#   and the attention mask.


def _host_seq_lens(batch: dict) -> torch.Tensor | None:
    seq_lens = batch.get("seq_lens")
    return seq_lens if isinstance(seq_lens, torch.Tensor) and seq_lens.device.type == "cpu" else None


def _host_plan_masks(batch: dict, *, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Host ``(loss_mask, attention_mask)`` of a collated batch in the trainer's frame: the loss mask shifted
    left by one like the target capture does (unless the batch is already in that frame, ``shifted``)."""
    from eagle_ext.eagle3 import shift_left_with_zero

    loss_mask, attention_mask = batch["loss_mask"].cpu(), batch["attention_mask"].cpu()
    return (loss_mask if shifted else shift_left_with_zero(loss_mask)), attention_mask


def wrap_ddp(trainer: torch.nn.Module) -> torch.nn.Module:
    """The trainer under DistributedDataParallel, as the recipe runs it.

    ``device_ids=None``: the batch is already on the device, and with device ids DDP copies every tensor
    argument there, host-side ``seq_lens`` included (which the draft would then have to read back: a sync).
    ``gradient_as_bucket_view=True``: gradients are views into the all-reduce buckets (no copy into and out
    of them, one gradient-sized buffer less). No buffer broadcast before each forward (the buffers, the
    vocabulary maps, are equal on every rank and never change): torch >= 2.13 names that ``forward_sync_buffers``
    and deprecates ``broadcast_buffers`` with a FutureWarning on every rank; older torch knows only the latter."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(trainer, device_ids=None, find_unused_parameters=False,
                                   gradient_as_bucket_view=True, **no_sync)


def _log_main(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        print(message, flush=True)


def _all_chains(inputs: dict, num_depths: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every COD chain at every depth (ratios 1): P-EAGLE's eval set, the same for every run and rank."""
    from eagle_ext.peagle import generate_cod_sample_indices

    length = inputs["loss_mask"].shape[1]
    return [
        generate_cod_sample_indices(length, loss.cpu(), num_depths, 1.0, 1.0,
                                    document_ids=torch.where(attention.cpu() != 0, 0, -1), seed=0)
        for loss, attention in zip(inputs["loss_mask"], inputs["attention_mask"])
    ]


def build_loaders(cfg: RecipeConfig, tokenizer, ctx: DistContext, *, show_progress: bool):
    """``(train_loader, eval_loader or None)`` from ``cfg.data`` (sharded over ranks when distributed)."""
    from eagle_ext.data import build_eagle3_dataloader

    d = cfg.data
    common = {
        "seq_length": d.seq_length, "batch_size": cfg.train.micro_batch_size, "num_workers": d.num_workers,
        "distributed": ctx.distributed, "shuffle_seed": d.shuffle_seed,
        "mask_reasoning_content": d.mask_reasoning_content, "mask_generation_prompt": d.mask_generation_prompt,
        "packed_sequence_size": d.packed_sequence_size, "packing_strategy": d.packing_strategy,
        "chat_template": d.chat_template, "cache_dir": d.cache_dir or os.path.join(cfg.output_dir, "cache"),
        "show_progress": show_progress,
    }
    train = build_eagle3_dataloader(d.train_path, tokenizer, shuffle=d.shuffle, split=d.train_split, **common)
    evaluation = None
    if d.eval_path is not None:
        evaluation = build_eagle3_dataloader(d.eval_path, tokenizer, shuffle=False, split=d.eval_split, **common)
    return train, evaluation


def build_cached_loaders(cfg: RecipeConfig, ctx: DistContext, manifest: dict, vocab_size: int, aux_layer_ids: list[int],
                         hidden_size: int, *, show_progress: bool):
    """``(train_loader, eval_loader or None)`` over offline caches (``data.cached_target_path``, and
    ``data.eval_path`` when it names a cache too), after refusing a cache made for another configuration.

    Raises:
        ConfigError: the cache's manifest disagrees with the config (every differing field listed).
    """
    from eagle_ext.offline import build_cached_dataloader, check_cache_compatible, read_cache_manifest

    d = cfg.data
    caches = {"data.cached_target_path": (d.cached_target_path, manifest)}
    if d.eval_path is not None:
        caches["data.eval_path"] = (d.eval_path, read_cache_manifest(d.eval_path))
    for key, (path, found) in caches.items():
        try:
            check_cache_compatible(
                found, target_vocab_size=vocab_size, draft_vocab_size=d.draft_vocab_size or vocab_size,
                seq_length=d.seq_length, aux_layer_ids=aux_layer_ids, target_hidden_size=hidden_size,
                mask_reasoning_content=d.mask_reasoning_content, mask_generation_prompt=d.mask_generation_prompt,
                selected_token_ids=None if key == "data.cached_target_path" else manifest["selected_token_ids"],
            )
        except ValueError as exc:
            raise ConfigError(f"{key} {path!r} does not fit this config: {exc}") from exc
    common = {"batch_size": cfg.train.micro_batch_size, "distributed": ctx.distributed,
              "num_workers": d.num_workers, "show_progress": show_progress}
    train = build_cached_dataloader(d.cached_target_path, shuffle=d.shuffle, shuffle_seed=d.shuffle_seed, **common)
    evaluation = None
    if d.eval_path is not None:
        evaluation = build_cached_dataloader(d.eval_path, shuffle=False, **common)
    return train, evaluation


def load_target(cfg: RecipeConfig, device: torch.device):
    """The frozen HF causal LM (eval mode, no grads) on ``device`` (CPU first when it will be sharded)."""
    from transformers import AutoModelForCausalLM

    t = cfg.target
    from eagle_ext._hf import dtype_kwargs

    kwargs: dict[str, Any] = {**dtype_kwargs(_dtype(t.dtype, device)), "trust_remote_code": t.trust_remote_code}
    if t.attn_implementation is not None:
        kwargs["attn_implementation"] = t.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(t.name_or_path, **kwargs)
    model.requires_grad_(False)
    model.eval()
    return model


def build_draft(cfg: RecipeConfig, target_config, draft_vocab_size: int | None):
    """The draft sized from the target config (on the current default device, fp32)."""
    from eagle_ext.models import Eagle3DraftModel
    from eagle_ext.train.target_checks import draft_num_layers, draft_shape_kwargs

    if cfg.algorithm == "eagle3":
        e = cfg.eagle3
        return Eagle3DraftModel.from_target_config(
            target_config, draft_vocab_size, fc_norm=e.fc_norm, norm_output=e.norm_output,
            freeze_embeddings=e.freeze_embeddings, attn_implementation=e.attn_implementation, **draft_shape_kwargs(cfg),
        )
    p = cfg.peagle
    return Eagle3DraftModel.from_target_config(
        target_config, draft_vocab_size, num_hidden_layers=draft_num_layers(cfg), parallel_drafting=True,
        mask_token_id=p.mask_token_id, freeze_embeddings=p.freeze_embeddings, **draft_shape_kwargs(cfg),
    )


@torch.no_grad()
def init_head_from_target(draft, target: torch.nn.Module, selected_ids: torch.Tensor) -> None:
    """Start the draft's ``lm_head`` from the target's output rows of the draft vocabulary (``lm_head[i] =
    W_target[selected_ids[i]]``) and its final norm from the target's, so step 0 already predicts what the
    target's head would from a similar hidden state (a warm start; the seed recipe starts from random).

    Raises:
        ValueError: the target has no output embeddings, or their width differs from the draft's hidden size.
    """
    out = target.get_output_embeddings() if callable(getattr(target, "get_output_embeddings", None)) else None
    if out is None:
        raise ValueError(f"{type(target).__name__} has no output embeddings to initialise the draft's lm_head from")
    weight = out.weight.full_tensor() if hasattr(out.weight, "full_tensor") else out.weight
    head = draft.lm_head.weight
    if weight.shape[1] != head.shape[1]:
        raise ValueError(f"the target's output head is {list(weight.shape)}, the draft's lm_head needs width {head.shape[1]}")
    head.copy_(weight[selected_ids.to(weight.device)].to(device=head.device, dtype=head.dtype))
    norm = getattr(getattr(target, "model", None), "norm", None)
    if norm is not None and tuple(norm.weight.shape) == tuple(draft.model.norm.weight.shape):
        from eagle_ext.models.draft import effective_norm_weight  # Gemma's norms hold (gain - 1)

        draft.model.norm.weight.copy_(effective_norm_weight(norm, norm.weight.shape[0]).to(draft.model.norm.weight))


def load_init_draft(cfg: RecipeConfig, text_config, aux_layer_ids: list[int]):
    """The exported draft named by ``init_from``, checked against this run: ``(state_dict, selected_token_ids,
    selected_token_mask)`` with the export's vocabulary (ascending target ids, its ``lm_head`` row order).

    Raises:
        ConfigError: an export of the other algorithm, another target layout (vocab or hidden size), other aux
            layers, another P-EAGLE mask token, or an unreadable export (the message names ``init_from``).
    """
    from eagle_ext.serve.export import load_exported_draft

    path = cfg.init_from
    vocab_size, hidden = int(text_config.vocab_size), int(text_config.hidden_size)
    try:  # the embedding is the target's (re-attached below): a placeholder lets an export without one load
        exported = load_exported_draft(path, embed_tokens=torch.zeros(vocab_size, hidden))
    except (OSError, ValueError) as err:
        raise ConfigError(f"init_from {path!r} is not a loadable exported draft for this target: {err}") from None
    draft = exported.draft
    differences = []
    if exported.algorithm != cfg.algorithm:
        differences.append(f"algorithm {exported.algorithm!r} (this run: {cfg.algorithm!r})")
    if list(exported.aux_layer_ids) != list(aux_layer_ids):
        differences.append(f"aux layers {exported.aux_layer_ids} (this run: {aux_layer_ids})")
    if (int(draft.config.vocab_size), int(draft.config.hidden_size)) != (vocab_size, hidden):
        differences.append(f"target vocab / hidden size {draft.config.vocab_size} / {draft.config.hidden_size} "
                           f"(this target: {vocab_size} / {hidden})")
    if cfg.algorithm == "peagle" and exported.mask_token_id != cfg.peagle.mask_token_id:
        differences.append(f"mask_token_id {exported.mask_token_id} (this run: {cfg.peagle.mask_token_id})")
    vd = cfg.data.draft_vocab_size if cfg.data.draft_vocab_size is not None else vocab_size
    if int(draft.config.draft_vocab_size) != vd:
        differences.append(f"draft_vocab_size {draft.config.draft_vocab_size} (this run: {vd})")
    if differences:
        raise ConfigError(f"init_from {path!r} does not fit this run: " + "; ".join(differences))
    ids = torch.arange(vd)
    if draft.is_compressed:
        ids = ids + draft.d2t.to(torch.int64)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[ids] = True
    return draft.state_dict(), ids, mask


def _check_same_vocabulary(ids: torch.Tensor, other: torch.Tensor, path: str, what: str) -> None:
    a, b = set(ids.tolist()), set(other.tolist())
    if a != b:
        raise ConfigError(f"init_from {path!r} has another draft vocabulary than {what}: {len(a - b)} of its "
                          f"{len(a)} tokens are not in it")


_NOT_WARM_STARTED = ("model.embed_tokens.weight", "d2t", "t2d")  # the target's embedding; the run's vocab maps


@torch.no_grad()
def _load_warm_weights(draft, state: dict[str, torch.Tensor], warm_ids: torch.Tensor, run_ids: torch.Tensor,
                       path: str) -> None:
    """Copy an export's weights into the freshly built draft (all but the target's embedding and the vocabulary
    maps, which ``set_vocab_mapping`` already wrote for ``run_ids``); ``lm_head`` row i becomes the export's row
    of target token ``run_ids[i]`` (the same set as ``warm_ids``, possibly in another order)."""
    state = {k: v for k, v in state.items() if k not in _NOT_WARM_STARTED}
    if not torch.equal(warm_ids, run_ids):
        row_of = {int(t): i for i, t in enumerate(warm_ids.tolist())}
        state["lm_head.weight"] = state["lm_head.weight"][torch.tensor([row_of[int(t)] for t in run_ids.tolist()])]
    own = {k for k in draft.state_dict() if k not in _NOT_WARM_STARTED}
    missing, extra = sorted(own - set(state)), sorted(set(state) - own)
    if missing or extra:
        raise ConfigError(f"init_from {path!r} does not fit this run's draft (fc_norm / norm_output / layers): "
                          f"missing {missing}, unexpected {extra}")
    mine = draft.state_dict()
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(mine[name].shape):
            raise ConfigError(f"init_from {path!r}: {name} has shape {list(tensor.shape)}, this run's draft needs "
                              f"{list(mine[name].shape)}")
        mine[name].copy_(tensor)


def build_trainer(cfg: RecipeConfig, draft, selected_ids, selected_mask, generator: torch.Generator | None):
    if cfg.algorithm == "eagle3":
        from eagle_ext.eagle3 import Eagle3TrainerModule

        return Eagle3TrainerModule(draft, selected_token_ids=selected_ids, selected_token_mask=selected_mask,
                                   ttt_steps=cfg.eagle3.ttt_steps, loss_impl=cfg.train.loss_impl,
                                   step_decay=cfg.eagle3.step_decay)
    from eagle_ext.peagle import PEagleTrainerModule

    p = cfg.peagle
    return PEagleTrainerModule(
        draft, selected_token_ids=selected_ids, selected_token_mask=selected_mask, num_depths=p.num_depths,
        mask_token_id=p.mask_token_id, down_sample_ratio=p.down_sample_ratio,
        down_sample_ratio_min=p.down_sample_ratio_min, sequence_partitions=p.sequence_partitions,
        max_anchors=p.max_anchors, attention=p.attention, generator=generator,
    )


def _check_resume_compatible(checkpoint: str, cfg: RecipeConfig, ctx: DistContext) -> dict:
    """The checkpoint's meta.json, after refusing (listing the differing fields) a checkpoint whose config or
    world size does not match this run."""
    import yaml

    from eagle_ext.train.checkpoint import RUN_CONFIG_FILE, read_checkpoint_meta

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


def _continue_schedule(meta: dict, step: int, total_steps: int, warmup: int, o, optimizer, scheduler,
                       ctx: DistContext) -> None:
    """A resumed run whose step budget changed (``train.max_steps`` or ``train.epochs``, which a resume may
    change) continues on the warmup-cosine schedule recomputed over the new budget, from the current step on (the
    LR of the next step included), and says so; the checkpoint's optimiser state is kept. Same budget: nothing
    changes (the resume stays exact)."""
    from eagle_ext.train.optim import warmup_cosine

    old_total, old_warmup = meta.get("total_steps"), meta.get("warmup_steps")
    if old_total is None or old_total == total_steps:
        return
    factor = warmup_cosine(step, warmup, total_steps, o.min_lr_ratio)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    was = o.lr * warmup_cosine(step, old_warmup if old_warmup is not None else warmup, old_total, o.min_lr_ratio)
    _log_main(ctx, f"resume: the step budget changed from {old_total} to {total_steps} steps (train.max_steps / "
                   f"train.epochs); the LR schedule continues recomputed over {total_steps} steps (warmup {warmup}): "
                   f"LR of step {step + 1} is {o.lr * factor:.3g} (it was {was:.3g} on the {old_total}-step schedule)")


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


def _rewrite_log_until(path: str, step: int) -> None:
    """Drop records after ``step`` (logged by a run that died before its next checkpoint) from a metrics log."""
    import json

    if not os.path.isfile(path):
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the module's parameters and buffers, bit for bit (to compare DDP replicas)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _TensorBoard:
    def __init__(self, log_dir: str | None):
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
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


# ---------------------------------------------------------------------------------------------- the run


def run_training(cfg: RecipeConfig) -> TrainResult:
    """Train a draft as ``cfg`` says (see the module docstring). Call under torchrun for several processes.

    Raises:
        ConfigError: an incompatible resume checkpoint or a config the loaded models contradict (e.g. aux layer
            ids beyond the target's depth, a mask token outside its vocabulary).
    """
    from tqdm import tqdm

    from eagle_ext._progress import library_progress_bars

    ctx = init_distributed(cfg.train.device)
    try:
        with library_progress_bars(cfg.train.progress and ctx.is_main):
            result = _run(cfg, ctx, tqdm)
    except BaseException:
        if ctx.distributed and torch.distributed.is_initialized():  # no barrier: other ranks may never reach one
            torch.distributed.destroy_process_group()
        raise
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _run(cfg: RecipeConfig, ctx: DistContext, tqdm) -> TrainResult:
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    from eagle_ext.data import load_or_build_eagle3_token_mapping, tokenizer_special_ids
    from eagle_ext.models import Eagle3TargetModel
    from eagle_ext.train.target_checks import check_target_for_run, resolve_aux_layer_ids

    resume_from = find_resume_checkpoint(cfg)  # before anything loads: a wrong resume fails fast
    if resume_from is not None:
        saved_meta = _check_resume_compatible(resume_from, cfg, ctx)
        if cfg.train.max_steps is not None and cfg.train.max_steps < saved_meta.get("step", 0):
            raise ConfigError(f"train.max_steps must be >= the step of the checkpoint it resumes ("
                              f"{saved_meta['step']}, {resume_from}), got {cfg.train.max_steps}; raise it to train "
                              "further, or export that checkpoint (eagle-ext export)")
    device = ctx.device
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.makedirs(cfg.output_dir, exist_ok=True)
    if ctx.is_main:
        write_text(os.path.join(cfg.output_dir, "config.yaml"), config_to_yaml(cfg))
    show = cfg.train.progress and ctx.is_main

    # ---- data and vocabulary
    t = cfg.target
    cache = cfg.data.cached_target_path
    if cache is not None:
        from eagle_ext.offline import load_cached_target_config, read_cache_manifest

        manifest = read_cache_manifest(cache)
        target_config = load_cached_target_config(cache)
        target_name = manifest["target_model"]
    else:
        target_config = AutoConfig.from_pretrained(t.name_or_path, trust_remote_code=t.trust_remote_code)
        target_name = t.name_or_path
    text_config = getattr(target_config, "get_text_config", lambda: target_config)()
    vocab_size = int(text_config.vocab_size)
    num_layers = int(text_config.num_hidden_layers)
    aux_layer_ids = resolve_aux_layer_ids(cfg, num_layers, manifest["aux_layer_ids"] if cache is not None else None)
    if cfg.algorithm == "peagle" and cfg.peagle.mask_token_id >= vocab_size:
        raise ConfigError(f"peagle.mask_token_id must be < the target's vocab_size ({vocab_size}), got "
                          f"{cfg.peagle.mask_token_id}")
    if cfg.data.draft_vocab_size is not None and cfg.data.draft_vocab_size > vocab_size:
        raise ConfigError(f"data.draft_vocab_size must be <= the target's vocab_size ({vocab_size}), got "
                          f"{cfg.data.draft_vocab_size}")
    check_target_for_run(cfg, target_config)  # packing on hybrid targets, the draft's shape and RoPE
    # a warm start (a fresh run only) is checked against the run before any data is read or model loads
    warm = load_init_draft(cfg, text_config, aux_layer_ids) if cfg.init_from is not None and resume_from is None else None
    if cache is not None:
        train_loader, eval_loader = build_cached_loaders(cfg, ctx, manifest, vocab_size, aux_layer_ids,
                                                         int(text_config.hidden_size), show_progress=show)
    else:
        tokenizer = AutoTokenizer.from_pretrained(t.tokenizer or t.name_or_path, trust_remote_code=t.trust_remote_code)
        train_loader, eval_loader = build_loaders(cfg, tokenizer, ctx, show_progress=show)
    resume_state = load_training_state(resume_from, rank=ctx.rank) if resume_from is not None else None
    if resume_state is not None:
        selected_ids, selected_mask = resume_state["selected_token_ids"], resume_state["selected_token_mask"]
    elif cache is not None:
        from eagle_ext.offline import load_cached_token_mapping

        selected_ids, selected_mask = load_cached_token_mapping(cache)
        if warm is not None:  # the cache's supervision is in its own vocabulary order: the head rows follow it
            _check_same_vocabulary(warm[1], selected_ids, cfg.init_from, f"the offline cache {cache!r}")
    elif warm is not None:  # the warm start keeps the vocabulary its head was trained on
        selected_ids, selected_mask = warm[1], warm[2]
    else:
        selected_ids, selected_mask = load_or_build_eagle3_token_mapping(
            train_loader, vocab_size, cfg.data.draft_vocab_size, tokenizer_special_ids(tokenizer),
            cache_path=cfg.data.vocab_cache_path or os.path.join(cfg.output_dir, "draft_vocab.safetensors"),
            show_progress=show,
        )
    draft_vocab = int(selected_ids.numel())

    # ---- target, draft, trainer
    if cache is not None:  # the cache holds the target's outputs and its input embeddings: no target loads
        from eagle_ext.offline import load_cached_embeddings

        hf_target, target, embeddings = None, None, load_cached_embeddings(cache)
    else:
        hf_target = load_target(cfg, torch.device("cpu") if t.sharding == "fsdp" else device)
        embeddings = hf_target
    torch.manual_seed(seed)  # the draft's initial weights depend on the seed only (equal on every rank)
    draft = build_draft(cfg, target_config, draft_vocab if draft_vocab < vocab_size else None)
    draft.copy_embeddings_from(embeddings)
    draft.set_vocab_mapping(selected_ids)
    del embeddings
    if warm is not None:
        _load_warm_weights(draft, warm[0], warm[1], selected_ids, cfg.init_from)
        _log_main(ctx, f"init_from: draft weights and vocabulary from {cfg.init_from} (fresh optimiser and schedule)")
    elif (cfg.eagle3 if cfg.algorithm == "eagle3" else cfg.peagle).init_head_from_target and resume_state is None:
        init_head_from_target(draft, hf_target, selected_ids)
    if hf_target is not None:
        if t.sharding == "fsdp":
            if not ctx.distributed:
                raise ConfigError("target.sharding: fsdp needs several processes (launch with torchrun)")
            shard_target_fsdp(hf_target, ctx)
        hf_target.to(device)
        target = Eagle3TargetModel(hf_target, aux_layer_ids=aux_layer_ids)
    draft.to(device)
    generator = torch.Generator().manual_seed(seed * 1000003 + ctx.rank) if cfg.algorithm == "peagle" else None
    trainer = build_trainer(cfg, draft, selected_ids.to(device), selected_mask.to(device), generator)
    module: torch.nn.Module = trainer
    if ctx.distributed:
        module = wrap_ddp(trainer)

    # ---- optimiser and schedule
    o = cfg.optim
    accum = o.grad_accumulation_steps
    loader, skipper = _resumable(train_loader)
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * steps_per_epoch
    warmup = max(1, int(o.warmup_ratio * total_steps)) if o.warmup_ratio > 0 else 0
    optimizer, scheduler = build_optimizer(
        trainer.parameters(), o.lr, total_steps, warmup_steps=warmup, weight_decay=o.weight_decay,
        min_ratio=o.min_lr_ratio, betas=tuple(o.betas), fused=True if device.type == "cuda" else None,
    )
    params = [p for p in trainer.parameters() if p.requires_grad]

    step, epoch, consumed = 0, 0, 0
    generators = {"cod": generator} if generator is not None else {}
    resumed_meta: dict[str, Any] = {}
    if resume_state is not None:
        draft.load_state_dict({k: v.to(device) for k, v in resume_state["draft_state"].items()}, strict=True)
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        restore_rng_state(resume_state["rng"], generators)
        resumed_meta = meta = resume_state["meta"]
        step, epoch, consumed = meta["step"], meta["epoch"], meta["batches_in_epoch"]
        _log_main(ctx, f"resumed from {resume_from} (step {step}, epoch {epoch}, {consumed} batches into it)")
        _continue_schedule(meta, step, total_steps, warmup, o, optimizer, scheduler, ctx)
        del resume_state

    n_trainable = sum(p.numel() for p in params)
    n_frozen = sum(p.numel() for p in trainer.parameters() if not p.requires_grad)
    _log_main(ctx, f"{cfg.algorithm}: draft {n_trainable:,} trainable / {n_frozen:,} frozen parameters; "
                   f"{batches_per_epoch} micro-batches per epoch per rank x {ctx.world_size} rank(s); "
                   f"{total_steps} optimiser steps (accumulation {accum}); device {device}")

    width = cfg.eagle3.ttt_steps if cfg.algorithm == "eagle3" else cfg.peagle.num_depths
    window = MetricWindow(cfg.algorithm, width, device)
    # the open log window of the interrupted run (steps since its last log line), so log lines fall on the same
    # steps and cover the same micro-batches as in an uninterrupted run
    window_seconds = window.restore(resumed_meta.get("metric_window"), ctx)
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if ctx.is_main and resume_from is not None:
        _rewrite_log_until(metrics_path, step)
    log = MetricsLog(metrics_path, append=resume_from is not None) if ctx.is_main else None
    board = _TensorBoard(os.path.join(cfg.output_dir, "tensorboard") if cfg.train.tensorboard and ctx.is_main else None)
    checkpoint_dir = os.path.join(cfg.output_dir, "checkpoints")
    config_yaml = config_to_yaml(cfg)
    last_checkpoint: str | None = resume_from
    last_train: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}

    def emit(record: dict) -> None:
        if log is not None:
            log.write(record)
            board.write(record)

    def forward(batch: dict):
        host_seq_lens = _host_seq_lens(batch)
        batch = _to_device(batch, device)
        tokens = batch["attention_mask"].sum()
        if target is None:  # cached: the batch already holds the trainer's inputs
            inputs = batch
        else:
            with torch.no_grad():
                inputs = target.generate_batch(**batch).to_trainer_inputs()
        if host_seq_lens is not None and "seq_lens" in inputs:
            inputs["seq_lens"] = host_seq_lens
        return inputs, tokens

    def evaluate() -> dict:
        if eval_loader is None:
            return {}
        ev = MetricWindow(cfg.algorithm, width, device)
        trainer.eval()
        with torch.no_grad(), _autocast(cfg, device):
            for i, batch in enumerate(eval_loader):
                if cfg.train.eval_batches is not None and i >= cfg.train.eval_batches:
                    break
                inputs, tokens = forward(batch)
                extra = {} if cfg.algorithm == "eagle3" else {"cod_indices": _all_chains(inputs, width)}
                ev.add(trainer(**inputs, **extra), tokens)
        trainer.train()
        result = ev.reduce(ctx)
        emit({"phase": cfg.algorithm, "split": "eval", "step": step, "epoch": epoch, **result})
        return result

    def run_meta() -> dict:
        """The checkpoint's meta.json (less the step and format version) at this point of the run."""
        return {
            "epoch": epoch, "batches_in_epoch": consumed, "world_size": ctx.world_size,
            "algorithm": cfg.algorithm, "aux_layer_ids": aux_layer_ids,
            "target": {"name_or_path": target_name, "model_type": getattr(text_config, "model_type", None),
                       "num_hidden_layers": num_layers, "hidden_size": int(text_config.hidden_size),
                       "vocab_size": vocab_size},
            "draft_vocab_size": draft_vocab,
            "ttt_steps": cfg.eagle3.ttt_steps if cfg.algorithm == "eagle3" else None,
            "num_depths": cfg.peagle.num_depths if cfg.algorithm == "peagle" else None,
            "mask_token_id": cfg.peagle.mask_token_id if cfg.algorithm == "peagle" else None,
            "total_steps": total_steps, "warmup_steps": warmup,
        }

    def save() -> str:
        states = all_gather_objects(capture_rng_state(generators), ctx)
        open_window = {"sums": all_gather_objects(window.sums.cpu().tolist(), ctx),
                       "seconds": time.perf_counter() - clock}
        digests = all_gather_objects(_weights_digest(draft), ctx)
        if len(set(digests)) > 1:
            warnings.warn(f"draft weights differ across ranks at step {step} (digests {digests}); DDP replicas "
                          "diverged", RuntimeWarning, stacklevel=1)
        path = None
        if ctx.is_main:
            meta = {"rank_weight_digests": digests, **run_meta(), "metric_window": open_window}
            path = save_training_checkpoint(
                checkpoint_dir, step=step, draft=draft, selected_token_ids=selected_ids,
                selected_token_mask=selected_mask, optimizer=optimizer, scheduler=scheduler, rng_states=states,
                meta=meta, config_yaml=config_yaml, keep=cfg.checkpoint.keep,
            )
        if ctx.distributed:
            torch.distributed.barrier()
        return path or os.path.join(checkpoint_dir, f"step_{step:08d}")

    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.algorithm}", unit="step", disable=not show,
               dynamic_ncols=True)
    trainer.train()
    try:
        if cfg.train.eval_at_start and step == 0:
            evaluate()
        clock = time.perf_counter() - window_seconds
        while step < total_steps:
            _set_epoch(loader.batch_sampler.batches.sampler, epoch)
            skipper.skip = consumed
            pending = 0
            for index, batch in enumerate(loader, start=consumed):
                closes_window = (index + 1) % accum == 0 or index + 1 == batches_per_epoch
                sync = contextlib.nullcontext() if closes_window or not ctx.distributed else module.no_sync()
                if cfg.algorithm == "peagle":
                    plan_masks = _host_plan_masks(batch, shifted=target is None)
                inputs, tokens = forward(batch)
                with sync:
                    if cfg.algorithm == "eagle3":
                        with _autocast(cfg, device):
                            metrics = module(**inputs)
                        (metrics.loss / accum).backward()
                    else:
                        from eagle_ext.peagle import run_partitioned_step

                        plan = trainer.build_peagle_plan(*plan_masks, device=device)
                        with _autocast(cfg, device):
                            metrics = run_partitioned_step(module, plan, inputs, loss_scale=1.0 / accum)
                window.add(metrics, tokens)
                pending += 1
                consumed = index + 1
                if not closes_window:
                    continue
                if pending < accum:  # the epoch's trailing partial window: each loss was divided by accum
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(accum / pending)
                grad_norm = (torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm) if o.max_grad_norm > 0
                             else None)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                pending = 0
                step += 1
                if consumed == batches_per_epoch:
                    epoch, consumed = epoch + 1, 0
                bar.update(1)
                if step % cfg.train.log_every_steps == 0 or step == total_steps:
                    now = time.perf_counter()
                    record = window.reduce(ctx)
                    record.update(tokens_per_s=record["tokens"] / max(now - clock, 1e-9),
                                  lr=scheduler.get_last_lr()[0])
                    if grad_norm is not None:
                        record["grad_norm"] = float(grad_norm)
                    clock = now
                    last_train = record
                    emit({"phase": cfg.algorithm, "split": "train", "step": step, "epoch": epoch, **record})
                    post = {"loss": f"{record['loss']:.3f}", "acc": f"{record['accuracy']:.3f}"}
                    if "tau_sim" in record:
                        post["tau"] = f"{record['tau_sim']:.2f}"
                    post.update(tok_s=f"{record['tokens_per_s']:.0f}", lr=f"{record['lr']:.2e}")
                    bar.set_postfix(post)
                if cfg.train.eval_every_steps is not None and step % cfg.train.eval_every_steps == 0 and step < total_steps:
                    last_eval = evaluate()
                if cfg.checkpoint.every_steps is not None and step % cfg.checkpoint.every_steps == 0 and step < total_steps:
                    last_checkpoint = save()
                if step >= total_steps:
                    break
            else:
                if consumed == batches_per_epoch:  # loader ended exactly on a window close
                    epoch, consumed = epoch + 1, 0
                continue
            break
        bar.close()
        last_eval = evaluate() or last_eval
        if last_checkpoint is None or not last_checkpoint.endswith(f"step_{step:08d}"):
            last_checkpoint = save()
        exports: dict[str, str] = {}
        if ctx.is_main and cfg.checkpoint.export_formats:
            from eagle_ext.serve.export import export_trained_draft

            for fmt in cfg.checkpoint.export_formats:
                exports[fmt] = export_trained_draft(draft, {"step": step, **run_meta()},
                                                    os.path.join(cfg.output_dir, "export", fmt), format=fmt,
                                                    checkpoint=last_checkpoint)
                _log_main(ctx, f"exported {fmt}: {exports[fmt]}")
        return TrainResult(step=step, checkpoint=last_checkpoint, exports=exports, train_metrics=last_train,
                           eval_metrics=last_eval)
    finally:
        bar.close()
        if log is not None:
            log.close()
        board.close()
