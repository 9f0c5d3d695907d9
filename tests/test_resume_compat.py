"""Checkpoints written before the Algorithm / Trainer refactor still resume exactly and export byte for byte.

``tests/fixtures/resume_v1`` holds what the code at af7cde3 (the last commit before that refactor) wrote for the
tiny EAGLE-3 and P-EAGLE recipe runs: the target, the data, the step-3 checkpoint of a 6-step run (checkpoint
every 3 steps, log every 2), its log up to step 3, and ``expected.json`` with that run's step-6 weights digest and
log records, and the sha256 of every file ``eagle-ext export`` wrote from the step-3 checkpoint (each format the
algorithm has, plus EAGLE-3's SGLang export converted to speculators). The old run lived under
``/tmp/oldrun/<algorithm>`` and its exports under ``/tmp/oldexp``; the test lays out the same trees under its tmp
directory and maps the paths back before hashing (exports record the checkpoint and target paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from eagle_ext.cli import main

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "resume_v1")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs")
OLD_RUN, OLD_EXPORTS = "/tmp/oldrun", "/tmp/oldexp"
STEP_3 = "step_00000003"
FORMATS = {"eagle3": ("speculators", "sglang"), "peagle": ("speculators", "specforge_peagle")}

with open(os.path.join(FIXTURE, "expected.json")) as _f:
    EXPECTED = json.load(_f)


def _layout(root: str, algorithm: str) -> str:
    """The old run's tree under ``root/algorithm``, its checkpoint's config pointed at it (a moved run)."""
    base = os.path.join(root, algorithm)
    shutil.copytree(os.path.join(FIXTURE, "target"), os.path.join(base, "target"))
    for name in ("train.jsonl", "eval.jsonl"):
        shutil.copy(os.path.join(FIXTURE, name), os.path.join(base, name))
    checkpoints = os.path.join(base, "run", "checkpoints")
    shutil.copytree(os.path.join(FIXTURE, algorithm, STEP_3), os.path.join(checkpoints, STEP_3))
    with open(os.path.join(checkpoints, "latest"), "w") as f:
        f.write(STEP_3 + "\n")
    shutil.copy(os.path.join(FIXTURE, algorithm, "metrics.jsonl"), os.path.join(base, "run", "metrics.jsonl"))
    config = os.path.join(checkpoints, STEP_3, "config.yaml")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace(f"{OLD_RUN}/{algorithm}", base))
    return base


def _train_args(base: str, algorithm: str) -> list[str]:
    """The overrides the fixture's run was made with."""
    return ["train", "-c", os.path.join(CONFIGS, f"tiny_cpu_{algorithm}.yaml"),
            f"target.name_or_path={base}/target", f"data.train_path={base}/train.jsonl",
            f"data.eval_path={base}/eval.jsonl", f"output_dir={base}/run", f"data.cache_dir={base}/cache",
            "train.max_steps=6", "checkpoint.every_steps=3", "train.log_every_steps=2", "checkpoint.keep=5",
            "train.progress=false", "train.tensorboard=false", "train.eval_batches=2"]


@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_an_old_checkpoint_resumes_to_the_same_weights_and_log(tmp_path, algorithm):
    base = _layout(str(tmp_path), algorithm)
    assert main([*_train_args(base, algorithm), "resume=auto"]) == 0
    with open(os.path.join(base, "run", "checkpoints", "step_00000006", "meta.json")) as f:
        meta = json.load(f)
    expected = EXPECTED[algorithm]
    assert meta["rank_weight_digests"] == [expected["weights_digest_step_6"]]
    with open(os.path.join(base, "run", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    after = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records if r["step"] > 3]
    assert after == expected["records_after_step_3"]  # bit for bit: losses, accuracies, lr, grad norms


def _hashes(directory: str, root: str, exports: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        if name.endswith(".json"):  # the paths an export records, mapped back to the old trees
            data = data.replace(exports.encode(), OLD_EXPORTS.encode()).replace(root.encode(), OLD_RUN.encode())
        out[name] = hashlib.sha256(data).hexdigest()
    return out


@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_an_old_checkpoint_exports_byte_for_byte(tmp_path, algorithm):
    root = str(tmp_path / "run")
    exports = str(tmp_path / "exports")
    base = _layout(root, algorithm)
    checkpoint = os.path.join(base, "run", "checkpoints", STEP_3)
    found = {}
    for fmt in FORMATS[algorithm]:
        out = os.path.join(exports, f"{algorithm}-{fmt}")
        assert main(["export", checkpoint, "--format", fmt, "--out", out]) == 0
        found.update({f"{fmt}/{k}": v for k, v in _hashes(out, root, exports).items()})
    if algorithm == "eagle3":
        out = os.path.join(exports, "eagle3-conv")
        assert main(["export", os.path.join(exports, "eagle3-sglang"), "--format", "speculators", "--out", out]) == 0
        found.update({f"conv/{k}": v for k, v in _hashes(out, root, exports).items()})
    assert found == EXPECTED[algorithm]["export_sha256"]
