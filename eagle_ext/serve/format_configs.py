"""The ``config.json`` of each export format: the builders and the format-specific checks that
:data:`eagle_ext.serve.formats.FORMATS` names (``build_config`` / ``check_config``), and the draft decoder's
Llama fields every format writes. Field by field: ``../shared/reference/serving-formats.md``."""

from __future__ import annotations

from typing import Any

__all__ = ["layer_config", "speculators_config", "flat_config", "check_speculators_fields", "check_sglang_fields",
           "check_specforge_peagle_fields"]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def layer_config(config: Any, num_layers: int) -> dict[str, Any]:
    """The draft decoder as a Llama config dict: what every format needs to rebuild it (and what our draft
    actually computes with: its attention is Llama-style whatever the target's model type)."""
    from eagle_ext.models.rope import rope_parameters_from_config

    rope = rope_parameters_from_config(config)
    partial = rope.pop("partial_rotary_factor")
    heads = config.num_attention_heads
    fields: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": num_layers,
        "vocab_size": config.vocab_size,
        "hidden_act": getattr(config, "hidden_act", "silu"),
        "rms_norm_eps": getattr(config, "rms_norm_eps", 1e-6),
        "max_position_embeddings": config.max_position_embeddings,
        # Both RoPE spellings: transformers >= 5 reads rope_parameters, older readers rope_theta/rope_scaling.
        "rope_theta": rope["rope_theta"],
        "rope_parameters": dict(rope),
        "attention_bias": bool(getattr(config, "attention_bias", False)),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        "tie_word_embeddings": False,
    }
    if rope["rope_type"] != "default":
        fields["rope_scaling"] = dict(rope)
    if partial != 1.0:
        fields["partial_rotary_factor"] = partial
        fields["rope_parameters"]["partial_rotary_factor"] = partial
    pad = getattr(config, "pad_token_id", None)
    if is_int(pad) and 0 <= pad < config.vocab_size:
        fields["pad_token_id"] = pad
    return fields


def _mask_fields(config: dict[str, Any], draft_config: Any, spec: Any) -> None:
    if spec.parallel_drafting:  # vLLM reads pard_token, specforge mask_token_id
        config["mask_token_id"] = draft_config.mask_token_id
        config["pard_token"] = draft_config.mask_token_id


def speculators_config(fmt, spec, cfg, layer, ids, *, speculative_tokens, target_name_or_path, target_architectures,
                       dtype_name) -> dict[str, Any]:
    """speculators' config: the algorithm in ``speculators_model_type``, the decoder nested in
    ``transformer_layer_config``, the verifier and default draft length in ``speculators_config``."""
    config: dict[str, Any] = {
        "speculators_model_type": spec.name,
        "architectures": [fmt.architecture(spec.name)],
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": None,
        "norm_before_residual": False,
        "norm_before_fc": False,
        "fc_norm": bool(cfg.fc_norm),
        "norm_output": bool(cfg.norm_output),
        fmt.aux_ids_key[0]: [i + fmt.aux_id_offset for i in ids],
        "embed_requires_grad": spec.parallel_drafting,  # a parallel drafter trains its embedding
        "tie_word_embeddings": False,
        "dtype": dtype_name,
        "speculators_config": {
            "algorithm": spec.name,
            "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": target_name_or_path, "architectures": target_architectures},
        },
        fmt.layer_key: layer,
    }
    _mask_fields(config, cfg, spec)
    return config


def flat_config(fmt, spec, cfg, layer, ids, *, speculative_tokens, target_name_or_path, target_architectures,
                dtype_name) -> dict[str, Any]:
    """specforge's flat config (an HF ``LlamaConfig`` plus the draft keys); the aux ids under ``eagle_config``.
    ``norm_output`` is left out on purpose: specforge reads it as "apply the final norm" (false drops it)."""
    del speculative_tokens, target_name_or_path, target_architectures  # the flat formats record none of these
    config: dict[str, Any] = {"architectures": [fmt.architecture(spec.name)]}
    config.update(layer)
    config.update({
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": cfg.target_hidden_size,
        "norm_before_residual": False,
        fmt.aux_ids_key[0]: {fmt.aux_ids_key[1]: [i + fmt.aux_id_offset for i in ids], "use_aux_hidden_state": True},
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    })
    if cfg.fc_norm:
        config["fc_norm"] = True
    _mask_fields(config, cfg, spec)
    return config


