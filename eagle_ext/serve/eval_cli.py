"""``eagle-ext eval``: measure a draft's real acceptance with speculative decoding against its target.

``eagle-ext eval --target PATH --draft EXPORT_DIR --prompts FILE [--num-draft-tokens K [K ...]]
[--max-new-tokens M] [--temperature T] [--seed S] [--out FILE] [--device cpu|cuda] [--dtype ...] [--save-text]
[--engine hf|vllm|both] [--concurrency N] [--vllm-python PATH] [--parity-tolerance X] [--no-convert]``

Engines: ``hf`` (default) is eagle_ext's own PyTorch decoder, the reference and the lossless check; ``vllm``
measures the same prompts in vLLM (:mod:`eagle_ext.serve.vllm_eval`, through :mod:`eagle_ext.engines.vllm`);
``both`` runs the two and fails (exit 1) when their acceptance differs: exactly for greedy fp32, beyond
``--parity-tolerance`` otherwise. The default ``--out`` is ``<draft's parent>/eval/<draft name>_<engine>.json``,
beside the export, never the working directory.

The draft is read from an export directory (:func:`eagle_ext.serve.export.load_exported_draft`), so the
evaluation also proves the export. Prompts: a JSONL file whose lines are a JSON string, ``{"prompt": str}``
or a chat row (OpenAI ``messages`` or ShareGPT ``conversations``; trailing assistant turns are dropped, the
target writes the reply), rendered with the target tokenizer's chat template (``add_generation_prompt=True``).
Every argument, the prompts, the export (as ``export --check`` does) and the target's ``config.json`` are
checked before any weights load; a draft whose recorded target differs from ``--target`` gets a warning.
``--save-text`` adds each prompt's generated text to the report. The engine is :mod:`eagle_ext.serve.speculative`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from eagle_ext._paths import looks_like_local_path
from eagle_ext.serve.prompts import load_prompts, render_prompts, target_stop_token_ids

#: --dtype choice -> torch dtype name ("auto": bf16 on CUDA, fp32 on CPU)
DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_TOLERANCE = 0.15  # == serve.vllm_eval.DEFAULT_BF16_TOLERANCE (kept light for --help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="the target: an HF model directory (or a cached hub id)")
    parser.add_argument("--draft", required=True, help="an export directory written by `eagle-ext export`")
    parser.add_argument("--prompts", required=True,
                        help="JSONL: one JSON string, {\"prompt\": ...} or chat row ({\"messages\": [...]}) per line")
    parser.add_argument("--num-draft-tokens", type=int, nargs="+", default=[3], metavar="K",
                        help="draft tokens verified per target forward; several values are evaluated in one run")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="M", help="new tokens per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="0 = greedy (output checked against the target's own); > 0 = speculative sampling")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (prompt i uses seed + i)")
    parser.add_argument("--max-prompts", type=int, default=None, metavar="N", help="evaluate the first N prompts")
    parser.add_argument("--ignore-eos", action="store_true", help="always generate M tokens (do not stop at EOS)")
    parser.add_argument("--out", default=None,
                        help="JSON report path, written atomically (default: <draft's parent>/eval/"
                             "<draft name>_<engine>.json)")
    parser.add_argument("--engine", choices=("hf", "vllm", "both"), default="hf",
                        help="hf: eagle_ext's decoder (reference); vllm: vLLM; both: run the two and check that "
                             "they accept alike")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="vLLM only: 1 = batch-1 latency; N > 1 = all prompts submitted, N in flight")
    parser.add_argument("--vllm-python", default=None, metavar="PATH",
                        help="the python that has vLLM (default: $EAGLE_EXT_VLLM_PYTHON, this one, .venv-vllm)")
    parser.add_argument("--parity-tolerance", type=float, default=None, metavar="X",
                        help="--engine both: largest |diff| in tau / per-position acceptance (default: 0 = "
                             f"exact for greedy fp32, else {DEFAULT_TOLERANCE})")
    parser.add_argument("--no-convert", action="store_true",
                        help="vLLM gets the export directory exactly as given (an SGLang export is otherwise "
                             "converted to speculators first): with --engine both, checks what vLLM makes of it")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="auto",
                        help="target and draft dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of what the JSON report holds (kept apart from the engine options)."""
    parser.add_argument("--save-text", action="store_true",
                        help="also write each prompt's generated text and token ids (target-only and per K) "
                             "into the JSON report")


