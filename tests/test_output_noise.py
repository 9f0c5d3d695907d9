"""Quiet runs are quiet (no library progress bars, no DDP deprecation warning per rank), thread counts suit the
model, and tensorboard: true either logs or is refused."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from eagle_ext.cli import main
from tests.recipe_helpers import tiny_overrides

TINY = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs", "tiny_cpu_eagle3.yaml")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_overrides(str(tmp_path_factory.mktemp("tiny")), n_train=16, n_eval=4)


def _args(base, run_dir, *extra):
    kept = [o for o in base if not o.startswith("output_dir=")]
    return ["train", "-c", TINY, *kept, f"output_dir={run_dir}", *extra]


def test_demo_threads_follow_the_model_size_and_the_user():
    from eagle_ext.demo.options import demo_threads

    assert demo_threads("tiny", None, environ={}) == 1
    assert demo_threads("smollm2", None, environ={}) is None  # torch's default: one per core
    assert demo_threads("tiny", None, environ={"OMP_NUM_THREADS": "3"}) is None  # the user's setting stands
    assert demo_threads("tiny", 4, environ={"OMP_NUM_THREADS": "3"}) == 4
    with pytest.raises(ValueError, match="--threads must be an int >= 1, got 0"):
        demo_threads("tiny", 0)


def test_tiny_demo_gets_no_progress_and_one_thread(tmp_path, monkeypatch, capsys):
    from eagle_ext.demo import toy

    seen = {}

    def fake_pipeline(cfg, output_dir):
        seen.update(show_progress=cfg.show_progress, threads=torch.get_num_threads())
        return {}

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(toy, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(toy, "print_summary", lambda summary: None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["demo", "--target", "tiny", "--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 0
        assert seen == {"show_progress": False, "threads": 1}
        assert "(1 torch thread(s))" in capsys.readouterr().out
        assert main(["demo", "--target", "tiny", "--threads", "2", "--output-dir", str(tmp_path)]) == 0
        assert seen == {"show_progress": True, "threads": 2}
    finally:
        torch.set_num_threads(threads)
    assert main(["demo", "--target", "tiny", "--threads", "0", "--output-dir", str(tmp_path)]) == 2
    assert "--threads must be an int >= 1, got 0" in capsys.readouterr().err


def test_progress_false_silences_library_bars(tmp_path, base, capfd):
    import datasets
    from transformers.utils import logging as hf_logging

    assert main(_args(base, tmp_path / "run", "train.progress=false", "train.max_steps=1")) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Saving the dataset" not in err and "it/s]" not in err, err
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()  # restored afterwards


def test_ddp_wrapper_raises_no_deprecation_warning(tmp_path):
    import torch.distributed as dist

    from eagle_ext.train.builders import wrap_ddp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        module = torch.nn.Linear(3, 2)
        module.register_buffer("ids", torch.arange(4))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            ddp = wrap_ddp(module)
        assert ddp(torch.ones(1, 3)).shape == (1, 2)
    finally:
        dist.destroy_process_group()


def test_tensorboard_true_without_the_package_is_refused_before_loading(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setattr("eagle_ext.train.config._tensorboard_available", lambda: False)
    run = tmp_path / "run"
    assert main(_args(base, run, "train.tensorboard=true")) == 2
    err = capsys.readouterr().err
    assert "train.tensorboard is true, but the tensorboard package is not installed" in err
    assert "eagle_ext[tensorboard]" in err and "train.tensorboard=false" in err
    assert not run.exists()
    from eagle_ext.train.config import load_config

    assert load_config(TINY, [o for o in base]).train.tensorboard is False  # off unless asked for
