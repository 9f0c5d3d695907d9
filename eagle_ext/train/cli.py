"""``eagle-ext train -c cfg.yaml [dotted.key=value ...]``: the recipe from a YAML file (also under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the YAML config (see eagle_ext/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. optim.lr=1e-4 train.max_steps=100")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, parameter counts and a per-rank memory estimate; load nothing")
    parser.add_argument("--print-config", nargs="?", const="-", metavar="FILE",
                        help="write the resolved config as YAML (to FILE, or stdout) and exit")


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run from its latest checkpoint (``resume=auto`` replaces any
    ``resume=`` override; under torchrun, the same torchrun launch)."""
    import shlex

    overrides = [o for o in args.overrides if not o.startswith("resume=")]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    head = (["torchrun", f"--nproc-per-node={os.environ.get('LOCAL_WORLD_SIZE', world)}", "-m", "eagle_ext"]
            if world > 1 else ["eagle-ext"])
    return shlex.join([*head, "train", "-c", args.config, *overrides, "resume=auto"])


def report_interrupt(args: argparse.Namespace, output_dir: str) -> None:
    """After Ctrl-C: one line naming the last complete checkpoint of ``output_dir`` and the command that resumes
    from it (or that there is none yet)."""
    from eagle_ext.train.checkpoint import resolve_checkpoint

    if os.environ.get("RANK", "0") != "0":
        return
    try:
        last = resolve_checkpoint(output_dir)
    except (FileNotFoundError, ValueError, OSError):
        last = None
    if last is None:
        print(f"eagle-ext train: interrupted (Ctrl-C) before the first checkpoint of {output_dir}; nothing to "
              "resume from (checkpoint.every_steps sets how often one is written)", file=sys.stderr)
    else:
        print(f"eagle-ext train: interrupted (Ctrl-C); last checkpoint {last}; resume with: {resume_command(args)}",
              file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Errors are raised (``ConfigError``, ``FileNotFoundError``, ...) and reported in one line by
    :func:`eagle_ext.cli.main`; Ctrl-C prints the last checkpoint and the resume command, exit status 130."""
    from eagle_ext._io import write_text
    from eagle_ext.train.config import config_to_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config is not None:
        text = config_to_yaml(cfg)
        if args.print_config == "-":
            sys.stdout.write(text)
        else:
            write_text(args.print_config, text)
            print(f"wrote {args.print_config}")
        return 0
    if args.dry_run:
        from eagle_ext.train.dry_run import describe_run, format_description

        print(format_description(cfg, describe_run(cfg)))
        return 0
    from eagle_ext.train.loop import run_training

    try:
        result = run_training(cfg)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        report_interrupt(args, cfg.output_dir)
        return 130
    if os.environ.get("RANK", "0") == "0":
        summary = {k: v for k, v in result.eval_metrics.items() if isinstance(v, float)}
        print(f"finished at step {result.step}; checkpoint {result.checkpoint}"
              + (f"; eval {', '.join(f'{k} {v:.4g}' for k, v in summary.items())}" if summary else ""))
    return 0