# ------------------------------------------------------------------------------------------------ checks


def _check_proposal_methods(sc: dict[str, Any]) -> list[str]:
    methods = sc.get("proposal_methods")
    if not isinstance(methods, list) or not methods or not isinstance(methods[0], dict):
        return ["config.json: speculators_config.proposal_methods must be a non-empty list (vLLM reads "
                "speculative_tokens from its first entry)"]
    problems = []
    tokens = methods[0].get("speculative_tokens")
    if not is_int(tokens) or tokens < 1:
        problems.append(f"config.json: speculators_config.proposal_methods[0].speculative_tokens must be an int "
                        f">= 1, got {tokens!r}")
    if methods[0].get("proposal_type") != "greedy" or sc.get("default_proposal_method") != "greedy":
        problems.append("config.json: proposal_methods[0].proposal_type and default_proposal_method must both "
                        f"be 'greedy', got {methods[0].get('proposal_type')!r} / "
                        f"{sc.get('default_proposal_method')!r}")
    return problems


def check_speculators_fields(config: dict[str, Any], spec: Any) -> list[str]:
    """The speculators-only fields: ``speculators_config`` and the explicit layout booleans."""
    sc = config.get("speculators_config")
    if not isinstance(sc, dict):
        return ["config.json: speculators_config is missing (pydantic and vLLM require it)"]
    problems = []
    if sc.get("algorithm") != spec.name:
        problems.append(f"config.json: speculators_config.algorithm must be {spec.name!r}, got {sc.get('algorithm')!r}")
    problems += _check_proposal_methods(sc)
    verifier = sc.get("verifier")
    if not isinstance(verifier, dict) or "name_or_path" not in verifier or not verifier.get("architectures"):
        problems.append("config.json: speculators_config.verifier needs name_or_path and a non-empty "
                        f"architectures list, got {verifier!r}")
    for key in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
        if not isinstance(config.get(key), bool):
            problems.append(f"config.json: {key} must be written explicitly as a bool (vLLM's eagle3 translation "
                            f"assumes norm_before_residual=true when absent), got {config.get(key)!r}")
    return problems


def _check_specforge_fields(config: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            problems.append(f"config.json: {key} must be false (specforge builds no biases)")
    eagle = config.get("eagle_config")
    if eagle is not None and not isinstance(eagle, dict):
        problems.append(f"config.json: eagle_config must be an object, got {eagle!r}")
    return problems


def check_sglang_fields(config: dict[str, Any], spec: Any) -> list[str]:
    """SGLang's flat EAGLE-3 layout: one ``midlayer``, the un-normed residual, no ``norm_output``."""
    del spec  # one algorithm only
    problems = []
    if config.get("num_hidden_layers") != 1:
        problems.append(f"config.json: num_hidden_layers must be 1 (specforge builds one midlayer), got "
                        f"{config.get('num_hidden_layers')!r}")
    if config.get("norm_before_residual", False) is not False:
        problems.append("config.json: norm_before_residual must be false or absent (the SGLang midlayer keeps "
                        f"the un-normed fc(hidden) as the residual), got {config.get('norm_before_residual')!r}")
    if "norm_output" in config:
        problems.append("config.json: norm_output must be omitted (specforge reads false as 'drop the final "
                        "norm')")
    return problems + _check_specforge_fields(config)


def check_specforge_peagle_fields(config: dict[str, Any], spec: Any) -> list[str]:
    """specforge's flat P-EAGLE layout: ``norm_before_residual`` written explicitly."""
    del spec  # one algorithm only
    problems = []
    if not isinstance(config.get("norm_before_residual"), bool):
        problems.append(f"config.json: norm_before_residual must be written explicitly as a bool, got "
                        f"{config.get('norm_before_residual')!r}")
    return problems + _check_specforge_fields(config)