def _check_model_dir(name: str, path: str, *, hub_ok: bool) -> None:
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            hint = ("; expected a model directory" if hub_ok else
                    "; expected an export directory (a training run? export it first: eagle-ext export RUN --format "
                    "speculators)")
            raise ValueError(f"{name} {path!r} is a directory without config.json{hint}")
        return
    if os.path.exists(path):
        raise ValueError(f"{name} {path!r} is a file, expected a directory")
    if not hub_ok or looks_like_local_path(path):
        raise ValueError(f"{name} {path!r}: no such directory" + (
            "; expected a model directory holding config.json (or a hub id owner/name)" if hub_ok
            else "; expected an export directory written by `eagle-ext export`"))


def validate_args(args: argparse.Namespace) -> None:
    """Check every argument before anything loads.

    Raises:
        ValueError: naming the argument, the value and what is expected.
    """
    _check_model_dir("--target", args.target, hub_ok=True)
    _check_model_dir("--draft", args.draft, hub_ok=False)
    if not os.path.isfile(args.prompts):
        raise ValueError(f"--prompts {args.prompts!r} is not a file")
    if not args.num_draft_tokens or any(k < 1 for k in args.num_draft_tokens):
        raise ValueError(f"--num-draft-tokens must be ints >= 1, got {args.num_draft_tokens}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.max_prompts is not None and args.max_prompts < 1:
        raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    if args.out is not None and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a directory, expected a file path")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.concurrency > 1 and args.engine == "hf":
        raise ValueError(f"--concurrency {args.concurrency} applies to --engine vllm or both; the hf decoder runs "
                         "one request at a time")
    if args.parity_tolerance is not None and not (math.isfinite(args.parity_tolerance)
                                                  and args.parity_tolerance >= 0):
        raise ValueError(f"--parity-tolerance must be a finite number >= 0, got {args.parity_tolerance}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but no CUDA device is available")


def _same_target(recorded: str, given: str) -> bool:
    if recorded == given:
        return True
    if os.path.isdir(recorded) and os.path.isdir(given):
        return os.path.samefile(recorded, given)
    return os.path.normpath(recorded) == os.path.normpath(given)


def check_draft_against_target(args: argparse.Namespace) -> list[str]:
    """Read the export's ``config.json`` and the target's (no weights) and compare them; returns warnings.

    The export is checked like ``eagle-ext export --check``. A draft whose hidden size or vocabulary differs from
    the target's, or whose aux layers the target does not have, cannot run against it (an error); a differing
    recorded target (``target_name_or_path``) or recorded layer count is a warning.

    Raises:
        ValueError: naming ``--draft`` / ``--target``, the values and the fix.
    """
    from eagle_ext.serve.export import (
        METADATA_KEY,
        _read_config,
        _split_config,
        check_export,
        detect_export_format,
    )

    problems = check_export(args.draft)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"--draft {args.draft!r} is not a valid export: {problems[0]}{more}; "
                         f"`eagle-ext export --check {args.draft}` lists every problem")
    config = _read_config(args.draft)
    fmt, _ = detect_export_format(config)
    layer, aux_ids = _split_config(config, fmt)
    block = config.get(METADATA_KEY) or {}
    recorded = (config.get("speculators_config") or {}).get("verifier", {}).get("name_or_path") \
        if fmt == "speculators" else None
    recorded = recorded or block.get("target_name_or_path")
    recorded_layers = block.get("target_num_hidden_layers")

    try:
        from transformers import AutoConfig

        target_config = AutoConfig.from_pretrained(args.target)
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"--target {args.target!r}: cannot read its config.json ({detail}); expected a model "
                         "directory, or a hub id already in the local Hugging Face cache") from None
    text = getattr(target_config, "get_text_config", lambda: target_config)()
    vocab, hidden, layers = (int(getattr(text, k, -1)) for k in ("vocab_size", "hidden_size", "num_hidden_layers"))
    fix = f"--draft {args.draft!r} was not trained for --target {args.target!r}" + (
        f" (it records target {recorded!r})" if recorded else "")
    if layer.get("vocab_size") is not None and int(layer["vocab_size"]) != vocab:
        raise ValueError(f"the draft's vocab_size ({layer['vocab_size']}) differs from the target's ({vocab}): {fix}")
    if layer.get("hidden_size") is not None and int(layer["hidden_size"]) != hidden:
        raise ValueError(f"the draft's hidden_size ({layer['hidden_size']}) differs from the target's ({hidden}): "
                         f"{fix}")
    if aux_ids and max(aux_ids) >= layers:
        raise ValueError(f"the draft reads target layers {aux_ids}, the target has {layers}: {fix}")
    warnings = []
    if recorded and not _same_target(str(recorded), args.target):
        warnings.append(f"--draft {args.draft!r} was exported for target {recorded!r}, evaluating it against "
                        f"--target {args.target!r}")
    if isinstance(recorded_layers, int) and recorded_layers != layers:
        warnings.append(f"--draft {args.draft!r} records a target of {recorded_layers} layers, --target "
                        f"{args.target!r} has {layers}")
    return warnings


