"""CUDA-only paths of the data pipeline: NCCL collectives of the draft vocabulary (counts reduced and cached
ids broadcast on the GPU) and dataloader workers started with forkserver and pinned memory."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from eagle_ext.data.loader import build_dataloader
from eagle_ext.data.vocab import load_or_build_eagle3_token_mapping
from tests.test_data_helpers import build_tokenizer

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": "the weather is nice " * (i % 4 + 1)},
        ]
    }
    for i in range(20)
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
def test_nccl_counts_and_cache_broadcast(tmp_path):
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        batches = [{"input_ids": torch.tensor([[7, 7, 7, 7, 9, 9, 4]]), "loss_mask": torch.ones(1, 7)}]
        built, _ = load_or_build_eagle3_token_mapping(
            batches, 32, 3, cache_path=tmp_path / "m.safetensors", show_progress=False
        )
        loaded, mask = load_or_build_eagle3_token_mapping([], 32, 3, cache_path=tmp_path / "m.safetensors")
        assert built.tolist() == loaded.tolist() == [7, 9, 4] and loaded.device.type == "cpu"
        assert int(mask.sum()) == 3
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [0, 96])
def test_forkserver_workers_with_pinned_memory(packed):
    pytest.importorskip("datasets")  # the loader tokenises through datasets.map
    tok = build_tokenizer("llama3")
    kwargs = {"shuffle": False, "packed_sequence_size": packed, "show_progress": False}
    workers = build_dataloader(ROWS, tok, 48, 4, num_workers=2, **kwargs)
    assert workers.pin_memory and workers.multiprocessing_context.get_start_method() == "forkserver"
    main = build_dataloader(ROWS, tok, 48, 4, num_workers=0, **kwargs)
    for epoch in range(2):  # persistent workers survive the epoch boundary
        workers.set_epoch(epoch)
        got = list(workers)
        assert len(got) == len(main)
        assert all(torch.equal(a[k], b[k]) for a, b in zip(got, main, strict=True) for k in a)
