"""The training recipe: config loading and validation, dry runs of the shipped configs, exact resume, crash
recovery, the CLI, reporting; tiny Llama targets on CPU."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from eagle_ext.cli import main
from eagle_ext.train.checkpoint import list_checkpoints, resolve_checkpoint
from eagle_ext.train.config import ConfigError, RecipeConfig, config_to_yaml, load_config
from tests.recipe_helpers import tiny_overrides

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs")
TINY = {a: os.path.join(CONFIGS, f"tiny_cpu_{a}.yaml") for a in ("eagle3", "peagle")}
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Shared tiny target + data; each test gets its own output_dir through the returned function."""
    root = str(tmp_path_factory.mktemp("tiny"))
    base = tiny_overrides(root, n_train=16, n_eval=4)

    def overrides(run_dir: str, *extra: str) -> list[str]:
        kept = [o for o in base if not o.startswith("output_dir=")]
        return [*kept, f"output_dir={run_dir}", *QUIET, *extra]

    return overrides


# ---------------------------------------------------------------------------------------------- config


def test_defaults_are_written_once_and_round_trip(tmp_path, tiny):
    cfg = load_config(TINY["eagle3"], tiny(str(tmp_path / "run")))
    assert cfg.eagle3.ttt_steps == 3 and cfg.optim.betas == [0.9, 0.95] and cfg.train.max_steps == 8
    path = tmp_path / "resolved.yaml"
    assert main(["train", "-c", TINY["eagle3"], *tiny(str(tmp_path / "run")), "--print-config", str(path)]) == 0
    again = load_config(str(path))
    assert config_to_yaml(again) == config_to_yaml(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean optim.lr?"),
        ("trian.max_steps=3", "did you mean train"),
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("train.micro_batch_size=0", "train.micro_batch_size must be an int >= 1, got 0"),
        ("train.micro_batch_size=true", "train.micro_batch_size must be an int, got True"),
        ("peagle.num_depths=4", "peagle.num_depths set, but algorithm is 'eagle3'"),
        ("target.sharding=tp", "target.sharding must be 'replicate' or 'fsdp', got 'tp'"),
        ("target.name_or_path=/no/such/model", "target.name_or_path must be a directory holding config.json"),
        ("data.train_path=/no/such.jsonl", "data.train_path must be an existing file or directory"),
        ("data.packing_strategy=first_fit", "data.packing_strategy must be 'best_fit' or 'greedy'"),
        ("checkpoint.export_formats=[specforge_peagle]", "'speculators' or 'sglang' for EAGLE-3"),
        ("algorithm=medusa", "algorithm must be one of ('eagle3', 'peagle'), got 'medusa'"),
        ("nonsense", "must look like dotted.key=value"),
        ("train.autocast=fp16", "train.autocast must be 'auto', 'bf16' or 'none' (fp16 autocast is refused: the "
                                "recipe has no GradScaler"),
    ],
)
def test_bad_config_is_rejected_before_anything_loads(tmp_path, tiny, override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(TINY["eagle3"], [*tiny(str(tmp_path / "run")), override])
    assert message in str(info.value)


def test_peagle_needs_mask_token_and_no_packing(tmp_path, tiny):
    with pytest.raises(ConfigError, match="peagle.mask_token_id"):
        load_config(TINY["peagle"], [*tiny(str(tmp_path / "r")), "peagle.mask_token_id=null"])
    with pytest.raises(ConfigError, match="data.packed_sequence_size must be 0 with algorithm 'peagle'"):
        load_config(TINY["peagle"], [*tiny(str(tmp_path / "r")), "data.packed_sequence_size=64"])


def test_numbers_in_exponent_form_are_numbers(tmp_path, tiny):
    """PyYAML reads 1e-4 (no dot) as a string; the config takes it as the number everyone means."""
    cfg = load_config(TINY["eagle3"], [*tiny(str(tmp_path / "run")), "optim.lr=1e-4", "optim.weight_decay=5E-2"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.05
    with pytest.raises(ConfigError, match="optim.lr must be a number, got '1e-4x'"):
        load_config(TINY["eagle3"], [*tiny(str(tmp_path / "run")), "optim.lr=1e-4x"])


def test_paths_starting_with_tilde_mean_the_home_directory(tmp_path, tiny, monkeypatch):
    """Shipped configs name ~/.cache/...; the recipe must not take "~" for a hub name or a relative folder."""
    overrides = tiny(str(tmp_path / "run"))
    target = next(o.split("=", 1)[1] for o in overrides if o.startswith("target.name_or_path="))
    monkeypatch.setenv("HOME", str(tmp_path))
    home_relative = "~/" + os.path.relpath(target, tmp_path)
    cfg = load_config(TINY["eagle3"], [*overrides, f"target.name_or_path={home_relative}", "output_dir=~/out"])
    assert os.path.samefile(cfg.target.name_or_path, target) and cfg.output_dir == str(tmp_path / "out")


def test_missing_target_and_output_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"output_dir must be a directory path \(required\)"):
        load_config(None, [])
    with pytest.raises(ConfigError, match=r"target.name_or_path must be a model directory or hub name \(required\)"):
        load_config(None, [f"output_dir={tmp_path}"])


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, tiny, capsys):
    assert main(["train", "-c", TINY["eagle3"], *tiny(str(tmp_path / "run")), "optim.lr=-1"]) == 2
    assert "optim.lr must be a number > 0, got -1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- dry runs


LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
}
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
}


