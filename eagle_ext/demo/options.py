"""The demo's options and their check, shared by the command line, :mod:`eagle_ext.demo.run` and the SmolLM2
pipeline (a leaf: it imports nothing heavy)."""

from __future__ import annotations

from eagle_ext._checks import check_int
from eagle_ext.algorithms import ALGORITHM_NAMES

__all__ = ["ALGORITHMS", "DTYPES", "TARGETS", "check_demo_args", "demo_threads"]

TARGETS = ("smollm2", "tiny")
ALGORITHMS = ALGORITHM_NAMES  # the registry's (eagle_ext.algorithms imports nothing)
#: --dtype (SmolLM2 evaluation) -> torch dtype name
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
#: torch intra-op threads by target when neither --threads nor OMP_NUM_THREADS says (None: torch's default, one per
#: core). The toy target's matrices are too small to gain from a second thread, and on a shared machine extra
#: threads only wait for cores (a 2-core box with one other job: 559 s with 2 threads, 80 s with 1).
DEFAULT_THREADS = {"tiny": 1, "smollm2": None}


def demo_threads(target: str, threads: int | None = None, environ: dict | None = None) -> int | None:
    """The torch thread count the demo sets: ``threads`` (``--threads``) when given, else none when the user set
    ``OMP_NUM_THREADS`` (torch follows it), else :data:`DEFAULT_THREADS` by target (``None``: leave torch's).

    Raises:
        ValueError: ``threads`` below 1.
    """
    import os

    if threads is not None:
        return check_int("--threads", threads, 1)
    if (environ if environ is not None else os.environ).get("OMP_NUM_THREADS"):
        return None
    return DEFAULT_THREADS.get(target)


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
        if value is not None:
            check_int(name, value, minimum)
    if target == "tiny":
        given = [name for name, value in (("--algorithm", algorithm), ("--dtype", dtype),
                                          *((n, v) for n, (v, _) in sizes.items())) if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} only to --target smollm2; the tiny demo trains EAGLE-3 and "
                             "P-EAGLE at its own sizes (use --quick for a shorter run)")
