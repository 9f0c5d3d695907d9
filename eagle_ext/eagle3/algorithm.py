"""EAGLE-3 as a strategy of the recipe (:class:`eagle_ext.algorithms.Algorithm`): a one-layer draft trained with
the test-time-training unroll, one loss per micro-batch, tau_sim as its own metric."""

from __future__ import annotations

from typing import Any

from eagle_ext.algorithms import REGISTRY, Algorithm
from eagle_ext.eagle3.metrics import simulated_accept_length
from eagle_ext.eagle3.trainer import Eagle3TrainerModule

__all__ = ["Eagle3Algorithm"]  # the registry loads the instance, EAGLE3

ATTN_IMPLEMENTATIONS = ("lean", "eager", "flex")


class Eagle3Algorithm(Algorithm):
    spec = REGISTRY["eagle3"]

    def validate_config(self, cfg: Any, require) -> None:
        e = cfg.eagle3
        require(e.ttt_steps >= 1, "eagle3.ttt_steps", e.ttt_steps, "an int >= 1")
        require(e.step_decay > 0, "eagle3.step_decay", e.step_decay, "a number > 0")
        require(e.attn_implementation in ATTN_IMPLEMENTATIONS, "eagle3.attn_implementation", e.attn_implementation,
                "'lean', 'eager' or 'flex'")
        layers = cfg.draft.num_hidden_layers
        require(layers is None or layers == 1, "draft.num_hidden_layers", layers,
                "1 or null with algorithm 'eagle3' (an EAGLE-3 draft has one layer; P-EAGLE stacks more)")

    def draft_num_layers(self, cfg: Any) -> int:
        return 1

    def draft_kwargs(self, cfg: Any) -> dict[str, Any]:
        e = cfg.eagle3
        return {"fc_norm": e.fc_norm, "norm_output": e.norm_output, "freeze_embeddings": e.freeze_embeddings,
                "attn_implementation": e.attn_implementation}

    def build_trainer(self, cfg: Any, draft, selected_ids, selected_mask, generator):
        return Eagle3TrainerModule(draft, selected_token_ids=selected_ids, selected_token_mask=selected_mask,
                                   ttt_steps=cfg.eagle3.ttt_steps, loss_impl=cfg.train.loss_impl,
                                   step_decay=cfg.eagle3.step_decay)

    def train_step(self, module, trainer, host_batch: dict, inputs: dict, *, accumulation: int, autocast):
        with autocast():
            metrics = module(**inputs)
        (metrics.loss / accumulation).backward()
        return metrics

    def eval_step(self, trainer, inputs: dict):
        return trainer(**inputs)

    def metric_counts(self, metrics):
        correct = (metrics.accuracy.double() * metrics.valid_tokens.double()).round()
        return correct, metrics.valid_tokens.double(), metrics.step_prefix_hits.double(), metrics.step_valid.double()

    def summarize(self, hits: list[float], valid: list[float]) -> dict[str, Any]:
        return {"tau_sim": simulated_accept_length(hits, valid)}

    def activation_layer_tokens(self, cfg: Any, tokens: int, num_layers: int) -> float:
        return cfg.eagle3.ttt_steps * tokens  # one layer, kept for every step of the unroll


EAGLE3 = Eagle3Algorithm()
