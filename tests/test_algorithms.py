"""The algorithm registry and its strategies: every registered algorithm loads a strategy that matches its spec,
answers the same checkpoint schema, and reports its own metrics through the trainer's metric window."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from eagle_ext.algorithms import ALGORITHM_NAMES, REGISTRY, Algorithm, algorithm_spec, get_algorithm
from eagle_ext.train.config import RecipeConfig
from eagle_ext.train.distributed import DistContext
from eagle_ext.train.trainer import MetricWindow


def _cfg(algorithm: str) -> RecipeConfig:
    cfg = RecipeConfig(algorithm=algorithm)
    cfg.peagle.mask_token_id = 5
    return cfg


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_every_registered_algorithm_loads_its_strategy(name):
    strategy = get_algorithm(name)
    assert isinstance(strategy, Algorithm) and strategy.spec is REGISTRY[name]
    assert strategy.depth(_cfg(name)) == getattr(getattr(_cfg(name), name), strategy.spec.depth_key)


def test_unknown_algorithms_are_refused_naming_the_value():
    with pytest.raises(ValueError, match=r"algorithm must be one of \('eagle3', 'peagle'\), got 'medusa'"):
        get_algorithm("medusa")
    with pytest.raises(ValueError, match="draft.algorithm must be one of"):
        algorithm_spec(None, key="draft.algorithm")


def test_the_registry_imports_nothing_heavy():
    code = "import sys, eagle_ext.algorithms; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_checkpoint_meta_keeps_one_schema():
    eagle3, peagle = (get_algorithm(n).checkpoint_meta(_cfg(n)) for n in ("eagle3", "peagle"))
    assert list(eagle3) == list(peagle) == ["ttt_steps", "num_depths", "mask_token_id"]  # meta.json's keys, in order
    assert eagle3 == {"ttt_steps": 4, "num_depths": None, "mask_token_id": None}
    assert peagle == {"ttt_steps": None, "num_depths": 8, "mask_token_id": 5}


def test_target_problems_name_the_mask_token_only_for_parallel_drafting():
    assert get_algorithm("eagle3").target_problems(_cfg("eagle3"), 4) == []
    assert get_algorithm("peagle").target_problems(_cfg("peagle"), 4) == [
        "peagle.mask_token_id must be < the target's vocab_size (4), got 5"]
    assert get_algorithm("peagle").target_problems(_cfg("peagle"), 6) == []


def test_the_metric_window_reports_each_algorithms_own_fields():
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    eagle3 = SimpleNamespace(loss=torch.tensor(2.0), accuracy=torch.tensor(0.5), valid_tokens=torch.tensor(8),
                             step_prefix_hits=torch.tensor([4, 2]), step_valid=torch.tensor([8, 8]))
    window = MetricWindow(get_algorithm("eagle3"), 2, ctx.device)
    window.add(eagle3, torch.tensor(10))
    out = window.reduce(ctx)
    assert out["loss"] == 2.0 and out["accuracy"] == 0.5 and out["valid_tokens"] == 8 and out["tokens"] == 10
    assert out["tau_sim"] == pytest.approx(1 + 4 / 8 + 2 / 8) and "depth_accuracy" not in out
    peagle = SimpleNamespace(loss=torch.tensor(1.0), depth_correct=torch.tensor([3, 1]),
                             depth_valid=torch.tensor([4, 2]))
    window = MetricWindow(get_algorithm("peagle"), 2, ctx.device)
    window.add(peagle, torch.tensor(6))
    window.add(peagle, torch.tensor(6))
    out = window.reduce(ctx)
    assert out["loss"] == 1.0 and out["accuracy"] == 8 / 12 and out["tokens"] == 12
    assert out["depth_accuracy"] == [0.75, 0.5] and "tau_sim" not in out
    assert window.reduce(ctx)["tokens"] == 0  # reduce resets the window
