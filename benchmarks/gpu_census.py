"""Host-sync and recompile census of the training steps, as the recipe runs them (CUDA only).

Each case runs a few full steps the way ``eagle_ext.train.trainer`` does: a collated host batch in pinned
memory, ``_to_device`` (asynchronous copies), the frozen target forward (EAGLE-3: a tiny Llama with packed
rows, so its block-causal mask is built from device ``seq_lens``), the trainer under bf16 autocast with
fp32 master weights, backward, gradient clipping and a fused AdamW step; host-side inputs (``seq_lens``,
the P-EAGLE plan's masks) come from the host batch exactly as in the loop. Every step after a warm-up
runs under ``torch.cuda.set_sync_debug_mode("warn")``: the warnings are the host syncs, counted per step
with their source lines. Goals (issue #20): 0 per EAGLE-3 step, at most 1 per P-EAGLE step.

Also recorded: ``torch._dynamo`` counters (graphs compiled, recompiles) and the flex length buckets the
P-EAGLE segments hit. Results go to ``<results>/census_cuda.json`` after every case (``PartialResults``),
so a run stopped by SIGINT keeps the cases it finished.

Usage: ``python -m benchmarks.gpu_census [--device cuda] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import collections
import warnings

import torch

from benchmarks._common import PartialResults

V, VD, H, T, B = 4096, 1024, 256, 512, 2


def _config(layers):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=H, intermediate_size=3 * H, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=layers, vocab_size=V, max_position_embeddings=4 * T)


def _vocab(device):
    return torch.arange(VD, device=device), torch.arange(V, device=device) < VD


def _packed_batch(seed):
    """A collated host batch of packed rows (two documents in row 0, one in row 1), pinned."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = torch.tensor([[200, T - 200], [T, 0]])
    positions = torch.stack([torch.cat([torch.arange(200), torch.arange(T - 200)]), torch.arange(T)])
    remaining = torch.stack([torch.cat([torch.arange(200, 0, -1), torch.arange(T - 200, 0, -1)]),
                             torch.arange(T, 0, -1)])
    batch = {
        "input_ids": torch.randint(0, V - 1, (B, T), generator=g),
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "loss_mask": (torch.rand(B, T, generator=g) < 0.6).long(),
        "position_ids": positions,
        "seq_lens": seq_lens,
        "doc_remaining": remaining,
    }
    return {k: v.pin_memory() for k, v in batch.items()}