def prepare_run(args: argparse.Namespace) -> list[list[dict]]:
    """Every check that needs no weights, in order: the arguments, the prompts, the export and the target's
    ``config.json`` (warnings printed to stderr). Returns the conversations.

    Raises:
        ValueError: the first problem (naming the argument, the value and what is expected).
    """
    validate_args(args)
    conversations = load_prompts(args.prompts, args.max_prompts)
    for warning in check_draft_against_target(args):
        print(f"eagle-ext eval: warning: {warning}", file=sys.stderr)
    return conversations


def add_generated_text(report: dict[str, Any], tokenizer: Any) -> None:
    """Decode the ``tokens`` of every per-prompt entry (target-only and each K) into ``text`` (special tokens
    kept, so a stop token shows)."""
    for entry in report.get("prompts", []):
        for summary in [entry["target_only"], *entry["speculative"]]:
            if "tokens" in summary:
                summary["text"] = tokenizer.decode(summary["tokens"], skip_special_tokens=False)


def default_out(draft: str, engine: str) -> str:
    """``<draft's parent>/eval/<draft name>_<engine>.json``: beside the export (``RUN/export/eval/...`` for a
    recipe export), never the working directory."""
    draft = os.path.abspath(draft).rstrip(os.sep)
    return os.path.join(os.path.dirname(draft), "eval", f"{os.path.basename(draft)}_{engine}.json")


def _fail(message: str) -> int:
    print(f"eagle-ext eval: error: {message}", file=sys.stderr)
    return 2


def _resolve_dtype(args: argparse.Namespace) -> tuple[str, str]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, DTYPES[args.dtype] or ("bfloat16" if device == "cuda" else "float32")


def _target_stop_ids(args: argparse.Namespace, tokenizer: Any) -> list[int]:
    return [] if args.ignore_eos else target_stop_token_ids(tokenizer, args.target)


def _run_hf(args: argparse.Namespace, tokenizer: Any, prompts: list[list[int]], stop_ids: list[int],
            device_name: str, dtype_name: str) -> dict[str, Any]:
    """eagle_ext's own decoder; the aux layers come from the export's training record (the ``eagle_ext``
    block) when it has one, so a serving field that disagrees shows up against vLLM (``--engine both``)."""
    from eagle_ext.serve.session import load_speculative_session
    from eagle_ext.serve.speculative import evaluate_speculative

    session = load_speculative_session(args.target, {"draft": args.draft}, device=device_name, dtype=dtype_name)
    exported, aux_ids = session.exports["draft"], session.aux_layer_ids
    report = evaluate_speculative(
        session.runner, session.drafters["draft"], prompts,
        num_draft_tokens=args.num_draft_tokens, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        seed=args.seed, stop_token_ids=stop_ids, progress=not args.no_progress,
        keep_tokens=getattr(args, "save_text", False),
    )
    if getattr(args, "save_text", False):
        add_generated_text(report, tokenizer)
    report["settings"].update({
        "engine": "hf", "format": exported.format, "aux_layer_ids": aux_ids, "dtype": dtype_name,
        "target_name_or_path_in_export": exported.target_name_or_path,
    })
    return report


