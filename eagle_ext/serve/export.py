"""Export a trained draft in the directory formats the serving engines load (the writer). Reading an export back
lives in :mod:`eagle_ext.serve.export_read`, checking one in :mod:`eagle_ext.serve.export_check`; both are
re-exported here, so ``eagle_ext.serve.export`` stays the one import for all three.

Formats (one record each in :data:`eagle_ext.serve.formats.FORMATS`; field by field in
``../shared/reference/serving-formats.md``):

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

import json
import os
from typing import Any

import torch

from eagle_ext._io import atomic_directory
from eagle_ext.algorithms import ALGORITHM_NAMES, REGISTRY, AlgorithmSpec, algorithm_spec
from eagle_ext.serve.export_check import check_export, export_engine_notes
from eagle_ext.serve.export_read import (
    CONFIG_FILE,
    METADATA_KEY,
    WEIGHTS_FILE,
    ExportedDraft,
    detect_export_format,
    load_exported_draft,
    read_config,
    split_config,
    tensor_infos,
)
from eagle_ext.serve.format_configs import is_int, layer_config
from eagle_ext.serve.formats import (
    DTYPE_NAMES,
    FEATURES,
    FORMAT_NAMES,
    FORMATS,
    ExportFormat,
    detect_format,
    export_format,
    formats_holding,
    or_list,
)

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

EXPORT_FORMATS = FORMAT_NAMES
#: CLI spelling -> (torch dtype, name written in config.json)
EXPORT_DTYPES = {key: (getattr(torch, name), name) for key, name in DTYPE_NAMES.items()}
METADATA_VERSION = 1
# the reader's helpers under their former names (``eagle-ext eval`` reads an export's config with them)
_read_config, _split_config = read_config, split_config


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


# ------------------------------------------------------------------------------------------------ export


def draft_algorithm(draft_config: Any) -> AlgorithmSpec:
    """The algorithm of a draft, from how it drafts (``config.parallel_drafting``)."""
    parallel = bool(draft_config.parallel_drafting)
    return next(spec for spec in REGISTRY.values() if spec.parallel_drafting == parallel)


def check_algorithm_format(algorithm: Any, format: str, source: str) -> None:  # noqa: A002
    """Refuse a format that cannot hold a recipe run's draft (``algorithm`` from its ``meta.json``).

    Raises:
        ValueError: ``algorithm`` is not a registered algorithm, or ``format`` cannot hold that draft (named
            with ``source``).
    """
    if algorithm not in ALGORITHM_NAMES:
        raise ValueError(f"{source!r}: meta.json algorithm must be {or_list(ALGORITHM_NAMES)}, got {algorithm!r}")
    held = formats_holding(algorithm)
    if format not in held:
        raise ValueError(f"format={format!r} cannot hold the {algorithm} draft of {source!r}; use "
                         f"{' or '.join(held)}")


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
    source = checkpoint or "the run"
    check_algorithm_format(meta.get("algorithm"), format, source)
    spec, drafted = algorithm_spec(meta["algorithm"]), draft_algorithm(draft.config)
    if spec.name != drafted.name:
        raise ValueError(f"{source!r}: meta.json algorithm {spec.name!r} disagrees with its draft ({drafted.name})")
    target = meta.get("target") or {}
    return export_draft(
        draft, out_dir, format=format, aux_layer_ids=list(meta["aux_layer_ids"]),
        target_name_or_path=target.get("name_or_path"), target_num_hidden_layers=target.get("num_hidden_layers"),
        dtype=dtype, include_embeddings=include_embeddings, speculative_tokens=meta.get(spec.depth_key) or 3,
        metadata={"checkpoint": checkpoint, "step": meta.get("step"), "epoch": meta.get("epoch")},
    )


def _check_draft_format(draft: Any, format: Any, dtype: Any) -> tuple[ExportFormat, AlgorithmSpec]:  # noqa: A002
    """The format record and algorithm of an export, once the format is known to hold the draft."""
    from eagle_ext.models.draft import DraftModel

    if not isinstance(draft, DraftModel):
        raise TypeError(f"draft must be an eagle_ext DraftModel, got {type(draft).__name__}")
    fmt = export_format(format)
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(EXPORT_DTYPES)}, got {dtype!r}")
    cfg, spec = draft.config, draft_algorithm(draft.config)
    if spec.name not in fmt.algorithms:
        held = " and ".join(algorithm_spec(a).label for a in fmt.algorithms)
        instead = " or ".join(f"{name!r} ({FORMATS[name].serves})" for name in formats_holding(spec.name))
        raise ValueError(f"format={fmt.name!r} holds {held} drafts only; export {spec.label} drafts as {instead}")
    has = {"norm_output": bool(cfg.norm_output), "fc_norm": bool(cfg.fc_norm),
           "bias": bool(getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False))}
    for feature in (f for f in fmt.refuses if has[f]):
        others = [f"format={f.name!r}" for f in FORMATS.values() if spec.name in f.algorithms and feature not in f.refuses]
        raise ValueError(f"format={fmt.name!r} cannot hold {FEATURES[feature]}; use {' or '.join(others)}")
    return fmt, spec


def _check_target_args(n_aux: int, aux_layer_ids: Any, target_name_or_path: Any, target_num_hidden_layers: Any,
                       speculative_tokens: Any) -> None:
    if (not isinstance(aux_layer_ids, (list, tuple)) or len(aux_layer_ids) != n_aux
            or not all(is_int(i) and i >= 0 for i in aux_layer_ids)):
        raise ValueError(f"aux_layer_ids must be {n_aux} ints >= 0 (0-indexed target decoder layers whose output "
                         f"is captured), got {aux_layer_ids!r}")
    if target_num_hidden_layers is not None:
        if not is_int(target_num_hidden_layers) or target_num_hidden_layers < 1:
            raise ValueError(f"target_num_hidden_layers must be an int >= 1, got {target_num_hidden_layers!r}")
        if max(aux_layer_ids) >= target_num_hidden_layers:
            raise ValueError(f"aux_layer_ids must lie in [0, target_num_hidden_layers={target_num_hidden_layers}), "
                             f"got {list(aux_layer_ids)}")
    if target_name_or_path is not None and not isinstance(target_name_or_path, str):
        raise TypeError(f"target_name_or_path must be a str or None, got {type(target_name_or_path).__name__}")
    if not is_int(speculative_tokens) or speculative_tokens < 1:
        raise ValueError(f"speculative_tokens must be an int >= 1, got {speculative_tokens!r}")


def _check_verifier_args(model_type: str, target_architectures: Any, metadata: Any) -> tuple[list[str], dict]:
    if target_architectures is None:
        target_architectures = _default_target_architectures(model_type)
    elif not (isinstance(target_architectures, (list, tuple)) and target_architectures
              and all(isinstance(a, str) for a in target_architectures)):
        raise ValueError(f"target_architectures must be a non-empty list of str, got {target_architectures!r}")
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    return list(target_architectures), metadata


def _export_tensors(draft: Any, fmt: ExportFormat, torch_dtype: torch.dtype,
                    include_embeddings: bool) -> dict[str, torch.Tensor]:
    """The draft's tensors under the format's names, floats in ``torch_dtype``, the vocabulary sorted by target
    id; identity ``d2t`` / ``t2d`` for a full vocabulary where the format always carries them."""
    cfg = draft.config
    vd, v = cfg.draft_vocab_size, cfg.vocab_size
    state = {k: t.detach().cpu() for k, t in draft.state_dict().items()}
    if draft.is_compressed:
        state = _sorted_vocab(state, vd, v)
    elif fmt.identity_vocab_map:
        state["d2t"] = torch.zeros(vd, dtype=torch.int64)
        state["t2d"] = torch.ones(v, dtype=torch.bool)
    if not include_embeddings:
        del state["model.embed_tokens.weight"]
    return {
        fmt.export_name(k): (t.to(torch_dtype) if t.is_floating_point() else t).contiguous().clone()
        for k, t in state.items()
    }


def _metadata_block(cfg: Any, fmt: ExportFormat, spec: AlgorithmSpec, ids: list[int], *, target_name_or_path,
                    target_num_hidden_layers, target_architectures, include_embeddings, metadata) -> dict[str, Any]:
    from eagle_ext import __version__
    from eagle_ext.serve.engine_limits import engine_limit_notes

    block = {
        "format_version": METADATA_VERSION,
        "eagle_ext_version": __version__,
        "format": fmt.name,
        "algorithm": spec.name,
        "aux_layer_ids": ids,
        "target_name_or_path": target_name_or_path,
        "target_num_hidden_layers": target_num_hidden_layers,
        "embed_tokens": "included" if include_embeddings else "target",
        "draft_vocab_order": "ascending target id",
        "metadata": metadata,
    }
    limits = engine_limit_notes(getattr(cfg, "model_type", None), target_architectures)
    if limits:  # only for families an engine is known not to serve (other exports are unchanged)
        block["target_model_type"] = cfg.model_type
        block["engine_limits"] = limits
    return block
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
        draft: an :class:`~eagle_ext.models.DraftModel` (EAGLE-3, or P-EAGLE when
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
    fmt, spec = _check_draft_format(draft, format, dtype)
    cfg = draft.config
    _check_target_args(cfg.num_aux_hidden_states, aux_layer_ids, target_name_or_path, target_num_hidden_layers,
                       speculative_tokens)
    target_architectures, metadata = _check_verifier_args(cfg.model_type, target_architectures, metadata)
    torch_dtype, dtype_name = EXPORT_DTYPES[dtype]
    tensors = _export_tensors(draft, fmt, torch_dtype, include_embeddings)
    ids = [int(i) for i in aux_layer_ids]
    block = _metadata_block(cfg, fmt, spec, ids, target_name_or_path=target_name_or_path,
                            target_num_hidden_layers=target_num_hidden_layers,
                            target_architectures=target_architectures, include_embeddings=include_embeddings,
                            metadata=metadata)
    config = fmt.function("build_config")(
        fmt, spec, cfg, layer_config(cfg, len(draft.model.layers)), ids, speculative_tokens=speculative_tokens,
        target_name_or_path=target_name_or_path, target_architectures=target_architectures, dtype_name=dtype_name,
    )
    config[METADATA_KEY] = block
    _write(out_dir, tensors, config)
    return os.path.abspath(os.fspath(out_dir))


def _write(out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """``model.safetensors`` and ``config.json`` into ``out_dir``, replaced atomically."""
    from safetensors.torch import save_file

    with atomic_directory(out_dir) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")


def convert_export(src: str | os.PathLike, out_dir: str | os.PathLike, *, format: str,  # noqa: A002
                   dtype: str | None = None, speculative_tokens: int | None = None) -> str:
    """Re-write an export directory in another format (e.g. an SGLang export as ``speculators`` for vLLM), through
    :func:`export_draft`.

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
    config = read_config(src)
    source_fmt, algorithm = detect_format(config)
    check_algorithm_format(algorithm, format, src)
    layer, _ = split_config(config, source_fmt)
    shipped = any(n.endswith("embed_tokens.weight") for n in tensor_infos(src))
    placeholder = None if shipped else torch.zeros(int(layer["vocab_size"]), int(layer["hidden_size"]))
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
