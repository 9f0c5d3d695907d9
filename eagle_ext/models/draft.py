"""The Llama-style EAGLE-3 draft model (also the P-EAGLE parallel-drafting draft).

Module tree and state-dict keys (shared with SGLang / NeMo AutoModel checkpoints)::

    model.embed_tokens.weight                 [V, H]       copied from the target
    model.fc.weight                           [H, 3 * H_t] no bias
    model.fc_norm.{i}.weight                  [H_t]        EAGLE-3.1 `fc_norm` only
    model.layers.0.input_layernorm.weight     [H]          norm of the token embeddings
    model.layers.0.hidden_norm.weight         [H]          norm of the carried hidden state
    model.layers.0.self_attn.{q,k,v}_proj.*   [heads * hd, 2H]
    model.layers.0.self_attn.o_proj.*         [H, heads * hd]
    model.layers.0.post_attention_layernorm.weight
    model.layers.0.mlp.{gate,up,down}_proj.*  SwiGLU
    model.layers.{1..N-1}.*                   standard Llama layers (P-EAGLE only)
    model.norm.weight                         final norm
    lm_head.weight                            [Vd, H]
    d2t  int64 [Vd], t2d bool [V]              only when Vd < V
    mask_hidden                               [1, 1, 3 * H_t]  P-EAGLE only

Layer 0 computes ``h = hidden + attn(cat(input_layernorm(emb), hidden_norm(hidden)))`` followed by
``h = h + mlp(post_attention_layernorm(h))``: the residual is the carried hidden state, not the
embedding (SGLang's layout; ``norm_before_residual=False`` in speculators terms).

RMSNorm is computed in fp32 and cast back (as the serving engines do); RoPE tables come from the target
config (see :mod:`eagle_ext.models.rope`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from eagle_ext._checks import check_int
from eagle_ext.models.attention import TTT_ATTENTION_IMPLEMENTATIONS, masked_attention, ttt_attention
from eagle_ext.models.families import default_draft_shape
from eagle_ext.models.masks import check_attention_mask, document_ids_from_seq_lens
from eagle_ext.models.rope import RotaryEmbedding, apply_rotary, select_rope_parameters
from eagle_ext.ops._transfer import to_device_async

__all__ = [
    "DraftModel",
    "Eagle3DraftModel",
    "Eagle3DecoderLayer",
    "LlamaDraftDecoderLayer",
    "RMSNorm",
    "build_draft_config",
    "effective_norm_weight",
]

DRAFT_ARCHITECTURE = "LlamaEagle3DraftModel"


class RMSNorm(nn.Module):
    """``weight * x / rms(x)``, computed in fp32 and returned in the input dtype. Key: ``weight``."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@torch.no_grad()
def effective_norm_weight(norm: nn.Module, hidden_size: int) -> torch.Tensor:
    """The per-channel gain an RMSNorm-like module applies, whatever its parametrisation: Llama's
    ``weight * x / rms(x)`` and Gemma's ``(1 + weight) * x / rms(x)`` alike (read by normalising a vector of
    ones and undoing the ``eps``). What a Llama-convention norm of the draft must hold to match ``norm``.

    Returns:
        fp32 ``[hidden_size]`` on the module's device.
    """
    param = next(iter(norm.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)) or 0.0)
    ones = torch.ones(1, hidden_size, device=device, dtype=param.dtype if param is not None else torch.float32)
    return (norm(ones).float() * (1.0 + eps) ** 0.5).reshape(hidden_size)


