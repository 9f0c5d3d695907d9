"""Speculative decoding measured in vLLM, reported like eagle_ext's own evaluator, and the two compared.

- :func:`vllm_speculative_config`: the ``speculative_config`` that serves an export right (``method`` always
  written: without it vLLM 0.32 guesses from the directory name; P-EAGLE adds ``parallel_drafting``). The
  documented serving commands use exactly this.
- :func:`prepare_for_vllm`: vLLM reads a flat (SGLang) config's aux ids as layer *inputs*, one layer early, and
  says nothing; such an export is converted to ``speculators`` first.
- :func:`evaluate_vllm`: target-only and one engine per K over the same prompts, with the schema of
  :func:`eagle_ext.serve.speculative.evaluate_drafters` (plus ``engine``); tau and per-position acceptance come
  from vLLM's own counters, warm-up excluded.
- :func:`compare_engines`: the train/serve capture-parity check behind ``eagle-ext eval --engine both``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["vllm_speculative_config", "prepare_for_vllm", "evaluate_vllm", "compare_engines", "format_comparison",
           "DEFAULT_BF16_TOLERANCE"]

#: --engine both: the largest |difference| in tau or in any position's acceptance rate tolerated when the
#: verification is not fp32 (bf16 / fp16 verify forwards round differently in the two engines, so greedy
#: paths part at near-ties; measured on SmolLM2, 10 prompts: 0.05).
DEFAULT_BF16_TOLERANCE = 0.15


def _read_config(export_dir: str) -> dict[str, Any]:
    with open(os.path.join(export_dir, "config.json")) as f:
        return json.load(f)


def vllm_speculative_config(export_dir: str, num_speculative_tokens: int, *, as_is: bool = False) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for a ``speculators`` export directory.

    Args:
        as_is: allow a flat (SGLang) export too, served as it stands (vLLM then misreads its aux layer ids: what
            ``eval --engine both --no-convert`` exposes).

    Raises:
        ValueError: the directory is not a ``speculators`` export (convert it with :func:`prepare_for_vllm`).
    """
    from eagle_ext.algorithms import algorithm_spec
    from eagle_ext.serve.export import detect_export_format

    config = _read_config(export_dir)
    fmt, algorithm = detect_export_format(config)
    if fmt != "speculators" and not as_is:
        raise ValueError(f"{export_dir!r} is a {fmt} export; vLLM reads the aux layer ids of a flat config one "
                         "layer early. Serve the speculators export (eagle-ext export RUN --format speculators, or "
                         f"convert this one: eagle-ext export {export_dir} --format speculators)")
    spec = {"model": os.path.abspath(export_dir), "method": "eagle3",
            "num_speculative_tokens": int(num_speculative_tokens)}
    if algorithm_spec(algorithm).parallel_drafting:
        spec["parallel_drafting"] = True
    return spec


def prepare_for_vllm(export_dir: str, workdir: str | None = None) -> tuple[str, str | None]:
    """The directory vLLM should load for ``export_dir``: itself for a ``speculators`` export, else a
    ``speculators`` conversion written under ``workdir`` (a temporary directory by default).

    Returns:
        ``(directory, note)``; ``note`` says what was converted (``None`` when nothing was).
    """
    from eagle_ext.serve.export import convert_export, detect_export_format

    fmt, _ = detect_export_format(_read_config(export_dir))
    if fmt == "speculators":
        return os.path.abspath(export_dir), None
    workdir = workdir or tempfile.mkdtemp(prefix="eagle_ext_vllm_draft_")
    out = convert_export(export_dir, os.path.join(workdir, "speculators"), format="speculators")
    return out, (f"{export_dir} is a {fmt} export: vLLM would capture each aux layer one layer early, so it "
                 f"was converted to speculators in {out}")


# ------------------------------------------------------------------------------------------------ evaluation


def _summary_from_counts(new_tokens: int, seconds: float, k: int, spec: dict | None, requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {"new_tokens": new_tokens, "seconds": seconds,
                           "tokens_per_s": new_tokens / seconds if seconds > 0 else float("nan")}
    if not k:
        out["target_forwards"] = new_tokens  # the prefill yields the first token, each step one more
        return out
    rounds = int(spec["num_drafts"])
    per_pos = list(spec["accepted_per_pos"]) + [0] * (k - len(spec["accepted_per_pos"]))
    out.update({
        "target_forwards": requests + rounds,
        "num_draft_tokens": k,
        "rounds": rounds,
        "tau": 1.0 + spec["num_accepted_tokens"] / rounds if rounds else float("nan"),
        "acceptance_rate": [per_pos[j] / rounds if rounds else float("nan") for j in range(k)],
    })
    return out


def _run_mode(engine, prompts, sampling: dict, sequential: bool, progress: bool, desc: str):
    """Generate every prompt; returns (outputs, seconds, spec counters)."""
    if not sequential:
        outs = engine.generate(prompts, **sampling)
        return outs, engine.last["seconds"], engine.last["spec"]
    from tqdm.auto import tqdm

    outs, seconds = [], 0.0
    total = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0, "accepted_per_pos": []}
    seeds = sampling.pop("seeds")
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    for i, prompt in enumerate(prompts):  # one request per call: the bar moves, the counters stay per prompt
        out = engine.generate([prompt], seeds=None if seeds is None else [seeds[i]], sequential=True, **sampling)[0]
        outs.append(out)
        seconds += out.seconds  # the request alone, measured in the worker (not the counter read-outs)
        for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
            total[key] += engine.last["spec"][key]
        pos = engine.last["spec"]["accepted_per_pos"]
        total["accepted_per_pos"] += [0] * (len(pos) - len(total["accepted_per_pos"]))
        for j, v in enumerate(pos):
            total["accepted_per_pos"][j] += v
        bar.update(1)
    bar.close()
    sampling["seeds"] = seeds
    return outs, seconds, total


