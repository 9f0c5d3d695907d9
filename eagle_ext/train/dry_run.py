"""``eagle-ext train --dry-run``: what a config would build, without loading weights or data.

Reads the target's ``config.json`` only (a local directory, or a hub id in the local Hugging Face cache or
reachable online: offline, point ``target.name_or_path`` at a local copy), builds the target and the draft on the meta device to count their
parameters, and estimates the peak memory of one rank from the shapes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from eagle_ext.algorithms import get_algorithm
from eagle_ext.models.families import default_draft_shape
from eagle_ext.models.rope import rope_parameters_from_config
from eagle_ext.train.builders import build_draft
from eagle_ext.train.config import ConfigError, RecipeConfig, config_to_yaml
from eagle_ext.train.target_checks import check_target_for_run, resolve_aux_layer_ids

__all__ = ["describe_run", "format_description"]

_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _human(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _read_target_config(cfg: RecipeConfig):
    """The target's config.json (only that file), or a clear error naming ``target.name_or_path``."""
    t = cfg.target
    try:
        return AutoConfig.from_pretrained(t.name_or_path, trust_remote_code=t.trust_remote_code)
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ConfigError(f"target.name_or_path {t.name_or_path!r}: cannot read its config.json ({detail}); the dry "
                          "run reads only that file (no weights, no data): give a local model directory, or a hub id "
                          "that is in the local Hugging Face cache or reachable online") from exc


def _draft_shape(cfg: RecipeConfig, draft, target_config) -> dict[str, Any]:
    """The draft's architecture as the dry run prints it (with the notes on shapes chosen from the target)."""
    dc = draft.config
    chosen = any(getattr(cfg.draft, k) is not None for k in ("intermediate_size", "num_attention_heads",
                                                             "num_key_value_heads", "head_dim"))
    return {"num_hidden_layers": len(draft.model.layers), "hidden_size": int(dc.hidden_size),
            "num_attention_heads": int(dc.num_attention_heads), "num_key_value_heads": int(dc.num_key_value_heads),
            "head_dim": int(dc.head_dim), "intermediate_size": int(dc.intermediate_size),
            "bias": bool(dc.attention_bias or dc.mlp_bias),
            "rope": {k: v for k, v in rope_parameters_from_config(dc).items() if k in ("rope_type", "rope_theta",
                                                                                       "factor")},
            "notes": [] if chosen else default_draft_shape(target_config)["notes"]}


def _memory_estimate(cfg: RecipeConfig, algorithm, text, draft, *, n_target: int, n_train: int,
                     n_draft_frozen: int, vd: int, world: int, dtype: str, cuda: bool) -> tuple[dict[str, int], int]:
    """Per-rank peak-memory terms (bytes) of one micro-batch, and its token count."""
    t = cfg.target
    vocab, hidden, layers = int(text.vocab_size), int(text.hidden_size), int(text.num_hidden_layers)
    tb = _BYTES[dtype]
    width = cfg.data.packed_sequence_size or cfg.data.seq_length
    tokens = cfg.train.micro_batch_size * width
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    draft_inter = int(draft.config.intermediate_size)
    act = 2 if cuda and cfg.train.autocast != "none" else 4
    target_weights = n_target * tb / (world if t.sharding == "fsdp" else 1)
    if t.sharding == "fsdp":
        target_weights += n_target * tb / max(layers, 1)  # one gathered layer at a time
    # target forward (no grad): one layer's working set, the three aux states, the full-vocab logits
    target_act = tokens * (4 * hidden + 2 * inter) * tb + tokens * 3 * hidden * tb + tokens * vocab * tb
    supervision = tokens * vd * 4  # fp32 draft-vocab target distribution
    draft_state = n_train * (4 + 4 + 8) + n_draft_frozen * 4  # fp32 weights, grads, AdamW moments
    # per token-layer pass kept for backward: layer inputs/outputs, q/k/v, MLP intermediates (autocast dtype); the
    # algorithm counts the passes (EAGLE-3: one layer per TTT step; P-EAGLE: COD elements per partition x layers)
    passes = algorithm.activation_layer_tokens(cfg, tokens, len(draft.model.layers))
    draft_act = passes * (12 * hidden + 3 * draft_inter) * act
    total = target_weights + target_act + supervision + draft_state + draft_act
    return {"target_weights": int(target_weights), "target_forward": int(target_act),
            "supervision": int(supervision), "draft_weights_grads_adam": int(draft_state),
            "draft_activations": int(draft_act), "total": int(total)}, tokens


