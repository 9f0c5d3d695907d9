"""Command line: ``python -m eagle_ext <command>`` (also installed as ``eagle-ext``)."""

from __future__ import annotations

import argparse
import sys
import time


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import eagle_ext
    from eagle_ext._ext import load_extension

    ext = load_extension()
    print(f"eagle_ext {eagle_ext.__version__}  torch {torch.__version__}  cuda {torch.cuda.is_available()}")
    print(f"compiled extension: {ext.__file__}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from eagle_ext.demo.run import run_demo

    return run_demo(quick=args.quick, output_dir=args.output_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eagle-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print versions and where the compiled extension was loaded from")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="run the main job on the embedded default (CPU, no downloads)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    p.add_argument("--output-dir", default="runs/demo", help="where the demo writes its outputs")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    code = args.func(args)
    print(f"[eagle-ext {args.command}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
