"""Resuming: a changed step budget continues on a recomputed, announced LR schedule; log windows after a resume
cover the same steps and micro-batches as in an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from eagle_ext.cli import main
from eagle_ext.train.optim import warmup_cosine
from tests.recipe_helpers import tiny_overrides

TINY = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs", "tiny_cpu_eagle3.yaml")
QUIET = ["train.progress=false", "train.tensorboard=false"]
LR, MIN_RATIO, WARMUP_RATIO = 3e-3, 0.1, 0.1  # tiny_cpu_eagle3.yaml's optim (min_lr_ratio: the default)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_overrides(str(tmp_path_factory.mktemp("tiny")), n_train=16, n_eval=4)


def _args(base, run_dir, *extra):
    kept = [o for o in base if not o.startswith("output_dir=")]
    return ["train", "-c", TINY, *kept, f"output_dir={run_dir}", *QUIET, *extra]


def _resume_copy(src: str, dst: str, step: int) -> None:
    name = f"step_{step:08d}"
    shutil.copytree(os.path.join(src, "checkpoints", name), os.path.join(dst, "checkpoints", name))
    with open(os.path.join(dst, "checkpoints", "latest"), "w") as f:
        f.write(name + "\n")
    shutil.copy(os.path.join(src, "metrics.jsonl"), os.path.join(dst, "metrics.jsonl"))


def _train_log(run_dir: str) -> dict[int, dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["split"] == "train"}


def test_log_windows_after_a_resume_match_an_uninterrupted_run(tmp_path, base):
    extra = ["train.max_steps=8", "checkpoint.every_steps=3", "train.log_every_steps=2", "checkpoint.keep=5",
             "data.eval_path=null"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert main(_args(base, straight, *extra)) == 0
    _resume_copy(straight, resumed, 3)  # the window open at step 3 holds step 3's micro-batches
    assert main(_args(base, resumed, *extra, "resume=auto")) == 0
    a, b = _train_log(straight), _train_log(resumed)
    assert sorted(a) == sorted(b) == [2, 4, 6, 8]
    for step in (4, 6, 8):
        assert a[step]["tokens"] == b[step]["tokens"], step  # step 4's window: steps 3 and 4 in both runs
        assert a[step]["valid_tokens"] == b[step]["valid_tokens"], step
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=1e-12, abs=1e-12), step
        assert a[step]["accuracy"] == pytest.approx(b[step]["accuracy"], rel=1e-12, abs=1e-12), step
    assert a[4]["tokens"] > a[8]["tokens"] // 4  # not a one-step window


def test_resume_with_another_max_steps_announces_the_recomputed_schedule(tmp_path, base, capsys):
    extra = ["checkpoint.every_steps=3", "train.log_every_steps=1", "checkpoint.keep=5", "data.eval_path=null"]
    first, shorter = str(tmp_path / "first"), str(tmp_path / "shorter")
    assert main(_args(base, first, "train.max_steps=10", *extra)) == 0
    capsys.readouterr()
    _resume_copy(first, shorter, 6)
    assert main(_args(base, shorter, "train.max_steps=8", *extra, "resume=auto")) == 0
    out = capsys.readouterr().out
    assert "the step budget changed from 10 to 8 steps" in out
    new_warmup, old_warmup = int(WARMUP_RATIO * 8), int(WARMUP_RATIO * 10)
    expected_next = LR * warmup_cosine(6, max(1, new_warmup), 8, MIN_RATIO)
    old_next = LR * warmup_cosine(6, max(1, old_warmup), 10, MIN_RATIO)
    assert f"LR of step 7 is {expected_next:.3g} (it was {old_next:.3g} on the 10-step schedule)" in out
    log = _train_log(shorter)
    for step in (7, 8):  # the logged LR is the one set for the following step, on the 8-step schedule
        assert log[step]["lr"] == pytest.approx(LR * warmup_cosine(step, max(1, new_warmup), 8, MIN_RATIO))
    # the same budget resumes silently (and exactly)
    same = str(tmp_path / "same")
    _resume_copy(first, same, 6)
    assert main(_args(base, same, "train.max_steps=10", *extra, "resume=auto")) == 0
    assert "step budget changed" not in capsys.readouterr().out
    assert _train_log(same)[10]["lr"] == _train_log(first)[10]["lr"]
    # fewer steps than the checkpoint's: refused before anything loads
    assert main(_args(base, same, "train.max_steps=4", *extra, "resume=auto")) == 2
    assert "train.max_steps must be >= the step of the checkpoint it resumes (10" in capsys.readouterr().err
