"""Check an export directory the way the engines read it (:func:`check_export`), and name the engines known not
to serve its target family (:func:`export_engine_notes`). Generic over :data:`eagle_ext.serve.formats.FORMATS`:
what differs between formats is read from the table or its ``check_config`` function."""

from __future__ import annotations

import os
from typing import Any

import torch

from eagle_ext.algorithms import algorithm_spec
from eagle_ext.serve.export_read import METADATA_KEY, load_tensors, read_config, tensor_infos
from eagle_ext.serve.format_configs import is_int
from eagle_ext.serve.formats import ExportFormat, detect_format

__all__ = ["check_export", "export_engine_notes"]

FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_LAYER_INTS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
               "num_hidden_layers", "vocab_size", "max_position_embeddings")
_VOCAB_MAP = ("d2t", "t2d")


def _expected_tensors(fmt: ExportFormat, spec: Any, layer: dict[str, Any], *, vd: int, n_aux: int, fc_norm: bool,
                      norm_before_fc: bool) -> dict[str, list[int]]:
    """Tensor name -> shape that an engine loads for this config (``embed_tokens.weight`` included)."""
    h, i = layer["hidden_size"], layer["intermediate_size"]
    nh, nkv, hd = layer["num_attention_heads"], layer["num_key_value_heads"], layer["head_dim"]
    v = layer["vocab_size"]
    attn_bias, mlp_bias = bool(layer.get("attention_bias")), bool(layer.get("mlp_bias"))
    out: dict[str, list[int]] = {"model.embed_tokens.weight": [v, h], "model.fc.weight": [h, n_aux * h],
                                 "model.norm.weight": [h], "lm_head.weight": [vd, h]}
    for j in range(layer["num_hidden_layers"]):
        width = 2 * h if j == 0 else h
        names = {
            "input_layernorm.weight": [h], "post_attention_layernorm.weight": [h],
            "self_attn.q_proj.weight": [nh * hd, width], "self_attn.k_proj.weight": [nkv * hd, width],
            "self_attn.v_proj.weight": [nkv * hd, width], "self_attn.o_proj.weight": [h, nh * hd],
            "mlp.gate_proj.weight": [i, h], "mlp.up_proj.weight": [i, h], "mlp.down_proj.weight": [h, i],
        }
        if j == 0:
            names["hidden_norm.weight"] = [h]
        if attn_bias:
            names.update({"self_attn.q_proj.bias": [nh * hd], "self_attn.k_proj.bias": [nkv * hd],
                          "self_attn.v_proj.bias": [nkv * hd], "self_attn.o_proj.bias": [h]})
        if mlp_bias:
            names.update({"mlp.gate_proj.bias": [i], "mlp.up_proj.bias": [i], "mlp.down_proj.bias": [h]})
        out.update({f"model.layers.{j}.{k}": s for k, s in names.items()})
    if fc_norm:
        out.update({f"model.fc_norm.{j}.weight": [h] for j in range(n_aux)})
    if norm_before_fc:
        out["model.input_norm.weight"] = [n_aux * h]
    if spec.parallel_drafting:
        out["mask_hidden"] = [1, 1, n_aux * h]
    return {fmt.export_name(k): s for k, s in out.items()}


def _check_ids(ids: Any, field: str, n: int | None, low: int, high: int | None, meaning: str) -> list[str]:
    if ids is None:
        return [f"config.json: {field} is missing: the engines then capture their own default layers"]
    if not isinstance(ids, list) or not ids or not all(is_int(k) for k in ids):
        return [f"config.json: {field} must be a list of ints, got {ids!r}"]
    problems = []
    if n is not None and len(ids) != n:
        problems.append(f"config.json: {field} has {len(ids)} ids but fc reads {n} aux hidden states")
    bad = [k for k in ids if k < low or (high is not None and k > high)]
    if bad:
        upper = "" if high is None else f", {high}"
        problems.append(f"config.json: {field} = {ids} has ids out of range [{low}{upper}] ({meaning}): {bad}")
    return problems


def _check_rope(layer: dict[str, Any], where: str) -> list[str]:
    rope = layer.get("rope_parameters")
    if "rope_theta" not in layer or not isinstance(rope, dict):
        return [f"{where}RoPE must be written in both spellings (rope_theta and rope_parameters), got "
                f"rope_theta={layer.get('rope_theta')!r} rope_parameters={rope!r}"]
    if rope.get("rope_theta") != layer["rope_theta"]:
        return [f"{where}rope_theta {layer['rope_theta']!r} disagrees with rope_parameters.rope_theta "
                f"{rope.get('rope_theta')!r}"]
    if rope.get("rope_type", "default") != "default" and layer.get("rope_scaling") is None:
        return [f"{where}rope_scaling is missing for rope_type {rope.get('rope_type')!r} (older readers "
                "would use plain RoPE)"]
    return []