def _run_vllm(args: argparse.Namespace, tokenizer: Any, prompts: list[list[int]], stop_ids: list[int],
              dtype_name: str):
    from eagle_ext.serve.vllm_eval import evaluate_vllm

    report = evaluate_vllm(
        args.target, {"draft": args.draft}, prompts, num_draft_tokens=args.num_draft_tokens,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, stop_token_ids=stop_ids,
        ignore_eos=args.ignore_eos, dtype=dtype_name, concurrency=args.concurrency, python=args.vllm_python,
        progress=not args.no_progress, convert=not args.no_convert, keep_tokens=args.save_text,
    )["draft"]
    if args.save_text:
        add_generated_text(report, tokenizer)
    report["settings"]["format"] = _export_format(args.draft)
    return report


def _export_format(draft: str) -> str:
    from eagle_ext.serve.export import detect_export_format

    with open(os.path.join(draft, "config.json")) as f:
        return detect_export_format(json.load(f))[0]


def run(args: argparse.Namespace) -> int:
    try:
        conversations = prepare_run(args)
    except ValueError as exc:
        return _fail(str(exc))
    if args.engine != "hf":
        from eagle_ext.engines.vllm import VllmUnavailable, find_vllm_python

        try:
            args.vllm_python = find_vllm_python(args.vllm_python)
        except VllmUnavailable as exc:
            return _fail(f"--engine {args.engine}: {exc}")

    from transformers import AutoTokenizer

    from eagle_ext._io import write_json
    from eagle_ext.engines.vllm import VllmUnavailable
    from eagle_ext.serve.speculative import format_report

    device, dtype_name = _resolve_dtype(args)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    try:
        prompts = render_prompts(tokenizer, conversations)
    except ValueError as exc:
        return _fail(str(exc))
    stop_ids = _target_stop_ids(args, tokenizer)
    common = {"target": args.target, "draft": args.draft, "prompts": args.prompts, "ignore_eos": bool(args.ignore_eos)}
    out = args.out or default_out(args.draft, args.engine)
    reports = {}
    try:
        if args.engine in ("hf", "both"):
            reports["hf"] = _run_hf(args, tokenizer, prompts, stop_ids, device, dtype_name)
        if args.engine in ("vllm", "both"):
            reports["vllm"] = _run_vllm(args, tokenizer, prompts, stop_ids, dtype_name)
    except (ValueError, VllmUnavailable) as exc:
        if "hf" in reports:  # --engine both: keep what eagle_ext's decoder measured
            reports["hf"]["settings"].update(common)
            write_json(out, {"settings": {**common, "engine": "both"}, "hf": reports["hf"], "vllm": None,
                             "vllm_error": str(exc)}, indent=2)
            print(f"eagle_ext's own evaluation written to {out}", file=sys.stderr)
        return _fail(str(exc))
    for name, report in reports.items():
        report["settings"].update(common)
        if len(reports) > 1:
            print(f"== {name}")
        print(format_report(report))
    if args.engine != "both":
        write_json(out, reports[args.engine], indent=2)
        print(f"report written to {out}")
        return 0
    from eagle_ext.serve.vllm_eval import compare_engines, format_comparison

    # batched decoding (concurrency > 1) may round differently from batch 1: exactness only at batch 1
    exact = dtype_name == "float32" and args.temperature == 0 and args.concurrency == 1
    tolerance = args.parity_tolerance if args.parity_tolerance is not None else (0.0 if exact else DEFAULT_TOLERANCE)
    problems = compare_engines(reports["hf"], reports["vllm"], tolerance=tolerance)
    print("== hf vs vLLM (same prompts)")
    print(format_comparison(reports["hf"], reports["vllm"]))
    both = {"settings": {**common, "engine": "both", "tolerance": tolerance, "dtype": dtype_name},
            "hf": reports["hf"], "vllm": reports["vllm"], "parity_problems": problems, "agree": not problems}
    write_json(out, both, indent=2)
    print(f"report written to {out}")
    if problems:
        print("eagle-ext eval: error: hf and vLLM accept the draft differently (" +
              ("exact match required: greedy fp32" if tolerance == 0 else f"tolerance {tolerance}") + "):\n  " +
              "\n  ".join(problems) + "\nthe draft is read differently at serving time than eagle_ext trained "
              "and evaluates it: check aux layer ids (`eagle-ext export --check`), the export format the engine "
              "takes (vLLM: speculators), norms and the vocabulary map", file=sys.stderr)
        return 1
    print("hf and vLLM agree" + (" exactly" if tolerance == 0 else f" within {tolerance}"))
    return 0
