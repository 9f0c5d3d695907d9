"""``eagle-ext report RUN_DIR``: draw a run's loss / accuracy / tau_sim curves (from metrics.jsonl) to a PNG."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run's output_dir (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="the PNG to write (default: RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from eagle_ext.train.reporting import plot_curves, read_metrics

    metrics = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        print(f"eagle-ext report: error: {args.run_dir!r} has no metrics.jsonl (is it a training run's output_dir?)",
              file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "curves.png")
    try:
        drawn = plot_curves(read_metrics(metrics), out)
    except ValueError as exc:
        print(f"eagle-ext report: error: {metrics}: {exc}", file=sys.stderr)
        return 2
    if not drawn:
        print("eagle-ext report: error: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