def _check_layer_fields(layer: dict[str, Any], where: str) -> list[str]:
    problems = []
    if layer.get("model_type") != "llama":
        problems.append(f"{where}model_type must be 'llama' (the draft decoder eagle_ext writes), got "
                        f"{layer.get('model_type')!r}")
    for key in _LAYER_INTS:
        if not is_int(layer.get(key)) or layer[key] < 1:
            problems.append(f"{where}{key} must be an int >= 1, got {layer.get(key)!r}")
    if not isinstance(layer.get("rms_norm_eps"), (int, float)) or isinstance(layer.get("rms_norm_eps"), bool):
        problems.append(f"{where}rms_norm_eps must be a number, got {layer.get('rms_norm_eps')!r}")
    if not isinstance(layer.get("hidden_act"), str):
        problems.append(f"{where}hidden_act must be a string (e.g. 'silu'), got {layer.get('hidden_act')!r}")
    problems += _check_rope(layer, where)
    if layer.get("tie_word_embeddings") is not False:
        problems.append(f"{where}tie_word_embeddings must be false (SGLang would use embed_tokens as the head), got "
                        f"{layer.get('tie_word_embeddings')!r}")
    for key in ("attention_bias", "mlp_bias"):
        if not isinstance(layer.get(key), bool):
            problems.append(f"{where}{key} must be written as a bool, got {layer.get(key)!r}")
    return problems


def _check_draft_fields(config: dict[str, Any], layer: dict[str, Any], spec: Any) -> list[str]:
    """Vocabulary, layer count, mask token and target hidden size, the same in every format."""
    problems = []
    vd, v = config.get("draft_vocab_size"), layer.get("vocab_size")
    if not is_int(vd) or vd < 1 or (is_int(v) and vd > v):
        problems.append(f"config.json: draft_vocab_size must be an int in [1, vocab_size={v}] (absent: speculators "
                        f"assumes 32000, vLLM the full vocab), got {vd!r}")
    if not spec.parallel_drafting and layer.get("num_hidden_layers") != 1:
        problems.append(f"config.json: an {spec.label} draft has num_hidden_layers 1, got "
                        f"{layer.get('num_hidden_layers')!r}")
    if spec.parallel_drafting:
        mask = config.get("mask_token_id")
        if not is_int(mask) or not is_int(v) or not 0 <= mask < v:
            problems.append(f"config.json: mask_token_id must be an int in [0, vocab_size={v}) (vLLM's pard_token; "
                            f"absent: vLLM raises KeyError), got {mask!r}")
    h, target_hidden = layer.get("hidden_size"), config.get("target_hidden_size")
    if target_hidden is not None and target_hidden != h:
        problems.append(f"config.json: target_hidden_size must be null or the hidden size {h}, got {target_hidden!r}")
    return problems


def _check_aux_ids(config: dict[str, Any], fmt: ExportFormat, block: dict[str, Any], n_aux: int | None) -> list[str]:
    """The aux layer ids in the format's convention and range, and agreeing with the ``eagle_ext`` block."""
    ids, field = fmt.aux_ids(config), ".".join(fmt.aux_ids_key)
    n_layers = block.get("target_num_hidden_layers") if is_int(block.get("target_num_hidden_layers")) else None
    high = None if n_layers is None else n_layers - 1 + fmt.aux_id_offset
    problems = _check_ids(ids, field, n_aux, 0, high, fmt.aux_meaning)
    ours = [k - fmt.aux_id_offset for k in ids] if isinstance(ids, list) and all(is_int(k) for k in ids) else None
    recorded = block.get("aux_layer_ids")
    if recorded is not None and ours is not None and recorded != ours:
        problems.append(f"config.json: the aux layer ids {ids} are {ours} in eagle_ext's convention, but the eagle_ext "
                        f"block records {recorded} (a convention mix-up moves every captured layer)")
    return problems


