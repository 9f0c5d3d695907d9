"""eagle_ext's own decoder (hf) against vLLM on SmolLM2-135M-Instruct with the shipped reference draft, in one run.

Speculative decoding: the same held-out prompts, greedy, target-only and K = 3 / 5; hf at batch 1 (its decoder is
batch-1 only) and vLLM at batch 1 and at concurrency 8 (every prompt submitted, 8 in flight). Regeneration
(``eagle-ext regenerate``'s answer generation): the same prompts answered by each engine, 8 at a time. Tokens/s,
tau and ratios come from this one run; JSON in ``benchmarks/results/engines_cpu.json``. Needs the demo extra and
vLLM (``make setup`` builds both).

    python -m benchmarks.bench_engines [--num-prompts 10] [--max-new-tokens 64] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from benchmarks._common import print_table, write_results


def _prompts(n: int, tmp: str):
    from transformers import AutoTokenizer

    from eagle_ext.demo.smollm2 import smollm2_path
    from eagle_ext.demo.smollm2_demo import write_eval_prompts
    from eagle_ext.serve.prompts import load_prompts, render_prompts

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts_file = os.path.join(tmp, "prompts.jsonl")
    write_eval_prompts(prompts_file, n)
    return path, tokenizer, prompts_file, render_prompts(tokenizer, load_prompts(prompts_file))


def _rows(engine: str, concurrency: int, report: dict) -> list[dict]:
    base = report["target_only"]
    rows = [{"engine": engine, "concurrency": concurrency, "mode": "target-only", "tau": 1.0,
             "tok/s": round(base["tokens_per_s"], 1), "speed-up": 1.0}]
    for s in report["speculative"]:
        rows.append({"engine": engine, "concurrency": concurrency, "mode": f"K={s['num_draft_tokens']}",
                     "tau": round(s["tau"], 3), "tok/s": round(s["tokens_per_s"], 1),
                     "speed-up": round(s["speedup"], 2),
                     "acceptance": " ".join(f"{x:.2f}" for x in s["acceptance_rate"])})
    return rows


def _regenerate(engine: str, path: str, prompts_file: str, tmp: str, n: int, max_new_tokens: int,
                dtype: str) -> dict:
    from eagle_ext.data.regenerate import regenerate_chats
    from eagle_ext.serve.prompts import load_prompts

    chats = os.path.join(tmp, "regen_prompts.jsonl")  # the held-out chats up to their last user turn
    with open(chats, "w") as f:
        for messages in load_prompts(prompts_file):
            f.write(json.dumps({"messages": messages}) + "\n")
    out = os.path.join(tmp, f"regen_{engine}.jsonl")
    t0 = time.perf_counter()
    stats = regenerate_chats(path, chats, out, max_new_tokens=max_new_tokens, batch_size=8, limit=n,
                             show_progress=False, engine=engine, dtype=dtype)
    return {"engine": engine, "prompts": stats["answered"], "tokens": stats["generated_tokens"],
            "generation s": round(stats["seconds"], 1), "tok/s": round(stats["generated_tokens"] / stats["seconds"], 1),
            "wall s (load included)": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    from eagle_ext.demo.smollm2_demo import REFERENCE_DIR
    from eagle_ext.serve.prompts import target_stop_token_ids
    from eagle_ext.serve.session import load_speculative_session
    from eagle_ext.serve.speculative import evaluate_speculative
    from eagle_ext.serve.vllm_eval import evaluate_vllm

    dtype_name = {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    draft_dir = os.path.join(REFERENCE_DIR, "draft")
    with tempfile.TemporaryDirectory() as tmp:
        path, tokenizer, prompts_file, prompts = _prompts(args.num_prompts, tmp)
        stops = target_stop_token_ids(tokenizer, path)
        common = {"num_draft_tokens": args.ks, "max_new_tokens": args.max_new_tokens, "temperature": 0.0,
                  "seed": 0, "stop_token_ids": stops, "progress": False}
        session = load_speculative_session(path, {"reference": draft_dir}, dtype=dtype_name)
        hf = evaluate_speculative(session.runner, session.drafters["reference"], prompts, **common)
        del session
        reports = {"hf": hf}
        for concurrency in (1, args.concurrency):
            reports[f"vllm_c{concurrency}"] = evaluate_vllm(path, {"reference": draft_dir}, prompts, dtype=dtype_name,
                                                            concurrency=concurrency, log=lambda _: None,
                                                            **common)["reference"]
        regeneration = [_regenerate(e, path, prompts_file, tmp, args.num_prompts, args.max_new_tokens, args.dtype)
                        for e in ("hf", "vllm")]
    rows = _rows("hf", 1, hf)
    for concurrency in (1, args.concurrency):
        rows += _rows("vllm", concurrency, reports[f"vllm_c{concurrency}"])
    hf_tps = {r["mode"]: r["tok/s"] for r in rows if r["engine"] == "hf"}
    for r in rows:
        r["vs hf batch 1"] = round(r["tok/s"] / hf_tps[r["mode"]], 2)
    version = reports["vllm_c1"]["settings"]["vllm_version"]
    title = (f"SmolLM2-135M-Instruct + reference draft, {args.num_prompts} held-out prompts x {args.max_new_tokens} "
             f"tokens, greedy, {args.dtype}, cpu, {torch.get_num_threads()} threads; vLLM {version}")
    print_table(rows, ["engine", "concurrency", "mode", "tau", "acceptance", "tok/s", "speed-up", "vs hf batch 1"],
                title=title)
    regeneration[1]["vs hf"] = round(regeneration[1]["tok/s"] / regeneration[0]["tok/s"], 2)
    print_table(regeneration, list(regeneration[1]), title="regeneration (answers, greedy, 8 prompts at a time)")
    write_results("engines", {"rows": rows, "regeneration": regeneration, "vllm_version": version,
                              "num_prompts": args.num_prompts, "max_new_tokens": args.max_new_tokens,
                              "dtype": args.dtype, "threads": torch.get_num_threads(),
                              "reports": {k: {kk: v[kk] for kk in ("settings", "target_only", "speculative")}
                                          for k, v in reports.items()}})


if __name__ == "__main__":
    main()