def evaluate_vllm(
    target: str,
    drafts: Mapping[str, str],
    prompts: Sequence[Sequence[int]],
    *,
    num_draft_tokens: Sequence[int] = (3,),
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    dtype: str = "bfloat16",
    concurrency: int = 1,
    max_model_len: int | None = None,
    python: str | None = None,
    warmup: bool = True,
    progress: bool = True,
    convert: bool = True,
    keep_tokens: bool = False,
    log: Any = print,
) -> dict[str, dict[str, Any]]:
    """Evaluate export directories in vLLM against one target-only vLLM baseline over the same prompts.

    One engine decodes target-only, then one engine per draft and K (vLLM fixes the draft length when an engine
    starts). ``concurrency == 1`` decodes one request at a time (batch-1 latency, per-prompt counters);
    ``concurrency > 1`` submits every prompt at once with at most ``concurrency`` in flight (throughput).
    Prefix caching is off, so a prompt's prefill is never served from an earlier mode's cache.

    Args:
        target: the target model directory (or hub id vLLM can reach).
        drafts: ``{name: export_dir}``; SGLang exports are converted (:func:`prepare_for_vllm`) unless
            ``convert`` is False (then vLLM reads them as they stand, aux ids one layer early).
        prompts: token ids per prompt, rendered with the chat template.
        dtype: vLLM's dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``).
        keep_tokens: per-prompt entries also hold the generated ``tokens``.
        log: where one-line notes go (conversions, engine starts).

    Returns:
        ``{name: report}`` with the keys of :func:`~eagle_ext.serve.speculative.evaluate_drafters`'s reports;
        ``settings`` also holds ``engine: "vllm"``, ``vllm_version``, ``concurrency``, ``device``.
    """
    from eagle_ext.engines.vllm import find_vllm_python

    if not drafts:
        raise ValueError("drafts must name at least one export directory")
    if not prompts:
        raise ValueError("prompts must hold at least one prompt")
    ks = [int(k) for k in num_draft_tokens]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"num_draft_tokens must be ints >= 1, got {list(num_draft_tokens)}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    python = find_vllm_python(python)
    prompts = [list(map(int, p)) for p in prompts]
    sequential = concurrency == 1
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature,
                "seeds": [seed + i for i in range(len(prompts))], "stop_token_ids": list(stop_token_ids),
                "ignore_eos": ignore_eos}
    engine_kwargs = {"dtype": dtype, "seed": seed, "max_model_len": max_model_len, "python": python,
                     "max_num_seqs": None if sequential else concurrency, "enable_prefix_caching": False}
    workdir = tempfile.mkdtemp(prefix="eagle_ext_vllm_")
    try:
        return _evaluate_served(target, drafts, prompts, workdir, ks=ks, sampling=sampling, engine_kwargs=engine_kwargs,
                                sequential=sequential, convert=convert, keep_tokens=keep_tokens, warmup=warmup,
                                progress=progress, log=log, max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, dtype=dtype,
                                concurrency=concurrency)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # converted drafts


