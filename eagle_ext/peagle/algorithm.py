"""P-EAGLE as a strategy of the recipe (:class:`eagle_ext.algorithms.Algorithm`): a multi-layer draft that drafts
every depth in one forward over COD-sampled sequences, a partitioned step that back-propagates per segment, and
accuracy per depth as its own metric."""

from __future__ import annotations

from typing import Any

import torch

from eagle_ext.algorithms import REGISTRY, Algorithm
from eagle_ext.eagle3.targets import shift_left_with_zero
from eagle_ext.ops.cod import generate_cod_sample_indices
from eagle_ext.peagle.trainer import PEagleTrainerModule, run_partitioned_step

__all__ = ["PEagleAlgorithm", "all_cod_chains", "host_plan_masks"]  # the registry loads the instance, PEAGLE

ATTENTIONS = ("auto", "flex", "dense")


def all_cod_chains(inputs: dict, num_depths: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every COD chain at every depth (ratios 1): P-EAGLE's eval set, the same for every run and rank."""
    length = inputs["loss_mask"].shape[1]
    return [
        generate_cod_sample_indices(length, loss.cpu(), num_depths, 1.0, 1.0,
                                    document_ids=torch.where(attention.cpu() != 0, 0, -1), seed=0)
        for loss, attention in zip(inputs["loss_mask"], inputs["attention_mask"])
    ]


def host_plan_masks(batch: dict, *, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Host ``(loss_mask, attention_mask)`` of a collated batch in the trainer's frame: the loss mask shifted left
    by one as the target capture shifts it (unless the batch is already in that frame, ``shifted``). Planning
    from these costs no device sync."""
    loss_mask, attention_mask = batch["loss_mask"].cpu(), batch["attention_mask"].cpu()
    return (loss_mask if shifted else shift_left_with_zero(loss_mask)), attention_mask


class PEagleAlgorithm(Algorithm):
    spec = REGISTRY["peagle"]

    def validate_config(self, cfg: Any, require) -> None:
        p = cfg.peagle
        for key in ("num_depths", "num_draft_layers", "sequence_partitions"):
            require(getattr(p, key) >= 1, f"peagle.{key}", getattr(p, key), "an int >= 1")
        for key in ("down_sample_ratio", "down_sample_ratio_min"):
            value = getattr(p, key)
            require(0 < value <= 1, f"peagle.{key}", value, "a ratio in (0, 1]")
        require(p.mask_token_id is not None and p.mask_token_id >= 0, "peagle.mask_token_id", p.mask_token_id,
                "a token id of the target vocabulary (required for P-EAGLE)")
        if p.max_anchors is not None:
            require(p.max_anchors >= 1, "peagle.max_anchors", p.max_anchors, "an int >= 1")
        require(p.attention in ATTENTIONS, "peagle.attention", p.attention, "'auto', 'flex' or 'dense'")
        layers = cfg.draft.num_hidden_layers
        if layers is not None and "peagle.num_draft_layers" in cfg.explicit:
            require(layers == p.num_draft_layers, "draft.num_hidden_layers", layers,
                    f"null or equal to peagle.num_draft_layers ({p.num_draft_layers}; they name the same layer "
                    "count, set one)")

    def draft_num_layers(self, cfg: Any) -> int:
        return cfg.draft.num_hidden_layers or cfg.peagle.num_draft_layers

    def draft_kwargs(self, cfg: Any) -> dict[str, Any]:
        p = cfg.peagle
        return {"parallel_drafting": True, "mask_token_id": p.mask_token_id, "freeze_embeddings": p.freeze_embeddings}

    def make_generator(self, seed: int, rank: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 1000003 + rank)

    def build_trainer(self, cfg: Any, draft, selected_ids, selected_mask, generator):
        p = cfg.peagle
        return PEagleTrainerModule(
            draft, selected_token_ids=selected_ids, selected_token_mask=selected_mask, num_depths=p.num_depths,
            mask_token_id=p.mask_token_id, down_sample_ratio=p.down_sample_ratio,
            down_sample_ratio_min=p.down_sample_ratio_min, sequence_partitions=p.sequence_partitions,
            max_anchors=p.max_anchors, attention=p.attention, generator=generator,
        )

    def train_step(self, module, trainer, host_batch: dict, inputs: dict, *, accumulation: int, autocast):
        # the plan (COD sampling, segments, counts) from the collated host masks (P-EAGLE never reads an offline
        # cache, so the batch is in the data's frame): no device sync
        plan = trainer.build_peagle_plan(*host_plan_masks(host_batch, shifted=False), device=inputs["input_ids"].device)
        with autocast():
            return run_partitioned_step(module, plan, inputs, loss_scale=1.0 / accumulation)

    def eval_step(self, trainer, inputs: dict):
        return trainer(**inputs, cod_indices=all_cod_chains(inputs, trainer.num_depths))

    def metric_counts(self, metrics):
        return (metrics.depth_correct.sum().double(), metrics.depth_valid.sum().double(),
                metrics.depth_correct.double(), metrics.depth_valid.double())

    def summarize(self, hits: list[float], valid: list[float]) -> dict[str, Any]:
        return {"depth_accuracy": [h / max(v, 1.0) for h, v in zip(hits, valid)]}

    def activation_layer_tokens(self, cfg: Any, tokens: int, num_layers: int) -> float:
        p = cfg.peagle  # the COD elements of a row (depth d keeps a ratio^d share), one partition at a time
        n_elements = tokens * (1 + sum(p.down_sample_ratio ** d for d in range(1, p.num_depths)))
        return n_elements / p.sequence_partitions * num_layers


PEAGLE = PEagleAlgorithm()
