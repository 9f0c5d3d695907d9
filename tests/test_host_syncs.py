"""Host syncs per training step: none from our code in the recipe's EAGLE-3 and P-EAGLE steps.

CPU proxy: a tensor on the ``meta`` device has no values, so every read-back a CUDA tensor would pay for
with a host sync (``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``, boolean indexing) raises on it. A step
whose device tensors are all on ``meta`` and that still runs therefore reads nothing back from the device;
the host-side inputs (``seq_lens``, the P-EAGLE plan's masks) stay real CPU tensors, as the recipe keeps
them. (The loss runs as ``reference`` there: on CUDA it is the Triton path, whose sync-freedom the gpu
tests below check with ``torch.cuda.set_sync_debug_mode("error")``; autocast has no meta backend and is
switched off for the proxy.) The census in ``benchmarks/gpu_census.py`` counts the syncs on a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import LlamaConfig

from eagle_ext.eagle3 import Eagle3TrainerModule, shift_left_with_zero
from eagle_ext.models import Eagle3DraftModel
from eagle_ext.models.masks import document_ids_from_seq_lens
from eagle_ext.ops._transfer import to_device_async
from eagle_ext.peagle import PEagleTrainerModule, run_partitioned_step
from eagle_ext.peagle.algorithm import host_plan_masks
from eagle_ext.train import builders
from eagle_ext.train import trainer as train_trainer

V, VD, H, T, B = 256, 64, 64, 32, 2


def _config():
    return LlamaConfig(hidden_size=H, intermediate_size=3 * H, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=4, vocab_size=V, max_position_embeddings=4 * T)


@pytest.fixture
def no_autocast(monkeypatch):
    """autocast has no meta backend; the proxy runs the same code with autocast a no-op."""
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())


def _eagle3_inputs(device):
    g = torch.Generator().manual_seed(0)
    seq_lens = torch.tensor([[12, T - 12], [T, 0]])
    positions = torch.stack([torch.cat([torch.arange(12), torch.arange(T - 12)]), torch.arange(T)])
    remaining = torch.stack([torch.cat([torch.arange(12, 0, -1), torch.arange(T - 12, 0, -1)]), torch.arange(T, 0, -1)])
    on_device = {
        "input_ids": torch.randint(0, V, (B, T), generator=g),
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "loss_mask": (torch.rand(B, T, generator=g) < 0.7).long(),
        "aux_hidden_states": torch.randn(B, T, 3 * H, generator=g),
        "target_logits": torch.randn(B, T, V, generator=g),
        "position_ids": positions,
        "doc_remaining": remaining,
    }
    return {k: v.to(device) for k, v in on_device.items()}, seq_lens


def _eagle3_trainer(device, loss_impl="reference"):
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(_config(), VD)
    trainer = Eagle3TrainerModule(draft, selected_token_ids=torch.arange(VD), selected_token_mask=torch.arange(V) < VD,
                                  ttt_steps=3, loss_impl=loss_impl)
    return trainer.to(device)


def test_document_ids_of_device_seq_lens_read_nothing_back():
    seq_lens = torch.tensor([[2, 3], [5, 0]])
    assert document_ids_from_seq_lens(seq_lens, 5).tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    on_device = document_ids_from_seq_lens(seq_lens.to("meta"), 5)  # validation queued, never read back
    assert on_device.device.type == "meta" and on_device.shape == (2, 5)
    with pytest.raises(ValueError, match="must sum to the row width T=6"):
        document_ids_from_seq_lens(seq_lens, 6)  # host tensors still get the clear error


def test_eagle3_step_with_host_seq_lens_reads_nothing_back_from_the_device(no_autocast):
    trainer = _eagle3_trainer("meta")
    inputs, seq_lens = _eagle3_inputs("meta")
    metrics = trainer(**inputs, seq_lens=seq_lens)  # host seq_lens, as the Trainer passes them
    metrics.loss.backward()
    assert metrics.loss.device.type == "meta"
    assert all(p.grad is not None for p in trainer.parameters() if p.requires_grad)
    # the same step with seq_lens on the device has to read them back (a sync on CUDA)
    with pytest.raises((NotImplementedError, RuntimeError)):
        _eagle3_trainer("meta")(**inputs, seq_lens=seq_lens.to("meta"))


def _peagle_trainer(device, partitions):
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(_config(), VD, num_hidden_layers=2, parallel_drafting=True,
                                                mask_token_id=V - 1)
    return PEagleTrainerModule(draft, selected_token_ids=torch.arange(VD), selected_token_mask=torch.arange(V) < VD,
                               num_depths=3, mask_token_id=V - 1, sequence_partitions=partitions,
                               loss_impl="reference", attention="dense").to(device)


@pytest.mark.parametrize("partitions", [1, 2])
def test_peagle_step_with_a_host_plan_reads_nothing_back_from_the_device(no_autocast, partitions):
    g = torch.Generator().manual_seed(1)
    host = {"loss_mask": (torch.rand(B, T, generator=g) < 0.7).long(), "attention_mask": torch.ones(B, T, dtype=torch.long)}
    host["attention_mask"][1, 25:] = 0
    batch = {**host, "input_ids": torch.randint(0, V - 1, (B, T), generator=g),
             "aux_hidden_states": torch.randn(B, T, 3 * H, generator=g), "target_logits": torch.randn(B, T, V, generator=g)}
    trainer = _peagle_trainer("meta", partitions)
    plan = trainer.build_peagle_plan(*host_plan_masks(batch, shifted=True), device="meta")
    assert plan.total_den.device.type == "meta" and all(u.anchor.device.type == "cpu" for u in plan.units)
    metrics = run_partitioned_step(trainer, plan, {k: v.to("meta") for k, v in batch.items()})
    assert metrics.loss.device.type == "meta"
    # a plan built from device masks reads them back
    with pytest.raises((NotImplementedError, RuntimeError)):
        trainer.build_peagle_plan(batch["loss_mask"].to("meta"), batch["attention_mask"].to("meta"))


def test_loop_keeps_the_step_control_inputs_on_the_host():
    g = torch.Generator().manual_seed(2)
    batch = {"input_ids": torch.randint(0, V, (B, T), generator=g), "attention_mask": torch.ones(B, T, dtype=torch.long),
             "loss_mask": (torch.rand(B, T, generator=g) < 0.5).long(), "seq_lens": torch.tensor([[T, 0], [10, T - 10]])}
    assert train_trainer.host_seq_lens(batch) is batch["seq_lens"]
    assert train_trainer.host_seq_lens({**batch, "seq_lens": batch["seq_lens"].to("meta")}) is None
    assert train_trainer.host_seq_lens({k: v for k, v in batch.items() if k != "seq_lens"}) is None
    # the plan's loss mask is the one the target capture hands the trainer: shifted left by one, zero tail
    loss, attention = host_plan_masks(batch, shifted=False)
    assert torch.equal(loss, shift_left_with_zero(batch["loss_mask"])) and torch.equal(attention, batch["attention_mask"])
    assert loss.device.type == "cpu" and attention.device.type == "cpu"
    assert host_plan_masks(batch, shifted=True)[0] is batch["loss_mask"]  # cached batches: already shifted
    moved = train_trainer.to_device(batch, torch.device("meta"))
    assert all(v.device.type == "meta" for v in moved.values())


def test_to_device_async_leaves_host_and_same_device_tensors_alone():
    t = torch.arange(4)
    assert to_device_async(t, "cpu") is t
    assert to_device_async(t, "meta").device.type == "meta"


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_to_device_async_pins_and_does_not_sync():
    t = torch.arange(1 << 16)
    to_device_async(t, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = to_device_async(t, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(out.cpu(), t)


@pytest.mark.gpu
def test_eagle3_recipe_step_on_cuda_makes_no_host_sync():
    trainer = _eagle3_trainer("cuda", loss_impl="auto")
    inputs, seq_lens = _eagle3_inputs("cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            metrics = trainer(**inputs, seq_lens=seq_lens)
        metrics.loss.backward()
        return metrics

    step()  # warm-up: Triton compile and autotune benchmark (they synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
def test_peagle_recipe_step_on_cuda_makes_no_host_sync():
    trainer = _peagle_trainer("cuda", 2)
    trainer.loss_impl, trainer.attention = "auto", "auto"  # Triton loss, flex attention
    g = torch.Generator().manual_seed(3)
    host = {"loss_mask": (torch.rand(B, T, generator=g) < 0.7).long(), "attention_mask": torch.ones(B, T, dtype=torch.long)}
    batch = {**host, "input_ids": torch.randint(0, V - 1, (B, T), generator=g),
             "aux_hidden_states": torch.randn(B, T, 3 * H, generator=g), "target_logits": torch.randn(B, T, V, generator=g)}
    on_device = train_trainer.to_device(batch, torch.device("cuda"))

    def step():
        trainer.generator = torch.Generator().manual_seed(5)  # the same COD lengths: no new flex compile
        plan = trainer.build_peagle_plan(*host_plan_masks(batch, shifted=True), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            run_partitioned_step(trainer, plan, on_device)

    step()  # warm-up: compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_ddp_wrapper_leaves_inputs_where_they_are_and_uses_bucket_views(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        module = builders.wrap_ddp(torch.nn.Linear(3, 2))
        assert module.device_ids is None and module.gradient_as_bucket_view
        module(torch.randn(4, 3)).sum().backward()
        assert module.module.weight.grad is not None
    finally:
        dist.destroy_process_group()
