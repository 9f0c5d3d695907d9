"""Tiny random targets of the families users bring (4 layers, hidden 64, fp32): built from configs only.

``zoo_config(family, vocab)`` returns a transformers config, or None when the installed transformers lacks the
family. Window sizes are small (8) so that documents longer than the window exercise the sliding layers.
"""

from __future__ import annotations

import transformers

WINDOW = 8

#: family -> (model_type, config keyword arguments beyond the common ones)
_FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "qwen3": ("qwen3", {"head_dim": 16, "tie_word_embeddings": True}),
    "qwen3_moe": ("qwen3_moe", {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                                "moe_intermediate_size": 32, "decoder_sparse_step": 1}),
    "qwen2": ("qwen2", {}),
    "qwen2_sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2}),
    "mistral": ("mistral", {"head_dim": 16, "sliding_window": None}),
    "mistral_sliding": ("mistral", {"head_dim": 16, "sliding_window": WINDOW}),
    "phi3": ("phi3", {"partial_rotary_factor": 0.5, "pad_token_id": 0}),
    "gpt_oss": ("gpt_oss", {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                            "sliding_window": WINDOW, "intermediate_size": 64,
                            "layer_types": ["sliding_attention", "full_attention"] * 2,
                            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    "gemma3": ("gemma3_text", {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                               "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                                               "full_attention"]}),
    "deepseek_v3": ("deepseek_v3", {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
                                    "qk_nope_head_dim": 8, "v_head_dim": 16, "head_dim": 8, "n_routed_experts": 4,
                                    "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
                                    "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_shared_experts": 1}),
    "glm4": ("glm4", {"head_dim": 16, "partial_rotary_factor": 0.5}),
    "qwen3_next": ("qwen3_next", {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
                                  "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                                  "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4,
                                  "layer_types": ["linear_attention", "full_attention"] * 2}),
}

FAMILIES = tuple(_FAMILIES)
SLIDING_FAMILIES = ("gpt_oss", "gemma3", "mistral_sliding", "qwen2_sliding")


def zoo_config(family: str, vocab: int = 96):
    """A tiny fp32 config of ``family`` (eager attention), or None when transformers lacks the model type."""
    model_type, extra = _FAMILIES[family]
    try:
        cls = transformers.AutoConfig.for_model(model_type).__class__
    except (ValueError, KeyError):
        return None
    kwargs = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    kwargs.update(extra)
    config = cls(**kwargs)
    config._attn_implementation = "eager"
    return config


def zoo_model(family: str, vocab: int = 96, seed: int = 0):
    """A random ``AutoModelForCausalLM`` of ``family`` in fp32 eval mode, or None (see :func:`zoo_config`)."""
    import torch

    config = zoo_config(family, vocab)
    if config is None:
        return None
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.float().eval()
