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


def run(args: argparse.Namespace) -> int:
    from eagle_ext._io import write_text
    from eagle_ext.train.config import ConfigError, config_to_yaml, load_config

    try:
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

        result = run_training(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"eagle-ext train: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        summary = {k: v for k, v in result.eval_metrics.items() if isinstance(v, float)}
        print(f"finished at step {result.step}; checkpoint {result.checkpoint}"
              + (f"; eval {', '.join(f'{k} {v:.4g}' for k, v in summary.items())}" if summary else ""))
    return 0