def describe_run(cfg: RecipeConfig, *, world_size: int | None = None, cuda: bool | None = None) -> dict[str, Any]:
    """Parameter counts and a per-rank peak-memory estimate for ``cfg`` (``world_size`` defaults to WORLD_SIZE
    or 1; ``cuda`` to whether the run would use CUDA).

    Raises:
        ConfigError: the target config cannot be read, or contradicts the config (aux ids, vocab sizes).
    """
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    cuda = (torch.cuda.is_available() and cfg.train.device != "cpu") if cuda is None else cuda
    t = cfg.target
    target_config = _read_target_config(cfg)
    text = getattr(target_config, "get_text_config", lambda: target_config)()
    vocab, hidden, layers = int(text.vocab_size), int(text.hidden_size), int(text.num_hidden_layers)
    aux = resolve_aux_layer_ids(cfg, layers)
    check_target_for_run(cfg, target_config)  # the mask token, the draft vocabulary, packing, the draft's shape
    vd = cfg.data.draft_vocab_size or vocab
    algorithm = get_algorithm(cfg.algorithm)
    with torch.device("meta"):
        target = AutoModelForCausalLM.from_config(target_config, trust_remote_code=t.trust_remote_code)
        try:
            draft = build_draft(cfg, target_config, vd if vd < vocab else None)
        except ValueError as err:  # a clear line, not a traceback
            raise ConfigError(f"draft: the draft for this target cannot be built: {err}") from None
    n_target = sum(p.numel() for p in target.parameters())
    n_train = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    n_draft_frozen = sum(p.numel() for p in draft.parameters() if not p.requires_grad)
    dtype = t.dtype if t.dtype != "auto" else ("bf16" if cuda else "fp32")
    memory, tokens = _memory_estimate(cfg, algorithm, text, draft, n_target=n_target, n_train=n_train,
                                      n_draft_frozen=n_draft_frozen, vd=vd, world=world, dtype=dtype, cuda=cuda)
    return {
        "algorithm": cfg.algorithm,
        "world_size": world,
        "target": {"name_or_path": t.name_or_path, "parameters": n_target, "num_hidden_layers": layers,
                   "hidden_size": hidden, "vocab_size": vocab, "aux_layer_ids": aux, "dtype": dtype,
                   "sharding": t.sharding},
        "draft": {"trainable_parameters": n_train, "frozen_parameters": n_draft_frozen, "draft_vocab_size": vd,
                  "parameters": n_train + n_draft_frozen, "shape": _draft_shape(cfg, draft, target_config)},
        "memory_per_rank_bytes": memory,
        "tokens_per_micro_batch": tokens,
    }


def _draft_size_line(tg: dict[str, Any], dr: dict[str, Any]) -> str:
    sh = dr.get("shape") or {}
    total = dr.get("parameters", dr["trainable_parameters"] + dr["frozen_parameters"])
    ratio = f" ({100 * total / tg['parameters']:.1f}% of the target's {tg['parameters']:,})" if tg["parameters"] else ""
    line = (f"draft size: {total:,} parameters{ratio}; {sh.get('num_hidden_layers')} layer(s), hidden "
            f"{sh.get('hidden_size')}, {sh.get('num_attention_heads')} heads x {sh.get('head_dim')} "
            f"({sh.get('num_key_value_heads')} KV heads), MLP {sh.get('intermediate_size')}, "
            f"bias {'yes' if sh.get('bias') else 'no'}, rope {sh.get('rope')}")
    for note in sh.get("notes") or []:
        line += f"\n  note: {note} (override with draft.*)"
    return line


def format_description(cfg: RecipeConfig, info: dict[str, Any]) -> str:
    """The dry run's printout: resolved config, parameter counts, the memory estimate."""
    tg, dr, mem = info["target"], info["draft"], info["memory_per_rank_bytes"]
    lines = ["# resolved config", config_to_yaml(cfg).rstrip(), "",
             f"target: {tg['parameters']:,} parameters ({tg['num_hidden_layers']} layers, hidden {tg['hidden_size']}, "
             f"vocab {tg['vocab_size']}), frozen, {tg['dtype']}, {tg['sharding']}; aux layers {tg['aux_layer_ids']}",
             f"draft ({info['algorithm']}): {dr['trainable_parameters']:,} trainable + {dr['frozen_parameters']:,} "
             f"frozen parameters; draft vocab {dr['draft_vocab_size']}",
             _draft_size_line(tg, dr),
             f"estimated peak memory per rank ({info['world_size']} rank(s), {info['tokens_per_micro_batch']} tokens "
             "per micro-batch):"]
    for key, value in mem.items():
        lines.append(f"  {key:26s} {_human(value)}")
    return "\n".join(lines)
