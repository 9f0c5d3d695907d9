"""Rotary position embedding for the draft, built from the target's config.

The draft must rotate queries and keys exactly like the target (and like the serving engine), so the
tables follow the target config: ``rope_theta``, ``head_dim``, ``partial_rotary_factor`` and the scaling
recipes ``default``, ``linear``, ``llama3`` and ``yarn``. Both config layouts are read:

- transformers >= 5: ``config.rope_parameters = {"rope_type", "rope_theta", "factor", ...}``;
- transformers 4.x: ``config.rope_theta`` plus ``config.rope_scaling = {"rope_type" | "type", ...}``.

The formulas are written here rather than taken from ``transformers.modeling_rope_utils`` because that
module's function signatures and config handling changed between 4.45 and 5.x; the tests compare the
tables against transformers' own ones.

Rotation is applied in fp32 and cast back to the input dtype. The inverse frequencies are kept in fp32
outside the module's buffers, so ``draft.to(torch.bfloat16)`` cannot round them and they never appear in
the state dict.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["rope_parameters_from_config", "select_rope_parameters", "compute_inv_freq", "RotaryEmbedding",
           "apply_rotary"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None:
        head_dim = config.hidden_size // config.num_attention_heads
    return int(head_dim)


def select_rope_parameters(config: Any, layer_type: str | None = None) -> dict[str, Any] | None:
    """The one RoPE a Llama draft takes from a target with per-layer-type RoPE (Gemma 3: ``rope_parameters =
    {"full_attention": {...}, "sliding_attention": {...}}``).

    Args:
        config: the target's text config.
        layer_type: whose RoPE to take; None: ``"full_attention"`` (the global layers', which see the whole
            context, as the draft does).

    Returns:
        The chosen layer type's parameter dict (a copy), or None when the target has one RoPE for every layer
        (then ``layer_type`` must be None or one of the target's layer types).

    Raises:
        ValueError: ``layer_type`` names no RoPE of the target (the message lists the choices).
    """
    params = getattr(config, "rope_parameters", None) or {}
    per_type = {k: v for k, v in params.items() if isinstance(v, dict)}
    if per_type:
        chosen = layer_type or "full_attention"
        if chosen not in per_type:
            raise ValueError(f"draft.rope_layer_type must name one of the target's per-layer-type RoPEs "
                             f"{sorted(per_type)}, got {layer_type!r}")
        return dict(per_type[chosen])
    if layer_type is not None:
        if layer_type == "sliding_attention" and getattr(config, "rope_local_base_freq", None) is not None:
            # transformers 4.x Gemma 3 layout: rope_theta / rope_scaling are the global layers', the local
            # (sliding) layers use rope_local_base_freq without scaling
            return {"rope_type": "default", "rope_theta": float(config.rope_local_base_freq)}
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if layer_type not in layer_types:
            raise ValueError(f"draft.rope_layer_type must be null or one of the target's layer types "
                             f"{sorted(layer_types)}, got {layer_type!r}")
    return None


def rope_parameters_from_config(config: Any) -> dict[str, Any]:
    """Normalised RoPE settings of a (text) model config.

    Returns a dict with at least ``rope_type``, ``rope_theta``, ``partial_rotary_factor`` plus the
    scaling keys of the type (``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``, ``beta_fast``, ``beta_slow``, ``mscale``, ``mscale_all_dim``,
    ``attention_factor``, ``truncate`` where relevant).

    A per-layer-type config (Gemma 3) resolves to its ``"full_attention"`` RoPE (see
    :func:`select_rope_parameters`; the draft built by :func:`eagle_ext.models.build_draft_config` carries the
    chosen one as a flat dict).

    Raises:
        ValueError: an unsupported ``rope_type``, or a per-layer-type config without a full-attention RoPE.
    """
    params = dict(getattr(config, "rope_parameters", None) or {})
    if any(isinstance(v, dict) for v in params.values()):
        flat = {k: v for k, v in params.items() if not isinstance(v, dict)}
        if getattr(config, "draft_rope_layer_type", None) and "rope_type" in flat:
            # a draft config: its one RoPE is the flat part (a Gemma 3 config class re-adds per-layer-type
            # defaults when the config is read back from JSON)
            params = flat
        else:
            params = select_rope_parameters(config, None) or {}
    if not params:  # transformers 4.x layout (in 5.x `rope_scaling` aliases `rope_parameters`)
        params = dict(getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type") or params.get("type") or "default"
    params["rope_type"] = rope_type
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    params["rope_theta"] = float(theta if theta is not None else 10000.0)
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    params["partial_rotary_factor"] = float(partial if partial is not None else 1.0)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_type must be one of {SUPPORTED_ROPE_TYPES}, got {rope_type!r}")
    if rope_type in ("llama3", "yarn"):
        original = getattr(config, "original_max_position_embeddings", None)
        if original is None:
            original = params.get("original_max_position_embeddings", config.max_position_embeddings)
        params["original_max_position_embeddings"] = int(original)
    return params


def _yarn_attention_factor(factor: float, mscale: float | None, mscale_all_dim: float | None) -> float:
    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if mscale and mscale_all_dim:
        return get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
    return get_mscale(factor)


def compute_inv_freq(config: Any) -> tuple[torch.Tensor, float, int]:
    """Inverse frequencies of the target's RoPE.

    Returns:
        ``(inv_freq fp32 [rot_dim // 2], attention_scaling, rot_dim)``; ``attention_scaling`` multiplies
        cos and sin (1.0 except for yarn); ``rot_dim = int(head_dim * partial_rotary_factor)``.
    """
    params = rope_parameters_from_config(config)
    rot_dim = int(_head_dim(config) * params["partial_rotary_factor"])
    if rot_dim <= 0 or rot_dim % 2:
        raise ValueError(f"rotary dimension must be a positive even number, got {rot_dim}")
    base = params["rope_theta"]
    exponents = torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim
    inv_freq = 1.0 / (base**exponents)
    rope_type = params["rope_type"]
    scaling = 1.0
    if rope_type == "linear":
        inv_freq = inv_freq / float(params["factor"])
    elif rope_type == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        context = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths (low frequencies) are stretched by `factor`, short ones kept, the band between
        # them blended linearly in 1/wavelength.
        scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        in_band = (wavelen >= context / high) & (wavelen <= context / low)
        inv_freq = torch.where(in_band, blended, scaled)
    elif rope_type == "yarn":
        context = params["original_max_position_embeddings"]
        factor = params.get("factor")
        factor = float(factor) if factor is not None else config.max_position_embeddings / context
        scaling = params.get("attention_factor")
        if scaling is None:
            scaling = _yarn_attention_factor(factor, params.get("mscale"), params.get("mscale_all_dim"))
        beta_fast = params.get("beta_fast") or 32
        beta_slow = params.get("beta_slow") or 1

        def correction_dim(rotations: float) -> float:
            return rot_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if params.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, rot_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(rot_dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        # ramp = 0: high frequencies kept (extrapolation); ramp = 1: low frequencies divided by factor.
        inv_freq = inv_freq * (1 - ramp) + (inv_freq / factor) * ramp
    return inv_freq, float(scaling), rot_dim


class RotaryEmbedding(nn.Module):
    """cos/sin tables for integer positions (no parameters, nothing in the state dict).

    ``forward(position_ids int [B, T]) -> (cos, sin)``, each fp32 ``[B, T, rot_dim]`` (already multiplied
    by the yarn attention scaling).
    """

    def __init__(self, config: Any):
        super().__init__()
        inv_freq, self.attention_scaling, self.rot_dim = compute_inv_freq(config)
        self._inv_freq = inv_freq
        self._per_device: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        cached = self._per_device.get(device)
        if cached is None:
            cached = self._per_device[device] = self._inv_freq.to(device)
        return cached

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.to(torch.float32)[..., None] * self.inv_freq(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, T, D]`` by fp32 ``cos``/``sin`` ``[B, T, rot_dim]`` (half-split layout).

    Only the first ``rot_dim`` channels rotate (partial rotary); the result has ``x``'s dtype.
    """
    rot_dim = cos.shape[-1]
    xf = x.to(torch.float32)
    rot, rest = xf[..., :rot_dim], xf[..., rot_dim:]
    half = rot_dim // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    out = rot * cos[:, None] + rotated_half * sin[:, None]
    if rest.shape[-1]:
        out = torch.cat((out, rest), dim=-1)
    return out.to(x.dtype)
