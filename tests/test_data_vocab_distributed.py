"""Two gloo ranks: both derive the same draft vocabulary from their own shards, and a cache written by rank 0
is what rank 1 uses (only rank 0 reads the file; rank 1's own path does not even exist)."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eagle_ext.data.vocab import load_or_build_eagle3_token_mapping

# rank 0 alone would pick [7, 0, 1] and rank 1 alone [9, 4, 0]; the summed counts give the oracle [7, 9, 4]
SHARDS = {0: [[7, 7, 7, 7]], 1: [[9, 9, 4, 3]]}
MASKS = {0: [[1, 1, 1, 1]], 1: [[1, 1, 1, 0]]}


class _Loader(list):
    data_fingerprint = "shared-data"


class _MustNotScan(_Loader):
    def __iter__(self):
        raise AssertionError("scanned the data although rank 0 has a valid cache")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_gloo(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=30)
    )


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    _init_gloo(rank, world, port)
    try:
        # each rank names its own node-local cache file; only rank 0's is ever read or written
        cache = os.path.join(tmp, f"node{rank}", "map.safetensors")
        data = _Loader([{"input_ids": torch.tensor(SHARDS[rank]), "loss_mask": torch.tensor(MASKS[rank])}])
        built, _ = load_or_build_eagle3_token_mapping(data, 32, 3, cache_path=cache, show_progress=False)
        loaded, mask = load_or_build_eagle3_token_mapping(_MustNotScan(), 32, 3, cache_path=cache)
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump(
                {
                    "built": built.tolist(),
                    "loaded": loaded.tolist(),
                    "mask": int(mask.sum()),
                    "own_cache_exists": os.path.exists(cache),
                },
                f,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_share_vocab_and_rank0_cache(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in results:
        assert r["built"] == [7, 9, 4] and r["loaded"] == [7, 9, 4] and r["mask"] == 3
    assert results[0]["own_cache_exists"] and not results[1]["own_cache_exists"]


def _loader_worker(rank: int, world: int, port: int, tmp: str) -> None:
    from eagle_ext.data import chat
    from eagle_ext.data.loader import build_dataloader
    from tests.test_data_helpers import build_tokenizer

    _init_gloo(rank, world, port)
    try:
        tok = build_tokenizer("llama3")
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i} " * (i + 1)},
                ]
            }
            for i in range(9)
        ]
        if rank == 1:  # rank 1 must read the cache rank 0 wrote, never tokenise

            def fail(*args, **kwargs):
                raise AssertionError("rank 1 tokenised although rank 0 cached the data")

            chat.ChatTokenizer.encode = fail
        dl = build_dataloader(
            rows, tok, 64, 2, cache_dir=os.path.join(tmp, "cache"), distributed=True, show_progress=False
        )
        ids, _ = load_or_build_eagle3_token_mapping(
            dl, len(tok), 16, [tok.eos_token_id], os.path.join(tmp, "vocab.json"), show_progress=False
        )
        try:  # rank 0 fails (no usable rows): every rank must raise instead of waiting
            build_dataloader(
                [{"messages": [{"role": "user", "content": "?"}]}],
                tok,
                64,
                2,
                cache_dir=os.path.join(tmp, "cache"),
                distributed=True,
                show_progress=False,
            )
            failure = None
        except (ValueError, RuntimeError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        with open(os.path.join(tmp, f"loader{rank}.json"), "w") as f:
            json.dump(
                {
                    "replicas": dl.sampler.num_replicas,
                    "rank": dl.sampler.rank,
                    "samples": len(dl.sampler),
                    "fingerprint": dl.data_fingerprint,
                    "vocab": ids.tolist(),
                    "failure": failure,
                },
                f,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_share_the_tokenisation_cache(tmp_path):
    mp.spawn(_loader_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"loader{r}.json").read_text()) for r in range(2))
    assert (r0["replicas"], r0["rank"], r1["rank"]) == (2, 0, 1) and r0["samples"] == r1["samples"] == 5
    assert r0["fingerprint"] == r1["fingerprint"] and r0["vocab"] == r1["vocab"] and len(r0["vocab"]) == 16
    assert r0["failure"].startswith("ValueError: no usable chat rows")
    assert r1["failure"].startswith("RuntimeError: rank 0 failed to tokenise")
