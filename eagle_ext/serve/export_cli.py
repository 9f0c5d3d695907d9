"""``eagle-ext export``: write a recipe checkpoint in a serving format, or check an export directory.

::

    eagle-ext export SRC --format speculators|sglang|specforge_peagle [--out DIR] [--dtype bf16|fp16|fp32]
                         [--no-embeddings]
    eagle-ext export --check DIR

``SRC`` is a checkpoint directory (``RUN/checkpoints/step_*``) or a run directory (its latest checkpoint); the
default ``--out`` is ``RUN/export/<format>/``. ``SRC`` may also be an export directory, which is converted to
``--format`` (default ``--out``: ``SRC_<format>``; dtype and embedding choice kept unless ``--dtype`` is given):
how an SGLang export becomes the ``speculators`` directory vLLM reads right. ``--check`` prints every problem and
exits 1, or prints ``OK``.
"""

from __future__ import annotations

import argparse
import os
import sys

from eagle_ext.algorithms import algorithm_spec
from eagle_ext.serve.formats import DTYPE_NAMES, FORMAT_NAMES, FORMATS, export_format

DTYPES = tuple(DTYPE_NAMES)


def _format_help() -> str:
    """One entry per format of the table: who serves it and which drafts it holds."""
    return ", ".join(f"{fmt.name} ({fmt.serves}; {' and '.join(algorithm_spec(a).label for a in fmt.algorithms)})"
                     for fmt in FORMATS.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="?", help="recipe checkpoint directory, run directory (its latest checkpoint), "
                                               "or an export directory to convert to --format")
    parser.add_argument("--format", choices=FORMAT_NAMES, help=_format_help())
    parser.add_argument("--out", help="export directory (default: RUN/export/<format>/)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="float tensor dtype (default bf16; a conversion keeps the source's)")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="leave out embed_tokens.weight (the engines then share the target's embedding)")
    parser.add_argument("--check", metavar="DIR", help="validate an export directory instead of exporting")


def default_export_dir(checkpoint: str, format: str) -> str:  # noqa: A002
    """``RUN/export/<format>`` for ``RUN/checkpoints/step_*``; ``<checkpoint>/export/<format>`` for a checkpoint
    outside a run directory."""
    checkpoint = os.path.abspath(checkpoint)
    parent = os.path.dirname(checkpoint)
    root = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else checkpoint
    return os.path.join(root, "export", format)


def is_export_dir(path: str) -> bool:
    """Whether ``path`` is an export directory (a ``config.json`` in a format eagle_ext reads), not a run or
    checkpoint."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return False
    import json

    from eagle_ext.serve.formats import detect_format

    try:
        with open(config_path) as f:
            detect_format(json.load(f))
    except (ValueError, OSError, AttributeError, TypeError):
        return False
    return True


def export_checkpoint(
    src: str | os.PathLike,
    format: str,  # noqa: A002
    out: str | os.PathLike | None = None,
    dtype: str = "bf16",
    *,
    include_embeddings: bool = True,
) -> str:
    """Export the draft of a recipe checkpoint (what the recipe calls at the end of training).

    Args:
        src: a checkpoint directory or a run directory (its ``checkpoints/latest``).
        format: a format of :data:`eagle_ext.serve.formats.FORMATS` (``"speculators"``, ``"sglang"`` or
            ``"specforge_peagle"``).
        out: the export directory (default :func:`default_export_dir`).
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        include_embeddings: ship ``embed_tokens.weight``.

    Returns:
        The export directory (absolute).

    Raises:
        ValueError: an unknown ``format`` / ``dtype`` (before anything is loaded), or a checkpoint whose
            draft the format cannot hold; FileNotFoundError: ``src`` names no checkpoint.
    """
    from eagle_ext.serve.checkpoints import load_checkpoint_draft, read_checkpoint_meta, resolve_checkpoint
    export_format(format)  # an unknown format or dtype is refused before torch loads
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    from eagle_ext.serve.export import check_algorithm_format, export_trained_draft

    checkpoint = resolve_checkpoint(src)
    check_algorithm_format(read_checkpoint_meta(checkpoint).get("algorithm"), format, checkpoint)  # before loading
    draft, meta = load_checkpoint_draft(checkpoint)
    out = default_export_dir(checkpoint, format) if out is None else out
    return export_trained_draft(draft, meta, out, format=format, dtype=dtype, include_embeddings=include_embeddings,
                                checkpoint=checkpoint)


def _check(directory: str) -> int:
    """``--check DIR``: every problem, then the engines known not to serve the target family."""
    from eagle_ext.serve.export import check_export, export_engine_notes

    problems = check_export(directory)
    for problem in problems:
        print(f"{directory}: {problem}")
    notes = export_engine_notes(directory)
    for note in notes:  # the export is valid; an engine is known not to serve its target family
        print(f"{directory}: warning: {note}")
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print("OK" if not notes else f"OK (the export is valid; {len(notes)} known engine limit(s) above)")
    return 0


def _summarize(src: str, format: str, out: str) -> int:  # noqa: A002
    """What was written (aux ids in both conventions, vocabulary, embedding) and its check."""
    import json

    from eagle_ext.serve.export import check_export, export_engine_notes

    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    block = config["eagle_ext"]
    fmt = export_format(format)
    written = f"{'.'.join(fmt.aux_ids_key)} {fmt.aux_ids(config)} ({fmt.aux_convention})"
    problems = check_export(out)
    print(f"exported {src} ({block['algorithm']}) as {format} ({config['dtype']}) to {out}")
    print(f"  aux layers: eagle_ext {block['aux_layer_ids']} -> {written}")
    print(f"  draft vocab {config['draft_vocab_size']}, embed_tokens {block['embed_tokens']}; check: "
          + ("OK" if not problems else f"{len(problems)} problem(s)"))
    for problem in problems:
        print(f"{out}: {problem}")
    for note in export_engine_notes(out):
        print(f"{out}: warning: {note}")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        if args.src is not None or args.format is not None or args.out is not None or args.no_embeddings:
            print("eagle-ext export: error: --check DIR takes no SRC, --format, --out or --no-embeddings",
                  file=sys.stderr)
            return 2
        return _check(args.check)
    if args.src is None or args.format is None:
        print("eagle-ext export: error: exporting needs SRC (a checkpoint or run directory) and --format "
              f"{{{','.join(FORMAT_NAMES)}}}; or use --check DIR", file=sys.stderr)
        return 2
    try:
        if is_export_dir(args.src):
            if args.no_embeddings:
                raise ValueError("--no-embeddings does not apply to a conversion (the source's choice is kept)")
            from eagle_ext.serve.export import convert_export

            out = convert_export(args.src, args.out or f"{os.path.abspath(args.src).rstrip(os.sep)}_{args.format}",
                                 format=args.format, dtype=args.dtype)
        else:
            out = export_checkpoint(args.src, args.format, args.out, args.dtype or "bf16",
                                    include_embeddings=not args.no_embeddings)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"eagle-ext export: error: {err}", file=sys.stderr)
        return 2
    return _summarize(args.src, args.format, out)
