"""Synthesis benchmark: prompts/s and tokens/s of ``eagle-ext synthesize`` on SmolLM2-135M-Instruct, per engine.

Each engine (hf always; vLLM when :func:`eagle_ext.engines.vllm.find_vllm_python` finds it) runs the real
command's library function (:func:`eagle_ext.data.synthesize.synthesize_prompts`) into a fresh directory with
the same settings: ``--num-prompts`` rows with greedy answers, one user turn each, the default filters and the
project's held-out set as ``--exclude``. Reported per engine:

- ``prompt tok/s``: user-turn tokens sampled (every candidate, kept or dropped) per second of user-turn
  generation; ``answer tok/s``: answer tokens per second of answer generation (both exclude model loading and
  vLLM's start);
- ``rows/s``: kept rows per second of generation, and ``candidates`` (how many were drawn for the rows);
- ``wall s``: the whole call, loading and start-up included.

The settings that decide the figures are in the JSON (``benchmarks/results/synthesize_<device>.json``), with
the load average before and after: on a shared machine the figures move with what else runs. On a small
shared CPU run it with ``OMP_NUM_THREADS=1``: with 2 threads on the 2-core development machine, busy with other
jobs, a SmolLM2 forward took 0.5-3.7 s instead of 0.08 s (OpenMP threads waiting for each other), and the hf
figures fell 10x.

The hf engine's prompt tok/s counts useful tokens: a batch runs until its longest row ends (or reaches the
budget), so a few long or truncated prompts make the other rows wait; vLLM schedules each sequence alone.

Usage: ``python -m benchmarks.bench_synthesize [--num-prompts N] [--batch-size B] [--engines hf vllm]
[--target DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks._common import print_table, write_results
from eagle_ext.data.synthesize import resolve_engine, synthesize_prompts

HELDOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eagle_ext", "demo", "assets",
                       "regenerated", "smollm2_heldout.jsonl.gz")


def run_engine(engine: str, target: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_synthesize_") as out:
        t0 = time.perf_counter()
        stats = synthesize_prompts(
            target, os.path.join(out, "rows"), num_prompts=args.num_prompts, engine=engine, answers=True,
            max_tokens=args.max_tokens, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            shard_size=args.num_prompts, exclude=[HELDOUT], seed=args.seed, show_progress=False,
        )
        wall = time.perf_counter() - t0
    generation = stats["prompt_seconds"] + stats["answer_seconds"]
    return {
        "engine": engine, "rows": stats["rows"], "candidates": stats["candidates"], "dropped": stats["dropped"],
        "prompt_tokens": stats["prompt_tokens"], "answer_tokens": stats["answer_tokens"],
        "prompt_seconds": stats["prompt_seconds"], "answer_seconds": stats["answer_seconds"],
        "prompt tok/s": stats["prompt_tokens"] / max(stats["prompt_seconds"], 1e-9),
        "answer tok/s": stats["answer_tokens"] / max(stats["answer_seconds"], 1e-9),
        "rows/s": stats["rows"] / max(generation, 1e-9), "wall s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", default=None, help="model directory (default: the converted SmolLM2 cache)")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", default=None, help="default: hf, and vllm when available")
    args = parser.parse_args()

    from eagle_ext.demo.smollm2 import default_cache_dir

    target = args.target or default_cache_dir()
    if not os.path.isfile(os.path.join(target, "config.json")):
        print(f"bench_synthesize: skipped: no model at {target} (convert SmolLM2 first: "
              "python -c 'from eagle_ext.demo.smollm2 import smollm2_path; smollm2_path()')", flush=True)
        return
    engines = args.engines
    skipped, vllm_python = {}, None
    if engines is None:
        engines = ["hf"]
        try:
            vllm_python = resolve_engine("vllm")[1]
            engines.append("vllm")
        except ValueError as exc:
            skipped["vllm"] = str(exc)
    load_before = os.getloadavg()
    rows = []
    for engine in engines:
        print(f"== {engine}: {args.num_prompts} rows, batch {args.batch_size}", flush=True)
        rows.append(run_engine(engine, target, args))
    load_after = os.getloadavg()
    print_table(rows, ["engine", "rows", "candidates", "prompt tok/s", "answer tok/s", "rows/s", "wall s"],
                title=f"eagle-ext synthesize on {os.path.basename(target)} ({torch.get_num_threads()} torch threads, "
                      f"load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_results("synthesize", {
        "target": target, "settings": {k: v for k, v in vars(args).items() if k not in ("target", "engines")},
        "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "vllm_python": vllm_python, "load_average_before": load_before,
        "load_average_after": load_after, "results": rows, "skipped": skipped,
        "note": "shared machine: other jobs ran at the same time (see the load averages)",
    }, device=device)


if __name__ == "__main__":
    main()