class DraftMLP(nn.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: Any):
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act_fn = ACT2FN[getattr(config, "hidden_act", "silu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class TTTContext:
    """Per-call state of TTT attention: the shared cache plus the row structure and kernel choice."""

    def __init__(self, cache_hidden, doc_ids, key_valid, implementation, query_chunk_size, doc_ids_host=None):
        self.cache_hidden = cache_hidden
        self.doc_ids, self.key_valid, self.doc_ids_host = doc_ids, key_valid, doc_ids_host
        self.implementation, self.query_chunk_size = implementation, query_chunk_size


class DraftAttention(nn.Module):
    """Multi-head attention with GQA whose q/k/v read ``input_size`` features (2H in layer 0).

    ``forward(x [B,T,in], cos, sin, attention)`` where ``attention`` is a :class:`TTTContext` (appends
    this call's rotated K and V to ``cache_hidden`` and runs TTT attention), an object with
    ``attend(module, q, k, v) -> [B, Hq, T, D]`` (an inference KV cache, handed this module and the rotated
    ``q [B,Hq,T,D]``, ``k, v [B,Hkv,T,D]``), or a mask accepted by
    :func:`~eagle_ext.models.attention.masked_attention` (P-EAGLE). Returns ``[B, T, H]``.
    """

    def __init__(self, config: Any, input_size: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        bias = bool(getattr(config, "attention_bias", False))
        self.q_proj = nn.Linear(input_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(input_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(input_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.scale = self.head_dim**-0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: Any) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if isinstance(attention, TTTContext):
            keys, values = attention.cache_hidden
            keys.append(k)
            values.append(v)
            out = ttt_attention(
                q, keys, values,
                doc_ids=attention.doc_ids, key_valid=attention.key_valid, scale=self.scale,
                implementation=attention.implementation, query_chunk_size=attention.query_chunk_size,
                doc_ids_host=attention.doc_ids_host,
            )
        elif callable(getattr(attention, "attend", None)):
            out = attention.attend(self, q, k, v)
        else:
            out = masked_attention(q, k, v, attention, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Eagle3DecoderLayer(nn.Module):
    """Draft layer 0: attention over ``cat(input_layernorm(embeds), hidden_norm(hidden))`` (2H wide),
    residual = the carried ``hidden``, then a pre-norm SwiGLU block. ``[B,T,H] x 2 -> [B,T,H]``."""

    def __init__(self, config: Any):
        super().__init__()
        h, eps = config.hidden_size, getattr(config, "rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(h, eps)
        self.hidden_norm = RMSNorm(h, eps)
        self.self_attn = DraftAttention(config, 2 * h)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.mlp = DraftMLP(config)

    def forward(self, embeds, hidden, cos, sin, attention) -> torch.Tensor:
        combined = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        h = hidden + self.self_attn(combined, cos, sin, attention)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaDraftDecoderLayer(nn.Module):
    """Standard pre-norm Llama layer (P-EAGLE layers 1..N-1). ``[B,T,H] -> [B,T,H]``."""

    def __init__(self, config: Any):
        super().__init__()
        h, eps = config.hidden_size, getattr(config, "rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(h, eps)
        self.self_attn = DraftAttention(config, h)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.mlp = DraftMLP(config)

    def forward(self, hidden, cos, sin, attention) -> torch.Tensor:
        h = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, attention)
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3DraftBackbone(nn.Module):
    """Everything under the ``model.`` prefix of the state dict."""

    def __init__(self, config: Any):
        super().__init__()
        h, h_t, n_aux = config.hidden_size, config.target_hidden_size, config.num_aux_hidden_states
        pad = getattr(config, "pad_token_id", None)
        pad = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, h, padding_idx=pad)
        self.fc = nn.Linear(n_aux * h_t, h, bias=False)
        if config.fc_norm:
            self.fc_norm = nn.ModuleList(RMSNorm(h_t, getattr(config, "rms_norm_eps", 1e-6)) for _ in range(n_aux))
        layers: list[nn.Module] = [Eagle3DecoderLayer(config)]
        layers += [LlamaDraftDecoderLayer(config) for _ in range(config.num_hidden_layers - 1)]
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(h, getattr(config, "rms_norm_eps", 1e-6))


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        return getter()
    return getattr(config, "text_config", None) or config



def build_draft_config(
    target_config: Any,
    draft_vocab_size: int | None,
    *,
    num_hidden_layers: int = 1,
    parallel_drafting: bool = False,
    mask_token_id: int | None = None,
    fc_norm: bool = False,
    norm_output: bool = False,
    attn_implementation: str = "lean",
    num_aux_hidden_states: int = 3,
    bias: bool = False,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    rope_layer_type: str | None = None,
) -> Any:
    """Draft config: a copy of the target's text config (same class, so ``rope_*``, ``rms_norm_eps``,
    ``hidden_act``... carry over) plus the draft keys ``draft_vocab_size``, ``target_hidden_size``,
    ``num_aux_hidden_states``, ``fc_norm``, ``norm_output``, ``parallel_drafting``, ``mask_token_id``,
    ``draft_attn_implementation``, ``architectures`` and the real ``num_hidden_layers`` of the draft (not the
    target's). ``draft_vocab_size=None`` means the full target vocabulary.

    The draft decoder's shape is its own: ``attention_bias`` / ``mlp_bias`` = ``bias`` (default none: what
    both engines serve; the target's biases are not copied), and the heads, ``head_dim`` and
    ``intermediate_size`` given here or, when None,
    :func:`eagle_ext.models.families.default_draft_shape` of the target (the target's own for dense
    Llama-like targets; a Llama-like GQA shape for MLA targets, a SwiGLU width for MoE targets whose
    ``intermediate_size`` is an expert's). A target with per-layer-type RoPE (Gemma 3) gives the draft one:
    ``rope_layer_type``'s (default ``"full_attention"``). See :meth:`DraftModel.from_target_config`.
    """
    text = _text_config(target_config)
    vocab = check_int("target_config.vocab_size", getattr(text, "vocab_size", None), 1)
    if draft_vocab_size is None:
        draft_vocab_size = vocab
    check_int("draft_vocab_size", draft_vocab_size, 1)
    if draft_vocab_size > vocab:
        raise ValueError(f"draft_vocab_size must be <= the target vocab_size {vocab}, got {draft_vocab_size}")
    check_int("num_hidden_layers", num_hidden_layers, 1)
    check_int("num_aux_hidden_states", num_aux_hidden_states, 1)
    if not parallel_drafting and num_hidden_layers != 1:
        raise ValueError(
            f"an EAGLE-3 (TTT) draft has exactly one layer; num_hidden_layers={num_hidden_layers} needs "
            "parallel_drafting=True"
        )
    if parallel_drafting:
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab:
            raise ValueError(
                f"parallel_drafting=True needs mask_token_id, an int in [0, {vocab}), got {mask_token_id!r}"
            )
    elif mask_token_id is not None:
        raise ValueError(f"mask_token_id is only used with parallel_drafting=True, got {mask_token_id!r}")
    if attn_implementation not in TTT_ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {TTT_ATTENTION_IMPLEMENTATIONS}, got {attn_implementation!r}"
        )
    if not isinstance(bias, bool):
        raise ValueError(f"bias must be a bool, got {bias!r}")
    shape = default_draft_shape(text)
    chosen = {"intermediate_size": intermediate_size, "num_attention_heads": num_attention_heads,
              "num_key_value_heads": num_key_value_heads, "head_dim": head_dim}
    for name, value in chosen.items():
        if value is not None:
            shape[name] = check_int(name, value, 1)
    if num_attention_heads is not None and num_key_value_heads is None:
        shape["num_key_value_heads"] = num_attention_heads if shape["num_attention_heads"] % shape[
            "num_key_value_heads"] else shape["num_key_value_heads"]
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise ValueError(f"num_attention_heads ({shape['num_attention_heads']}) must be a multiple of "
                         f"num_key_value_heads ({shape['num_key_value_heads']})")
    rope = select_rope_parameters(text, rope_layer_type)
    config = copy.deepcopy(text)
    for name in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        setattr(config, name, shape[name])
    config.attention_bias = bias
    config.mlp_bias = bias
    if rope is not None:  # one RoPE for the draft (a flat dict; the per-layer-type one is left behind)
        config.rope_parameters = rope
        config.draft_rope_layer_type = rope_layer_type or "full_attention"
    config.draft_vocab_size = draft_vocab_size
    config.target_hidden_size = text.hidden_size
    config.num_aux_hidden_states = num_aux_hidden_states
    config.num_hidden_layers = num_hidden_layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):
        config.layer_types = layer_types[:num_hidden_layers]
    config.fc_norm = bool(fc_norm)
    config.norm_output = bool(norm_output)
    config.parallel_drafting = bool(parallel_drafting)
    config.mask_token_id = mask_token_id
    config.draft_attn_implementation = attn_implementation
    config.tie_word_embeddings = False
    config.architectures = [DRAFT_ARCHITECTURE]
    return config


class DraftModel(nn.Module):
    """EAGLE-3 / P-EAGLE draft. Build with :meth:`from_target_config`; ``DraftModel(config)``
    takes a config made by :func:`build_draft_config` (or loaded from an exported ``config.json``).

    Trainer-facing API: :meth:`project_hidden_states`, :meth:`embed_input_ids`, :meth:`forward` (one TTT
    step), :meth:`compute_logits`; multi-layer / explicit positions: :meth:`forward_positions` (P-EAGLE's
    training forward and the decoders'), ``mask_hidden``. The seed name ``Eagle3DraftModel`` is an alias.
    """

    def __init__(self, config: Any, *, freeze_embeddings: bool | None = None):
        super().__init__()
        self.config = config
        self.model = Eagle3DraftBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.rotary_emb = RotaryEmbedding(config)
        self.attn_implementation = getattr(config, "draft_attn_implementation", "lean")
        self.query_chunk_size: int | None = None
        if self.is_compressed:
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
            t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
            t2d[: config.draft_vocab_size] = True  # identity prefix until set_vocab_mapping
            self.register_buffer("t2d", t2d)
        if config.parallel_drafting:
            width = config.num_aux_hidden_states * config.target_hidden_size
            self.mask_hidden = nn.Parameter(torch.empty(1, 1, width))
        self.reset_parameters()
        if freeze_embeddings is None:
            freeze_embeddings = not config.parallel_drafting
        self.model.embed_tokens.weight.requires_grad_(not freeze_embeddings)

    @classmethod
    def from_target_config(
        cls,
        target_config: Any,
        draft_vocab_size: int | None,
        *,
        num_hidden_layers: int = 1,
        parallel_drafting: bool = False,
        mask_token_id: int | None = None,
        fc_norm: bool = False,
        norm_output: bool = False,
        freeze_embeddings: bool | None = None,
        attn_implementation: str = "lean",
        num_aux_hidden_states: int = 3,
        bias: bool = False,
        intermediate_size: int | None = None,
        num_attention_heads: int | None = None,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        rope_layer_type: str | None = None,
    ) -> DraftModel:
        """Build a draft for the target: its hidden size, vocabulary and RoPE, and a decoder shape (heads, KV
        heads, head_dim, intermediate size) that defaults to the target's for dense targets (see
        :func:`build_draft_config` for MLA / MoE targets and per-layer-type RoPE).

        Args:
            target_config: the target's HF config (multimodal configs: the text config is used).
            draft_vocab_size: rows of ``lm_head`` (``None`` = full vocab; ``d2t``/``t2d`` exist only
                when it is smaller than the target vocab).
            num_hidden_layers: 1 for EAGLE-3; P-EAGLE may stack more (standard Llama layers 1..N-1).
            parallel_drafting: P-EAGLE draft (adds ``mask_hidden`` ``[1, 1, 3H_t]``, N(0, 1) init).
            mask_token_id: P-EAGLE mask token, required with ``parallel_drafting``, in ``[0, V)``.
            fc_norm: EAGLE-3.1 per-aux-chunk RMSNorm before ``fc``.
            norm_output: EAGLE-3.1: ``forward`` returns ``norm(h)`` (carried to the next TTT step) and
                :meth:`compute_logits` applies no second norm.
            freeze_embeddings: default ``not parallel_drafting``.
            attn_implementation: TTT attention kernel, ``"lean"``, ``"eager"`` or ``"flex"`` (compiled
                FlexAttention on CUDA, the lean path elsewhere; see ``eagle_ext.models.attention``).
            num_aux_hidden_states: captured target layers (3).
            bias: attention and MLP biases in the draft (default none: SGLang / specforge build none; vLLM
                reads them from a ``speculators`` export). The target's own biases are not copied.
            intermediate_size, num_attention_heads, num_key_value_heads, head_dim: the draft decoder's shape;
                None: :func:`eagle_ext.models.families.default_draft_shape` of the target. Setting only
                ``num_attention_heads`` keeps the default KV heads when they divide it, else uses MHA.
            rope_layer_type: for a target with per-layer-type RoPE (Gemma 3), whose RoPE the draft uses
                (default ``"full_attention"``).

        Raises:
            ValueError: invalid sizes, ``num_hidden_layers != 1`` without ``parallel_drafting``, a missing
                or out-of-range ``mask_token_id``, an unknown ``attn_implementation`` or RoPE type, heads not
                a multiple of the KV heads, or a ``rope_layer_type`` the target lacks.
        """
        config = build_draft_config(
            target_config, draft_vocab_size,
            num_hidden_layers=num_hidden_layers, parallel_drafting=parallel_drafting, mask_token_id=mask_token_id,
            fc_norm=fc_norm, norm_output=norm_output, attn_implementation=attn_implementation,
            num_aux_hidden_states=num_aux_hidden_states, bias=bias, intermediate_size=intermediate_size,
            num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, head_dim=head_dim,
            rope_layer_type=rope_layer_type,
        )
        return cls(config, freeze_embeddings=freeze_embeddings)

    # ----------------------------------------------------------------------------------------- set-up

    @property
    def is_compressed(self) -> bool:
        """True when the draft vocabulary is smaller than the target's (``d2t``/``t2d`` exist)."""
        return self.config.draft_vocab_size < self.config.vocab_size

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF-style init: linear/embedding weights N(0, initializer_range), zero biases, unit norms,
        ``mask_hidden`` N(0, 1)."""
        std = float(getattr(self.config, "initializer_range", 0.02))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        if self.config.parallel_drafting:
            self.mask_hidden.normal_(0.0, 1.0)

    def set_attn_implementation(self, implementation: str, *, query_chunk_size: int | None = None) -> None:
        """Switch the TTT attention kernel (``"lean"`` / ``"eager"``); same weights, same results."""
        if implementation not in TTT_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {TTT_ATTENTION_IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.attn_implementation = implementation
        self.config.draft_attn_implementation = implementation
        self.query_chunk_size = query_chunk_size

    @torch.no_grad()
    def set_vocab_mapping(self, selected_token_ids: torch.Tensor) -> None:
        """Store the draft -> target token map in ``d2t`` (offsets: ``target = draft + d2t[draft]``) and
        ``t2d`` (bool membership over the target vocab). No-op for an uncompressed draft.

        Args:
            selected_token_ids: int ``[Vd]``, distinct target ids in ``[0, V)``; row i of ``lm_head``.

        Raises:
            TypeError / ValueError: not a 1-D integer tensor, wrong length, out of range or duplicated.
        """
        vd, v = self.config.draft_vocab_size, self.config.vocab_size
        if not isinstance(selected_token_ids, torch.Tensor) or selected_token_ids.dtype.is_floating_point or (
            selected_token_ids.dtype == torch.bool
        ):
            raise TypeError(f"selected_token_ids must be an integer torch.Tensor, got {selected_token_ids!r:.80}")
        if selected_token_ids.dim() != 1 or selected_token_ids.numel() != vd:
            raise ValueError(
                f"selected_token_ids must have shape [draft_vocab_size={vd}], got {list(selected_token_ids.shape)}"
            )
        if not self.is_compressed:
            return
        ids = selected_token_ids.to(device=self.d2t.device, dtype=torch.int64)
        if bool(((ids < 0) | (ids >= v)).any()):
            raise ValueError(f"selected_token_ids must lie in [0, {v}), got min {ids.min().item()} max {ids.max().item()}")
        if torch.unique(ids).numel() != vd:
            raise ValueError("selected_token_ids must be distinct")
        self.d2t.copy_(ids - torch.arange(vd, device=ids.device))
        self.t2d.zero_()
        self.t2d[ids] = True

    @torch.no_grad()
    def copy_embeddings_from(self, source: Any) -> None:
        """Copy the target's input embeddings into ``model.embed_tokens`` (keeps its ``requires_grad``).

        Args:
            source: a module with ``get_input_embeddings()`` (HF model, ``TargetCapture``), an
                ``nn.Embedding`` or a ``[V, H]`` tensor; a DTensor is gathered with ``full_tensor()``.

        Raises:
            TypeError: unsupported source; ValueError: shape differs from ``[V, H]``.
        """
        if isinstance(source, nn.Embedding):
            weight = source.weight
        elif isinstance(source, torch.Tensor):
            weight = source
        elif callable(getattr(source, "get_input_embeddings", None)):
            weight = source.get_input_embeddings().weight
        else:
            raise TypeError(
                f"source must be a model with get_input_embeddings(), an nn.Embedding or a tensor, got {type(source).__name__}"
            )
        if hasattr(weight, "full_tensor"):
            weight = weight.full_tensor()
        target = self.model.embed_tokens.weight
        if tuple(weight.shape) != tuple(target.shape):
            raise ValueError(f"embedding shape must be {list(target.shape)}, got {list(weight.shape)}")
        target.copy_(weight.detach().to(device=target.device, dtype=target.dtype))

    # ------------------------------------------------------------------------------------ trainer API

    def project_hidden_states(self, aux_hidden_states: torch.Tensor) -> torch.Tensor:
        """``[..., num_aux * H_t] -> [..., H]``: per-chunk ``fc_norm`` (EAGLE-3.1) then ``fc``.

        Raises:
            ValueError: wrong last dimension.
        """
        h_t, n_aux = self.config.target_hidden_size, self.config.num_aux_hidden_states
        if aux_hidden_states.shape[-1] != n_aux * h_t:
            raise ValueError(
                f"aux_hidden_states must end in num_aux * H_t = {n_aux * h_t} features, got {list(aux_hidden_states.shape)}"
            )
        x = aux_hidden_states.to(self.model.fc.weight.dtype)
        if self.config.fc_norm:
            x = torch.cat([norm(chunk) for norm, chunk in zip(self.model.fc_norm, x.split(h_t, dim=-1), strict=True)], dim=-1)
        return self.model.fc(x)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """int ``[B, T]`` target token ids -> ``[B, T, H]``."""
        return self.model.embed_tokens(input_ids)

    def lm_head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What ``lm_head`` multiplies: ``norm(hidden)``, or ``hidden`` itself when ``norm_output`` (the
        forward already normed it; never norm twice)."""
        return hidden if self.config.norm_output else self.model.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H] -> [..., Vd]`` draft-vocab logits ``lm_head(lm_head_input(hidden))``."""
        return self.lm_head(self.lm_head_input(hidden))

    def _positions(self, position_ids: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
        if position_ids is None:
            return torch.arange(t, device=device).expand(b, t)
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2 or position_ids.shape[-1] != t or position_ids.shape[0] not in (1, b):
            raise ValueError(f"position_ids must have shape [B, T] = {[b, t]}, got {list(position_ids.shape)}")
        return position_ids.expand(b, t)

    def _check_step_inputs(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> tuple[int, int]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {list(input_ids.shape)}")
        b, t = input_ids.shape
        if tuple(hidden.shape) != (b, t, self.config.hidden_size):
            raise ValueError(
                f"projected_hidden_states must have shape [B, T, H] = {[b, t, self.config.hidden_size]}, "
                f"got {list(hidden.shape)}"
            )
        return b, t

    def ttt_rows(self, attention_mask: torch.Tensor | None, seq_lens: torch.Tensor | None, b: int, t: int,
                 device: torch.device) -> tuple:
        """The row structure of a TTT batch, ``(key_valid, doc_ids, doc_ids_host)``, for every step of its unroll:
        the trainer builds it once per batch and passes it to each :meth:`forward` (``rows=``), so the unroll pays
        for it once. ``seq_lens`` is validated and turned into document ids on the host: free when it lives there
        (collate output), one device-to-host copy per batch when it is on CUDA; the ids reach the device with an
        asynchronous copy, and the host copy feeds the lean kernel's chunk plan."""
        key_valid = check_attention_mask(attention_mask, b, t)
        doc_ids = doc_ids_host = None
        if seq_lens is not None:
            if not isinstance(seq_lens, torch.Tensor):
                raise TypeError(f"seq_lens must be an integer torch.Tensor [B, D], got {type(seq_lens).__name__}")
            doc_ids_host = document_ids_from_seq_lens(seq_lens.detach().cpu(), t)
            doc_ids = to_device_async(doc_ids_host, device)
        return key_valid, doc_ids, doc_ids_host

    def forward(
        self,
        input_ids: torch.Tensor,
        projected_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache_hidden: list[list[torch.Tensor]] | None = None,
        seq_lens: torch.Tensor | None = None,
        *,
        rows: tuple | None = None,
    ) -> torch.Tensor:
        """One TTT step of the draft.

        Args:
            input_ids: int64 ``[B, T]`` tokens of this step (the step-k shifted ids).
            projected_hidden_states: ``[B, T, H]``: ``fc(aux)`` at step 0, the previous step's output after.
            attention_mask: ``[B, T]`` real-token mask (unshifted), or None.
            position_ids: int ``[B, T]`` step-0 positions (unshifted; per document when packed). RoPE uses
                ``position_ids + k`` with ``k = len(cache_hidden[0])`` before this call.
            cache_hidden: ``[K_list, V_list]`` shared across the unroll; this call appends one K and one V.
            seq_lens: int ``[B, D]`` packed document lengths (rows summing to T): attention stays inside
                each document. Best kept on the host (as collated): see the host-sync note below.
            rows: :meth:`ttt_rows` of this batch's ``attention_mask`` / ``seq_lens`` (built here when None).

        Returns:
            ``[B, T, H]`` hidden state (``norm``-ed when ``norm_output``).

        Raises:
            ValueError: a multi-layer draft (TTT is single-layer), or inconsistent shapes.

        Host syncs per step: none from this method when ``rows`` is given. The row structure
        (``attention_mask`` -> key mask, ``seq_lens`` -> document ids) costs one device-to-host copy if
        ``seq_lens`` is on CUDA, none if it is on the host; the lean attention reads chunk bounds from the host
        copy of the document ids.
        """
        if len(self.model.layers) != 1:
            raise ValueError(
                f"the TTT forward needs a single-layer draft, this one has {len(self.model.layers)} layers "
                "(use forward_positions)"
            )
        b, t = self._check_step_inputs(input_ids, projected_hidden_states)
        if cache_hidden is None:
            cache_hidden = [[], []]
        if len(cache_hidden) != 2 or len(cache_hidden[0]) != len(cache_hidden[1]):
            raise ValueError("cache_hidden must be [K_list, V_list] with lists of equal length")
        step = len(cache_hidden[0])
        if rows is None:
            rows = self.ttt_rows(attention_mask, seq_lens, b, t, input_ids.device)
        key_valid, doc_ids, doc_ids_host = rows
        cos, sin = self.rotary_emb(self._positions(position_ids, b, t, input_ids.device) + step)
        context = TTTContext(
            cache_hidden, doc_ids, key_valid, self.attn_implementation, self.query_chunk_size, doc_ids_host
        )
        embeds = self.embed_input_ids(input_ids).to(projected_hidden_states.dtype)
        hidden = self.model.layers[0](embeds, projected_hidden_states, cos, sin, context)
        return self.model.norm(hidden) if self.config.norm_output else hidden

    def forward_positions(
        self,
        input_ids: torch.Tensor,
        projected_hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: Any,
    ) -> torch.Tensor:
        """The draft forward with explicit RoPE positions and attention, over every layer: P-EAGLE's parallel
        forward over a flattened COD sequence of length n in training, and the decoders' forward at inference.

        Args:
            input_ids: int64 ``[B, n]`` (``mask_token_id`` at depth >= 1 slots).
            projected_hidden_states: ``[B, n, H]`` (projected ``mask_hidden`` at depth >= 1 slots).
            position_ids: int ``[B, n]`` RoPE positions (``anchor + depth``); no step offset.
            attention_mask: flex ``BlockMask`` or dense bool ``[B|1, 1, n, n]`` (True = visible); see
                :func:`~eagle_ext.models.attention.masked_attention`.

        Returns:
            ``[B, n, H]`` (``norm``-ed when ``norm_output``).
        """
        b, n = self._check_step_inputs(input_ids, projected_hidden_states)
        cos, sin = self.rotary_emb(self._positions(position_ids, b, n, input_ids.device))
        embeds = self.embed_input_ids(input_ids).to(projected_hidden_states.dtype)
        layers = self.model.layers
        hidden = layers[0](embeds, projected_hidden_states, cos, sin, attention_mask)
        for layer in layers[1:]:
            hidden = layer(hidden, cos, sin, attention_mask)
        return self.model.norm(hidden) if self.config.norm_output else hidden

    forward_peagle = forward_positions  # the seed name (P-EAGLE's training forward)


#: the seed name of :class:`DraftModel` (public API; EAGLE-3 and P-EAGLE share the model)
Eagle3DraftModel = DraftModel
