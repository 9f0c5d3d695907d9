"""The tiny target: a Llama built from a config (random, or pre-trained briefly on the pattern corpus).

A randomly initialised target predicts near-uniform next tokens, so neither a draft's accuracy nor its
acceptance length would mean anything; a few hundred next-token steps on :mod:`eagle_ext.testing.corpus` give it
the peaked, pattern-following distributions of a real chat model, which makes drafting it a real (small) task.
A random one (:func:`save_tiny_target`) is enough where only shapes and plumbing are checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import torch
from tqdm import tqdm

from eagle_ext.models.target import build_block_causal_additive_mask
from eagle_ext.train.optim import build_optimizer

__all__ = ["evaluate_target", "forever", "pretrain_target", "save_tiny_target", "target_lm_loss", "tiny_target_config"]


def tiny_target_config(vocab_size: int, *, hidden_size: int = 128, num_hidden_layers: int = 4,
                       max_position_embeddings: int = 512):
    """``LlamaConfig`` of the tiny target: 4 heads (2 KV heads, GQA as in real Llamas), SwiGLU width
    ``2 * hidden_size``, untied embeddings (the draft copies the input embedding table)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
    )


def save_tiny_target(directory: str | os.PathLike, *, hidden_size: int = 32, num_layers: int = 4, seed: int = 0) -> str:
    """A random tiny Llama target (:func:`tiny_target_config` over the corpus vocabulary) and its word tokenizer,
    saved with ``save_pretrained`` into ``directory``; returns the directory."""
    from transformers import LlamaForCausalLM

    from eagle_ext.testing.corpus import corpus_words
    from eagle_ext.testing.tokenizer import build_word_tokenizer

    directory = os.fspath(directory)
    tokenizer = build_word_tokenizer(corpus_words())
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_target_config(len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def forever(loader) -> Iterator[dict]:
    """Batches of ``loader`` epoch after epoch, reshuffled per epoch (``loader.set_epoch``)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def target_lm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross entropy over the real tokens of a batch from
    :func:`eagle_ext.data.build_dataloader` (HF shifts the labels inside the model).

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
