"""``eagle-ext demo``: the main job on the embedded default."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--output-dir", default="runs/demo", help="where the demo writes its outputs")


def run(args: argparse.Namespace) -> int:
    from eagle_ext.demo.run import run_demo

    return run_demo(quick=args.quick, output_dir=args.output_dir)
