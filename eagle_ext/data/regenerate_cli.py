"""``eagle-ext regenerate``: answer a prompt set with the target itself and write OpenAI-``messages`` JSONL
(batched generation with a KV cache, a progress bar, resumable), with transformers or vLLM (``--engine``). See
:mod:`eagle_ext.data.regenerate`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="local Hugging Face model directory (with a chat template)")
    parser.add_argument("--prompts", required=True,
                        help="JSONL of prompts: JSON strings or {'messages': [...]} ending with a user turn "
                             "(assistant turns with null content are filled by the target); or .txt, one a line")
    parser.add_argument("--out", required=True, help="output JSONL; an existing one made by this command is resumed")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per generated turn (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); else sampling")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="hf: transformers generate (default); vllm: vLLM batched generation (see `make vllm`)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto: hf bf16 on a GPU / fp32 on CPU, vLLM the checkpoint's dtype")
    parser.add_argument("--vllm-python", default=None, metavar="PATH",
                        help="the python that has vLLM (default: $EAGLE_EXT_VLLM_PYTHON, this one, .venv-vllm)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from eagle_ext.data.regenerate import regenerate_chats
    from eagle_ext.engines.vllm import VllmUnavailable

    try:
        stats = regenerate_chats(
            args.target, args.prompts, args.out, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            temperature=args.temperature, seed=args.seed, limit=args.limit, show_progress=not args.no_progress,
            engine=args.engine, dtype=args.dtype, vllm_python=args.vllm_python,
        )
    except (ValueError, FileNotFoundError, VllmUnavailable) as exc:
        print(f"eagle-ext regenerate: error: {exc}", file=sys.stderr)
        return 2
    rate = stats["answered"] / stats["seconds"] * 60 if stats["seconds"] else 0.0
    print(
        f"regenerate: {stats['answered']} answered, {stats['already_answered']} already in {stats['out']} "
        f"({stats['prompts']} prompts); {stats['generated_tokens']} tokens, {stats['truncated_turns']} turns cut "
        f"at --max-new-tokens; {stats['seconds']:.0f} s ({rate:.1f} prompts/min)"
    )
    return 0
