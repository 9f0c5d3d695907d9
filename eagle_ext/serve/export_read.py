"""Read an export directory back: its ``config.json`` and format, its tensors, and the draft itself
(:func:`load_exported_draft`). Generic over :data:`eagle_ext.serve.formats.FORMATS`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

from eagle_ext.algorithms import algorithm_spec
from eagle_ext.serve.format_configs import is_int
from eagle_ext.serve.formats import ExportFormat, detect_format, export_format

__all__ = ["ExportedDraft", "detect_export_format", "load_exported_draft"]

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
METADATA_KEY = "eagle_ext"


@dataclasses.dataclass
class ExportedDraft:
    """What :func:`load_exported_draft` returns.

    Attributes:
        draft: the :class:`~eagle_ext.models.DraftModel`, fp32 on CPU, eval mode, loaded strictly.
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


def read_config(directory: str) -> dict[str, Any]:
    """The ``config.json`` object of an export directory.

    Raises:
        FileNotFoundError: no directory or no ``config.json``; ValueError: not a JSON object.
    """
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
    fmt, algorithm = detect_format(config)
    return fmt.name, algorithm


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


def tensor_infos(directory: str) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, safetensors dtype string) without reading the data."""
    from safetensors import safe_open

    infos = {}
    for path in _weight_files(directory):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                sl = f.get_slice(name)
                infos[name] = (list(sl.get_shape()), sl.get_dtype())
    return infos


def load_tensors(directory: str, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of an export (all, or those in ``names``), as stored."""
    from safetensors import safe_open

    out = {}
    for path in _weight_files(directory):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                if names is None or name in names:
                    out[name] = f.get_tensor(name)
    return out


def split_config(config: dict[str, Any], fmt: ExportFormat | str) -> tuple[dict[str, Any], list[int] | None]:
    """(the draft decoder's Llama fields, the aux ids converted to eagle_ext's convention or None)."""
    fmt = export_format(fmt) if isinstance(fmt, str) else fmt
    layer = dict(fmt.layer_fields(config) or {})
    ids = fmt.aux_ids(config)
    return layer, None if ids is None else [k - fmt.aux_id_offset for k in ids]


def _layout(directory: str, config: dict[str, Any], fmt: ExportFormat) -> dict[str, Any]:
    """The draft-config keys of the export beyond its decoder: aux ids, vocabulary, mask token, norms.

    Raises:
        ValueError: no aux layer ids, a negative one, no int ``draft_vocab_size``, or a layout flag eagle_ext's
            draft does not compute.
    """
    layer, ids = split_config(config, fmt)
    if ids is None:
        raise ValueError(f"{directory!r}: config.json has no {'.'.join(fmt.aux_ids_key)}; the captured target "
                         "layers are unknown")
    if any(i < 0 for i in ids):
        raise ValueError(f"{directory!r}: aux layer ids {ids} (eagle_ext convention) include a negative id; "
                         "eagle_ext cannot capture the embeddings as an aux state")
    vd = config.get("draft_vocab_size")
    if not is_int(vd):
        raise ValueError(f"{directory!r}: config.json needs an int draft_vocab_size, got {vd!r}")
    unsupported = [k for k in ("norm_before_residual", "norm_before_fc") if k in fmt.layout_flags]
    if any(config.get(k) for k in unsupported):
        raise ValueError(f"{directory!r}: {' / '.join(unsupported)} = true is a layout eagle_ext's draft does not "
                         "compute")
    return {"layer": layer, "ids": ids, "vd": vd, "num_layers": layer.get("num_hidden_layers", 1),
            "norm_output": "norm_output" in fmt.layout_flags and bool(config.get("norm_output", False))}


def _build_draft(config: dict[str, Any], layout: dict[str, Any], spec: Any) -> Any:
    from transformers import LlamaConfig

    from eagle_ext.models.draft import DraftModel, build_draft_config

    layer = layout["layer"]
    llama_fields = {k: v for k, v in layer.items() if k not in ("model_type", "architectures", METADATA_KEY)}
    llama_fields["num_hidden_layers"] = layout["num_layers"]
    draft_config = build_draft_config(
        LlamaConfig(**llama_fields), layout["vd"], num_hidden_layers=layout["num_layers"],
        parallel_drafting=spec.parallel_drafting, mask_token_id=layout["mask_token_id"],
        fc_norm=bool(config.get("fc_norm", False)), norm_output=layout["norm_output"],
        num_aux_hidden_states=len(layout["ids"]),
    )
    # the export's own biases (each engine's layout may carry attention and MLP biases separately)
    draft_config.attention_bias = bool(layer.get("attention_bias", False))
    draft_config.mlp_bias = bool(layer.get("mlp_bias", False))
    return DraftModel(draft_config)


def _draft_state(directory: str, fmt: ExportFormat, draft: Any, embed_tokens: Any) -> dict[str, torch.Tensor]:
    """The export's tensors under the draft's state-dict keys, fp32, with ``embed_tokens`` standing in for a
    missing embedding."""
    state = {}
    for name, tensor in load_tensors(directory).items():
        state[fmt.internal_name(name)] = tensor.float() if tensor.is_floating_point() else tensor
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
    return state


def load_exported_draft(directory: str | os.PathLike, *, embed_tokens: torch.Tensor | None = None) -> ExportedDraft:
    """Rebuild an exported draft as an :class:`~eagle_ext.models.DraftModel` (fp32, CPU, eval mode).

    Reads any format :func:`~eagle_ext.serve.export.export_draft` writes (detected from ``config.json``), also
    sharded weights and foreign exports of the same layout. The strict state-dict load fails on a missing or extra
    tensor. The logits equal the exported draft's up to the export dtype (the vocabulary order is the export's:
    ascending target id).

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
    directory = os.fspath(directory)
    config = read_config(directory)
    fmt, algorithm = detect_format(config)
    spec = algorithm_spec(algorithm)
    block = config.get(METADATA_KEY) or {}
    layout = _layout(directory, config, fmt)
    layout["mask_token_id"] = config.get("mask_token_id") if spec.parallel_drafting else None
    draft = _build_draft(config, layout, spec)
    state = _draft_state(directory, fmt, draft, embed_tokens)
    try:
        draft.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{directory!r}: the tensors do not fit the config: {err}") from None
    draft.eval()
    sc = config.get("speculators_config")  # a foreign speculators export names its verifier only there
    target = ((sc or {}).get("verifier") or {}).get("name_or_path") if isinstance(sc, dict) else None
    if target is None:
        target = block.get("target_name_or_path")
    return ExportedDraft(
        draft=draft, algorithm=algorithm, format=fmt.name, aux_layer_ids=layout["ids"],
        mask_token_id=layout["mask_token_id"], target_name_or_path=target, metadata=block,
    )
