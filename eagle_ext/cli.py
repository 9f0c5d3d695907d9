"""Command line: ``python -m eagle_ext <command>`` (also installed as ``eagle-ext``).

Each command lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen command's module is imported; it must import nothing heavy at module level (torch,
transformers and friends are imported inside ``run``), so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("eagle_ext.train.cli", "train a draft from a YAML config (also under torchrun)"),
    "report": ("eagle_ext.train.report_cli", "draw a run's loss / accuracy / tau curves to a PNG"),
    "export": ("eagle_ext.serve.export_cli", "export a checkpoint for vLLM (speculators) or SGLang; --check"),
    "eval": ("eagle_ext.serve.eval_cli", "measure real acceptance with speculative decoding against the target"),
    "precompute": ("eagle_ext.offline.cli", "run the target once and write the offline training cache"),
    "regenerate": ("eagle_ext.data.regenerate_cli", "answer a prompt set with the target itself (JSONL chats)"),
    "synthesize": ("eagle_ext.data.synthesize_cli", "make user prompts / chats with the target itself (Magpie)"),
    "demo": ("eagle_ext.demo.cli", "run the main job on the embedded default (CPU, nothing downloaded)"),
    "info": ("eagle_ext.info_cli", "print versions and where the compiled extension was loaded from"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported and registered (so one command's
    optional dependencies never break another's ``--help``)."""
    parser = argparse.ArgumentParser(prog="eagle-ext", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    t0 = time.perf_counter()
    code = args.func(args)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the job
        outcome = "done" if code == 0 else f"failed (exit code {code})"
        print(f"[eagle-ext {args.command}] {outcome} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
