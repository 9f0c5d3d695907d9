"""Frozen target capture for EAGLE-3: three hidden states per token plus shifted supervision.

Alignment (the convention every other module relies on): with ``x[t]`` the input ids, ``h_l[t]`` the
output of target decoder layer ``l`` and ``z[t]`` the logits (which predict ``x[t+1]``),

- ``aux_hidden_states[t] = cat(h_a[t], h_b[t], h_c[t])`` ``[B, T, 3H]``, **not shifted**;
- ``target_logits[t] = z[t+1]``, ``input_ids[t] = x[t+1]``, ``loss_mask[t] = m[t+1]``: shifted left by
  one with a zero tail (:func:`shift_left_with_zero`);
- ``attention_mask``, ``position_ids``, ``seq_lens``, ``doc_remaining`` pass through unshifted.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eagle_ext.models.families import check_packing_supported, target_layer_attention
from eagle_ext.models.masks import block_causal_visibility, document_ids_from_seq_lens

__all__ = [
    "Eagle3TargetBatch",
    "Eagle3TargetModel",
    "TargetCapture",
    "build_block_causal_additive_mask",
    "default_eagle3_aux_layer_ids",
    "find_decoder_layers",
    "shift_left_with_zero",
]


def shift_left_with_zero(t: torch.Tensor) -> torch.Tensor:
    """Shift a batched sequence tensor left by one slot along dim 1 and zero-fill the tail.

    ``[1, 2, 3] -> [2, 3, 0]``; works for any dtype (bool fills False) and trailing shape.

    Args:
        t: ``[B, T, ...]``.

    Returns:
        A new tensor of the same shape and dtype: ``out[:, i] = t[:, i + 1]``, ``out[:, -1] = 0``.

    Raises:
        TypeError: not a tensor; ValueError: fewer than 2 dimensions.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"t must have shape [B, T, ...], got {list(t.shape)}")
    out = torch.zeros_like(t)
    out[:, :-1] = t[:, 1:]
    return out


def default_eagle3_aux_layer_ids(num_hidden_layers: int) -> list[int]:
    """``[1, L//2 - 1, L - 4]``: outputs of these 0-indexed decoder layers (HF ``hidden_states[i + 1]``;
    vLLM's convention writes the same layers as ``[2, L//2, L - 3]``). Llama-3.1-8B (L=32): ``[1, 15, 28]``.

    Raises:
        ValueError: ``num_hidden_layers`` too small for three distinct in-range layers (L < 7).
    """
    if isinstance(num_hidden_layers, bool) or not isinstance(num_hidden_layers, int):
        raise ValueError(f"num_hidden_layers must be an int, got {num_hidden_layers!r}")
    ids = [1, num_hidden_layers // 2 - 1, num_hidden_layers - 4]
    if len(set(ids)) != 3 or min(ids) < 0 or max(ids) >= num_hidden_layers:
        raise ValueError(
            f"a target with num_hidden_layers={num_hidden_layers} is too shallow for the default EAGLE-3 aux "
            f"layers {ids} (3 distinct ids in [0, L) need L >= 7); pass aux_layer_ids explicitly"
        )
    return ids


def _validate_aux_layer_ids(aux_layer_ids: Any, num_layers: int) -> list[int]:
    ids = list(aux_layer_ids)
    if (
        len(ids) != 3
        or len(set(ids)) != 3
        or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in ids)
    ):
        raise ValueError(f"aux_layer_ids must be 3 distinct ints in [0, {num_layers}), got {aux_layer_ids!r}")
    return ids