def _count_syncs(step_fn, steps):
    """Warm up once, then ``steps`` calls under sync debug mode "warn": syncs per step and their sources."""
    step_fn(-1)
    torch.cuda.synchronize()
    per_step, sources = [], collections.Counter()
    for i in range(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step_fn(i)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        per_step.append(len(syncs))
        sources.update(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in syncs)
    torch.cuda.synchronize()
    return {"syncs_per_step": per_step, "max_syncs_per_step": max(per_step, default=0),
            "sources": dict(sources.most_common(12))}


def _optimizer_step(params, optimizer):
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def eagle3_case(device, steps, *, seq_lens_on_host=True):
    from transformers import LlamaForCausalLM

    from eagle_ext.eagle3 import Eagle3TrainerModule
    from eagle_ext.models import DraftModel, TargetCapture
    from eagle_ext.train.trainer import host_seq_lens as _host_seq_lens
    from eagle_ext.train.trainer import to_device as _to_device

    torch.manual_seed(0)
    target = TargetCapture(LlamaForCausalLM(_config(4)).to(device, torch.bfloat16), aux_layer_ids=[0, 1, 3])
    draft = DraftModel.from_target_config(_config(4), VD).to(device)  # fp32 master weights
    ids, mask = _vocab(device)
    trainer = Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=4)
    params = [p for p in trainer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def step(i):
        batch = _packed_batch(100 + i)
        host_seq_lens = _host_seq_lens(batch)
        on_device = _to_device(batch, device)
        with torch.no_grad():
            inputs = target.generate_batch(**on_device).to_trainer_inputs()
        if seq_lens_on_host:
            inputs["seq_lens"] = host_seq_lens  # what train/trainer.py passes
        with torch.autocast("cuda", dtype=torch.bfloat16):
            metrics = trainer(**inputs)
        metrics.loss.backward()
        _optimizer_step(params, optimizer)

    return _count_syncs(step, steps)


def peagle_case(device, steps, *, partitions, plan_from_host=True):
    from eagle_ext.models import DraftModel
    from eagle_ext.models.attention import flex_bucket_length
    from eagle_ext.peagle import PEagleTrainerModule, run_partitioned_step
    from eagle_ext.peagle.algorithm import host_plan_masks as _host_plan_masks
    from eagle_ext.train.trainer import to_device as _to_device

    torch.manual_seed(0)
    draft = DraftModel.from_target_config(_config(4), VD, num_hidden_layers=2, parallel_drafting=True,
                                                mask_token_id=V - 1).to(device)
    ids, mask = _vocab(device)
    trainer = PEagleTrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, num_depths=4,
                                  mask_token_id=V - 1, sequence_partitions=partitions)
    params = [p for p in trainer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    lengths = []

    def step(i):
        g = torch.Generator().manual_seed(200 + i)
        # a cached-supervision batch (already in the trainer's frame); new loss masks every step: new lengths
        batch = {
            "input_ids": torch.randint(0, V - 1, (B, T), generator=g),
            "attention_mask": torch.ones(B, T, dtype=torch.long),
            "loss_mask": (torch.rand(B, T, generator=g) < 0.5 + 0.4 * torch.rand((), generator=g)).long(),
            "aux_hidden_states": torch.randn(B, T, 3 * H, generator=g).to(torch.bfloat16),
            "target_logits": torch.randn(B, T, V, generator=g).to(torch.bfloat16),
        }
        masks = _host_plan_masks(batch, shifted=True)
        inputs = _to_device(batch, device)
        if plan_from_host:
            plan = trainer.build_peagle_plan(*masks, device=device)  # what the P-EAGLE strategy does
        else:
            plan = trainer.build_peagle_plan(inputs["loss_mask"], inputs["attention_mask"])
        lengths.extend(unit.anchor.numel() for unit in plan.units)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            run_partitioned_step(trainer, plan, inputs)
        _optimizer_step(params, optimizer)

    result = _count_syncs(step, steps)
    result["flex_buckets_seen"] = sorted({flex_bucket_length(n) for n in lengths})
    return result


def _dynamo_counters():
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in counters.items() if v}


CASES = {
    # name: (function, kwargs); the recipe's routes first, then the device-input variants for comparison
    "eagle3_recipe": (eagle3_case, {}),
    "peagle_recipe_s1": (peagle_case, {"partitions": 1}),
    "peagle_recipe_s2": (peagle_case, {"partitions": 2}),
    "eagle3_seq_lens_on_cuda": (eagle3_case, {"seq_lens_on_host": False}),
    "peagle_plan_from_cuda_masks_s2": (peagle_case, {"partitions": 2, "plan_from_host": False}),
}
GOALS = {"eagle3_recipe": 0, "peagle_recipe_s1": 1, "peagle_recipe_s2": 1}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        raise SystemExit("gpu_census needs a CUDA device (sync debug mode is a CUDA feature)")
    with PartialResults("census", args.device, cases={}, goals=GOALS) as out:
        for name, (fn, kwargs) in CASES.items():
            try:
                result = fn(args.device, args.steps, **kwargs)
            except Exception as exc:  # one broken case must not hide the others
                result = {"error": f"{type(exc).__name__}: {exc}"}
            if name in GOALS and "max_syncs_per_step" in result:
                result["meets_goal"] = result["max_syncs_per_step"] <= GOALS[name]
            out.payload["cases"][name] = result
            out.update(dynamo_counters=_dynamo_counters())
            print(f"{name}: {result}", flush=True)


if __name__ == "__main__":
    main()
