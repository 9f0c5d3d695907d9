"""Export a trained draft in the directory formats the serving engines load, read those formats back, and
check an export directory the way the engines read it.

Formats (field by field in ``../shared/reference/serving-formats.md``):

- ``"speculators"``: ``config.json`` with ``speculators_model_type`` (``"eagle3"`` or ``"peagle"``), a nested
  ``transformer_layer_config`` and ``speculators_config``; tensors ``layers.{i}.*``. speculators loads it,
  vLLM serves it (EAGLE-3 and P-EAGLE parallel drafting).
- ``"sglang"``: specforge's flat ``LlamaConfig`` with ``architectures: ["LlamaForCausalLMEagle3"]``; layer 0
  tensors named ``midlayer.*``. specforge loads it, SGLang serves it. EAGLE-3 only.
- ``"specforge_peagle"``: specforge's flat P-EAGLE layout (``architectures: ["PEagleDraftModel"]``, tensors as in
  the speculators P-EAGLE format). P-EAGLE only.

What every export writes explicitly, because an engine would otherwise default it (often wrongly):
``draft_vocab_size``; ``norm_before_residual: false`` (eagle_ext's layer 0 keeps the un-normed ``fc(hidden)``
as the residual; vLLM's eagle3 translation assumes true when absent); the real draft layer count; the aux layer
ids in the family's own convention (speculators / vLLM ``eagle_aux_hidden_state_layer_ids``: our id + 1, the
*input* of that layer; specforge / SGLang ``eagle_config.eagle_aux_hidden_state_layer_ids``: our id, the
*output* of that layer); RoPE as ``rope_theta`` + ``rope_parameters`` (+ ``rope_scaling`` when not default);
``tie_word_embeddings: false``; P-EAGLE ``mask_token_id`` (and ``pard_token``, vLLM's name) and ``mask_hidden``.

Tensor names carry no ``model.`` prefix (vLLM adds it itself). ``d2t`` (int64 offsets, ``target = draft +
d2t[draft]``) and ``t2d`` (bool membership) are written in the speculators format only when the draft vocabulary
is smaller than the target's. The specforge formats always carry them (identity maps for a full vocabulary, as
specforge's own exporter writes): specforge 0.2.0 under transformers 5 leaves absent buffers as uninitialised
memory (seen with ``tests/test_export_compat.py``). The draft vocabulary is written in ascending target-id order
(``lm_head`` rows permuted to match), because the peers check ``nonzero(t2d) == arange(Vd) + d2t``; eagle_ext's
own selection is frequency-ordered. Per target token the logits are unchanged.

Every export also carries an ``eagle_ext`` block in ``config.json`` (ignored by the engines: speculators'
pydantic config allows extra keys, HF configs keep unknown keys as attributes) with the aux layer ids in
eagle_ext's convention, the target's layer count, whether the embedding was shipped, and caller metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

from eagle_ext._io import atomic_directory

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_DTYPES",
    "ExportedDraft",
    "check_export",
    "detect_export_format",
    "export_engine_notes",
    "export_draft",
    "export_trained_draft",
    "check_algorithm_format",
    "convert_export",
    "load_exported_draft",
]

EXPORT_FORMATS = ("speculators", "sglang", "specforge_peagle")
#: CLI spelling -> (torch dtype, name written in config.json)
EXPORT_DTYPES = {
    "bf16": (torch.bfloat16, "bfloat16"), "fp16": (torch.float16, "float16"), "fp32": (torch.float32, "float32"),
}
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
METADATA_KEY = "eagle_ext"
METADATA_VERSION = 1
SGLANG_ARCHITECTURE = "LlamaForCausalLMEagle3"
PEAGLE_ARCHITECTURE = "PEagleDraftModel"
SPECULATORS_ARCHITECTURES = {"eagle3": "Eagle3DraftModel", "peagle": "PEagleDraftModel"}
#: names that keep their spelling in every format (vLLM adds ``model.`` to everything else)
UNPREFIXED = ("lm_head.weight", "d2t", "t2d", "mask_hidden")
_FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclasses.dataclass
class ExportedDraft:
    """What :func:`load_exported_draft` returns.

    Attributes:
        draft: the :class:`~eagle_ext.models.Eagle3DraftModel`, fp32 on CPU, eval mode, loaded strictly.
        algorithm: ``"eagle3"`` or ``"peagle"``.
        format: ``"speculators"``, ``"sglang"`` or ``"specforge_peagle"``.
        aux_layer_ids: the captured target layers in eagle_ext's convention (0-indexed decoder layers whose
            *output* is captured, HF ``hidden_states[i + 1]``), converted back from the format's own.
        mask_token_id: the P-EAGLE mask token (``None`` for EAGLE-3).
        target_name_or_path: the verifier / target recorded at export (``None`` when unknown).
        metadata: the ``eagle_ext`` block of ``config.json`` (empty for a foreign export).
    """

    draft: Any
    algorithm: str
    format: str
    aux_layer_ids: list[int]
    mask_token_id: int | None
    target_name_or_path: str | None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_config(config: Any, num_layers: int) -> dict[str, Any]:
    """The draft decoder as a Llama config dict: what both formats need to rebuild it (and what our draft
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
    if _is_int(pad) and 0 <= pad < config.vocab_size:
        fields["pad_token_id"] = pad
    return fields


def _default_target_architectures(model_type: str) -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None:
        raise ValueError(
            f"cannot name the target architecture of model_type {model_type!r}; pass target_architectures, "
            "e.g. ['LlamaForCausalLM']"
        )
    return [name]


def _sorted_vocab(state: dict[str, torch.Tensor], vd: int, v: int) -> dict[str, torch.Tensor]:
    """Reorder the draft vocabulary by ascending target id (``lm_head`` rows, ``d2t``) and rebuild ``t2d``.

    Raises:
        ValueError: ``d2t`` maps outside ``[0, V)``, repeats a target id, or disagrees with ``t2d``.
    """
    target_ids = state["d2t"].to(torch.int64) + torch.arange(vd)
    if bool(((target_ids < 0) | (target_ids >= v)).any()) or torch.unique(target_ids).numel() != vd:
        raise ValueError(f"the draft's d2t does not map its {vd} draft ids to distinct target ids in [0, {v})")
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[target_ids] = True
    if not torch.equal(t2d, state["t2d"].to(torch.bool)):
        raise ValueError("the draft's t2d disagrees with its d2t (call draft.set_vocab_mapping(selected_token_ids))")
    order = torch.argsort(target_ids)
    state = dict(state)
    state["lm_head.weight"] = state["lm_head.weight"][order]
    state["d2t"] = target_ids[order] - torch.arange(vd)
    state["t2d"] = t2d
    return state


def _export_name(key: str, fmt: str) -> str:
    if key in UNPREFIXED:
        return key
    if not key.startswith("model."):
        raise ValueError(f"unexpected draft state-dict key {key!r}")
    name = key[len("model."):]
    if fmt == "sglang" and name.startswith("layers.0."):
        name = "midlayer." + name[len("layers.0."):]
    return name


def _internal_name(name: str, fmt: str) -> str:
    if name in UNPREFIXED:
        return name
    if fmt == "sglang" and name.startswith("midlayer."):
        name = "layers.0." + name[len("midlayer."):]
    return "model." + name


# ------------------------------------------------------------------------------------------------ export


def check_algorithm_format(algorithm: Any, format: str, source: str) -> None:  # noqa: A002
    """Refuse a format that cannot hold a recipe run's draft (``algorithm`` from its ``meta.json``).

    Raises:
        ValueError: ``algorithm`` is not eagle3 / peagle, or ``format`` cannot hold that draft (named with
            ``source``).
    """
    formats = {"eagle3": ("speculators", "sglang"), "peagle": ("speculators", "specforge_peagle")}
    if algorithm not in formats:
        raise ValueError(f"{source!r}: meta.json algorithm must be 'eagle3' or 'peagle', got {algorithm!r}")
    if format not in formats[algorithm]:
        raise ValueError(f"format={format!r} cannot hold the {algorithm} draft of {source!r}; use "
                         f"{' or '.join(formats[algorithm])}")


def export_trained_draft(
    draft: Any,
    meta: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    format: str,  # noqa: A002
    dtype: str = "bf16",
    include_embeddings: bool = True,
    checkpoint: str | None = None,
) -> str:
    """:func:`export_draft` of a recipe run's draft, described by its checkpoint ``meta.json`` (algorithm, aux
    layer ids, target identity, TTT steps or depths); what ``eagle-ext export`` and the end of training call.

    Raises:
        ValueError: the format cannot hold the draft, or ``meta`` disagrees with the draft.
    """
    algorithm = meta.get("algorithm")
    source = checkpoint or "the run"
    check_algorithm_format(algorithm, format, source)
    expected = "peagle" if draft.config.parallel_drafting else "eagle3"
    if algorithm != expected:
        raise ValueError(f"{source!r}: meta.json algorithm {algorithm!r} disagrees with its draft ({expected})")
    target = meta.get("target") or {}
    depth = meta.get("num_depths") if algorithm == "peagle" else meta.get("ttt_steps")
    return export_draft(
        draft, out_dir, format=format, aux_layer_ids=list(meta["aux_layer_ids"]),
        target_name_or_path=target.get("name_or_path"), target_num_hidden_layers=target.get("num_hidden_layers"),
        dtype=dtype, include_embeddings=include_embeddings, speculative_tokens=depth or 3,
        metadata={"checkpoint": checkpoint, "step": meta.get("step"), "epoch": meta.get("epoch")},
    )


def export_draft(
    draft: Any,
    out_dir: str | os.PathLike,
    *,
    format: str,  # noqa: A002  (the user-facing name of the choice)
    aux_layer_ids: list[int],
    target_name_or_path: str | None = None,
    target_num_hidden_layers: int | None = None,
    target_architectures: list[str] | None = None,
    dtype: str = "bf16",
    include_embeddings: bool = True,
    speculative_tokens: int = 3,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write ``draft`` to ``out_dir`` in a serving format (the directory is replaced atomically).

    Args:
        draft: an :class:`~eagle_ext.models.Eagle3DraftModel` (EAGLE-3, or P-EAGLE when
            ``config.parallel_drafting``); any device and dtype; not modified.
        out_dir: the export directory (``config.json`` + ``model.safetensors``).
        format: ``"speculators"`` (EAGLE-3 or P-EAGLE), ``"sglang"`` (EAGLE-3) or ``"specforge_peagle"``
            (P-EAGLE).
        aux_layer_ids: the ``num_aux_hidden_states`` captured target layers in eagle_ext's convention
            (0-indexed decoder layers whose output is captured); converted to each format's convention.
        target_name_or_path: the target (verifier) id or directory, written as the speculators verifier.
        target_num_hidden_layers: the target's layer count; bounds ``aux_layer_ids`` and is recorded so that
            :func:`check_export` can bound them too.
        target_architectures: the verifier's ``architectures`` (default: the causal-LM class of the draft
            config's ``model_type``, which is the target's).
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"`` for the float tensors (``d2t``/``t2d`` stay int64/bool).
        include_embeddings: ship ``embed_tokens.weight [V, H]`` (the target's embedding). False leaves it out
            (the engines then share the target's) and records ``embed_tokens: "target"`` in the ``eagle_ext``
            block; :func:`load_exported_draft` then needs ``embed_tokens=``.
        speculative_tokens: the speculators ``speculative_tokens`` (vLLM's default draft length; the TTT steps
            for EAGLE-3, the parallel depth for P-EAGLE).
        metadata: extra JSON-serialisable information stored under ``eagle_ext.metadata``.

    Returns:
        ``out_dir`` as an absolute path.

    Raises:
        TypeError / ValueError: any argument that does not fit (named in the message), before anything is
            written; e.g. a format that cannot represent the draft (P-EAGLE to ``"sglang"``, EAGLE-3.1
            ``norm_output`` to a specforge format).
    """
    from safetensors.torch import save_file

    from eagle_ext import __version__
    from eagle_ext.models.draft import Eagle3DraftModel

    if not isinstance(draft, Eagle3DraftModel):
        raise TypeError(f"draft must be an eagle_ext Eagle3DraftModel, got {type(draft).__name__}")
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(EXPORT_DTYPES)}, got {dtype!r}")
    cfg = draft.config
    algorithm = "peagle" if cfg.parallel_drafting else "eagle3"
    if format == "sglang" and algorithm != "eagle3":
        raise ValueError("format='sglang' holds EAGLE-3 drafts only; export a P-EAGLE draft as 'speculators' "
                         "(what vLLM serves) or 'specforge_peagle'")
    if format == "specforge_peagle" and algorithm != "peagle":
        raise ValueError("format='specforge_peagle' holds P-EAGLE drafts only; export an EAGLE-3 draft as "
                         "'speculators' or 'sglang'")
    if format != "speculators" and cfg.norm_output:
        raise ValueError(f"format={format!r} cannot hold an EAGLE-3.1 norm_output draft (specforge reads "
                         "norm_output as 'apply the final norm'); use format='speculators'")
    if format != "speculators" and (getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)):
        raise ValueError(f"format={format!r} cannot hold attention / MLP biases (specforge builds none); use "
                         "format='speculators'")
    if format == "specforge_peagle" and cfg.fc_norm:
        raise ValueError("format='specforge_peagle' has no fc_norm tensors; use format='speculators'")
    n_aux = cfg.num_aux_hidden_states
    if (not isinstance(aux_layer_ids, (list, tuple)) or len(aux_layer_ids) != n_aux
            or not all(_is_int(i) and i >= 0 for i in aux_layer_ids)):
        raise ValueError(f"aux_layer_ids must be {n_aux} ints >= 0 (0-indexed target decoder layers whose output "
                         f"is captured), got {aux_layer_ids!r}")
    if target_num_hidden_layers is not None:
        if not _is_int(target_num_hidden_layers) or target_num_hidden_layers < 1:
            raise ValueError(f"target_num_hidden_layers must be an int >= 1, got {target_num_hidden_layers!r}")
        if max(aux_layer_ids) >= target_num_hidden_layers:
            raise ValueError(f"aux_layer_ids must lie in [0, target_num_hidden_layers={target_num_hidden_layers}), "
                             f"got {list(aux_layer_ids)}")
    if target_name_or_path is not None and not isinstance(target_name_or_path, str):
        raise TypeError(f"target_name_or_path must be a str or None, got {type(target_name_or_path).__name__}")
    if not _is_int(speculative_tokens) or speculative_tokens < 1:
        raise ValueError(f"speculative_tokens must be an int >= 1, got {speculative_tokens!r}")
    if target_architectures is None:
        target_architectures = _default_target_architectures(cfg.model_type)
    elif not (isinstance(target_architectures, (list, tuple)) and target_architectures
              and all(isinstance(a, str) for a in target_architectures)):
        raise ValueError(f"target_architectures must be a non-empty list of str, got {target_architectures!r}")
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None

    torch_dtype, dtype_name = EXPORT_DTYPES[dtype]
    vd, v = cfg.draft_vocab_size, cfg.vocab_size
    state = {k: t.detach().cpu() for k, t in draft.state_dict().items()}
    if draft.is_compressed:
        state = _sorted_vocab(state, vd, v)
    elif format != "speculators":
        state["d2t"] = torch.zeros(vd, dtype=torch.int64)
        state["t2d"] = torch.ones(v, dtype=torch.bool)
    if not include_embeddings:
        del state["model.embed_tokens.weight"]
    tensors = {
        _export_name(k, format): (t.to(torch_dtype) if t.is_floating_point() else t).contiguous().clone()
        for k, t in state.items()
    }

    ids = [int(i) for i in aux_layer_ids]
    block = {
        "format_version": METADATA_VERSION,
        "eagle_ext_version": __version__,
        "format": format,
        "algorithm": algorithm,
        "aux_layer_ids": ids,
        "target_name_or_path": target_name_or_path,
        "target_num_hidden_layers": target_num_hidden_layers,
        "embed_tokens": "included" if include_embeddings else "target",
        "draft_vocab_order": "ascending target id",
        "metadata": metadata,
    }
    from eagle_ext.serve.engine_limits import engine_limit_notes

    limits = engine_limit_notes(getattr(cfg, "model_type", None), target_architectures)
    if limits:  # only for families an engine is known not to serve (other exports are unchanged)
        block["target_model_type"] = cfg.model_type
        block["engine_limits"] = limits
    layer = _layer_config(cfg, len(draft.model.layers))
    if format == "speculators":
        config = _speculators_config(cfg, layer, algorithm, ids, speculative_tokens, target_name_or_path,
                                     list(target_architectures), dtype_name)
    else:
        config = _flat_config(cfg, layer, algorithm, ids, dtype_name)
    config[METADATA_KEY] = block

    with atomic_directory(out_dir) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    return os.path.abspath(os.fspath(out_dir))


def _speculators_config(cfg, layer, algorithm, ids, speculative_tokens, target_name_or_path, target_architectures,
                        dtype_name) -> dict[str, Any]:
    config: dict[str, Any] = {
        "speculators_model_type": algorithm,
        "architectures": [SPECULATORS_ARCHITECTURES[algorithm]],
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": None,
        "norm_before_residual": False,
        "norm_before_fc": False,
        "fc_norm": bool(cfg.fc_norm),
        "norm_output": bool(cfg.norm_output),
        # speculators / vLLM: id k is hs[k], the input of layer k = the output of our layer k - 1.
        "eagle_aux_hidden_state_layer_ids": [i + 1 for i in ids],
        "embed_requires_grad": algorithm == "peagle",
        "tie_word_embeddings": False,
        "dtype": dtype_name,
        "speculators_config": {
            "algorithm": algorithm,
            "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": target_name_or_path, "architectures": target_architectures},
        },
        "transformer_layer_config": layer,
    }
    if algorithm == "peagle":
        config["mask_token_id"] = cfg.mask_token_id
        config["pard_token"] = cfg.mask_token_id
    return config


def _flat_config(cfg, layer, algorithm, ids, dtype_name) -> dict[str, Any]:
    config: dict[str, Any] = {"architectures": [SGLANG_ARCHITECTURE if algorithm == "eagle3" else PEAGLE_ARCHITECTURE]}
    config.update(layer)
    config.update({
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": cfg.target_hidden_size,
        "norm_before_residual": False,
        # specforge / SGLang: id k is the output of layer k (SGLang captures hs[k + 1]) = our id.
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(ids), "use_aux_hidden_state": True},
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    })
    # `norm_output` is left out on purpose: specforge reads it as "apply the final norm" (false drops it).
    if cfg.fc_norm:
        config["fc_norm"] = True
    if algorithm == "peagle":
        config["mask_token_id"] = cfg.mask_token_id
        config["pard_token"] = cfg.mask_token_id
    return config


# ------------------------------------------------------------------------------------------------ reading


def _read_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"export directory {directory!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"export directory {directory!r} has no {CONFIG_FILE}")
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path!r} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} must hold a JSON object, got {type(config).__name__}")
    return config


def detect_export_format(config: dict[str, Any]) -> tuple[str, str]:
    """``(format, algorithm)`` of an export's ``config.json`` dict.

    Raises:
        ValueError: none of the formats (names the fields that were looked at).
    """
    kind = config.get("speculators_model_type")
    if kind is not None:
        if kind not in SPECULATORS_ARCHITECTURES:
            raise ValueError(f"speculators_model_type must be 'eagle3' or 'peagle', got {kind!r}")
        return "speculators", kind
    architectures = config.get("architectures") or []
    if architectures == [SGLANG_ARCHITECTURE]:
        return "sglang", "eagle3"
    if architectures == [PEAGLE_ARCHITECTURE]:
        return "specforge_peagle", "peagle"
    raise ValueError(
        "config.json is none of the export formats: expected speculators_model_type ('eagle3'|'peagle') or "
        f"architectures {[SGLANG_ARCHITECTURE]} / {[PEAGLE_ARCHITECTURE]}, got architectures {architectures!r}"
    )


def _weight_files(directory: str) -> list[str]:
    single = os.path.join(directory, WEIGHTS_FILE)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map") or {}
        return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"export directory {directory!r} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def _tensor_infos(directory: str) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, safetensors dtype string) without reading the data."""
    from safetensors import safe_open

    infos = {}
    for path in _weight_files(directory):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                sl = f.get_slice(name)
                infos[name] = (list(sl.get_shape()), sl.get_dtype())
    return infos


def _load_tensors(directory: str, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for path in _weight_files(directory):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                if names is None or name in names:
                    out[name] = f.get_tensor(name)
    return out


def _split_config(config: dict[str, Any], fmt: str) -> tuple[dict[str, Any], list[int] | None]:
    """(the draft decoder's Llama fields, the aux ids converted to eagle_ext's convention or None)."""
    if fmt == "speculators":
        layer = dict(config.get("transformer_layer_config") or {})
        ids = config.get("eagle_aux_hidden_state_layer_ids")
        ids = None if ids is None else [k - 1 for k in ids]
    else:
        layer = dict(config)
        ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        ids = None if ids is None else list(ids)
    return layer, ids


def load_exported_draft(directory: str | os.PathLike, *, embed_tokens: torch.Tensor | None = None) -> ExportedDraft:
    """Rebuild an exported draft as an :class:`~eagle_ext.models.Eagle3DraftModel` (fp32, CPU, eval mode).

    Reads any format :func:`export_draft` writes (detected from ``config.json``), also sharded weights and foreign
    exports of the same layout. The strict state-dict load fails on a missing or extra tensor. The logits equal
    the exported draft's up to the export dtype (the vocabulary order is the export's: ascending target id).

    Args:
        directory: the export directory.
        embed_tokens: the target's input embedding ``[V, H]``; required when the export ships none (e.g.
            ``include_embeddings=False``), ignored when it ships its own (whose shape it must match).

    Returns:
        :class:`ExportedDraft`.

    Raises:
        FileNotFoundError: no directory, ``config.json`` or weights.
        ValueError: an unknown format, missing fields (aux layer ids), a missing embedding without
            ``embed_tokens``, a wrong ``embed_tokens`` shape, or tensors that do not fit the config.
    """
    from transformers import LlamaConfig

    from eagle_ext.models.draft import Eagle3DraftModel, build_draft_config

    directory = os.fspath(directory)
    config = _read_config(directory)
    fmt, algorithm = detect_export_format(config)
    block = config.get(METADATA_KEY) or {}
    layer, ids = _split_config(config, fmt)
    if ids is None:
        field = ("eagle_aux_hidden_state_layer_ids" if fmt == "speculators"
                 else "eagle_config.eagle_aux_hidden_state_layer_ids")
        raise ValueError(f"{directory!r}: config.json has no {field}; the captured target layers are unknown")
    if any(i < 0 for i in ids):
        raise ValueError(f"{directory!r}: aux layer ids {ids} (eagle_ext convention) include a negative id; "
                         "eagle_ext cannot capture the embeddings as an aux state")
    vd = config.get("draft_vocab_size")
    if not _is_int(vd):
        raise ValueError(f"{directory!r}: config.json needs an int draft_vocab_size, got {vd!r}")
    mask_token_id = config.get("mask_token_id") if algorithm == "peagle" else None
    num_layers = layer.get("num_hidden_layers", 1)
    norm_output = bool(config.get("norm_output", False)) if fmt == "speculators" else False
    if fmt == "speculators" and (config.get("norm_before_residual") or config.get("norm_before_fc")):
        raise ValueError(f"{directory!r}: norm_before_residual / norm_before_fc = true is a layout eagle_ext's "
                         "draft does not compute")
    if fmt == "specforge_peagle" and config.get("norm_before_residual"):
        raise ValueError(f"{directory!r}: norm_before_residual = true is a layout eagle_ext's draft does not compute")
    llama_fields = {k: v for k, v in layer.items() if k not in ("model_type", "architectures", METADATA_KEY)}
    llama_fields["num_hidden_layers"] = num_layers
    base = LlamaConfig(**llama_fields)
    draft_config = build_draft_config(
        base, vd, num_hidden_layers=num_layers, parallel_drafting=algorithm == "peagle",
        mask_token_id=mask_token_id, fc_norm=bool(config.get("fc_norm", False)), norm_output=norm_output,
        num_aux_hidden_states=len(ids),
    )
    # the export's own biases (each engine's layout may carry attention and MLP biases separately)
    draft_config.attention_bias = bool(layer.get("attention_bias", False))
    draft_config.mlp_bias = bool(layer.get("mlp_bias", False))
    draft = Eagle3DraftModel(draft_config)

    state = {}
    for name, tensor in _load_tensors(directory).items():
        state[_internal_name(name, fmt)] = tensor.float() if tensor.is_floating_point() else tensor
    if not draft.is_compressed:
        # specforge keeps identity d2t / t2d even for a full vocabulary; our draft has no such buffers.
        d2t, t2d = state.pop("d2t", None), state.pop("t2d", None)
        if (d2t is not None and bool(d2t.any())) or (t2d is not None and not bool(t2d.all())):
            raise ValueError(f"{directory!r}: draft_vocab_size equals the vocab size but d2t / t2d are not identity")
    embed_key = "model.embed_tokens.weight"
    expected_embed = tuple(draft.model.embed_tokens.weight.shape)
    if embed_tokens is not None:
        if not isinstance(embed_tokens, torch.Tensor) or tuple(embed_tokens.shape) != expected_embed:
            shape = list(embed_tokens.shape) if isinstance(embed_tokens, torch.Tensor) else type(embed_tokens).__name__
            raise ValueError(f"embed_tokens must be a tensor of shape {list(expected_embed)} [V, H], got {shape}")
        if embed_key not in state:
            state[embed_key] = embed_tokens.detach().to(device="cpu", dtype=torch.float32)
    if embed_key not in state:
        raise ValueError(
            f"{directory!r} ships no embed_tokens.weight (the embedding is the target's); pass "
            f"embed_tokens=<the target's input embedding [{expected_embed[0]}, {expected_embed[1]}]>"
        )
    try:
        draft.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{directory!r}: the tensors do not fit the config: {err}") from None
    draft.eval()
    target = None
    if fmt == "speculators":
        target = (config.get("speculators_config") or {}).get("verifier", {}).get("name_or_path")
    if target is None:
        target = block.get("target_name_or_path")
    return ExportedDraft(
        draft=draft, algorithm=algorithm, format=fmt, aux_layer_ids=ids, mask_token_id=mask_token_id,
        target_name_or_path=target, metadata=block,
    )


def convert_export(src: str | os.PathLike, out_dir: str | os.PathLike, *, format: str,  # noqa: A002
                   dtype: str | None = None, speculative_tokens: int | None = None) -> str:
    """Re-write an export directory in another format (e.g. an SGLang export as ``speculators`` for vLLM).

    The draft, its vocabulary, aux layers (converted to the new format's convention), target identity and the
    embedding choice carry over; the float tensors keep the source dtype unless ``dtype`` is given. A draft
    exported without its embedding stays without it (a placeholder stands in while converting; it is not
    written).

    Args:
        src: an export directory in any format :func:`load_exported_draft` reads.
        out_dir: the new export directory (replaced atomically); must not be ``src``.
        format: the new format (:data:`EXPORT_FORMATS`).
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (default: the source's).
        speculative_tokens: the speculators default draft length (default: the source's, else 3).

    Returns:
        ``out_dir`` as an absolute path.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_exported_draft`; a format that cannot hold the draft;
            ``out_dir`` equal to ``src``.
    """
    src = os.fspath(src)
    if os.path.abspath(src) == os.path.abspath(os.fspath(out_dir)):
        raise ValueError(f"out_dir must differ from the source export {src!r}")
    config = _read_config(src)
    _, algorithm = detect_export_format(config)
    check_algorithm_format(algorithm, format, src)
    layer, _ = _split_config(config, detect_export_format(config)[0])
    names = _tensor_infos(src)
    shipped = any(n.endswith("embed_tokens.weight") for n in names)
    placeholder = None
    if not shipped:
        placeholder = torch.zeros(int(layer["vocab_size"]), int(layer["hidden_size"]))
    exported = load_exported_draft(src, embed_tokens=placeholder)
    recorded = exported.metadata.get("aux_layer_ids")
    if recorded is not None and list(recorded) != list(exported.aux_layer_ids):
        raise ValueError(f"{src!r}: its serving config names aux layers {exported.aux_layer_ids} (eagle_ext "
                         f"convention) but its eagle_ext record says the draft was trained on {list(recorded)}; "
                         f"fix or re-export it before converting (`eagle-ext export --check {src}`)")
    source_dtype = next((k for k, (_, name) in EXPORT_DTYPES.items()
                         if name in (config.get("dtype"), config.get("torch_dtype"))), "bf16")
    if speculative_tokens is None:
        methods = (config.get("speculators_config") or {}).get("proposal_methods") or [{}]
        speculative_tokens = methods[0].get("speculative_tokens") or 3
    block = exported.metadata
    return export_draft(
        exported.draft, out_dir, format=format, aux_layer_ids=exported.aux_layer_ids,
        target_name_or_path=exported.target_name_or_path,
        target_num_hidden_layers=block.get("target_num_hidden_layers"),
        dtype=dtype or source_dtype, include_embeddings=shipped, speculative_tokens=speculative_tokens,
        metadata={**(block.get("metadata") or {}), "converted_from": os.path.abspath(src)},
    )


# ------------------------------------------------------------------------------------------------ checking


_LAYER_INTS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
               "num_hidden_layers", "vocab_size", "max_position_embeddings")


def _expected_tensors(fmt: str, algorithm: str, layer: dict[str, Any], *, vd: int, n_aux: int, fc_norm: bool,
                      norm_before_fc: bool) -> dict[str, list[int]]:
    """Tensor name -> shape that an engine loads for this config (``embed_tokens.weight`` included)."""
    h, i = layer["hidden_size"], layer["intermediate_size"]
    nh, nkv, hd = layer["num_attention_heads"], layer["num_key_value_heads"], layer["head_dim"]
    v = layer["vocab_size"]
    attn_bias, mlp_bias = bool(layer.get("attention_bias")), bool(layer.get("mlp_bias"))
    out: dict[str, list[int]] = {"embed_tokens.weight": [v, h], "fc.weight": [h, n_aux * h], "norm.weight": [h],
                                 "lm_head.weight": [vd, h]}
    for j in range(layer["num_hidden_layers"]):
        prefix = "midlayer." if fmt == "sglang" else f"layers.{j}."
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
        out.update({prefix + k: s for k, s in names.items()})
    if fc_norm:
        out.update({f"fc_norm.{j}.weight": [h] for j in range(n_aux)})
    if norm_before_fc:
        out["input_norm.weight"] = [n_aux * h]
    if algorithm == "peagle":
        out["mask_hidden"] = [1, 1, n_aux * h]
    return out


def _check_ids(ids: Any, field: str, n: int | None, low: int, high: int | None, meaning: str) -> list[str]:
    if ids is None:
        return [f"config.json: {field} is missing: the engines then capture their own default layers"]
    if not isinstance(ids, list) or not ids or not all(_is_int(k) for k in ids):
        return [f"config.json: {field} must be a list of ints, got {ids!r}"]
    problems = []
    if n is not None and len(ids) != n:
        problems.append(f"config.json: {field} has {len(ids)} ids but fc reads {n} aux hidden states")
    bad = [k for k in ids if k < low or (high is not None and k > high)]
    if bad:
        upper = "" if high is None else f", {high}"
        problems.append(f"config.json: {field} = {ids} has ids out of range [{low}{upper}] ({meaning}): {bad}")
    return problems


def _check_layer_fields(layer: dict[str, Any], where: str) -> list[str]:
    problems = []
    if layer.get("model_type") != "llama":
        problems.append(f"{where}model_type must be 'llama' (the draft decoder eagle_ext writes), got "
                        f"{layer.get('model_type')!r}")
    for key in _LAYER_INTS:
        if not _is_int(layer.get(key)) or layer[key] < 1:
            problems.append(f"{where}{key} must be an int >= 1, got {layer.get(key)!r}")
    if not isinstance(layer.get("rms_norm_eps"), (int, float)) or isinstance(layer.get("rms_norm_eps"), bool):
        problems.append(f"{where}rms_norm_eps must be a number, got {layer.get('rms_norm_eps')!r}")
    if not isinstance(layer.get("hidden_act"), str):
        problems.append(f"{where}hidden_act must be a string (e.g. 'silu'), got {layer.get('hidden_act')!r}")
    rope = layer.get("rope_parameters")
    if "rope_theta" not in layer or not isinstance(rope, dict):
        problems.append(f"{where}RoPE must be written in both spellings (rope_theta and rope_parameters), got "
                        f"rope_theta={layer.get('rope_theta')!r} rope_parameters={rope!r}")
    elif rope.get("rope_theta") != layer["rope_theta"]:
        problems.append(f"{where}rope_theta {layer['rope_theta']!r} disagrees with rope_parameters.rope_theta "
                        f"{rope.get('rope_theta')!r}")
    elif rope.get("rope_type", "default") != "default" and layer.get("rope_scaling") is None:
        problems.append(f"{where}rope_scaling is missing for rope_type {rope.get('rope_type')!r} (older readers "
                        "would use plain RoPE)")
    if layer.get("tie_word_embeddings") is not False:
        problems.append(f"{where}tie_word_embeddings must be false (SGLang would use embed_tokens as the head), got "
                        f"{layer.get('tie_word_embeddings')!r}")
    for key in ("attention_bias", "mlp_bias"):
        if not isinstance(layer.get(key), bool):
            problems.append(f"{where}{key} must be written as a bool, got {layer.get(key)!r}")
    return problems


def _check_speculators_fields(config: dict[str, Any], algorithm: str) -> list[str]:
    problems = []
    sc = config.get("speculators_config")
    if not isinstance(sc, dict):
        return ["config.json: speculators_config is missing (pydantic and vLLM require it)"]
    if sc.get("algorithm") != algorithm:
        problems.append(f"config.json: speculators_config.algorithm must be {algorithm!r}, got {sc.get('algorithm')!r}")
    methods = sc.get("proposal_methods")
    if not isinstance(methods, list) or not methods or not isinstance(methods[0], dict):
        problems.append("config.json: speculators_config.proposal_methods must be a non-empty list (vLLM reads "
                        "speculative_tokens from its first entry)")
    else:
        tokens = methods[0].get("speculative_tokens")
        if not _is_int(tokens) or tokens < 1:
            problems.append(f"config.json: speculators_config.proposal_methods[0].speculative_tokens must be an int "
                            f">= 1, got {tokens!r}")
        if methods[0].get("proposal_type") != "greedy" or sc.get("default_proposal_method") != "greedy":
            problems.append("config.json: proposal_methods[0].proposal_type and default_proposal_method must both "
                            f"be 'greedy', got {methods[0].get('proposal_type')!r} / "
                            f"{sc.get('default_proposal_method')!r}")
    verifier = sc.get("verifier")
    if not isinstance(verifier, dict) or "name_or_path" not in verifier or not verifier.get("architectures"):
        problems.append("config.json: speculators_config.verifier needs name_or_path and a non-empty "
                        f"architectures list, got {verifier!r}")
    for key in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
        if not isinstance(config.get(key), bool):
            problems.append(f"config.json: {key} must be written explicitly as a bool (vLLM's eagle3 translation "
                            f"assumes norm_before_residual=true when absent), got {config.get(key)!r}")
    return problems


def _check_flat_fields(config: dict[str, Any], fmt: str) -> list[str]:
    problems = []
    if fmt == "sglang":
        if config.get("num_hidden_layers") != 1:
            problems.append(f"config.json: num_hidden_layers must be 1 (specforge builds one midlayer), got "
                            f"{config.get('num_hidden_layers')!r}")
        if config.get("norm_before_residual", False) is not False:
            problems.append("config.json: norm_before_residual must be false or absent (the SGLang midlayer keeps "
                            f"the un-normed fc(hidden) as the residual), got {config.get('norm_before_residual')!r}")
        if "norm_output" in config:
            problems.append("config.json: norm_output must be omitted (specforge reads false as 'drop the final "
                            "norm')")
    elif not isinstance(config.get("norm_before_residual"), bool):
        problems.append(f"config.json: norm_before_residual must be written explicitly as a bool, got "
                        f"{config.get('norm_before_residual')!r}")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            problems.append(f"config.json: {key} must be false (specforge builds no biases)")
    eagle = config.get("eagle_config")
    if eagle is not None and not isinstance(eagle, dict):
        problems.append(f"config.json: eagle_config must be an object, got {eagle!r}")
    return problems


def _check_vocab_map(directory: str, infos, vd: int, v: int, fmt: str) -> list[str]:
    compressed = vd < v
    present = [k for k in ("d2t", "t2d") if k in infos]
    if not present:
        if compressed:
            return [f"d2t and t2d are missing although draft_vocab_size {vd} < vocab_size {v}: vLLM would keep a zero "
                    "d2t (an identity map, silently wrong) and speculators uninitialised memory"]
        if fmt != "speculators":
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
    tensors = _load_tensors(directory, ["d2t", "t2d"])
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
        config = _read_config(os.fspath(directory))
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


def check_export(directory: str | os.PathLike) -> list[str]:
    """Validate an export directory the way the engines read it; ``[]`` means OK.

    Checks: ``config.json`` and the weights exist; the format is recognised; the fields each engine needs are
    present and explicit (see the module docstring); the aux layer ids are in the format's convention and range
    (``[0, L]`` for speculators, ``[0, L - 1]`` for ``eagle_config``, with ``L`` the target layer count recorded
    in the ``eagle_ext`` block, and agree with the ids recorded there); the tensor set and shapes match the config
    (no missing, extra or ``model.``-prefixed names); float tensors share one dtype among fp32 / bf16 / fp16 that
    matches the config's ``dtype``; ``d2t`` / ``t2d`` are present when the vocabulary is compressed (and always
    in the specforge formats), have the right dtypes, and agree (identity for a full vocabulary); P-EAGLE's
    ``mask_token_id`` and ``mask_hidden``.

    Never raises for a bad directory: every problem is a line of the returned list.
    """
    directory = os.fspath(directory)
    try:
        config = _read_config(directory)
        fmt, algorithm = detect_export_format(config)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems: list[str] = []
    block = config.get(METADATA_KEY) or {}
    if fmt == "speculators":
        layer = config.get("transformer_layer_config")
        if not isinstance(layer, dict):
            return ["config.json: transformer_layer_config is missing (speculators would build a default Qwen3Config "
                    "and vLLM rejects the config)"]
        problems += _check_layer_fields(layer, "config.json: transformer_layer_config.")
        problems += _check_speculators_fields(config, algorithm)
    else:
        layer = config
        problems += _check_layer_fields(layer, "config.json: ")
        problems += _check_flat_fields(config, fmt)
    layer_ok = all(_is_int(layer.get(k)) and layer[k] >= 1 for k in _LAYER_INTS)
    vd = config.get("draft_vocab_size")
    v = layer.get("vocab_size")
    if not _is_int(vd) or vd < 1 or (_is_int(v) and vd > v):
        problems.append(f"config.json: draft_vocab_size must be an int in [1, vocab_size={v}] (absent: speculators "
                        f"assumes 32000, vLLM the full vocab), got {vd!r}")
        layer_ok = False
    if algorithm == "eagle3" and layer.get("num_hidden_layers") != 1:
        problems.append(f"config.json: an EAGLE-3 draft has num_hidden_layers 1, got {layer.get('num_hidden_layers')!r}")
    if algorithm == "peagle":
        mask = config.get("mask_token_id")
        if not _is_int(mask) or not _is_int(v) or not 0 <= mask < v:
            problems.append(f"config.json: mask_token_id must be an int in [0, vocab_size={v}) (vLLM's pard_token; "
                            f"absent: vLLM raises KeyError), got {mask!r}")

    h = layer.get("hidden_size")
    target_hidden = config.get("target_hidden_size")
    if target_hidden is not None and target_hidden != h:
        problems.append(f"config.json: target_hidden_size must be null or the hidden size {h}, got {target_hidden!r}")

    # aux layer ids, each family in its own convention
    infos: dict[str, tuple[list[int], str]] | None
    try:
        infos = _tensor_infos(directory)
    except (FileNotFoundError, OSError, ValueError) as err:  # a missing or unreadable weights file
        problems.append(str(err))
        infos = None
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error type for a corrupt header)
        problems.append(f"cannot read the weights: {err}")
        infos = None
    n_aux = None
    if infos is not None and "fc.weight" in infos and _is_int(h) and len(infos["fc.weight"][0]) == 2:
        width = infos["fc.weight"][0][1]
        n_aux = width // h if width % h == 0 else None
    n_layers = block.get("target_num_hidden_layers")
    n_layers = n_layers if _is_int(n_layers) else None
    if fmt == "speculators":
        ids = config.get("eagle_aux_hidden_state_layer_ids")
        problems += _check_ids(ids, "eagle_aux_hidden_state_layer_ids", n_aux, 0, n_layers,
                               "speculators / vLLM: id k is hs[k], the input of target layer k")
        ours = [k - 1 for k in ids] if isinstance(ids, list) and all(_is_int(k) for k in ids) else None
    else:
        ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") if isinstance(
            config.get("eagle_config"), dict) else None
        problems += _check_ids(ids, "eagle_config.eagle_aux_hidden_state_layer_ids", n_aux, 0,
                               None if n_layers is None else n_layers - 1,
                               "specforge / SGLang: id k is the output of target layer k")
        ours = ids
    recorded = block.get("aux_layer_ids")
    if recorded is not None and ours is not None and recorded != ours:
        problems.append(f"config.json: the aux layer ids {ids} are {ours} in eagle_ext's convention, but the eagle_ext "
                        f"block records {recorded} (a convention mix-up moves every captured layer)")

    if infos is None:
        return problems
    # tensors
    prefixed = sorted(k for k in infos if k.startswith("model."))
    for name in prefixed:
        problems.append(f"tensor {name!r} carries the 'model.' prefix: vLLM adds it itself and would look for "
                        f"'model.{name}'; write {name[len('model.'):]!r}")
    dtypes = {d for name, (_, d) in infos.items() if name not in ("d2t", "t2d")}
    bad_dtypes = sorted(f"{name}: {d}" for name, (_, d) in infos.items()
                        if name not in ("d2t", "t2d") and d not in _FLOAT_DTYPES)
    if bad_dtypes:
        problems.append(f"tensors other than d2t / t2d must be F32, BF16 or F16, found {bad_dtypes}")
    if len(dtypes) > 1:
        problems.append(f"float tensors mix dtypes {sorted(dtypes)}")
    declared = config.get("dtype") or config.get("torch_dtype")
    if len(dtypes) == 1 and declared is not None and _FLOAT_DTYPES.get(next(iter(dtypes))) != declared:
        problems.append(f"config.json declares dtype {declared!r} but the tensors are {next(iter(dtypes))}")
    if not layer_ok:
        return problems
    if n_aux is None:
        n_aux = len(ids) if isinstance(ids, list) and ids else 3
    fc_norm = bool(config.get("fc_norm", False))
    norm_before_fc = bool(config.get("norm_before_fc", False)) if fmt == "speculators" else False
    expected = _expected_tensors(fmt, algorithm, layer, vd=vd, n_aux=n_aux, fc_norm=fc_norm,
                                 norm_before_fc=norm_before_fc)
    embed_from_target = block.get("embed_tokens") == "target"
    for name, shape in expected.items():
        if name not in infos:
            if "model." + name in infos:
                continue  # reported as prefixed
            if name == "embed_tokens.weight" and embed_from_target:
                continue
            if name == "embed_tokens.weight":
                problems.append("tensor 'embed_tokens.weight' is missing and the eagle_ext block does not record "
                                "the embedding as the target's (speculators and specforge cannot load it)")
            else:
                problems.append(f"tensor {name!r} {shape} is missing")
        elif infos[name][0] != shape:
            problems.append(f"tensor {name!r} has shape {infos[name][0]}, expected {shape}")
    if embed_from_target and "embed_tokens.weight" in infos:
        problems.append("the eagle_ext block records the embedding as the target's, yet embed_tokens.weight is shipped")
    for name in sorted(infos):
        if name in expected or name in ("d2t", "t2d") or name in prefixed:
            continue
        hint = " (training-only; speculators never saves it)" if name.startswith("verifier_") else ""
        problems.append(f"unexpected tensor {name!r} {infos[name][0]}{hint}")
    problems += _check_vocab_map(directory, infos, vd, v, fmt)
    return problems