def _check_dtypes(config: dict[str, Any], infos: dict[str, tuple[list[int], str]]) -> list[str]:
    problems = []
    prefixed = sorted(k for k in infos if k.startswith("model."))
    for name in prefixed:
        problems.append(f"tensor {name!r} carries the 'model.' prefix: vLLM adds it itself and would look for "
                        f"'model.{name}'; write {name[len('model.'):]!r}")
    dtypes = {d for name, (_, d) in infos.items() if name not in _VOCAB_MAP}
    bad_dtypes = sorted(f"{name}: {d}" for name, (_, d) in infos.items()
                        if name not in _VOCAB_MAP and d not in FLOAT_DTYPES)
    if bad_dtypes:
        problems.append(f"tensors other than d2t / t2d must be F32, BF16 or F16, found {bad_dtypes}")
    if len(dtypes) > 1:
        problems.append(f"float tensors mix dtypes {sorted(dtypes)}")
    declared = config.get("dtype") or config.get("torch_dtype")
    if len(dtypes) == 1 and declared is not None and FLOAT_DTYPES.get(next(iter(dtypes))) != declared:
        problems.append(f"config.json declares dtype {declared!r} but the tensors are {next(iter(dtypes))}")
    return problems


def _check_tensor_set(infos, expected: dict[str, list[int]], embed_from_target: bool) -> list[str]:
    problems = []
    embed = "embed_tokens.weight"
    for name, shape in expected.items():
        if name not in infos:
            if "model." + name in infos:
                continue  # reported as prefixed
            if name == embed and embed_from_target:
                continue
            if name == embed:
                problems.append("tensor 'embed_tokens.weight' is missing and the eagle_ext block does not record "
                                "the embedding as the target's (speculators and specforge cannot load it)")
            else:
                problems.append(f"tensor {name!r} {shape} is missing")
        elif infos[name][0] != shape:
            problems.append(f"tensor {name!r} has shape {infos[name][0]}, expected {shape}")
    if embed_from_target and embed in infos:
        problems.append("the eagle_ext block records the embedding as the target's, yet embed_tokens.weight is shipped")
    for name in sorted(infos):
        if name in expected or name in _VOCAB_MAP or name.startswith("model."):
            continue
        hint = " (training-only; speculators never saves it)" if name.startswith("verifier_") else ""
        problems.append(f"unexpected tensor {name!r} {infos[name][0]}{hint}")
    return problems


def _check_vocab_map(directory: str, infos, vd: int, v: int, fmt: ExportFormat) -> list[str]:
    compressed = vd < v
    present = [k for k in _VOCAB_MAP if k in infos]
    if not present:
        if compressed:
            return [f"d2t and t2d are missing although draft_vocab_size {vd} < vocab_size {v}: vLLM would keep a zero "
                    "d2t (an identity map, silently wrong) and speculators uninitialised memory"]
        if fmt.identity_vocab_map:
            return ["d2t and t2d are missing: specforge always has these buffers and, under transformers 5, leaves "
                    "absent ones uninitialised; write the identity (d2t zeros, t2d all true)"]
        return []
    problems = []
    if "d2t" not in infos:
        problems.append(f"d2t is missing although t2d is present (draft_vocab_size {vd}, vocab_size {v}): vLLM and "
                        "SGLang read d2t (and ignore t2d); without it vLLM keeps an identity map")
    if "t2d" not in infos:
        problems.append(f"t2d is missing although d2t is present (draft_vocab_size {vd}, vocab_size {v})")
    for name, shape, dtype in (("d2t", [vd], "I64"), ("t2d", [v], "BOOL")):
        if name in infos and (infos[name][0] != shape or infos[name][1] != dtype):
            problems.append(f"tensor {name} must be {dtype} {shape}, got {infos[name][1]} {infos[name][0]}")
    if problems:
        return problems
    tensors = load_tensors(directory, list(_VOCAB_MAP))
    d2t, t2d = tensors["d2t"], tensors["t2d"]
    if not compressed:
        if bool(d2t.any()) or not bool(t2d.all()):
            problems.append("d2t / t2d must be the identity (zeros / all true) when draft_vocab_size == vocab_size")
        return problems
    target_ids = d2t + torch.arange(vd)
    if bool(((target_ids < 0) | (target_ids >= v)).any()):
        problems.append(f"d2t maps draft ids outside [0, {v}) (d2t holds offsets: target = draft + d2t[draft])")
    elif not bool((target_ids[1:] > target_ids[:-1]).all()):
        problems.append("d2t must map the draft ids to strictly ascending target ids (the peers assume "
                        "nonzero(t2d) == arange(Vd) + d2t)")
    elif int(t2d.sum()) != vd or not torch.equal(torch.nonzero(t2d).flatten(), target_ids):
        problems.append(f"t2d disagrees with d2t: nonzero(t2d) must equal arange({vd}) + d2t")
    return problems