@pytest.mark.parametrize(("name", "target_config", "billions"),
                         [("llama31_8b_eagle3", LLAMA31_8B, 8.0), ("qwen3_8b_peagle", QWEN3_8B, 8.2)])
def test_shipped_examples_pass_dry_run(tmp_path, capsys, name, target_config, billions):
    """The 8B examples resolve, count parameters from the real architecture and estimate memory, loading no
    weights (the target's config.json is all a dry run reads)."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps(target_config))
    data = tmp_path / "chats.jsonl"
    data.write_text("")
    args = ["train", "-c", os.path.join(CONFIGS, f"{name}.yaml"), f"target.name_or_path={target}",
            f"data.train_path={data}", f"data.eval_path={data}", f"output_dir={tmp_path / 'run'}", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    count = int(re.search(r"^target: ([\d,]+) parameters", out, re.MULTILINE).group(1).replace(",", ""))
    assert abs(count / 1e9 - billions) < 0.1
    assert "trainable" in out and "estimated peak memory per rank" in out and "total" in out
    assert not (tmp_path / "run").exists()


def test_tiny_configs_pass_dry_run(tmp_path, tiny, capsys):
    for algorithm in ("eagle3", "peagle"):
        assert main(["train", "-c", TINY[algorithm], *tiny(str(tmp_path / algorithm)), "--dry-run"]) == 0
        assert f"draft ({algorithm})" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- runs


def _weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(resolve_checkpoint(run_dir), "draft", "model.safetensors"))


def _optimizer(run_dir: str) -> dict:
    return torch.load(os.path.join(resolve_checkpoint(run_dir), "optimizer.pt"), weights_only=True)


def _assert_bitwise_equal(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(tmp_path, tiny, algorithm, workers):
    """2k steps straight == k steps, stop, resume from the step-k checkpoint, k more steps: bitwise-equal draft
    weights and optimizer state, resuming mid-epoch (the tiny set has 4 micro-batches per epoch)."""
    steps, every = (8, 3) if algorithm == "eagle3" else (6, 3)
    extra = [f"train.max_steps={steps}", f"checkpoint.every_steps={every}", f"data.num_workers={workers}",
             "checkpoint.keep=5"]
    straight = str(tmp_path / "straight")
    assert main(["train", "-c", TINY[algorithm], *tiny(straight, *extra)]) == 0
    resumed = str(tmp_path / "resumed")
    shutil.copytree(os.path.join(straight, "checkpoints", "step_00000003"),
                    os.path.join(resumed, "checkpoints", "step_00000003"))
    with open(os.path.join(resumed, "checkpoints", "latest"), "w") as f:
        f.write("step_00000003\n")
    meta = json.load(open(os.path.join(resumed, "checkpoints", "step_00000003", "meta.json")))
    assert meta["batches_in_epoch"] != 0  # mid-epoch
    assert main(["train", "-c", TINY[algorithm], *tiny(resumed, *extra, "resume=auto")]) == 0
    assert resolve_checkpoint(resumed).endswith(f"step_{steps:08d}")
    _assert_bitwise_equal(_weights(straight), _weights(resumed))
    _assert_bitwise_equal(_optimizer(straight), _optimizer(resumed))
    log = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [r["step"] for r in log if r["split"] == "train"] == ([4, 6, 8] if algorithm == "eagle3" else [4, 6])


def test_resume_refuses_an_incompatible_checkpoint(tmp_path, tiny):
    run = str(tmp_path / "run")
    assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=2", "checkpoint.every_steps=null")]) == 0
    cfg = load_config(TINY["eagle3"], tiny(run, "resume=auto", "eagle3.ttt_steps=2", "data.draft_vocab_size=32"))
    from eagle_ext.train.loop import run_training

    with pytest.raises(ConfigError) as info:
        run_training(cfg)
    text = str(info.value)
    assert "eagle3.ttt_steps: 3 -> 2" in text and "data.draft_vocab_size: 64 -> 32" in text
    # a fresh run never writes into a run directory that holds checkpoints
    with pytest.raises(ConfigError, match="already holds checkpoints; set resume=auto"):
        run_training(load_config(TINY["eagle3"], tiny(run)))


def test_half_written_checkpoints_are_never_picked_up(tmp_path, tiny):
    run = str(tmp_path / "run")
    assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=4", "checkpoint.every_steps=2")]) == 0
    checkpoints = os.path.join(run, "checkpoints")
    os.makedirs(os.path.join(checkpoints, "step_00000009", "draft"))  # no meta.json: an interrupted copy
    os.makedirs(os.path.join(checkpoints, ".step_00000010.tmpab12"))  # the temp name of a save in progress
    assert [s for s, _ in list_checkpoints(checkpoints)] == [2, 4]
    assert resolve_checkpoint(run).endswith("step_00000004")


def test_sigkill_mid_training_resumes_and_finishes(tmp_path, tiny):
    """A run killed with SIGKILL resumes from its last checkpoint and finishes."""
    run = str(tmp_path / "run")
    args = ["-c", TINY["eagle3"], *tiny(run, "train.max_steps=100000", "checkpoint.every_steps=2")]
    proc = subprocess.Popen([sys.executable, "-m", "eagle_ext", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    try:
        while time.time() < deadline and len(list_checkpoints(os.path.join(run, "checkpoints"))) < 2:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = [s for s, _ in list_checkpoints(os.path.join(run, "checkpoints"))]
    assert len(killed_at) >= 2, "the run made no checkpoints before the deadline"
    last = killed_at[-1]
    assert main(["train", *args, "resume=auto", f"train.max_steps={last + 4}"]) == 0
    assert resolve_checkpoint(run).endswith(f"step_{last + 4:08d}")


def test_report_draws_the_curves(tmp_path, tiny):
    run = str(tmp_path / "run")
    assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=4", "train.eval_every_steps=2")]) == 0
    assert main(["report", run]) == 0
    png = os.path.join(run, "curves.png")
    assert os.path.getsize(png) > 1000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_recipe_config_dataclass_has_every_section():
    names = {f for f in RecipeConfig.__dataclass_fields__ if f != "explicit"}
    assert {"target", "data", "algorithm", "eagle3", "peagle", "optim", "train", "checkpoint", "output_dir",
            "resume"} <= names


def test_trailing_partial_window_is_rescaled(tmp_path, tiny):
    """An epoch of 4 micro-batches with accumulation 8 closes one partial window of 4 per epoch; rescaled by 8/4
    it must step exactly like accumulation 4 (scaling by powers of two is exact, so bitwise)."""
    runs = {}
    for accum in (8, 4):
        run = str(tmp_path / f"accum{accum}")
        assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=2", f"optim.grad_accumulation_steps={accum}",
                                                       "checkpoint.every_steps=null")]) == 0
        runs[accum] = _weights(run)
    _assert_bitwise_equal(runs[8], runs[4])


def test_keeps_the_newest_checkpoints(tmp_path, tiny):
    run = str(tmp_path / "run")
    assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=5", "checkpoint.every_steps=1",
                                                   "checkpoint.keep=2")]) == 0
    assert [s for s, _ in list_checkpoints(os.path.join(run, "checkpoints"))] == [4, 5]


def test_tensorboard_receives_the_logged_scalars(tmp_path, tiny, monkeypatch):
    """With tensorboard installed the recipe writes every logged number (a stand-in SummaryWriter records them)."""
    import types

    written = []

    class Writer:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def close(self):
            written.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    monkeypatch.setattr("eagle_ext.train.config._tensorboard_available", lambda: True)
    run = str(tmp_path / "run")
    overrides = [o for o in tiny(run, "train.max_steps=2", "train.log_every_steps=1") if o != "train.tensorboard=false"]
    overrides.append("train.tensorboard=true")
    assert main(["train", "-c", TINY["eagle3"], *overrides]) == 0
    assert written[0] == ("dir", os.path.join(run, "tensorboard")) and written[-1] == ("closed", None)
    assert {("train/loss", 1), ("train/tau_sim", 2), ("train/lr", 2), ("eval/accuracy", 2)} <= set(written)


def test_recipe_exports_at_the_end_of_training(tmp_path, tiny):
    """checkpoint.export_formats: the final checkpoint is exported, and the export passes --check and reloads
    with the trained weights."""
    from eagle_ext.serve import check_export, load_exported_draft
    from eagle_ext.train.checkpoint import load_checkpoint_draft

    run = str(tmp_path / "run")
    assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=2", "checkpoint.export_formats=[speculators, sglang]")]) == 0
    draft, meta = load_checkpoint_draft(run)
    hidden = torch.randn(1, 5, draft.config.hidden_size)
    for fmt in ("speculators", "sglang"):
        out = os.path.join(run, "export", fmt)
        assert check_export(out) == []
        exported = load_exported_draft(out)
        assert exported.aux_layer_ids == meta["aux_layer_ids"] and exported.algorithm == "eagle3"
        # per target token the logits agree (the export sorts the draft vocab by target id), up to bf16 rounding
        ours = torch.full((1, 5, meta["target"]["vocab_size"]), float("-inf"))
        ours[..., draft.d2t + torch.arange(draft.d2t.numel())] = draft.compute_logits(hidden)
        theirs = torch.full_like(ours, float("-inf"))
        d2t = exported.draft.d2t
        theirs[..., d2t + torch.arange(d2t.numel())] = exported.draft.compute_logits(hidden)
        torch.testing.assert_close(theirs, ours, rtol=0.05, atol=0.05)


def test_trains_from_an_offline_cache_without_loading_the_target(tmp_path, tiny, monkeypatch):
    """eagle-ext precompute, then eagle-ext train with data.cached_target_path: no target is loaded, and the run
    reproduces the live run on the same data (the cache holds the same supervision)."""
    import eagle_ext.train.builders as builders
    from eagle_ext.train.loop import run_training

    base = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in tiny(str(tmp_path / "x"))}
    common = ["data.packed_sequence_size=0", "data.seq_length=96", "train.max_steps=3", "checkpoint.every_steps=null"]
    live = str(tmp_path / "live")
    assert main(["train", "-c", TINY["eagle3"], *tiny(live, *common)]) == 0
    caches = {}
    for split in ("train", "eval"):
        caches[split] = str(tmp_path / f"cache_{split}")
        assert main(["precompute", "--target-model", base["target.name_or_path"], "--input-data",
                     base[f"data.{split}_path"], "--output-dir", caches[split], "--seq-length", "96",
                     "--draft-vocab-size", "64", "--batch-size", "4", "--shard-size", "8", "--dtype", "fp32",
                     "--aux-layer-ids", "0", "2", "3", "--device", "cpu", "--no-progress",
                     *(["--token-map", caches["train"]] if split == "eval" else [])]) == 0

    def no_target(*args, **kwargs):
        raise AssertionError("a cached run must not load the target")

    monkeypatch.setattr(builders, "load_target", no_target)
    cached = str(tmp_path / "cached")
    assert main(["train", "-c", TINY["eagle3"], *tiny(cached, *common, f"data.cached_target_path={caches['train']}",
                                                    f"data.eval_path={caches['eval']}")]) == 0
    loss = {name: [r["loss"] for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))]
            for name, run in (("live", live), ("cached", cached))}
    torch.testing.assert_close(torch.tensor(loss["cached"]), torch.tensor(loss["live"]), rtol=1e-4, atol=1e-5)
    # a warm start from the cache: the export's head rows follow the cache's vocabulary order, so per target token
    # the warm draft predicts what the export does
    from eagle_ext.serve import load_exported_draft
    from eagle_ext.train.checkpoint import load_checkpoint_draft

    live_draft, _ = load_checkpoint_draft(live)
    export = str(tmp_path / "live_export")
    assert main(["export", live, "--format", "speculators", "--dtype", "fp32", "--out", export]) == 0
    warm = str(tmp_path / "warm_cached")
    assert main(["train", "-c", TINY["eagle3"], *tiny(warm, *common, "train.max_steps=1", "optim.lr=1e-12",
                                                    f"init_from={export}", f"data.cached_target_path={caches['train']}",
                                                    f"data.eval_path={caches['eval']}")]) == 0
    warm_draft, _ = load_checkpoint_draft(warm)
    hidden = torch.randn(1, 4, live_draft.config.hidden_size)

    def per_target_token(draft):
        out = torch.full((1, 4, draft.config.vocab_size), float("-inf"))
        out[..., draft.d2t + torch.arange(draft.d2t.numel())] = draft.compute_logits(hidden)
        return out

    exported = load_exported_draft(export).draft
    torch.testing.assert_close(per_target_token(warm_draft), per_target_token(exported), atol=1e-5, rtol=0)
    # a cache made for another configuration is refused, naming the field
    with pytest.raises(ConfigError, match="seq_length"):
        run_training(load_config(TINY["eagle3"], tiny(str(tmp_path / "bad"), *common, "data.seq_length=64",
                                                             f"data.cached_target_path={caches['train']}",
                                                             "data.eval_path=null")))


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_recipe_runs_on_cuda_with_bf16_autocast_and_resumes(tmp_path, tiny, algorithm):
    """On CUDA: bf16 target, fp32 master weights under bf16 autocast, fused AdamW, Triton loss / flex attention;
    the loss falls and a resumed run continues from the checkpoint."""
    pytest.importorskip("datasets")  # the recipe tokenises its data through datasets.map
    run = str(tmp_path / "run")
    extra = ["train.device=cuda", "train.max_steps=12", "checkpoint.every_steps=6", "train.log_every_steps=3"]
    assert main(["train", "-c", TINY[algorithm], *tiny(run, *extra)]) == 0
    log = [r for r in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if r["split"] == "train"]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log) and log[-1]["loss"] < log[0]["loss"]
    weights = _weights(run)
    assert all(v.dtype in (torch.float32, torch.int64, torch.bool) for v in weights.values())
    os.remove(os.path.join(run, "checkpoints", "step_00000012", "meta.json"))  # as if killed before step 12 landed
    with open(os.path.join(run, "checkpoints", "latest"), "w") as f:
        f.write("step_00000006\n")
    assert main(["train", "-c", TINY[algorithm], *tiny(run, *extra, "resume=auto")]) == 0
    assert resolve_checkpoint(run).endswith("step_00000012")


def test_init_head_from_target_copies_the_draft_vocab_rows(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    from eagle_ext.train.builders import init_head_from_target
    from eagle_ext.train.checkpoint import load_checkpoint_draft, load_token_mapping

    run = str(tmp_path / "run")
    assert main(["train", "-c", TINY["eagle3"], *tiny(run, "train.max_steps=1", "optim.lr=1e-12",
                                                   "eagle3.init_head_from_target=true")]) == 0
    draft, _ = load_checkpoint_draft(run)
    ids, _ = load_token_mapping(resolve_checkpoint(run))
    target = AutoModelForCausalLM.from_pretrained(load_config(TINY["eagle3"], tiny(run)).target.name_or_path)
    torch.testing.assert_close(draft.lm_head.weight, target.lm_head.weight[ids], atol=1e-6, rtol=0)
    torch.testing.assert_close(draft.model.norm.weight, target.model.norm.weight, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs width"):
        wide = torch.nn.Module()
        wide.get_output_embeddings = lambda: torch.nn.Linear(3, target.config.vocab_size, bias=False)
        init_head_from_target(draft, wide, ids)


def test_init_from_warm_starts_from_an_export(tmp_path, tiny):
    """init_from: a fresh run starts from an exported draft's weights and keeps its vocabulary (fresh optimiser);
    exports that do not fit the run are refused before training, naming what differs."""
    from eagle_ext.serve import load_exported_draft
    from eagle_ext.train.checkpoint import load_checkpoint_draft, load_token_mapping
    from eagle_ext.train.loop import run_training

    first = str(tmp_path / "first")
    assert main(["train", "-c", TINY["eagle3"], *tiny(first, "train.max_steps=3", "eagle3.init_head_from_target=true",
                                                     "checkpoint.export_formats=[sglang]")]) == 0
    export = os.path.join(first, "export", "sglang")
    exported = load_exported_draft(export, embed_tokens=torch.zeros(load_checkpoint_draft(first)[0].model.embed_tokens.weight.shape))
    warm = str(tmp_path / "warm")
    # lr ~0: the one step leaves the weights where init_from put them (init_head_from_target does not apply); the
    # vocabulary is the export's, in its ascending target-id order (a fresh run orders it by frequency)
    assert main(["train", "-c", TINY["eagle3"], *tiny(warm, "train.max_steps=1", "optim.lr=1e-12", f"init_from={export}",
                                                    "eagle3.init_head_from_target=true")]) == 0
    draft, _ = load_checkpoint_draft(warm)
    ids, mask = load_token_mapping(resolve_checkpoint(warm))
    assert torch.equal(ids, exported.draft.d2t + torch.arange(ids.numel())) and int(mask.sum()) == ids.numel()
    theirs = exported.draft.state_dict()
    for name, tensor in draft.state_dict().items():
        if name != "model.embed_tokens.weight":
            torch.testing.assert_close(tensor, theirs[name], atol=1e-6, rtol=0, msg=name)
    # the warm run's first eval is where the first run's last one ended (up to the export's bf16 rounding)
    def evals(run):
        return [r for r in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if r["split"] == "eval"]
    assert abs(evals(warm)[-1]["loss"] - evals(first)[-1]["loss"]) < 0.02

    for extra, message in ((["data.draft_vocab_size=32"], "draft_vocab_size 64"),
                           (["target.aux_layer_ids=[0,1,2]"], "aux layers"),
                           ([f"init_from={tmp_path}"], "init_from")):
        with pytest.raises(ConfigError, match=message):
            run_training(load_config(TINY["eagle3"], tiny(str(tmp_path / "bad"), f"init_from={export}", *extra)))
    peagle = str(tmp_path / "peagle")
    assert main(["train", "-c", TINY["peagle"], *tiny(peagle, "train.max_steps=1", "checkpoint.export_formats=[speculators]")]) == 0
    with pytest.raises(ConfigError, match="algorithm 'peagle'"):
        run_training(load_config(TINY["eagle3"], tiny(str(tmp_path / "bad2"),
                                                     f"init_from={os.path.join(peagle, 'export', 'speculators')}")))
