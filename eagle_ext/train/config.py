"""The recipe's configuration: one typed dataclass tree, defaults written once (here), loaded from YAML plus
dotted ``key=value`` overrides and validated before any model or data is touched.

Every error names the dotted key, the value received and what is expected; unknown keys are rejected with the
closest valid names. Knobs of the algorithm that is not selected are an error, so a config never silently
carries settings that do nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from eagle_ext._paths import looks_like_local_path
from eagle_ext.algorithms import ALGORITHM_NAMES, REGISTRY, Algorithm, get_algorithm
from eagle_ext.serve.formats import format_problem  # the export format table (light: no torch)

__all__ = [
    "ConfigError",
    "RecipeConfig",
    "config_to_dict",
    "config_to_yaml",
    "diff_configs",
    "load_config",
    "parse_overrides",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid (the message names the key, the value and what is expected)."""


DTYPES = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TargetConfig:
    """The frozen target model."""

    name_or_path: str = ""  # a local HF directory (or a hub name already in the local HF cache); required
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attn_implementation: str | None = None  # HF attn_implementation (sdpa, eager, flash_attention_2); None: HF default
    aux_layer_ids: list[int] | None = None  # 0-indexed decoder layers whose output is captured; None: [1, L//2-1, L-4]
    sharding: str = "replicate"  # replicate: a full copy per rank; fsdp: fully_shard per decoder layer (FSDP2)
    trust_remote_code: bool = False
    tokenizer: str | None = None  # default: name_or_path


@dataclass
class DataConfig:
    """Chat data, rows and the draft vocabulary."""

    train_path: str = ""  # JSONL / JSON / parquet / save_to_disk dir / HF dataset name; required (unless cached)
    train_split: str | None = None  # HF split spec with slices, e.g. "train[:20000]"
    eval_path: str | None = None
    eval_split: str | None = None
    seq_length: int = 2048  # padded rows: truncate / pad to this many tokens
    packed_sequence_size: int = 0  # > 0: pack documents into rows of this width (EAGLE-3 only)
    packing_strategy: str = "best_fit"  # best_fit (less padding) or greedy (the seed's layout)
    mask_reasoning_content: bool = False
    mask_generation_prompt: bool = False
    num_workers: int = 0
    draft_vocab_size: int | None = None  # None: the full target vocabulary
    vocab_cache_path: str | None = None  # default: <output_dir>/draft_vocab.safetensors
    cache_dir: str | None = None  # tokenisation cache; default: <output_dir>/cache
    shuffle: bool = True
    shuffle_seed: int = 42
    chat_template: str | None = None  # override the tokenizer's template
    cached_target_path: str | None = None  # train from an offline cache (eagle-ext precompute); no target loaded;
    # data.eval_path must then name a cache of the eval data too


@dataclass
class Eagle3Config:
    """EAGLE-3: one draft layer, trained with a test-time-training unroll."""

    ttt_steps: int = 4
    step_decay: float = 0.8
    attn_implementation: str = "lean"  # TTT attention: lean (chunked, recompute), eager, or flex (compiled on CUDA)
    fc_norm: bool = False
    norm_output: bool = False
    freeze_embeddings: bool = True
    init_head_from_target: bool = False  # lm_head from the target's output rows of the draft vocab, norm from its final norm


@dataclass
class PEagleConfig:
    """P-EAGLE: a multi-layer parallel-drafting draft over COD-sampled sequences."""

    num_depths: int = 8
    num_draft_layers: int = 4
    down_sample_ratio: float = 0.7
    down_sample_ratio_min: float = 0.2
    mask_token_id: int | None = None  # required: a token id of the target vocabulary
    sequence_partitions: int = 1
    max_anchors: int | None = None
    attention: str = "auto"  # auto: flex on CUDA, dense mask on CPU
    freeze_embeddings: bool = False
    init_head_from_target: bool = False  # lm_head from the target's output rows of the draft vocab, norm from its final norm


