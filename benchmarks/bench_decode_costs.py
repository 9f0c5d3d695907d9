"""What one speculative round costs on SmolLM2-135M-Instruct with the shipped reference draft, fp32 vs bf16.

Per dtype, side by side in one run, on a real held-out prompt with its KV cache filled: a one-token target
forward (target-only decoding's step), a (K+1)-token verify forward, and one EAGLE-3 proposal of K tokens
(one new verified slot plus the K-step chain, as in a round that accepted one draft token). From these, the
round cost in target steps, ``(verify + propose) / step``, gives the tau a draft needs for a 1.3x speed-up,
and the speed-up the measured tau of the reference draft buys (``tau / round cost``; prefill and bookkeeping
excluded, so the demo's measured speed-ups sit a little below). Needs the demo extra (``make setup``).

    python -m benchmarks.bench_decode_costs [--repeat 20] [--tau 1.57]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from benchmarks._common import print_table, write_results


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(dtype: torch.dtype, ks: list[int], repeat: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eagle_ext.demo.smollm2 import smollm2_path
    from eagle_ext.demo.smollm2_demo import REFERENCE_DIR, write_eval_prompts
    from eagle_ext.serve.export import load_exported_draft
    from eagle_ext.serve.prompts import load_prompts, render_prompts
    from eagle_ext.serve.speculative import Eagle3Drafter, TargetRunner

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with tempfile.TemporaryDirectory() as tmp:
        write_eval_prompts(os.path.join(tmp, "p.jsonl"), 1)
        prompt = torch.tensor(render_prompts(tokenizer, load_prompts(os.path.join(tmp, "p.jsonl")))[0])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    exported = load_exported_draft(os.path.join(REFERENCE_DIR, "draft"), embed_tokens=model.get_input_embeddings().weight)
    runner = TargetRunner(model, exported.aux_layer_ids)
    _, aux = runner.forward(prompt, capture_aux=True)
    n = runner.length
    token = prompt[-1:]

    def target_forward(width: int):
        def run():
            runner.forward(token.repeat(width), capture_aux=True)
            runner.crop(n)
        return run

    out = {"prompt_tokens": n, "step_ms": _median_ms(target_forward(1), repeat)}
    for k in ks:
        out[f"verify_{k}_ms"] = _median_ms(target_forward(k + 1), repeat)
    drafter = Eagle3Drafter(exported.draft.to(dtype))
    tokens = torch.cat((prompt, token))
    drafter.propose(tokens, aux, 1, 0.0, None)  # the prompt's slots enter the draft cache
    for k in ks:
        times = []
        for _ in range(repeat):  # each round: one newly verified position, then the K-step chain
            _, aux_new = runner.forward(tokens[-1:], capture_aux=True)
            tokens = torch.cat((tokens, token))
            t0 = time.perf_counter()
            drafter.propose(tokens, aux_new, k, 0.0, None)
            times.append((time.perf_counter() - t0) * 1e3)
        out[f"propose_{k}_ms"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tau", type=float, default=1.57, help="a measured tau to convert into a speed-up")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, raw = [], {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = measure(dtype, args.ks, args.repeat)
        raw[name] = m
        for k in args.ks:
            round_cost = (m[f"verify_{k}_ms"] + m[f"propose_{k}_ms"]) / m["step_ms"]
            rows.append({"dtype": name, "K": k, "step ms": round(m["step_ms"], 1),
                         "verify ms": round(m[f"verify_{k}_ms"], 1), "verify / step": round(m[f"verify_{k}_ms"] / m["step_ms"], 2),
                         "propose ms": round(m[f"propose_{k}_ms"], 1),
                         "round / step": round(round_cost, 2), "tau for 1.3x": round(1.3 * round_cost, 2),
                         f"speed-up at tau {args.tau}": round(args.tau / round_cost, 2)})
    title = (f"One speculative round on SmolLM2-135M-Instruct + the reference draft (cpu, {torch.get_num_threads()} "
             f"threads, median of {args.repeat}; prompt {raw['fp32']['prompt_tokens']} tokens)")
    print_table(rows, list(rows[0]), title=title)
    write_results("decode_costs", {"rows": rows, "raw": raw, "threads": torch.get_num_threads(), "repeat": args.repeat})


if __name__ == "__main__":
    main()
