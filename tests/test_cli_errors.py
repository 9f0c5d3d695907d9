"""Ordinary mistakes end in one line (the argument, the value, what was expected, the fix) with exit status 2 and
no traceback (unless --debug or EAGLE_EXT_DEBUG=1); Ctrl-C names the last checkpoint and the resume command;
eval checks the export, the prompts and the target's config.json before any weights load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from eagle_ext.cli import main
from eagle_ext.train.checkpoint import list_checkpoints
from eagle_ext.train.config import ConfigError
from tests.recipe_helpers import tiny_overrides

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs")
TINY = os.path.join(CONFIGS, "tiny_cpu_eagle3.yaml")
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_overrides(str(tmp_path_factory.mktemp("tiny")), n_train=16, n_eval=4)


def _train(base, run_dir, *extra):
    kept = [o for o in base if not o.startswith("output_dir=")]
    return ["train", "-c", TINY, *kept, f"output_dir={run_dir}", *QUIET, *extra]


def _one_line_error(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"eagle-ext {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_empty_jsonl_names_the_file(tmp_path, base, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    assert main(_train(base, tmp_path / "run", f"data.train_path={empty}", "data.eval_path=null")) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert str(empty) in line and "is empty" in line and '"messages"' in line
    target = next(o.split("=", 1)[1] for o in base if o.startswith("target.name_or_path="))
    assert main(["precompute", "--target-model", target, "--input-data", str(empty), "--output-dir",
                 str(tmp_path / "cache"), "--seq-length", "64", "--aux-layer-ids", "0", "2", "3", "--no-progress",
                 "--device", "cpu"]) == 2
    assert str(empty) in _one_line_error(capsys.readouterr().err, "precompute")


def test_rows_without_an_assistant_turn_are_one_line(tmp_path, base, capsys):
    data = tmp_path / "users.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n"
                            for _ in range(3)))
    assert main(_train(base, tmp_path / "run", f"data.train_path={data}", "data.eval_path=null")) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert "no usable chat rows" in line and "no_assistant" in line and str(data) in line


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 3\n bad: [\n")
    assert main(["train", "-c", str(bad)]) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert str(bad) in line and "not valid YAML (line 3, column 2" in line
    assert main(["train", "-c", TINY, "optim.betas=[0.9"]) == 2
    assert "optim.betas=[0.9" in _one_line_error(capsys.readouterr().err, "train")


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        main(["--debug", "train", "-c", str(bad)])
    with pytest.raises(ConfigError, match="not valid YAML"):
        main(["train", "-c", str(bad), "--debug"])  # anywhere on the line
    monkeypatch.setenv("EAGLE_EXT_DEBUG", "1")
    with pytest.raises(ConfigError, match="not valid YAML"):
        main(["train", "-c", str(bad)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_device_on_a_cpu_machine_fails_before_anything_loads(tmp_path, base, capsys, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_loading)
    run = tmp_path / "run"
    assert main(_train(base, run, "train.device=cuda")) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert "train.device" in line and "'cuda'" in line and "CUDA is not available" in line
    assert not run.exists()


def test_ctrl_c_prints_the_last_checkpoint_and_the_resume_command(tmp_path, base):
    run = tmp_path / "run"
    argv = _train(base, run, "train.max_steps=100000", "checkpoint.every_steps=2")
    # SIGINT back to its default in the child: a test run started in the background of a shell has it ignored,
    # and an ignored signal stays ignored across exec (the child would never see Ctrl-C)
    proc = subprocess.Popen([sys.executable, "-m", "eagle_ext", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not list_checkpoints(run / "checkpoints") and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)  # inside a training step, not between
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a training run behind
            proc.communicate()
            raise
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = next(line for line in err.splitlines() if "interrupted" in line and "eagle-ext train" in line)
    last = list_checkpoints(run / "checkpoints")[-1][1]
    assert f"last checkpoint {last}" in line
    assert "resume with: eagle-ext train -c" in line and line.endswith("resume=auto")
    assert "[eagle-ext train] interrupted" in err


# ---------------------------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory):
    """A tiny target directory and a speculators export of a draft for it (recording another target's name)."""
    from transformers import LlamaForCausalLM

    from eagle_ext.models import Eagle3DraftModel
    from eagle_ext.serve.export import export_draft
    from eagle_ext.testing import save_tiny_target

    root = tmp_path_factory.mktemp("pair")
    target = save_tiny_target(str(root / "target"))
    config = LlamaForCausalLM.config_class.from_pretrained(target)
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(config, 16)
    draft.set_vocab_mapping(torch.randperm(config.vocab_size)[:16])

    def export(name: str, recorded: str, layers: int, cfg=config):
        d = Eagle3DraftModel.from_target_config(cfg, 16) if cfg is not config else draft
        if cfg is not config:
            d.set_vocab_mapping(torch.randperm(cfg.vocab_size)[:16])
        return export_draft(d, str(root / name), format="speculators", aux_layer_ids=[0, 1, 2],
                            target_name_or_path=recorded, target_num_hidden_layers=layers, dtype="fp32")

    matching = export("draft", target, config.num_hidden_layers)
    other = export("draft_other", "org/another-model", config.num_hidden_layers + 2)
    wide = config.__class__(**{**config.to_dict(), "hidden_size": 48, "head_dim": 12})
    mismatched = export("draft_wide", target, config.num_hidden_layers, cfg=wide)
    prompts = root / "prompts.jsonl"
    prompts.write_text('"hello"\n')
    return {"target": target, "draft": matching, "other": other, "wide": mismatched, "prompts": str(prompts),
            "root": root}


def _eval(pair, *extra, target=None, draft=None, prompts=None):
    return ["eval", "--target", target or pair["target"], "--draft", draft or pair["draft"], "--prompts",
            prompts or pair["prompts"], "--max-new-tokens", "3", "--device", "cpu", "--dtype", "fp32", "--no-progress",
            *extra]


@pytest.fixture
def no_weights(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_eval_says_no_such_directory_for_a_path_like_target(tmp_path, model_pair, capsys, monkeypatch, no_weights):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for target in ("runs/nope", "./nope", str(tmp_path / "a" / "b")):
        assert main(_eval(model_pair, target=target)) == 2
        err = capsys.readouterr().err
        assert f"--target {target!r}: no such directory" in err and "hub" not in err.split("no such directory")[0]


def test_eval_checks_export_and_target_config_before_loading_weights(tmp_path, model_pair, capsys, no_weights):
    assert main(_eval(model_pair, draft=model_pair["wide"])) == 2
    err = capsys.readouterr().err
    assert "hidden_size (48) differs from the target's (32)" in err and "was not trained for --target" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(model_pair["draft"]):
        if name == "config.json":
            (broken / name).write_text(open(os.path.join(model_pair["draft"], name)).read())
    assert main(_eval(model_pair, draft=str(broken))) == 2
    assert "is not a valid export" in capsys.readouterr().err
    plain = tmp_path / "prompts.jsonl"
    plain.write_text("hello there\n")
    assert main(_eval(model_pair, prompts=str(plain))) == 2
    err = capsys.readouterr().err
    assert "line 1: invalid JSON" in err and "expected JSON Lines" in err and "*.txt" in err


def test_eval_accepts_plain_text_prompts_warns_on_another_recorded_target_and_saves_text(tmp_path, model_pair,
                                                                                        capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\n\nhow are you\n")
    out = tmp_path / "report.json"
    assert main(_eval(model_pair, "--save-text", "--out", str(out), draft=model_pair["other"],
                      prompts=str(prompts))) == 0
    err = capsys.readouterr().err
    assert "warning: --draft" in err and "exported for target 'org/another-model'" in err
    assert "records a target of 6 layers" in err
    report = json.loads(out.read_text())
    assert report["settings"]["num_prompts"] == 2
    for entry in report["prompts"]:
        for summary in [entry["target_only"], *entry["speculative"]]:
            assert isinstance(summary["text"], str) and len(summary["tokens"]) == summary["new_tokens"]
    # without --save-text the report holds no text; a matching export gives no warning
    assert main(_eval(model_pair, "--out", str(out))) == 0
    assert "warning" not in capsys.readouterr().err
    assert "text" not in json.loads(out.read_text())["prompts"][0]["target_only"]


def test_ctrl_c_in_precompute_prints_the_resume_command(tmp_path, base, capsys, monkeypatch):
    import eagle_ext.offline.writer as writer

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "precompute_cache", interrupted)
    target = next(o.split("=", 1)[1] for o in base if o.startswith("target.name_or_path="))
    data = next(o.split("=", 1)[1] for o in base if o.startswith("data.train_path="))
    argv = ["precompute", "--target-model", target, "--input-data", data, "--output-dir", str(tmp_path / "c"),
            "--seq-length", "64", "--aux-layer-ids", "0", "2", "3", "--device", "cpu", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"finished shards in {tmp_path / 'c'} are kept; continue with: eagle-ext precompute" in err
    assert err.splitlines()[0].endswith("--no-progress --resume")


def test_draft_given_a_run_directory_says_to_export_it(tmp_path, model_pair, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(_eval(model_pair, draft=str(run))) == 2
    assert "a training run? export it first: eagle-ext export RUN" in capsys.readouterr().err
