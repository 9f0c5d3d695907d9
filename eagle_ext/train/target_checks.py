"""Checks of a recipe config against its target's ``config.json``, before any weights or data load.

Shared by the training run and ``train --dry-run``, so both refuse the same things with the same message:
aux layer ids the target cannot provide, packed rows on a target whose layers carry recurrent / linear-attention
state, a ``draft.rope_layer_type`` the target lacks, and a draft shape the target config cannot give.
"""

from __future__ import annotations

from typing import Any

from eagle_ext.algorithms import get_algorithm
from eagle_ext.train.config import ConfigError, RecipeConfig

__all__ = ["check_target_for_run", "draft_shape_kwargs", "draft_num_layers", "resolve_aux_layer_ids"]


def resolve_aux_layer_ids(cfg: RecipeConfig, num_layers: int, cached_ids: list[int] | None = None) -> list[int]:
    """``target.aux_layer_ids``, else the offline cache's, else the default ``[1, L//2-1, L-4]``.

    Raises:
        ConfigError: ids out of range, or the default on a target too shallow for it (L < 7), naming
            ``target.aux_layer_ids`` and what to set.
    """
    from eagle_ext.models import default_eagle3_aux_layer_ids

    t = cfg.target
    if t.aux_layer_ids is not None:
        ids = list(t.aux_layer_ids)
    elif cached_ids is not None:
        ids = list(cached_ids)
    else:
        try:
            ids = default_eagle3_aux_layer_ids(num_layers)
        except ValueError:
            raise ConfigError(
                f"target.aux_layer_ids is unset and the target has num_hidden_layers={num_layers}: the default "
                "[1, L//2-1, L-4] needs L >= 7 for three distinct layers; set target.aux_layer_ids to three distinct "
                f"layer indices in [0, {num_layers}), e.g. {[0, max(num_layers // 2 - 1, 1), num_layers - 1]}"
            ) from None
    if max(ids) >= num_layers:
        raise ConfigError(f"target.aux_layer_ids must be < the target's num_hidden_layers ({num_layers}), got {ids}")
    return ids


def draft_num_layers(cfg: RecipeConfig) -> int:
    """The draft's decoder layer count: 1 for EAGLE-3; ``draft.num_hidden_layers`` or ``peagle.num_draft_layers``
    for P-EAGLE."""
    return get_algorithm(cfg.algorithm).draft_num_layers(cfg)


def draft_shape_kwargs(cfg: RecipeConfig) -> dict[str, Any]:
    """The ``draft.*`` section as keyword arguments of :meth:`eagle_ext.models.DraftModel.from_target_config`
    (``num_hidden_layers`` excluded: see :func:`draft_num_layers`)."""
    d = cfg.draft
    return {"bias": d.bias, "intermediate_size": d.intermediate_size, "num_attention_heads": d.num_attention_heads,
            "num_key_value_heads": d.num_key_value_heads, "head_dim": d.head_dim, "rope_layer_type": d.rope_layer_type}


def check_target_for_run(cfg: RecipeConfig, target_config: Any) -> None:
    """What the recipe refuses about this target before loading it (the run and the dry run ask the same).

    Raises:
        ConfigError: what the algorithm's knobs contradict in the target's vocabulary (a P-EAGLE mask token
            outside it); ``data.draft_vocab_size`` above it; ``data.packed_sequence_size > 0`` on a target with
            recurrent / linear-attention (or chunked attention) layers; a ``draft.rope_layer_type`` the target
            lacks; a draft shape that does not fit.
    """
    from eagle_ext.models.draft import build_draft_config
    from eagle_ext.models.families import check_packing_supported
    from eagle_ext.models.rope import compute_inv_freq

    vocab = int(getattr(target_config, "get_text_config", lambda: target_config)().vocab_size)
    problems = get_algorithm(cfg.algorithm).target_problems(cfg, vocab)
    if problems:
        raise ConfigError(problems[0])
    if cfg.data.draft_vocab_size is not None and cfg.data.draft_vocab_size > vocab:
        raise ConfigError(f"data.draft_vocab_size must be <= the target's vocab_size ({vocab}), got "
                          f"{cfg.data.draft_vocab_size}")
    if cfg.data.packed_sequence_size > 0 and cfg.data.cached_target_path is None:
        try:
            check_packing_supported(target_config)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    algorithm = get_algorithm(cfg.algorithm)
    try:  # the draft config alone (no tensors): shape, heads / KV heads, RoPE choice and type
        draft_config = build_draft_config(
            target_config, None, num_hidden_layers=draft_num_layers(cfg),
            parallel_drafting=algorithm.spec.parallel_drafting, mask_token_id=algorithm.mask_token_id(cfg),
            **draft_shape_kwargs(cfg))
        compute_inv_freq(draft_config)
    except ValueError as err:
        message = str(err)
        if not message.startswith("draft."):
            message = f"draft: the draft for this target cannot be built: {message}"
        raise ConfigError(message) from None