def find_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of an HF causal LM; the first existing container wins:
    ``model.model.layers``, ``model.model.language_model.layers``, ``model.language_model.layers``,
    ``model.layers``, ``model.transformer.h``. A ``ModuleDict`` keyed ``"0".."n-1"`` becomes a list.

    Raises:
        ValueError: none of the containers exists.
    """
    paths = ("model.layers", "model.language_model.layers", "language_model.layers", "layers", "transformer.h")
    for path in paths:
        node: Any = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleDict):
            return [node[str(i)] for i in range(len(node))]
        if isinstance(node, (nn.ModuleList, list, tuple)) and len(node) > 0:
            return list(node)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}; looked for {list(paths)}")


def build_block_causal_additive_mask(
    seq_lens: torch.Tensor, seq_len: int, dtype: torch.dtype = torch.float32, *, sliding_window: int | None = None
) -> torch.Tensor:
    """Additive attention mask of packed rows: 0 where a query may see a key (same document, causal, and
    within ``sliding_window`` when given), ``finfo(dtype).min`` elsewhere.

    Args:
        seq_lens: int ``[B, D]`` document lengths, zero-padded; every row must sum to ``seq_len``.
        seq_len: row width T.
        dtype: floating dtype of the mask (the target's parameter dtype).
        sliding_window: a sliding-window layer's window W: query ``q`` also needs ``q - k < W`` (transformers'
            convention: the window counts the query itself); None for full attention.

    Returns:
        ``[B, 1, T, T]`` of ``dtype`` on ``seq_lens.device``.

    Raises:
        TypeError / ValueError: as :func:`eagle_ext.models.masks.document_ids_from_seq_lens`, or a
            ``sliding_window`` that is not a positive int.
    """
    doc_ids = document_ids_from_seq_lens(seq_lens, seq_len)
    visible = block_causal_visibility(doc_ids, None, (0, seq_len), (0, seq_len), sliding_window=sliding_window)
    zero = torch.zeros((), dtype=dtype, device=seq_lens.device)
    return torch.where(visible, zero, torch.finfo(dtype).min)


@dataclass
class Eagle3TargetBatch:
    """One batch of target outputs in the trainer's (shifted) frame.

    Tensors: ``input_ids`` int64 ``[B, T]`` (shifted), ``attention_mask`` ``[B, T]`` (unshifted),
    ``loss_mask`` ``[B, T]`` (shifted), ``aux_hidden_states`` ``[B, T, 3H]`` (unshifted) and exactly one
    supervision source: ``target_logits`` ``[B, T, V]`` (shifted; live target) or ``target_probs`` fp32
    ``[B, T, Vd]`` plus ``position_mask`` bool ``[B, T, 1]`` (draft-vocab distribution from a cache or a
    remote target). Optional packing metadata: ``position_ids`` ``[B, T]``, ``seq_lens`` ``[B, D]``,
    ``doc_remaining`` ``[B, T]``.

    Raises:
        ValueError: zero or two supervision sources, or ``target_probs`` without ``position_mask``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    aux_hidden_states: torch.Tensor
    target_logits: torch.Tensor | None = None
    target_probs: torch.Tensor | None = None
    position_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    doc_remaining: torch.Tensor | None = None

    def __post_init__(self) -> None:
        cached = self.target_probs is not None or self.position_mask is not None
        if (self.target_logits is not None) == cached:
            raise ValueError(
                "Eagle3TargetBatch needs exactly one supervision source: target_logits, or target_probs plus "
                f"position_mask; got target_logits={'set' if self.target_logits is not None else None}, "
                f"target_probs={'set' if self.target_probs is not None else None}, "
                f"position_mask={'set' if self.position_mask is not None else None}"
            )
        if cached and (self.target_probs is None or self.position_mask is None):
            raise ValueError("target_probs and position_mask must be given together")

    def to_trainer_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of :meth:`eagle_ext.eagle3.Eagle3TrainerModule.forward`. Packing keys
        (``position_ids``, ``seq_lens``, ``doc_remaining``) are included only when ``seq_lens`` is set;
        otherwise ``position_ids`` is included when given."""
        out = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "loss_mask": self.loss_mask,
            "aux_hidden_states": self.aux_hidden_states,
        }
        if self.target_logits is not None:
            out["target_logits"] = self.target_logits
        else:
            out["target_probs"] = self.target_probs
            out["position_mask"] = self.position_mask
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        if self.seq_lens is not None:
            out["seq_lens"] = self.seq_lens
            if self.doc_remaining is not None:
                out["doc_remaining"] = self.doc_remaining
        return out


class TargetCapture:
    """A frozen HF causal LM that returns :class:`Eagle3TargetBatch` es (the seed name ``Eagle3TargetModel`` is an
    alias; EAGLE-3 and P-EAGLE share the capture).

    Works with any layer container found by :func:`find_decoder_layers` (Llama, Qwen2/3, Mistral,
    Phi-3, GPT-2 style, multimodal wrappers). The model is put in eval mode and its parameters stop
    requiring grad.

    Args:
        model: the HF causal LM (returns ``.logits`` or a logits tensor).
        aux_layer_ids: 3 distinct decoder-layer ids in ``[0, L)``; default
            :func:`default_eagle3_aux_layer_ids` of the text config's ``num_hidden_layers``.

    Raises:
        ValueError: bad ``aux_layer_ids``, too shallow a target, or no decoder-layer container.
    """

    def __init__(self, model: nn.Module, aux_layer_ids: list[int] | None = None):
        self.model = model.eval().requires_grad_(False)
        self.layers = find_decoder_layers(model)
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        num_layers = getattr(text_config, "num_hidden_layers", None) or len(self.layers)
        if aux_layer_ids is None:
            aux_layer_ids = default_eagle3_aux_layer_ids(num_layers)
        self.aux_layer_ids = _validate_aux_layer_ids(aux_layer_ids, min(num_layers, len(self.layers)))
        self.config = config
        params = inspect.signature(model.forward).parameters
        self._accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._accepted = set(params)

    def _accepts(self, name: str) -> bool:
        return name in self._accepted or self._accepts_any

    def get_input_embeddings(self) -> nn.Module:
        """The target's input embedding module (for :meth:`DraftModel.copy_embeddings_from`)."""
        return self.model.get_input_embeddings()

    def _uses_flash_attention(self) -> bool:
        impl = getattr(self.config, "_attn_implementation", None) or ""
        return "flash" in str(impl)

    def _param_dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @torch.no_grad()
    def generate_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        seq_lens: torch.Tensor | None = None,
        doc_remaining: torch.Tensor | None = None,
    ) -> Eagle3TargetBatch:
        """Run the target once and return the trainer's batch.

        Args:
            input_ids: int64 ``[B, T]`` (unshifted).
            attention_mask: ``[B, T]`` 1 on real tokens.
            loss_mask: ``[B, T]`` 1 on supervised (assistant) tokens, unshifted.
            position_ids: int ``[B, T]``; required with ``seq_lens`` (per-document positions).
            seq_lens: int ``[B, D]`` packed document lengths (rows sum to T). Non-flash targets get a
                ``[B, 1, T, T]`` block-causal additive mask, and each sliding-window layer its own mask
                (block-causal within the window; see :meth:`_packed_layer_masks`), so a packed row reproduces
                each document run alone on every layer type; flash-attention targets get
                ``attention_mask=None`` plus per-document ``position_ids`` (needs B == 1; the flash kernel
                applies each layer's window itself). Targets with recurrent / linear-attention layers are
                refused (:func:`eagle_ext.models.families.check_packing_supported`).
            doc_remaining: int ``[B, T]`` tokens left in each slot's document (packing gate), passed through.

        Returns:
            :class:`Eagle3TargetBatch` with ``target_logits`` (target dtype).

        Raises:
            ValueError: shape mismatches, packing without ``position_ids`` (or a forward that does not
                accept them), flash packing with B > 1, packing on a target with recurrent / linear-attention
                layers, or a hooked layer that did not run.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {list(input_ids.shape)}")
        b, t = input_ids.shape
        for name, x in (("attention_mask", attention_mask), ("loss_mask", loss_mask), ("position_ids", position_ids),
                        ("doc_remaining", doc_remaining)):
            if x is not None and tuple(x.shape) != (b, t):
                raise ValueError(f"{name} must have shape [B, T] = {[b, t]}, got {list(x.shape)}")
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        for flag in ("use_cache", "output_hidden_states", "output_attentions"):
            if self._accepts(flag):
                kwargs[flag] = False
        layer_masks: dict[int, torch.Tensor] = {}
        if seq_lens is not None:
            if self.config is not None:
                check_packing_supported(self.config)
            if position_ids is None or not self._accepts("position_ids"):
                raise ValueError(
                    "packed rows (seq_lens given) need per-document position_ids and a target forward that accepts them"
                )
            kwargs["position_ids"] = position_ids
            if self._uses_flash_attention():
                if b != 1:
                    raise ValueError(
                        f"a flash-attention target infers packed documents from position_ids only at batch size 1, got B={b}"
                    )
                document_ids_from_seq_lens(seq_lens, t)  # validates the lengths
                kwargs["attention_mask"] = None
            else:
                kwargs["attention_mask"] = build_block_causal_additive_mask(seq_lens, t, self._param_dtype())
                layer_masks = self._packed_layer_masks(seq_lens, t)
        else:
            kwargs["attention_mask"] = attention_mask
            if position_ids is not None and self._accepts("position_ids"):
                kwargs["position_ids"] = position_ids

        self.model.eval()
        captured: dict[int, torch.Tensor] = {}
        handles = []
        unmasked: list[int] = []
        try:
            for layer_id in self.aux_layer_ids:
                handles.append(self.layers[layer_id].register_forward_hook(self._capture(captured, layer_id)))
            for layer_id, mask in layer_masks.items():
                handles.append(self.layers[layer_id].register_forward_pre_hook(
                    self._replace_mask(mask, layer_id, unmasked), with_kwargs=True))
            outputs = self.model(**kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if unmasked:
            raise ValueError(
                f"target decoder layers {sorted(set(unmasked))} run sliding-window attention but were called without "
                "an attention_mask keyword (this transformers version passes it otherwise), so packed rows cannot get "
                "their window; train this target on padded rows (data.packed_sequence_size: 0)"
            )
        missing = [i for i in self.aux_layer_ids if i not in captured]
        if missing:
            raise ValueError(f"target decoder layers {missing} did not run during the forward")
        aux = torch.cat([captured[i] for i in self.aux_layer_ids], dim=-1)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        if hasattr(logits, "full_tensor"):
            logits = logits.full_tensor()
        return Eagle3TargetBatch(
            input_ids=shift_left_with_zero(input_ids),
            attention_mask=attention_mask,
            loss_mask=shift_left_with_zero(loss_mask),
            aux_hidden_states=aux,
            target_logits=shift_left_with_zero(logits),
            position_ids=position_ids,
            seq_lens=seq_lens,
            doc_remaining=doc_remaining,
        )

    def _packed_layer_masks(self, seq_lens: torch.Tensor, t: int) -> dict[int, torch.Tensor]:
        """Per sliding-window decoder layer, its packed-row mask (block-causal within the window).

        transformers applies a 4-D mask given to the model as it is to every layer type, so the window of a
        sliding layer would be lost; each such layer gets its own mask through a forward pre-hook that
        replaces the ``attention_mask`` keyword the model hands the layer (the same mechanism for every
        transformers version and family: Mistral / Phi-3's all-sliding layers, gpt-oss / Gemma 3 / Qwen2's
        mixed ``layer_types``). Full-attention layers keep the model's block-causal mask. ``{}`` when the
        target has no sliding layer (or no config)."""
        if self.config is None:
            return {}
        kinds = target_layer_attention(self.config)
        by_window: dict[int, torch.Tensor] = {}
        out: dict[int, torch.Tensor] = {}
        for layer_id in range(min(len(kinds), len(self.layers))):
            window = kinds[layer_id].window
            if kinds[layer_id].kind != "sliding_attention" or window is None or window >= t:
                continue  # a window as wide as the row masks nothing more than block-causal
            if window not in by_window:
                by_window[window] = build_block_causal_additive_mask(
                    seq_lens, t, self._param_dtype(), sliding_window=window)
            out[layer_id] = by_window[window]
        return out

    @staticmethod
    def _replace_mask(mask: torch.Tensor, layer_id: int, unmasked: list[int]):
        def hook(_module, args, kwargs):
            if "attention_mask" not in kwargs:
                unmasked.append(layer_id)
                return None
            kwargs = dict(kwargs)
            kwargs["attention_mask"] = mask
            return args, kwargs

        return hook

    @staticmethod
    def _capture(store: dict[int, torch.Tensor], layer_id: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if hasattr(hidden, "full_tensor"):
                hidden = hidden.full_tensor()
            store[layer_id] = hidden

        return hook


#: the seed name of :class:`TargetCapture` (public API)
Eagle3TargetModel = TargetCapture
