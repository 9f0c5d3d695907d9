"""The export formats as data: one :class:`ExportFormat` record per directory layout an engine loads.

Which format holds which algorithm, how it names the draft's architecture and tensors, in which convention it
writes the aux layer ids and which config builder / checker it uses are written here once; the writer
(:mod:`eagle_ext.serve.export`), the reader (:mod:`eagle_ext.serve.export_read`), the checker
(:mod:`eagle_ext.serve.export_check`), the recipe config and ``eagle-ext export`` all read this table. The
module imports no torch (``eagle-ext export --help`` and config validation stay light); the config functions are
named as ``"module:function"`` and imported on first use. Field by field: ``../shared/reference/serving-formats.md``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from eagle_ext.algorithms import algorithm_spec

__all__ = ["ExportFormat", "FORMATS", "FORMAT_NAMES", "DTYPE_NAMES", "export_format", "formats_holding",
           "format_problem", "detect_format"]

#: names that keep their spelling in every format (vLLM adds ``model.`` to everything else)
UNPREFIXED = ("lm_head.weight", "d2t", "t2d", "mask_hidden")
#: CLI spelling of an export dtype -> the name written in config.json
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_CONFIGS = "eagle_ext.serve.format_configs"


@dataclass(frozen=True)
class ExportFormat:
    """What the export code knows about one format."""

    name: str  # the --format / config value ("speculators")
    serves: str  # who loads it (for --help)
    algorithms: tuple[str, ...]  # the algorithms (eagle_ext.algorithms names) whose drafts it holds
    architectures: tuple[tuple[str, str], ...]  # (algorithm, config.json architectures[0]) pairs
    kind_key: str | None  # config key naming the algorithm; None: the architecture names it
    layer_key: str | None  # config key of the nested draft-decoder config; None: the decoder fields are top-level
    aux_ids_key: tuple[str, ...]  # config path of the aux layer ids
    aux_id_offset: int  # the format's id = eagle_ext's id (the output of target layer k) + offset
    aux_convention: str  # what a format id names, short ("layer inputs"; the CLI's summary)
    aux_meaning: str  # the same, long (the checker's messages)
    renames: tuple[tuple[str, str], ...]  # (eagle_ext tensor prefix after "model.", the format's prefix)
    identity_vocab_map: bool  # writes identity d2t / t2d for a full vocabulary
    layout_flags: tuple[str, ...]  # bool layout keys the format carries and the reader honours
    refuses: tuple[str, ...]  # draft features it cannot hold (keys of FEATURES)
    build_config: str  # "module:function" writing config.json (eagle_ext.serve.format_configs)
    check_config: str  # "module:function" checking the format's own config.json fields

    def architecture(self, algorithm: str) -> str:
        return dict(self.architectures)[algorithm]

    def export_name(self, key: str) -> str:
        """The format's name of the draft state-dict key ``key`` (no ``model.`` prefix: vLLM adds it itself).

        Raises:
            ValueError: ``key`` is no draft state-dict key.
        """
        if key in UNPREFIXED:
            return key
        if not key.startswith("model."):
            raise ValueError(f"unexpected draft state-dict key {key!r}")
        name = key[len("model."):]
        for ours, theirs in self.renames:
            if name.startswith(ours):
                return theirs + name[len(ours):]
        return name

    def internal_name(self, name: str) -> str:
        """The draft state-dict key of the format's tensor ``name`` (the inverse of :meth:`export_name`)."""
        if name in UNPREFIXED:
            return name
        for ours, theirs in self.renames:
            if name.startswith(theirs):
                return "model." + ours + name[len(theirs):]
        return "model." + name

    def aux_ids(self, config: dict[str, Any]) -> Any:
        """The aux layer ids as written in ``config`` (the format's convention); ``None`` when absent."""
        value: Any = config
        for key in self.aux_ids_key:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def layer_fields(self, config: dict[str, Any]) -> Any:
        """The draft decoder's Llama fields: the nested ``layer_key`` object, or ``config`` itself."""
        return config if self.layer_key is None else config.get(self.layer_key)

    def function(self, field: str):
        """The config function named by ``field`` (``"build_config"`` or ``"check_config"``), imported now."""
        module, attribute = getattr(self, field).split(":")
        return getattr(importlib.import_module(module), attribute)