def _evaluate_served(target, drafts, prompts, workdir, *, ks, sampling, engine_kwargs, sequential, convert,
                     keep_tokens, warmup, progress, log, max_new_tokens, temperature, seed, stop_token_ids,
                     ignore_eos, dtype, concurrency) -> dict[str, dict[str, Any]]:
    from eagle_ext.engines.vllm import VllmEngine

    served = {}
    for name, directory in drafts.items():
        if not convert:
            served[name] = os.path.abspath(directory)
            continue
        served[name], note = prepare_for_vllm(directory, os.path.join(workdir, name))
        if note:
            log(f"{name}: {note}")

    def run(spec_config, desc):
        with VllmEngine(target, speculative_config=spec_config, **engine_kwargs) as engine:
            if warmup:  # untimed: lazy initialisation, first-call allocations
                engine.generate([prompts[0]], max_new_tokens=min(max_new_tokens, 8), temperature=temperature,
                                seeds=[seed], stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos)
            outs, seconds, counters = _run_mode(engine, prompts, dict(sampling), sequential, progress, desc)
            return outs, seconds, counters, engine.info

    log(f"vLLM: target-only, then {len(drafts)} draft(s) x K = {', '.join(map(str, ks))} "
        f"({len(prompts)} prompts, {'batch 1' if sequential else f'concurrency {concurrency}'}, {dtype})")
    base_outs, base_s, _, info = run(None, "vllm target-only")
    base_tokens = sum(len(o.token_ids) for o in base_outs)
    target_summary = _summary_from_counts(base_tokens, base_s, 0, None, len(prompts))
    reports: dict[str, dict[str, Any]] = {}
    for name, directory in served.items():
        from eagle_ext.serve.export import detect_export_format

        algorithm = detect_export_format(_read_config(directory))[1]
        per_prompt = [{"prompt_tokens": len(p), "target_only": _summary_from_counts(
                           len(o.token_ids), o.seconds or float("nan"), 0, None, 1),
                       "speculative": []} for p, o in zip(prompts, base_outs)]
        spec_summaries = []
        for k in ks:
            outs, seconds, counters, _ = run(vllm_speculative_config(directory, k, as_is=not convert),
                                             f"vllm {name} K={k}")
            summary = _summary_from_counts(sum(len(o.token_ids) for o in outs), seconds, k, counters, len(prompts))
            summary["speedup"] = summary["tokens_per_s"] / target_summary["tokens_per_s"]
            matching = sum(o.token_ids == b.token_ids for o, b in zip(outs, base_outs))
            summary["matching_prompts"] = matching if temperature == 0 else None
            summary["lossless"] = matching == len(prompts) if temperature == 0 else None
            spec_summaries.append(summary)
            for entry, o, b in zip(per_prompt, outs, base_outs):
                one = (_summary_from_counts(len(o.token_ids), o.seconds, k, o.spec, 1) if o.spec is not None
                       else {"new_tokens": len(o.token_ids)})
                one["matches_target"] = o.token_ids == b.token_ids if temperature == 0 else None
                if keep_tokens:
                    one["tokens"] = list(o.token_ids)
                entry["speculative"].append(one)
        if keep_tokens:
            for entry, b in zip(per_prompt, base_outs):
                entry["target_only"]["tokens"] = list(b.token_ids)
        reports[name] = {
            "settings": {"engine": "vllm", "vllm_version": info["vllm_version"], "num_prompts": len(prompts),
                         "num_draft_tokens": ks, "max_new_tokens": max_new_tokens, "temperature": temperature,
                         "seed": seed, "device": info["platform"], "device_name": info["device_name"],
                         "concurrency": concurrency, "algorithm": algorithm, "served_draft": directory,
                         "dtype": dtype},
            "target_only": target_summary,
            "speculative": spec_summaries,
            "prompts": per_prompt,
        }
    return reports


# ------------------------------------------------------------------------------------------------ parity


def compare_engines(hf: dict[str, Any], vllm: dict[str, Any], *, tolerance: float = 0.0) -> list[str]:
    """Where two reports of the same prompts disagree on acceptance (empty: they agree).

    ``tolerance == 0`` asks for equality (greedy fp32: every round is decided by the same argmaxes, so the
    counts must match); otherwise the largest allowed |difference| in tau and in each position's rate.
    """
    problems = []
    by_k = {r["num_draft_tokens"]: r for r in vllm["speculative"]}
    for ours in hf["speculative"]:
        k = ours["num_draft_tokens"]
        theirs = by_k.get(k)
        if theirs is None:
            problems.append(f"K={k}: vLLM has no result")
            continue
        pairs = [("tau", ours["tau"], theirs["tau"])] + [
            (f"acceptance at position {j + 1}", a, b)
            for j, (a, b) in enumerate(zip(ours["acceptance_rate"], theirs["acceptance_rate"]))]
        if tolerance == 0 and ours.get("rounds") != theirs.get("rounds"):
            problems.append(f"K={k}: verification rounds hf {ours.get('rounds')} vs vLLM {theirs.get('rounds')}")
        for what, a, b in pairs:
            if any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
                continue
            if abs(a - b) > (tolerance or 1e-9):
                problems.append(f"K={k}: {what} hf {a:.4f} vs vLLM {b:.4f} (|diff| {abs(a - b):.4f} > "
                                f"{'0 (exact)' if tolerance == 0 else tolerance})")
    return problems


def format_comparison(hf: dict[str, Any], vllm: dict[str, Any]) -> str:
    """Side-by-side per-position acceptance and speed of the two engines."""
    lines = [f"{'K':>3} {'engine':<6} {'tau':>6} {'tok/s':>8} {'speed-up':>9}  acceptance per position"]
    by_k = {r["num_draft_tokens"]: r for r in vllm["speculative"]}
    for ours in hf["speculative"]:
        k = ours["num_draft_tokens"]
        for engine, r, base in (("hf", ours, hf["target_only"]), ("vllm", by_k.get(k), vllm["target_only"])):
            if r is None:
                continue
            rates = " ".join(f"{x:.3f}" for x in r["acceptance_rate"])
            lines.append(f"{k:>3} {engine:<6} {r['tau']:>6.3f} {r['tokens_per_s']:>8.1f} "
                         f"{r['tokens_per_s'] / base['tokens_per_s']:>8.2f}x  {rates}")
    return "\n".join(lines)