def export_engine_notes(directory: str | os.PathLike) -> list[str]:
    """The serving engines known not to serve this export's target family (see
    :mod:`eagle_ext.serve.engine_limits`), one line each, naming engine and version; ``[]`` when none is known
    or the directory is unreadable. Read from the target's ``model_type`` recorded in the ``eagle_ext`` block and
    the speculators verifier's ``architectures`` (so foreign speculators exports are covered too)."""
    from eagle_ext.serve.engine_limits import engine_limit_notes

    try:
        config = read_config(os.fspath(directory))
    except (FileNotFoundError, ValueError):
        return []
    block = config.get(METADATA_KEY) if isinstance(config.get(METADATA_KEY), dict) else {}
    verifier = (config.get("speculators_config") or {}).get("verifier") if isinstance(
        config.get("speculators_config"), dict) else None
    archs = verifier.get("architectures") if isinstance(verifier, dict) else None
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    model_type = block.get("target_model_type") if isinstance(block.get("target_model_type"), str) else None
    notes = engine_limit_notes(model_type, archs)
    if not notes and isinstance(block.get("engine_limits"), list):
        notes = [n for n in block["engine_limits"] if isinstance(n, str)]
    return notes


def _read_infos(directory: str, problems: list[str]) -> dict[str, tuple[list[int], str]] | None:
    try:
        return tensor_infos(directory)
    except (FileNotFoundError, OSError, ValueError) as err:  # a missing or unreadable weights file
        problems.append(str(err))
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error type for a corrupt header)
        problems.append(f"cannot read the weights: {err}")
    return None


def check_export(directory: str | os.PathLike) -> list[str]:
    """Validate an export directory the way the engines read it; ``[]`` means OK.

    Checks: ``config.json`` and the weights exist; the format is recognised; the fields each engine needs are
    present and explicit (see :mod:`eagle_ext.serve.export`); the aux layer ids are in the format's convention
    and range (``[0, L]`` for speculators, ``[0, L - 1]`` for ``eagle_config``, with ``L`` the target layer count
    recorded in the ``eagle_ext`` block, and agree with the ids recorded there); the tensor set and shapes match
    the config (no missing, extra or ``model.``-prefixed names); float tensors share one dtype among fp32 / bf16 /
    fp16 that matches the config's ``dtype``; ``d2t`` / ``t2d`` are present when the vocabulary is compressed (and
    always in the specforge formats), have the right dtypes, and agree (identity for a full vocabulary); P-EAGLE's
    ``mask_token_id`` and ``mask_hidden``.

    Never raises for a bad directory: every problem is a line of the returned list.
    """
    directory = os.fspath(directory)
    try:
        config = read_config(directory)
        fmt, algorithm = detect_format(config)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    spec, block = algorithm_spec(algorithm), config.get(METADATA_KEY) or {}
    layer = fmt.layer_fields(config)
    if not isinstance(layer, dict):
        return [f"config.json: {fmt.layer_key} is missing (speculators would build a default Qwen3Config "
                "and vLLM rejects the config)"]
    where = "config.json: " + ("" if fmt.layer_key is None else fmt.layer_key + ".")
    problems = _check_layer_fields(layer, where) + fmt.function("check_config")(config, spec)
    problems += _check_draft_fields(config, layer, spec)
    vd, v, h = config.get("draft_vocab_size"), layer.get("vocab_size"), layer.get("hidden_size")
    layer_ok = all(is_int(layer.get(k)) and layer[k] >= 1 for k in _LAYER_INTS)
    layer_ok = layer_ok and is_int(vd) and 1 <= vd and not (is_int(v) and vd > v)
    infos = _read_infos(directory, problems)
    n_aux = None
    if infos is not None and "fc.weight" in infos and is_int(h) and len(infos["fc.weight"][0]) == 2:
        width = infos["fc.weight"][0][1]
        n_aux = width // h if width % h == 0 else None
    problems += _check_aux_ids(config, fmt, block, n_aux)
    if infos is None:
        return problems
    problems += _check_dtypes(config, infos)
    if not layer_ok:
        return problems
    ids = fmt.aux_ids(config)
    if n_aux is None:
        n_aux = len(ids) if isinstance(ids, list) and ids else 3
    expected = _expected_tensors(fmt, spec, layer, vd=vd, n_aux=n_aux, fc_norm=bool(config.get("fc_norm", False)),
                                 norm_before_fc="norm_before_fc" in fmt.layout_flags
                                 and bool(config.get("norm_before_fc", False)))
    problems += _check_tensor_set(infos, expected, block.get("embed_tokens") == "target")
    return problems + _check_vocab_map(directory, infos, vd, v, fmt)