#: draft feature -> what a format that refuses it cannot hold (ExportFormat.refuses)
FEATURES = {
    "norm_output": "an EAGLE-3.1 norm_output draft (specforge reads norm_output as 'apply the final norm')",
    "bias": "attention / MLP biases (specforge builds none)",
    "fc_norm": "fc_norm tensors (specforge's P-EAGLE layout has none)",
}
_FLAT = dict(kind_key=None, layer_key=None, aux_ids_key=("eagle_config", "eagle_aux_hidden_state_layer_ids"),
             aux_id_offset=0, aux_convention="layer outputs", identity_vocab_map=True,
             aux_meaning="specforge / SGLang: id k is the output of target layer k",
             build_config=f"{_CONFIGS}:flat_config")
FORMATS: dict[str, ExportFormat] = {fmt.name: fmt for fmt in (
    ExportFormat("speculators", "vLLM", ("eagle3", "peagle"),
                 (("eagle3", "Eagle3DraftModel"), ("peagle", "PEagleDraftModel")),
                 kind_key="speculators_model_type", layer_key="transformer_layer_config",
                 aux_ids_key=("eagle_aux_hidden_state_layer_ids",), aux_id_offset=1, aux_convention="layer inputs",
                 aux_meaning="speculators / vLLM: id k is hs[k], the input of target layer k", renames=(),
                 identity_vocab_map=False, layout_flags=("norm_before_residual", "norm_before_fc", "norm_output"),
                 refuses=(), build_config=f"{_CONFIGS}:speculators_config",
                 check_config=f"{_CONFIGS}:check_speculators_fields"),
    ExportFormat("sglang", "SGLang / specforge", ("eagle3",), (("eagle3", "LlamaForCausalLMEagle3"),),
                 renames=(("layers.0.", "midlayer."),), layout_flags=(), refuses=("norm_output", "bias"),
                 check_config=f"{_CONFIGS}:check_sglang_fields", **_FLAT),
    ExportFormat("specforge_peagle", "specforge's flat P-EAGLE layout", ("peagle",),
                 (("peagle", "PEagleDraftModel"),), renames=(), layout_flags=("norm_before_residual",),
                 refuses=("norm_output", "bias", "fc_norm"), check_config=f"{_CONFIGS}:check_specforge_peagle_fields",
                 **_FLAT),
)}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def export_format(name: Any, *, key: str = "format") -> ExportFormat:
    """The record of format ``name``.

    Raises:
        ValueError: ``name`` is not a format (the message names ``key``, the value and the choices).
    """
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ValueError(f"{key} must be one of {FORMAT_NAMES}, got {name!r}")
    return fmt


def formats_holding(algorithm: str) -> tuple[str, ...]:
    """The formats that hold a draft of ``algorithm``, in table order."""
    return tuple(fmt.name for fmt in FORMATS.values() if algorithm in fmt.algorithms)


def or_list(names) -> str:
    """``'a' or 'b'``."""
    return " or ".join(repr(n) for n in names)


def format_problem(name: Any, algorithm: str) -> str | None:
    """``None`` when format ``name`` holds ``algorithm``'s drafts, else what is expected instead (the tail of a
    "KEY must be EXPECTED, got VALUE" message). ``algorithm`` must be registered."""
    label = algorithm_spec(algorithm).label
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        return f"one of {FORMAT_NAMES}"
    if algorithm in fmt.algorithms:
        return None
    held = " and ".join(algorithm_spec(a).label for a in fmt.algorithms)
    return f"{or_list(formats_holding(algorithm))} for {label} ({fmt.name} holds {held} drafts)"


def detect_format(config: dict[str, Any]) -> tuple[ExportFormat, str]:
    """``(format record, algorithm)`` of an export's ``config.json`` dict: a format with a ``kind_key`` is
    recognised by that key, the others by ``architectures``.

    Raises:
        ValueError: none of the formats (names the fields that were looked at), or an unknown algorithm value.
    """
    for fmt in FORMATS.values():
        if fmt.kind_key is not None and config.get(fmt.kind_key) is not None:
            kind = config[fmt.kind_key]
            if kind not in fmt.algorithms:
                raise ValueError(f"{fmt.kind_key} must be {or_list(fmt.algorithms)}, got {kind!r}")
            return fmt, kind
    architectures = config.get("architectures") or []
    flat = [(fmt, alg, arch) for fmt in FORMATS.values() if fmt.kind_key is None for alg, arch in fmt.architectures]
    for fmt, algorithm, arch in flat:
        if architectures == [arch]:
            return fmt, algorithm
    keyed = " or ".join(f"{f.kind_key} ({'|'.join(repr(a) for a in f.algorithms)})" for f in FORMATS.values()
                        if f.kind_key is not None)
    raise ValueError(f"config.json is none of the export formats: expected {keyed} or architectures "
                     f"{' / '.join(str([arch]) for _, _, arch in flat)}, got architectures {architectures!r}")

