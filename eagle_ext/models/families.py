"""What a target's config says about its layers: which attention each decoder layer runs (full, sliding
window), whether some layers carry recurrent / linear-attention state, and the draft shape that suits it.

Read from the config alone (no weights), so the recipe's dry run and its checks before loading use the same
answers as the target capture and the evaluator. Both config layouts are read:

- ``config.layer_types`` (transformers >= 4.53 for most families; every layer type spelled out, e.g.
  ``"full_attention"``, ``"sliding_attention"``, ``"linear_attention"``);
- older layouts without it: ``sliding_window`` (all layers, Mistral / Phi-3 style), gated by
  ``use_sliding_window`` and ``max_window_layers`` (Qwen2 style), ``sliding_window_pattern`` (Gemma 3 in 4.5x:
  every ``pattern``-th layer is global) and Gemma 2's alternation (even layers slide).

Sliding-window semantics are transformers' (``masking_utils.sliding_window_overlay``): query ``q`` sees key
``k`` iff ``q - window < k <= q``, i.e. the window counts the query itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ATTENTION_LAYER_TYPES",
    "HYBRID_MODEL_TYPES",
    "LayerAttention",
    "check_packing_supported",
    "default_draft_shape",
    "is_mla_config",
    "is_moe_config",
    "stateful_layer_types",
    "target_layer_attention",
    "text_config_of",
]

#: layer types whose packed-row mask eagle_ext builds (block-causal, and block-causal within the window)
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")

#: model types with recurrent / linear-attention / state-space layers (their state is not a masked attention
#: over keys, so a block mask cannot stop it from flowing across packed documents, and a KV-cache crop cannot
#: roll it back). Used when the config does not spell the layer types out.
HYBRID_MODEL_TYPES = frozenset({
    "qwen3_next", "qwen3_5", "qwen3_5_moe", "olmo_hybrid", "jamba", "zamba", "zamba2", "bamba", "falcon_h1",
    "falcon_mamba", "mamba", "mamba2", "granitemoehybrid", "nemotron_h", "lfm2", "lfm2_moe", "recurrent_gemma",
    "rwkv", "xlstm", "plamo2", "minimax", "kimi_linear", "hunyuan_v1_hybrid",
})


@dataclass(frozen=True)
class LayerAttention:
    """How one target decoder layer attends: ``kind`` (a transformers layer type) and, for
    ``"sliding_attention"``, the ``window`` (keys ``q - window < k <= q``)."""

    kind: str
    window: int | None = None


def text_config_of(config: Any) -> Any:
    """The decoder (text) config of a possibly multimodal config."""
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            return getter(decoder=True)
        except TypeError:
            return getter()
    return getattr(config, "text_config", None) or config


def _window(text: Any) -> int | None:
    window = getattr(text, "sliding_window", None)
    if window is None or isinstance(window, bool):
        return None
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"the target config's sliding_window must be a positive int or null, got {window!r}")
    return window


def target_layer_attention(config: Any) -> list[LayerAttention]:
    """Per decoder layer of the target, the attention it runs (see the module docstring for the layouts).

    Layer types other than full / sliding attention are returned as they are (e.g. ``"linear_attention"``,
    ``"chunked_attention"``, ``"mamba"``); :func:`check_packing_supported` refuses them for packing.

    Raises:
        ValueError: a config without ``num_hidden_layers``, ``layer_types`` of the wrong length, or a sliding layer
            without a positive ``sliding_window``.
    """
    text = text_config_of(config)
    n = getattr(text, "num_hidden_layers", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the target config has no valid num_hidden_layers, got {n!r}")
    layer_types = getattr(text, "layer_types", None)
    use_sliding = getattr(text, "use_sliding_window", None)
    window = _window(text) if use_sliding is not False else None
    if isinstance(layer_types, (list, tuple)) and layer_types:
        if len(layer_types) < n:
            raise ValueError(f"the target config's layer_types has {len(layer_types)} entries for {n} layers")
        out = []
        for i, kind in enumerate(layer_types[:n]):
            if kind == "sliding_attention":
                if window is None:
                    raise ValueError(f"target layer {i} is 'sliding_attention' but the config's sliding_window is "
                                     f"{getattr(text, 'sliding_window', None)!r}")
                out.append(LayerAttention(kind, window))
            else:
                out.append(LayerAttention(str(kind)))
        return out
    if window is None:
        return [LayerAttention("full_attention")] * n
    model_type = getattr(text, "model_type", "")
    pattern = getattr(text, "sliding_window_pattern", None)
    if isinstance(pattern, int) and pattern >= 1:  # Gemma 3 (4.5x): every pattern-th layer is global
        sliding = [bool((i + 1) % pattern) for i in range(n)]
    elif model_type == "gemma2":  # Gemma 2 without layer_types: even layers slide
        sliding = [not bool(i % 2) for i in range(n)]
    elif use_sliding is not None and isinstance(getattr(text, "max_window_layers", None), int):  # Qwen2 (4.x)
        sliding = [i >= text.max_window_layers for i in range(n)]
    else:  # Mistral / Phi-3 / Qwen3-MoE style: one mask function for every layer
        sliding = [True] * n
    return [LayerAttention("sliding_attention", window) if s else LayerAttention("full_attention") for s in sliding]


def stateful_layer_types(config: Any) -> list[str]:
    """The target's layer types that carry recurrent / linear-attention / state-space state (sorted, empty for a
    pure-attention target). A model type in :data:`HYBRID_MODEL_TYPES` whose config lists no such layer type is
    reported as ``"<model_type> (hybrid model type)"``."""
    text = text_config_of(config)
    kinds: set[str] = set()
    layer_types = getattr(text, "layer_types", None)
    if isinstance(layer_types, (list, tuple)):
        kinds = {str(k) for k in layer_types if k not in ATTENTION_LAYER_TYPES and k != "chunked_attention"}
    model_type = str(getattr(text, "model_type", "") or getattr(config, "model_type", ""))
    if not kinds and (model_type in HYBRID_MODEL_TYPES or getattr(config, "model_type", "") in HYBRID_MODEL_TYPES):
        kinds = {f"{model_type} (hybrid model type)"}
    return sorted(kinds)


def check_packing_supported(config: Any, *, key: str = "data.packed_sequence_size") -> None:
    """Raise unless packed rows reproduce each document run alone on this target.

    Packing works for targets whose layers are full or sliding-window attention (eagle_ext builds each layer
    type's own block-causal mask). Recurrent, linear-attention or state-space layers carry state from one packed
    document into the next whatever the mask says, and chunked attention is not built: those targets train on
    padded rows (``key: 0``).

    Raises:
        ValueError: naming ``key``, the model type and the offending layer types.
    """
    model_type = getattr(text_config_of(config), "model_type", None) or getattr(config, "model_type", None)
    stateful = stateful_layer_types(config)
    if stateful:
        raise ValueError(
            f"packed rows ({key} > 0) are refused for this {model_type!r} target: its layer types {stateful} carry "
            "recurrent / linear-attention state that flows from one packed document into the next (no attention "
            f"mask stops it); set {key}: 0 to train on padded rows"
        )
    kinds = sorted({layer.kind for layer in target_layer_attention(config)} - set(ATTENTION_LAYER_TYPES))
    if kinds:
        raise ValueError(
            f"packed rows ({key} > 0) are refused for this {model_type!r} target: eagle_ext builds packed masks for "
            f"{list(ATTENTION_LAYER_TYPES)} layers only, the target has {kinds}; set {key}: 0 to train on padded rows"
        )


# ------------------------------------------------------------------------------------------------ draft shape


def _first_int(config: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def is_mla_config(config: Any) -> bool:
    """Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2, ...): the config has ``kv_lora_rank``."""
    return _first_int(text_config_of(config), ("kv_lora_rank",)) is not None


def is_moe_config(config: Any) -> bool:
    """A mixture-of-experts target: more than one routed expert."""
    n = _first_int(text_config_of(config), ("n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts"))
    return n is not None and n > 1


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def default_draft_shape(config: Any) -> dict[str, Any]:
    """The draft decoder's shape for this target when the config leaves it open.

    - Dense, non-MLA targets: the target's own ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` and
      ``intermediate_size`` (what the peers ship for Llama / Qwen / Mistral).
    - MLA targets (DeepSeek-V3, Kimi-K2): a Llama-like GQA shape. The target's ``head_dim`` there is the rotary
      part of a query (``qk_rope_head_dim``) and its key/value heads are as many as its query heads; a Llama
      draft with those copies gets large and unusual (1.19B parameters for DeepSeek-V3). The draft takes
      ``head_dim = 128`` with ``hidden / 128`` query heads when the hidden size allows it (hidden >= 1024 and
      divisible by 128), else ``hidden / heads``; key/value heads are the largest divisor of the query heads
      that is <= 8.
    - MoE targets whose ``intermediate_size`` is an expert's width (narrower than 2x hidden, e.g. gpt-oss): a
      SwiGLU width of ``8/3 x hidden`` rounded up to a multiple of 256 (a Llama ratio). A dense width (DeepSeek's
      first dense layers, Qwen3-MoE's ``intermediate_size``) is kept.

    Returns:
        ``{"num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "notes": [str]}``.

    Raises:
        ValueError: the config lacks ``hidden_size`` / ``num_attention_heads``.
    """
    text = text_config_of(config)
    hidden = _first_int(text, ("hidden_size",))
    heads = _first_int(text, ("num_attention_heads",))
    if hidden is None or heads is None or hidden < 1 or heads < 1:
        raise ValueError(f"the target config ({type(text).__name__}) needs hidden_size and num_attention_heads, got "
                         f"{hidden!r} / {heads!r}")
    kv = _first_int(text, ("num_key_value_heads",)) or heads
    head_dim = _first_int(text, ("head_dim",)) or hidden // heads
    inter = _first_int(text, ("intermediate_size",))
    notes: list[str] = []
    if is_mla_config(text):
        if hidden >= 1024 and hidden % 128 == 0:
            head_dim, heads = 128, hidden // 128
        else:
            head_dim = hidden // heads
        kv = max(d for d in range(1, min(8, heads) + 1) if heads % d == 0)
        notes.append(f"MLA target: Llama-like GQA draft attention ({heads} heads x {head_dim}, {kv} KV heads) "
                     "instead of the target's latent-attention sizes")
    if inter is None or (is_moe_config(text) and inter < 2 * hidden):
        old = inter
        inter = _round_up(8 * hidden / 3, 256 if hidden >= 1024 else 32)
        notes.append(f"MoE target: draft MLP width {inter} (8/3 x hidden) instead of the expert width {old}")
    return {"num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
            "intermediate_size": inter, "notes": notes}
