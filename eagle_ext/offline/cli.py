"""``eagle-ext precompute``: write the offline EAGLE-3 cache (or, with ``--verify DIR``, check one).

Under ``torchrun`` every rank runs the target and writes its own shards (``r, r + W, ...``); the process
group is created here (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from eagle_ext.offline.manifest import CACHE_DTYPES
from eagle_ext.offline.options import PrecomputeOptions

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PrecomputeOptions) if f.default is not dataclasses.MISSING}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument("--target-model", help="HF model directory (or hub id) of the frozen target")
    parser.add_argument("--input-data", help="chat data: JSONL / JSON / parquet file, directory, or HF dataset")
    parser.add_argument("--output-dir", help="cache directory to write")
    parser.add_argument("--seq-length", type=int, default=d["seq_length"], help="padded sample length (default %(default)s)")
    parser.add_argument("--draft-vocab-size", type=int, default=d["draft_vocab_size"],
                        help="draft vocabulary size Vd (default: the full target vocabulary)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help="target batch size (default %(default)s)")
    parser.add_argument("--shard-size", type=int, default=d["shard_size"],
                        help="samples per shard, a multiple of --batch-size (default %(default)s)")
    parser.add_argument("--dtype", default=d["dtype"],
                        help=f"cache dtype of hidden states and probabilities: {', '.join(CACHE_DTYPES)} (default %(default)s)")
    parser.add_argument("--target-probs-topk", type=int, default=d["target_probs_topk"],
                        help="store the top-k target probabilities (renormalised) instead of all Vd; 0 = lossless (default)")
    parser.add_argument("--aux-layer-ids", type=int, nargs=3, default=d["aux_layer_ids"], metavar="ID",
                        help="three 0-indexed target decoder layers (default [1, L//2-1, L-4])")
    parser.add_argument("--device", default=d["device"], help="cuda | cuda:N | cpu (default: cuda when available)")
    parser.add_argument("--shuffle-seed", type=int, default=d["shuffle_seed"],
                        help="recorded in the manifest; the cache is written in data order (default %(default)s)")
    parser.add_argument("--num-workers", type=int, default=d["num_workers"], help="dataloader workers (default %(default)s)")
    parser.add_argument("--split", default=d["split"], help="HF split spec, e.g. train[:1000]")
    parser.add_argument("--tokenizer", default=d["tokenizer"], help="tokenizer path (default: the target's)")
    parser.add_argument("--token-map", default=d["token_map"], metavar="CACHE_DIR",
                        help="reuse the draft vocabulary of this cache (an eval cache must share the train cache's)")
    parser.add_argument("--mask-reasoning-content", action="store_true", help="no loss on reasoning content")
    parser.add_argument("--mask-generation-prompt", action="store_true", help="no loss on the generation prompt")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the target's custom code")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted cache (the configuration must match its manifest)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--verify", metavar="DIR",
                        help="only check the cache in DIR (every shard's size and sha256); exit 1 on any problem")


def _verify(cache_dir: str, show_progress: bool) -> int:
    from eagle_ext.offline.manifest import read_cache_manifest, verify_cache

    manifest = read_cache_manifest(cache_dir)
    problems = verify_cache(cache_dir, full=True, show_progress=show_progress)
    for problem in problems:
        print(f"PROBLEM {problem}")
    state = "BROKEN" if problems else "OK"
    print(f"{state}: {cache_dir}: {manifest['num_samples']} samples in {manifest['num_shards']} shards, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


def _options(args: argparse.Namespace) -> PrecomputeOptions:
    for flag in ("target_model", "input_data", "output_dir"):
        if getattr(args, flag) is None:
            raise ValueError(f"--{flag.replace('_', '-')} is required (unless --verify DIR)")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrecomputeOptions) if hasattr(args, f.name)}
    if values.get("aux_layer_ids") is not None:
        values["aux_layer_ids"] = tuple(values["aux_layer_ids"])
    values["show_progress"] = not args.no_progress
    return PrecomputeOptions(**values)


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this cache: the same arguments plus ``--resume``."""
    import shlex

    argv = list(getattr(args, "argv", None) or [])
    if not argv:
        return "the same command with --resume"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    head = (["torchrun", f"--nproc-per-node={os.environ.get('LOCAL_WORLD_SIZE', world)}", "-m", "eagle_ext"]
            if world > 1 else ["eagle-ext"])
    return shlex.join([*head, *argv, *([] if "--resume" in argv else ["--resume"])])


def run(args: argparse.Namespace) -> int:
    if args.verify is not None:
        return _verify(args.verify, not args.no_progress)
    from eagle_ext.offline.options import validate_precompute_options

    opts = validate_precompute_options(_options(args))  # before torch.distributed or any model
    import torch
    import torch.distributed as dist

    from eagle_ext.offline.writer import precompute_cache

    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = opts.device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        started = True
    try:
        summary = precompute_cache(**dataclasses.asdict(opts))
        rank = f"rank {dist.get_rank()}: " if dist.is_initialized() else ""
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"eagle-ext precompute: interrupted (Ctrl-C); finished shards in {opts.output_dir} are kept; "
                  f"continue with: {resume_command(args)}", file=sys.stderr)
        return 130
    finally:
        if started:
            dist.destroy_process_group()
    print(f"{rank}wrote {len(summary['shards_written'])} shard(s), {summary['samples_written']} samples, "
          f"{summary['bytes_written'] / 1e6:.1f} MB, into {summary['output_dir']} ({summary['num_samples']} samples, "
          f"{summary['num_shards']} shards in all): {summary['samples_per_s']:.2f} samples/s, "
          f"{summary['mb_per_s']:.1f} MB/s written")
    return 0
