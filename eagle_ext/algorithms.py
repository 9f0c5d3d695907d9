"""The drafting algorithms eagle_ext trains, in one registry: the only place that names them.

Each algorithm is described twice, at two weights:

- an :class:`AlgorithmSpec` here: plain facts (its config section, the meta key of its depth, whether it drafts
  in parallel with a mask token, whether rows may be packed or read from an offline cache). It imports nothing,
  so the config, the CLI's ``--help`` and the export code can read it without loading torch;
- a strategy object (``<package>/algorithm.py``), loaded on first use by :func:`get_algorithm`, which builds the
  draft and its trainer module, runs a training or eval step and names its metric schema.

Adding a drafter means one package with an ``algorithm.py`` and one :data:`REGISTRY` line.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Algorithm", "AlgorithmSpec", "REGISTRY", "ALGORITHM_NAMES", "algorithm_spec", "get_algorithm"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the rest of the library may know about an algorithm without loading it."""

    name: str  # the config / checkpoint / export value ("eagle3")
    label: str  # how tables and logs print it ("EAGLE-3")
    depth_key: str  # config-section and checkpoint-meta key of the tokens drafted per row ("ttt_steps")
    parallel_drafting: bool  # drafts all depths in one forward, with a mask token standing for unknown tokens
    packing: bool  # rows may pack several documents (data.packed_sequence_size > 0)
    offline_cache: bool  # can train from an offline target cache (eagle-ext precompute)
    strategy: str  # "module:attribute" of the strategy object

    @property
    def config_section(self) -> str:
        """The recipe config section holding this algorithm's knobs (its name)."""
        return self.name


REGISTRY: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("eagle3", "EAGLE-3", "ttt_steps", parallel_drafting=False, packing=True, offline_cache=True,
                      strategy="eagle_ext.eagle3.algorithm:EAGLE3"),
        AlgorithmSpec("peagle", "P-EAGLE", "num_depths", parallel_drafting=True, packing=False, offline_cache=False,
                      strategy="eagle_ext.peagle.algorithm:PEAGLE"),
    )
}

ALGORITHM_NAMES: tuple[str, ...] = tuple(REGISTRY)


def algorithm_spec(name: Any, *, key: str = "algorithm") -> AlgorithmSpec:
    """The spec of algorithm ``name``.

    Raises:
        ValueError: ``name`` is not a registered algorithm (the message names ``key``, the value and the choices).
    """
    spec = REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"{key} must be one of {ALGORITHM_NAMES}, got {name!r}")
    return spec


def get_algorithm(name: Any, *, key: str = "algorithm"):
    """The strategy object of algorithm ``name`` (its module is imported on first use)."""
    module, attribute = algorithm_spec(name, key=key).strategy.split(":")
    return getattr(importlib.import_module(module), attribute)


