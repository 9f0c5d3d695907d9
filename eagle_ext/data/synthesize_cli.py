"""``eagle-ext synthesize``: make user prompts (and multi-turn chats) with the target itself (the Magpie method),
filtered, deduplicated, checked against held-out prompts, written as resumable sharded JSONL with a progress bar.
See :mod:`eagle_ext.data.synthesize`."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="local Hugging Face model directory (with a chat template)")
    parser.add_argument("--out", required=True,
                        help="output directory of JSONL shards (settings in <out>.settings.json beside it); an "
                             "existing one made by this command with the same settings is resumed")
    parser.add_argument("--num-prompts", "-n", type=int, required=True, help="rows to have in --out when done")
    parser.add_argument("--engine", default="auto", help="auto (vllm when installed, else hf) | hf | vllm")
    parser.add_argument("--vllm-python", default=None, metavar="PATH", help="Python interpreter that has vLLM")
    parser.add_argument("--system", default=None, metavar="TEXT",
                        help="system turn before each conversation (default: whatever the template writes)")
    parser.add_argument("--turns", type=int, default=1, help="user turns per conversation (default 1)")
    parser.add_argument("--answers", action=argparse.BooleanOptionalAction, default=True,
                        help="write the target's greedy answers (default); --no-answers keeps the first user "
                             "turn only, for eagle-ext regenerate")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling of user turns (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling of user turns (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-turn sampling seeds (default 0)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="token budget of a user turn; one that does not end within it is dropped (default 256)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="token budget of an answer (default 256)")
    parser.add_argument("--min-tokens", type=int, default=3, help="shortest user turn kept, in tokens (default 3)")
    parser.add_argument("--min-chars", type=int, default=8, help="shortest user turn kept, in characters (default 8)")
    parser.add_argument("--max-chars", type=int, default=4000, help="longest user turn kept, in characters (default 4000)")
    parser.add_argument("--scripts", nargs="+", default=None, metavar="SCRIPT",
                        help="keep only text whose dominant script is one of these (e.g. LATIN); default any")
    parser.add_argument("--near-dup-threshold", type=float, default=0.7,
                        help="estimated Jaccard (word 3-grams, MinHash) at which a prompt duplicates a kept one "
                             "(default 0.7)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                        help="prompt / chat files (.jsonl, .jsonl.gz, .txt) whose user turns must not leak into "
                             "the output, exactly or nearly")
    parser.add_argument("--exclude-threshold", type=float, default=0.5,
                        help="estimated Jaccard at which a prompt leaks an excluded one (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="conversations per generate call (default 16)")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per output shard (default 1000)")
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz shards")
    parser.add_argument("--max-candidates", type=int, default=None,
                        help="stop after this many sampled conversations in all (default 20 x --num-prompts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _command_line(args: argparse.Namespace) -> str:
    """The run's settings as an ``eagle-ext synthesize`` command line (every option written out)."""
    parts = ["eagle-ext", "synthesize"]
    for key, value in vars(args).items():
        if key in ("command", "func") or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "answers":
            parts.append("--answers" if value else "--no-answers")
        elif value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from eagle_ext.data.synthesize import synthesize_prompts
    from eagle_ext.data.text_filters import TextFilters

    try:
        filters = TextFilters(min_chars=args.min_chars, max_chars=args.max_chars, min_tokens=args.min_tokens,
                              scripts=tuple(args.scripts) if args.scripts else None)
        stats = synthesize_prompts(
            args.target, args.out, num_prompts=args.num_prompts, engine=args.engine, vllm_python=args.vllm_python,
            system=args.system, turns=args.turns, answers=args.answers, temperature=args.temperature,
            top_p=args.top_p, seed=args.seed, max_tokens=args.max_tokens, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, shard_size=args.shard_size, compress=args.gzip, exclude=args.exclude,
            near_dup_threshold=args.near_dup_threshold, exclude_threshold=args.exclude_threshold, filters=filters,
            max_candidates=args.max_candidates, show_progress=not args.no_progress, command=_command_line(args),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"eagle-ext synthesize: error: {exc}", file=sys.stderr)
        return 2
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats["dropped"].items(), key=lambda kv: -kv[1])) or "none"
    prompt_rate = stats["prompt_tokens"] / stats["prompt_seconds"] if stats["prompt_seconds"] else 0.0
    answer_rate = stats["answer_tokens"] / stats["answer_seconds"] if stats["answer_seconds"] else 0.0
    print(
        f"synthesize ({stats['engine']}): {stats['rows']} rows in {stats['out']} ({stats['new_rows']} new) from "
        f"{stats['candidates']} candidates; dropped: {dropped}; {stats['turns_cut']} conversations cut short, "
        f"{stats['answers_truncated']} answers cut at --max-new-tokens; prompts {prompt_rate:.0f} tok/s, answers "
        f"{answer_rate:.0f} tok/s; {stats['seconds']:.0f} s"
    )
    if stats["stopped"] == "max_candidates":
        print(f"eagle-ext synthesize: warning: stopped at --max-candidates with {stats['rows']} of "
              f"{args.num_prompts} rows; raise --max-candidates (or relax the filters) and rerun to continue",
              file=sys.stderr)
        return 1
    return 0
