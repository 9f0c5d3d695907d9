"""The recipe under torchrun: 2 gloo processes on CPU, the real command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from eagle_ext.cli import main
from eagle_ext.train.checkpoint import resolve_checkpoint
from tests.recipe_helpers import tiny_overrides

pytestmark = pytest.mark.distributed

CONFIG = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs", "tiny_cpu_eagle3.yaml")
# padded rows of one document each, so the 16 samples split evenly over 2 ranks; micro-batch 1
COMMON = ["data.packed_sequence_size=0", "data.seq_length=96", "train.micro_batch_size=1", "train.max_steps=4",
          "train.log_every_steps=1", "checkpoint.every_steps=null", "train.progress=false", "train.tensorboard=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "-m", "eagle_ext", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _train_losses(run: str) -> list[float]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dist"))
    base = [o for o in tiny_overrides(root, n_train=16, n_eval=4) if not o.startswith("output_dir=")]
    return root, base


def test_two_ranks_match_one_process_with_accumulation(inputs):
    """2 ranks x accumulation 1 == 1 process x accumulation 2 over the same micro-batches (fp32), and both ranks
    end with identical draft weights."""
    root, base = inputs
    dist_run = os.path.join(root, "ddp")
    proc = _torchrun(["-c", CONFIG, *base, *COMMON, f"output_dir={dist_run}"])
    single = os.path.join(root, "single")
    assert main(["train", "-c", CONFIG, *base, *COMMON, f"output_dir={single}",
                 "optim.grad_accumulation_steps=2"]) == 0
    meta = json.load(open(os.path.join(resolve_checkpoint(dist_run), "meta.json")))
    assert meta["world_size"] == 2 and len(set(meta["rank_weight_digests"])) == 1
    a = load_file(os.path.join(resolve_checkpoint(dist_run), "draft", "model.safetensors"))
    b = load_file(os.path.join(resolve_checkpoint(single), "draft", "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(torch.tensor(_train_losses(dist_run)), torch.tensor(_train_losses(single)),
                               rtol=1e-5, atol=1e-6)
    print(proc.stdout[-2000:])  # the 2-rank run's log, shown with pytest -s


def test_fsdp_target_gives_the_losses_of_a_replicated_target(inputs):
    root, base = inputs
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip(f"torch {torch.__version__} has no FSDP2 fully_shard")
    runs = {}
    for sharding in ("replicate", "fsdp"):
        run = os.path.join(root, f"target_{sharding}")
        _torchrun(["-c", CONFIG, *base, *COMMON, f"output_dir={run}", f"target.sharding={sharding}"])
        runs[sharding] = _train_losses(run)
    torch.testing.assert_close(torch.tensor(runs["fsdp"]), torch.tensor(runs["replicate"]), rtol=1e-5, atol=1e-6)