@dataclass
class DraftConfig:
    """The draft decoder's architecture (None: chosen from the target; see docs/training.md, "Draft shape")."""

    bias: bool = False  # attention + MLP biases; false serves on both engines (SGLang / specforge build none)
    num_hidden_layers: int | None = None  # None: 1 for eagle3 (the only choice), peagle.num_draft_layers for peagle
    intermediate_size: int | None = None  # None: the target's (an MoE expert width becomes 8/3 x hidden)
    num_attention_heads: int | None = None  # None: the target's (MLA targets: hidden / 128 when possible)
    num_key_value_heads: int | None = None  # None: the target's (MLA targets: GQA, <= 8)
    head_dim: int | None = None  # None: the target's (MLA targets: 128, not qk_rope_head_dim)
    rope_layer_type: str | None = None  # per-layer-type RoPE targets (Gemma 3): whose RoPE; None: full_attention


@dataclass
class OptimConfig:
    """AdamW with a linear warmup then a cosine decay."""

    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    grad_accumulation_steps: int = 1
    max_grad_norm: float = 1.0  # <= 0 disables clipping


@dataclass
class TrainConfig:
    """The loop."""

    epochs: int = 1
    max_steps: int | None = None  # optimiser steps; caps the epochs when set
    micro_batch_size: int = 1
    seed: int = 42
    device: str = "auto"  # auto: cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    autocast: str = "auto"  # auto: bf16 autocast on CUDA, none on CPU; bf16 | none (fp16 refused: no GradScaler)
    loss_impl: str = "auto"  # fused projection + loss: auto | fused | reference (EAGLE-3)
    log_every_steps: int = 10
    eval_every_steps: int | None = None  # None: only at the end (when data.eval_path is set)
    eval_at_start: bool = False  # also evaluate the untrained draft (a baseline point in the log)
    eval_batches: int | None = None  # None: the whole eval set
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = False  # also log to output_dir/tensorboard (needs the tensorboard package: the [tensorboard] extra)


@dataclass
class CheckpointConfig:
    """Checkpoints and the end-of-training export."""

    every_steps: int | None = None  # None: only the final checkpoint
    keep: int = 3  # newest checkpoints kept
    export_formats: list[str] = field(default_factory=list)  # speculators / sglang / specforge_peagle


@dataclass
class RecipeConfig:
    """``eagle-ext train -c cfg.yaml``: the whole job."""

    output_dir: str = ""  # required
    algorithm: str = "eagle3"  # eagle3 | peagle
    resume: str | None = None  # None: fresh run (refuses a non-empty checkpoints dir); auto: latest if any; a path
    init_from: str | None = None  # a fresh run's draft weights and vocabulary from an exported draft (a warm start)
    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eagle3: Eagle3Config = field(default_factory=Eagle3Config)
    peagle: PEagleConfig = field(default_factory=PEagleConfig)
    draft: DraftConfig = field(default_factory=DraftConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # dotted keys set explicitly by the YAML or an override (not part of the config itself)
    explicit: set[str] = field(default_factory=set, repr=False, compare=False)


# ---------------------------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "a bool", int: "an int", float: "a number", str: "a string"}.get(tp, str(tp))


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against (and, for int -> float, converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 (PyYAML) reads 1e-4 without a dot as a string; it is a number to anyone writing a config
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name != "explicit"}


def _apply(obj: Any, data: dict, prefix: str, explicit: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    fields = _fields(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint} (valid keys here: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, key), value, f"{dotted}.", explicit)
        else:
            setattr(obj, key, _coerce(dotted, value, tp))
            explicit.add(dotted)


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "train.max_steps=10"]`` -> a nested dict; values are parsed as YAML scalars / lists.

    Raises:
        ConfigError: an override without ``=`` or with an empty key.
    """
    import yaml

    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)}); quote "
                              "strings and close brackets, e.g. optim.betas=[0.9,0.95]") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key below {part!r}, which is a value")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Defaults, then the YAML file at ``path``, then the dotted ``overrides``; validated (see :func:`validate`).

    Raises:
        ConfigError: unknown keys, wrong types, values out of range, missing required values (before anything
            is loaded); FileNotFoundError: ``path`` does not exist.
    """
    import yaml

    data: dict = {}
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path!r} is not valid YAML ({_yaml_problem(exc)}); expected a "
                                  "mapping of sections such as `train:` with indented `key: value` lines") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    cfg = RecipeConfig()
    _apply(cfg, data, "", cfg.explicit)
    _expand_user_paths(cfg)
    validate(cfg)
    return cfg


