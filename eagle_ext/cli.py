"""Command line: ``python -m eagle_ext <command>`` (also installed as ``eagle-ext``).

Each command lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen command's module is imported; it must import nothing heavy at module level (torch,
transformers and friends are imported inside ``run``), so ``--help`` stays instant.

User errors end in one line on stderr, ``eagle-ext COMMAND: error: ...`` (the argument, the value, what was
expected and the fix), with exit status 2: a command's ``run`` may return 2 itself or raise a :data:`USER_ERRORS`
exception, which :func:`main` turns into that line. The traceback is shown only with ``--debug`` (anywhere on the
command line) or ``EAGLE_EXT_DEBUG=1``. Ctrl-C ends with one line and exit status 130 (a command may print how to
resume first; see :func:`eagle_ext.train.cli.run`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from eagle_ext.engines.vllm import VllmUnavailable  # standard library only: cheap for --help

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


#: exceptions that report a user's mistake (a bad argument, value, file or environment), not a bug in eagle_ext
#: no vLLM, or a vLLM that fails to start, is the user's setup to fix: one line, not a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, VllmUnavailable)


def debug_enabled(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``EAGLE_EXT_DEBUG`` set to a true value."""
    if argv is not None and "--debug" in argv:
        return True
    return os.environ.get("EAGLE_EXT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def error_line(exc: BaseException) -> str:
    """The exception as one line (its message, or its type when it has none; nested messages joined by '; ')."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    if not text:
        return type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported and registered (so one command's
    optional dependencies never break another's ``--help``)."""
    parser = argparse.ArgumentParser(prog="eagle-ext", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: EAGLE_EXT_DEBUG=1); accepted anywhere on the line")
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
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    args.debug = debug
    args.argv = argv  # the command line as given (a command may print how to resume it)
    t0 = time.perf_counter()
    try:
        from eagle_ext._progress import library_progress_bars

        with library_progress_bars(not getattr(args, "no_progress", False)):
            code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"eagle-ext {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"eagle-ext {args.command}: error: {error_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        code = 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the job
        outcome = "done" if code == 0 else "interrupted" if code == 130 else f"failed (exit code {code})"
        print(f"[eagle-ext {args.command}] {outcome} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
