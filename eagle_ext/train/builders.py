"""The recipe's building blocks, each used once by :class:`eagle_ext.train.trainer.Trainer` (and by benchmarks
that time a bare loop): the dataloaders, the frozen target, the draft and its trainer module (both from the
algorithm's strategy), the warm start from an export, and the DDP wrapper.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from eagle_ext._hf import dtype_kwargs
from eagle_ext.algorithms import get_algorithm
from eagle_ext.data import build_dataloader
from eagle_ext.models.draft import effective_norm_weight
from eagle_ext.train.config import ConfigError, RecipeConfig
from eagle_ext.train.distributed import DistContext
from eagle_ext.train.target_checks import draft_shape_kwargs

__all__ = ["build_loaders", "build_cached_loaders", "resolve_dtype", "load_target", "build_draft",
           "init_head_from_target", "load_init_draft", "check_same_vocabulary", "load_warm_weights", "build_trainer",
           "wrap_ddp"]

def build_loaders(cfg: RecipeConfig, tokenizer, ctx: DistContext, *, show_progress: bool):
    """``(train_loader, eval_loader or None)`` from ``cfg.data`` (sharded over ranks when distributed)."""
    d = cfg.data
    common = {
        "seq_length": d.seq_length, "batch_size": cfg.train.micro_batch_size, "num_workers": d.num_workers,
        "distributed": ctx.distributed, "shuffle_seed": d.shuffle_seed,
        "mask_reasoning_content": d.mask_reasoning_content, "mask_generation_prompt": d.mask_generation_prompt,
        "packed_sequence_size": d.packed_sequence_size, "packing_strategy": d.packing_strategy,
        "chat_template": d.chat_template, "cache_dir": d.cache_dir or os.path.join(cfg.output_dir, "cache"),
        "show_progress": show_progress,
    }
    train = build_dataloader(d.train_path, tokenizer, shuffle=d.shuffle, split=d.train_split, **common)
    evaluation = None
    if d.eval_path is not None:
        evaluation = build_dataloader(d.eval_path, tokenizer, shuffle=False, split=d.eval_split, **common)
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

def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a config dtype name (``auto``: bf16 on CUDA, fp32 elsewhere)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]

def load_target(cfg: RecipeConfig, device: torch.device):
    """The frozen HF causal LM (eval mode, no grads) on ``device`` (CPU first when it will be sharded)."""
    from transformers import AutoModelForCausalLM

    t = cfg.target
    kwargs: dict[str, Any] = {**dtype_kwargs(resolve_dtype(t.dtype, device)), "trust_remote_code": t.trust_remote_code}
    if t.attn_implementation is not None:
        kwargs["attn_implementation"] = t.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(t.name_or_path, **kwargs)
    model.requires_grad_(False)
    model.eval()
    return model

def build_draft(cfg: RecipeConfig, target_config, draft_vocab_size: int | None):
    """The draft sized from the target config (on the current default device, fp32), as the algorithm builds it."""
    return get_algorithm(cfg.algorithm).build_draft(cfg, target_config, draft_vocab_size, **draft_shape_kwargs(cfg))

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
        # Gemma's norms hold (gain - 1): the effective gain is copied
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
    mask_token_id = get_algorithm(cfg.algorithm).mask_token_id(cfg)
    if mask_token_id is not None and exported.mask_token_id != mask_token_id:
        differences.append(f"mask_token_id {exported.mask_token_id} (this run: {mask_token_id})")
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

def check_same_vocabulary(ids: torch.Tensor, other: torch.Tensor, path: str, what: str) -> None:
    a, b = set(ids.tolist()), set(other.tolist())
    if a != b:
        raise ConfigError(f"init_from {path!r} has another draft vocabulary than {what}: {len(a - b)} of its "
                          f"{len(a)} tokens are not in it")

_NOT_WARM_STARTED = ("model.embed_tokens.weight", "d2t", "t2d")  # the target's embedding; the run's vocab maps

@torch.no_grad()
def load_warm_weights(draft, state: dict[str, torch.Tensor], warm_ids: torch.Tensor, run_ids: torch.Tensor,
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
    """The algorithm's trainer module around ``draft`` (``generator``: its per-rank sampling RNG, if it has one)."""
    return get_algorithm(cfg.algorithm).build_trainer(cfg, draft, selected_ids, selected_mask, generator)

def wrap_ddp(trainer: torch.nn.Module) -> torch.nn.Module:
    """The trainer under DistributedDataParallel, as the recipe runs it.

    ``device_ids=None``: the batch is already on the device, and with device ids DDP copies every tensor
    argument there, host-side ``seq_lens`` included (which the draft would then have to read back: a sync).
    ``gradient_as_bucket_view=True``: gradients are views into the all-reduce buckets (no copy into and out
    of them, one gradient-sized buffer less). No buffer broadcast before each forward (the buffers, the
    vocabulary maps, are equal on every rank and never change): torch >= 2.13 names that ``forward_sync_buffers``
    and deprecates ``broadcast_buffers`` with a FutureWarning on every rank; older torch knows only the latter."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(trainer, device_ids=None, find_unused_parameters=False,
                                   gradient_as_bucket_view=True, **no_sync)