def _yaml_problem(exc: Exception) -> str:
    """``line L, column C: problem`` of a YAML parse error (1-based), on one line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


#: path-valued keys where a leading ``~`` means the user's home (shipped configs name ``~/.cache/...``)
_PATH_KEYS = (("target", "name_or_path"), ("target", "tokenizer"), ("data", "train_path"), ("data", "eval_path"),
              ("data", "vocab_cache_path"), ("data", "cache_dir"), ("data", "cached_target_path"), ("", "output_dir"),
              ("", "init_from"))


def _expand_user_paths(cfg: RecipeConfig) -> None:
    for section, key in _PATH_KEYS:
        owner = getattr(cfg, section) if section else cfg
        value = getattr(owner, key)
        if isinstance(value, str) and value.startswith("~"):
            setattr(owner, key, os.path.expanduser(value))


# ---------------------------------------------------------------------------------------------- validation


def _tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can work: the tensorboard package is importable (found, not imported)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _positive_int(cfg_value: Any, key: str, minimum: int = 1) -> None:
    _require(cfg_value >= minimum, key, cfg_value, f"an int >= {minimum}")


def validate(cfg: RecipeConfig) -> None:
    """Check every value (ranges, choices, required keys, cross-field rules), section by section; the algorithm's
    own section is checked by its strategy. Touches only the file system (existence of paths); loads nothing.

    Raises:
        ConfigError: naming the key, the value and what is expected.
    """
    algo = _validate_algorithm(cfg)
    _validate_target(cfg, algo)
    _validate_data(cfg, algo)
    _validate_draft(cfg, algo)
    _validate_optim(cfg)
    _validate_train(cfg)
    _validate_checkpoint(cfg)


def _validate_algorithm(cfg: RecipeConfig) -> Algorithm:
    """The algorithm's strategy, after refusing knobs of another algorithm's section."""
    _require(bool(cfg.output_dir), "output_dir", cfg.output_dir, "a directory path (required)")
    _require(cfg.algorithm in ALGORITHM_NAMES, "algorithm", cfg.algorithm, f"one of {ALGORITHM_NAMES}")
    algo = get_algorithm(cfg.algorithm)
    others = {s.config_section: s.name for s in REGISTRY.values() if s.name != cfg.algorithm}
    stray = sorted(k for k in cfg.explicit if k.split(".")[0] in others)
    if stray:
        other = others[stray[0].split(".")[0]]
        raise ConfigError(f"{', '.join(stray)} set, but algorithm is {cfg.algorithm!r}: {other}.* knobs belong to "
                          f"algorithm: {other}; remove them or switch the algorithm")

    return algo


def _validate_target(cfg: RecipeConfig, algo: Algorithm) -> None:
    """The target (or the offline cache standing for it), the data paths it needs, aux layers."""
    t = cfg.target
    cached = cfg.data.cached_target_path is not None
    if cached:
        _require(os.path.isdir(cfg.data.cached_target_path), "data.cached_target_path", cfg.data.cached_target_path,
                 "an existing cache directory written by `eagle-ext precompute`")
        cachable = " or ".join(repr(s.name) for s in REGISTRY.values() if s.offline_cache)
        _require(algo.spec.offline_cache, "algorithm", cfg.algorithm, f"{cachable} with data.cached_target_path "
                 "(the offline cache holds EAGLE-3 supervision)")
        _require(t.sharding == "replicate", "target.sharding", t.sharding,
                 "'replicate' with data.cached_target_path (no target is loaded)")
        _require(not algo.init_head_from_target(cfg), f"{algo.spec.config_section}.init_head_from_target", True,
                 "false with data.cached_target_path (the cache holds the input embeddings, not the output head)")
        if cfg.data.eval_path is not None:
            _require(os.path.isdir(cfg.data.eval_path), "data.eval_path", cfg.data.eval_path,
                     "a cache directory (from `eagle-ext precompute` on the eval data) with data.cached_target_path")
    else:
        _require(bool(t.name_or_path), "target.name_or_path", t.name_or_path, "a model directory or hub name (required)")
        _require(bool(cfg.data.train_path), "data.train_path", cfg.data.train_path, "a chat data path (required)")
        if looks_like_local_path(t.name_or_path):  # a hub id (owner/name) is read by transformers later
            _require(os.path.isfile(os.path.join(t.name_or_path, "config.json")), "target.name_or_path",
                     t.name_or_path, "a directory holding config.json (the model was not found there)")
        if os.path.sep in cfg.data.train_path or cfg.data.train_path.endswith((".jsonl", ".json", ".parquet")):
            _require(os.path.exists(cfg.data.train_path), "data.train_path", cfg.data.train_path, "an existing file or directory")
        if cfg.data.eval_path is not None and (os.path.sep in cfg.data.eval_path
                                               or cfg.data.eval_path.endswith((".jsonl", ".json", ".parquet"))):
            _require(os.path.exists(cfg.data.eval_path), "data.eval_path", cfg.data.eval_path, "an existing file or directory")
    _require(t.dtype in DTYPES, "target.dtype", t.dtype, f"one of {DTYPES}")
    _require(t.sharding in ("replicate", "fsdp"), "target.sharding", t.sharding, "'replicate' or 'fsdp'")
    if t.aux_layer_ids is not None:
        _require(len(t.aux_layer_ids) >= 1 and all(i >= 0 for i in t.aux_layer_ids)
                 and len(set(t.aux_layer_ids)) == len(t.aux_layer_ids),
                 "target.aux_layer_ids", t.aux_layer_ids, "distinct non-negative layer indices")


def _validate_data(cfg: RecipeConfig, algo: Algorithm) -> None:
    d = cfg.data
    _positive_int(d.seq_length, "data.seq_length", 2)
    _require(d.packed_sequence_size == 0 or d.packed_sequence_size >= 2, "data.packed_sequence_size",
             d.packed_sequence_size, "0 (no packing) or an int >= 2")
    _require(d.packing_strategy in ("best_fit", "greedy"), "data.packing_strategy", d.packing_strategy,
             "'best_fit' or 'greedy'")
    _positive_int(d.num_workers, "data.num_workers", 0)
    if d.draft_vocab_size is not None:
        _positive_int(d.draft_vocab_size, "data.draft_vocab_size")
    if not algo.spec.packing:
        _require(d.packed_sequence_size == 0, "data.packed_sequence_size", d.packed_sequence_size,
                 f"0 with algorithm {cfg.algorithm!r} (a {algo.spec.label} row is one document)")
    if cfg.data.cached_target_path is not None:
        _require(d.packed_sequence_size == 0, "data.packed_sequence_size", d.packed_sequence_size,
                 "0 with data.cached_target_path (the cache stores padded samples)")


def _validate_draft(cfg: RecipeConfig, algo: Algorithm) -> None:
    dr = cfg.draft
    for key in ("num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        if getattr(dr, key) is not None:
            _positive_int(getattr(dr, key), f"draft.{key}")
    if dr.num_attention_heads is not None and dr.num_key_value_heads is not None:
        _require(dr.num_attention_heads % dr.num_key_value_heads == 0, "draft.num_key_value_heads",
                 dr.num_key_value_heads, f"a divisor of draft.num_attention_heads ({dr.num_attention_heads})")
    algo.validate_config(cfg, _require)  # its own section, and what it rules for draft.*
    if dr.rope_layer_type is not None:
        _require(bool(dr.rope_layer_type.strip()), "draft.rope_layer_type", dr.rope_layer_type,
                 "null or a layer type of the target, e.g. 'full_attention'")


def _validate_optim(cfg: RecipeConfig) -> None:
    o = cfg.optim
    _require(o.lr > 0, "optim.lr", o.lr, "a number > 0")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "two numbers in [0, 1)")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _require(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", o.warmup_ratio, "a number in [0, 1)")
    _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "a number in [0, 1]")
    _positive_int(o.grad_accumulation_steps, "optim.grad_accumulation_steps")


def _validate_train(cfg: RecipeConfig) -> None:
    tr = cfg.train
    _positive_int(tr.epochs, "train.epochs")
    if tr.max_steps is not None:
        _positive_int(tr.max_steps, "train.max_steps")
    _positive_int(tr.micro_batch_size, "train.micro_batch_size")
    _require(tr.device == "auto" or tr.device == "cpu" or tr.device.startswith("cuda"), "train.device", tr.device,
             "'auto', 'cpu' or 'cuda[:N]'")
    _require(tr.autocast in ("auto", "bf16", "none"), "train.autocast", tr.autocast,
             "'auto', 'bf16' or 'none'" + (
                 " (fp16 autocast is refused: the recipe has no GradScaler, so fp16 gradients of the loss and the "
                 "fused kernels' dz would underflow to zero; use bf16, which needs no loss scaling)"
                 if tr.autocast == "fp16" else ""))
    _require(tr.loss_impl in ("auto", "fused", "reference"), "train.loss_impl", tr.loss_impl,
             "'auto', 'fused' or 'reference'")
    _positive_int(tr.log_every_steps, "train.log_every_steps")
    if tr.eval_every_steps is not None:
        _positive_int(tr.eval_every_steps, "train.eval_every_steps")
    if tr.eval_batches is not None:
        _positive_int(tr.eval_batches, "train.eval_batches")
    if tr.tensorboard and not _tensorboard_available():
        raise ConfigError("train.tensorboard is true, but the tensorboard package is not installed; install it "
                          "(pip install 'eagle_ext[tensorboard]') or set train.tensorboard=false")


def _validate_checkpoint(cfg: RecipeConfig) -> None:
    c = cfg.checkpoint
    if c.every_steps is not None:
        _positive_int(c.every_steps, "checkpoint.every_steps")
    _positive_int(c.keep, "checkpoint.keep")
    for i, f in enumerate(c.export_formats):
        expected = format_problem(f, cfg.algorithm)
        _require(expected is None, f"checkpoint.export_formats[{i}]", f, expected)
    if cfg.resume is not None and cfg.resume != "auto":
        _require(os.path.exists(cfg.resume), "resume", cfg.resume, "'auto', null or an existing checkpoint / run directory")
    if cfg.init_from is not None:
        _require(os.path.isfile(os.path.join(cfg.init_from, "config.json")), "init_from", cfg.init_from,
                 "null or an exported draft directory (eagle-ext export; with a config.json)")


# ---------------------------------------------------------------------------------------------- output


def config_to_dict(cfg: RecipeConfig, *, active_only: bool = True) -> dict:
    """The config as plain data; with ``active_only`` the section of the algorithm not in use is left out."""
    out = dataclasses.asdict(cfg)
    out.pop("explicit", None)
    if active_only:
        for spec in REGISTRY.values():
            if spec.name != cfg.algorithm:
                out.pop(spec.config_section)
    return out


def config_to_yaml(cfg: RecipeConfig) -> str:
    """The resolved config as YAML (loadable by :func:`load_config`)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper, data):  # short scalar lists inline ([0.9, 0.95]), mappings as blocks
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    _Dumper.add_representer(list, _list)
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_configs(a: dict, b: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two config dicts (``"key: a -> b"``), skipping keys that start with
    any of ``ignore``."""
    fa, fb = _flatten(a), _flatten(b)
    out = []
    for key in sorted(set(fa) | set(fb)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        if fa.get(key, "<absent>") != fb.get(key, "<absent>"):
            out.append(f"{key}: {fa.get(key, '<absent>')!r} -> {fb.get(key, '<absent>')!r}")
    return out
