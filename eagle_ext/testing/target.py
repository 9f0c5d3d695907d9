"""The demo target: a tiny Llama built from a config, pre-trained briefly on the demo corpus, cached on disk.

A randomly initialised target predicts near-uniform next tokens, so neither the draft's accuracy nor its
acceptance length would mean anything; a few hundred next-token steps on the corpus give it the peaked,
pattern-following distributions of a real chat model, which makes drafting it a real (small) task. The
trained weights are cached with ``save_pretrained`` under a key of everything that shaped them, so a rerun
loads them instead.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from tqdm import tqdm

from eagle_ext._io import atomic_directory
from eagle_ext.data.fingerprint import digest
from eagle_ext.models.target import build_block_causal_additive_mask
from eagle_ext.train.optim import build_optimizer

__all__ = ["demo_target_config", "evaluate_target", "load_or_pretrain_target", "pretrain_target", "target_lm_loss"]

#: Bump when the pre-training recipe changes, so cached targets are retrained.
TARGET_RECIPE_VERSION = 1
_META_FILE = "demo_target.json"


def demo_target_config(vocab_size: int, *, hidden_size: int = 128, num_hidden_layers: int = 4,
                       max_position_embeddings: int = 512):
    """``LlamaConfig`` of the tiny target: 4 heads (2 KV heads, GQA as in real Llamas), SwiGLU width
    ``2 * hidden_size``, untied embeddings (the draft copies the input embedding table)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
    )


@contextlib.contextmanager
def _hf_progress_bars_off():
    """Silence transformers' per-file progress bars (one tiny file here) and restore the previous setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def target_lm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross entropy over the real tokens of a batch from
    :func:`eagle_ext.data.build_eagle3_dataloader` (HF shifts the labels inside the model).

    Padded batches (``input_ids``, ``attention_mask`` ``[B, T]``) use the padding mask. Packed rows (with
    ``position_ids`` and ``seq_lens``) attend block-causally inside each document, and the first token of a
    document is not a label, since nothing before it in the row belongs to its conversation.
    """
    ids = batch["input_ids"]
    labels = ids.masked_fill(batch["attention_mask"] == 0, -100)
    if "seq_lens" not in batch:
        return model(input_ids=ids, attention_mask=batch["attention_mask"], labels=labels).loss
    labels = labels.masked_fill(batch["position_ids"] == 0, -100)
    mask = build_block_causal_additive_mask(batch["seq_lens"], ids.shape[1], model.dtype)
    return model(input_ids=ids, attention_mask=mask, position_ids=batch["position_ids"], labels=labels).loss


@torch.no_grad()
def evaluate_target(model: torch.nn.Module, batches: list[Mapping[str, torch.Tensor]]) -> dict:
    """Held-out quality of the target on padded batches: ``loss`` (mean next-token cross entropy over real
    tokens) and ``assistant_accuracy`` (share of supervised next tokens the target's argmax predicts)."""
    loss_sum, tokens, correct, supervised = 0.0, 0, 0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        nxt = batch["input_ids"][:, 1:]
        real = batch["attention_mask"][:, 1:] != 0
        sup = (batch["loss_mask"][:, 1:] != 0) & real
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), nxt, reduction="none")
        loss_sum += float(ce[real].sum())
        tokens += int(real.sum())
        correct += int((logits.argmax(-1) == nxt)[sup].sum())
        supervised += int(sup.sum())
    return {"loss": loss_sum / max(tokens, 1), "assistant_accuracy": correct / max(supervised, 1)}


def pretrain_target(model: torch.nn.Module, batches: Iterator[Mapping[str, torch.Tensor]], steps: int,
                    lr: float, *, show_progress: bool = True) -> list[float]:
    """Train ``model`` (an HF causal LM) for ``steps`` AdamW steps of :func:`target_lm_loss` on ``batches``;
    returns the losses."""
    model.train()
    optimizer, scheduler = build_optimizer(model.parameters(), lr, steps, weight_decay=0.01)
    losses = []
    bar = tqdm(range(steps), desc="target pre-training", unit="step", mininterval=0.5, disable=not show_progress)
    for _ in bar:
        loss = target_lm_loss(model, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def load_or_pretrain_target(
    directory: str | os.PathLike, config: Any, batches: Iterator[Mapping[str, torch.Tensor]], *, steps: int,
    lr: float, data_key: str, tokenizer=None, seed: int = 0, show_progress: bool = True,
) -> tuple[torch.nn.Module, dict]:
    """The pre-trained target from ``directory`` if its cache key matches, else a new one trained and saved.

    The key is a digest of ``config``, ``steps``, ``lr``, ``seed``, ``data_key`` (identity of the corpus and
    tokenizer, chosen by the caller) and the recipe version. Saving writes a temporary directory next to
    ``directory`` (weights as safetensors, ``config.json``, the tokenizer when given, the key) and renames it
    into place, so an interrupted run never leaves a half-written cache.

    Returns:
        ``(model in eval mode, info)``; ``info``: ``{"cached": bool, "key": str, "losses": [...]}`` (the
        pre-training losses; empty when loaded from the cache).
    """
    from transformers import LlamaForCausalLM

    directory = os.fspath(directory)
    key = digest({"config": config.to_dict(), "steps": steps, "lr": lr, "seed": seed, "data": data_key,
                  "recipe": TARGET_RECIPE_VERSION})
    meta_path = os.path.join(directory, _META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f).get("key") == key:
                with _hf_progress_bars_off():
                    model = LlamaForCausalLM.from_pretrained(directory)
                return model.eval(), {"cached": True, "key": key, "losses": []}

    torch.manual_seed(seed)
    model = LlamaForCausalLM(copy.deepcopy(config))  # the model writes into its config; keep the key's copy intact
    losses = pretrain_target(model, batches, steps, lr, show_progress=show_progress)
    model.eval()
    with atomic_directory(directory) as tmp:
        with _hf_progress_bars_off():
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, _META_FILE), "w") as f:
            json.dump({"key": key, "steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}, f, indent=2)
    return model, {"cached": False, "key": key, "losses": losses}