class Algorithm(abc.ABC):
    """The strategy of one drafting algorithm: what the recipe, the dry run and the demo ask instead of branching
    on its name. Subclasses (``<package>/algorithm.py``) set :attr:`spec` and implement the abstract methods; what
    every algorithm answers the same way from its spec is implemented here.

    ``cfg`` arguments are recipe configs (:class:`eagle_ext.train.config.RecipeConfig`), read by attribute only,
    so the algorithm packages never import the recipe.
    """

    spec: AlgorithmSpec

    # ---- config
    def section(self, cfg: Any) -> Any:
        """This algorithm's config section of ``cfg`` (``cfg.eagle3``, ``cfg.peagle``)."""
        return getattr(cfg, self.spec.config_section)

    def depth(self, cfg: Any) -> int:
        """Tokens drafted per row and trained per step (``ttt_steps``, ``num_depths``): the metric width."""
        return int(getattr(self.section(cfg), self.spec.depth_key))

    @abc.abstractmethod
    def validate_config(self, cfg: Any, require) -> None:
        """Check this algorithm's knobs (and the rules it imposes on other sections) with
        ``require(ok, dotted_key, value, expected)``, which raises the config error."""

    @abc.abstractmethod
    def draft_num_layers(self, cfg: Any) -> int:
        """The draft's decoder layer count."""

    @abc.abstractmethod
    def draft_kwargs(self, cfg: Any) -> dict[str, Any]:
        """This algorithm's keyword arguments of ``DraftModel.from_target_config`` (the ``draft.*`` shape aside)."""

    def mask_token_id(self, cfg: Any) -> int | None:
        """The token that stands for not-yet-drafted tokens (parallel drafting), or None."""
        return self.section(cfg).mask_token_id if self.spec.parallel_drafting else None

    def target_problems(self, cfg: Any, vocab_size: int) -> list[str]:
        """What this run's knobs contradict in a target of ``vocab_size`` tokens (each a full error line)."""
        mask = self.mask_token_id(cfg)
        if mask is not None and mask >= vocab_size:
            return [f"{self.spec.config_section}.mask_token_id must be < the target's vocab_size ({vocab_size}), "
                    f"got {mask}"]
        return []

    def init_head_from_target(self, cfg: Any) -> bool:
        """Whether a fresh run starts the draft's head from the target's output rows (the section's knob)."""
        return bool(self.section(cfg).init_head_from_target)

    def checkpoint_meta(self, cfg: Any) -> dict[str, Any]:
        """The checkpoint / export metadata naming this run's depth and mask token. Every registered algorithm's
        depth key is present (None when not this one), so meta.json keeps one schema."""
        meta: dict[str, Any] = {spec.depth_key: None for spec in REGISTRY.values()}
        meta[self.spec.depth_key] = self.depth(cfg)
        meta["mask_token_id"] = self.mask_token_id(cfg)
        return meta

    # ---- models and steps (the heavy part: implemented where torch is imported)
    def build_draft(self, cfg: Any, target_config: Any, draft_vocab_size: int | None, **shape: Any):
        from eagle_ext.models import DraftModel

        return DraftModel.from_target_config(target_config, draft_vocab_size, num_hidden_layers=self.draft_num_layers(cfg),
                                             **self.draft_kwargs(cfg), **shape)

    def make_generator(self, seed: int, rank: int):
        """A per-rank RNG the trainer module samples with (checkpointed as ``"cod"``), or None."""
        return None

    @abc.abstractmethod
    def build_trainer(self, cfg: Any, draft, selected_ids, selected_mask, generator):
        """The trainer module (an ``nn.Module`` holding the draft) that turns target outputs into the loss."""

    @abc.abstractmethod
    def train_step(self, module, trainer, host_batch: dict, inputs: dict, *, accumulation: int, autocast):
        """Forward and backward of one micro-batch: ``module`` is ``trainer`` or its DDP wrapper, ``host_batch``
        the collated batch (host tensors, for any plan made without a device sync), ``inputs`` the trainer's
        device inputs; the loss is back-propagated divided over the ``accumulation`` micro-batches of an
        optimiser step, the forward runs under ``autocast()``. Returns the step metrics."""

    @abc.abstractmethod
    def eval_step(self, trainer, inputs: dict):
        """The metrics of one eval batch (no grad; the same supervision for every run and rank)."""

    # ---- metric schema
    @abc.abstractmethod
    def metric_counts(self, metrics):
        """``(correct, valid, hits[depth], valid[depth])`` of a step's metrics, as float64 device tensors."""

    @abc.abstractmethod
    def summarize(self, hits: list[float], valid: list[float]) -> dict[str, Any]:
        """The algorithm's own log fields from the summed per-depth counts."""

    @abc.abstractmethod
    def activation_layer_tokens(self, cfg: Any, tokens: int, num_layers: int) -> float:
        """Token-layer passes kept for backward per micro-batch of ``tokens`` (the dry run's memory estimate)."""
