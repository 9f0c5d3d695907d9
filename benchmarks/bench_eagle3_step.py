"""One full EAGLE-3 training step: target forward + TTT unroll + backward, tokens/s and peak memory.

Table 1 runs the whole step on a small Llama (default: H=256, 4 target layers, T=512, B=2, ttt=4,
V=8192, Vd=2048) with the TTT attention ``eager`` (reference) vs ``lean`` (and on CUDA ``flex``: compiled
FlexAttention, fused loss only), and the step loss ``reference``
vs ``fused`` (when ``eagle_ext.ops.linear_kl`` imports). Ratios are against eager + reference.

Table 2 compares ttt = 1 with ttt = 7 (lean attention, Vd = V so the supervision dominates): peak memory
of the whole step, and the bytes of the distinct vocab-wide tensors (last dim Vd, or >= Vd x H elements)
autograd keeps for backward, counted with ``torch.autograd.graph.saved_tensors_hooks``. The fused loss
reads one step-0 target with a row offset and recomputes in backward, so its vocab-wide bytes do not grow
with the unroll; the reference loss keeps fp32 [B, T, Vd] logits per step.

Table 3 isolates the TTT attention of the last unrolled step (k = ttt-1) forward + backward at a longer
row (eager, lean, and on CUDA flex), where the eager kernel's ``[B, Hq, T, T + k]`` fp32 scores dominate.

Each CPU case runs in a fresh process (``benchmarks._common.measure``); peak memory is the growth of the
resident high-water mark over the inputs.

Usage: ``python -m benchmarks.bench_eagle3_step [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from benchmarks._common import PartialResults, fmt_bytes, measure, print_table

BASELINE = ("eager", "reference")
ATTENTION_IMPLS = ("eager", "lean")


def _step_case(*, attn, loss_impl, hidden, layers, seq, batch, ttt, vocab, draft_vocab, where, saved_hook=None):
    """Build target, draft and batch; return the closure that runs one training step (under the
    saved-tensor hook ``saved_hook`` when given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from eagle_ext.eagle3 import Eagle3TrainerModule
    from eagle_ext.models import DraftModel, TargetCapture

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128),
                         max_position_embeddings=max(4096, seq))
    target = TargetCapture(LlamaForCausalLM(config).to(where), aux_layer_ids=[0, layers // 2, layers - 1])
    draft = DraftModel.from_target_config(config, draft_vocab, attn_implementation=attn).to(where)
    draft.copy_embeddings_from(target)
    ids = torch.randperm(vocab)[:draft_vocab]
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[ids] = True
    draft.set_vocab_mapping(ids)
    trainer = Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=ttt,
                                  loss_impl=loss_impl).to(where)
    input_ids = torch.randint(0, vocab, (batch, seq), device=where)
    attention_mask = torch.ones(batch, seq, dtype=torch.long, device=where)
    loss_mask = torch.ones(batch, seq, dtype=torch.long, device=where)

    def step():
        out = target.generate_batch(input_ids, attention_mask, loss_mask)
        if saved_hook is None:
            metrics = trainer(**out.to_trainer_inputs())
        else:
            with torch.autograd.graph.saved_tensors_hooks(saved_hook, lambda x: x):
                metrics = trainer(**out.to_trainer_inputs())
        metrics.loss.backward()
        trainer.zero_grad(set_to_none=True)

    return step


def _vocab_wide_saved_bytes(*, loss_impl, ttt, shape, where) -> int:
    """Bytes of the distinct vocab-wide storages autograd saves for backward during one training step."""
    storages = {}
    vd, h = shape["draft_vocab"], shape["hidden"]

    def pack(x):
        if x.dim() >= 1 and (x.shape[-1] == vd or x.numel() >= vd * h):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    _step_case(attn="lean", loss_impl=loss_impl, where=where, saved_hook=pack, **{**shape, "ttt": ttt})()
    return sum(storages.values())


def _attention_case(*, implementation, batch, heads, kv_heads, seq, head_dim, steps, where):
    """One TTT attention call at step ``steps`` (cache K_0..K_steps), forward + backward."""
    from eagle_ext.models.attention import ttt_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, seq, head_dim, generator=g).to(where).requires_grad_()
    keys = [torch.randn(batch, kv_heads, seq, head_dim, generator=g).to(where).requires_grad_() for _ in range(steps + 1)]
    values = [torch.randn(batch, kv_heads, seq, head_dim, generator=g).to(where).requires_grad_() for _ in range(steps + 1)]

    def run():
        out = ttt_attention(q, keys, values, implementation=implementation)
        out.sum().backward()
        for t in [q, *keys, *values]:
            t.grad = None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = args.device
    if args.quick:
        shape = dict(hidden=128, layers=4, seq=128, batch=2, ttt=3, vocab=2048, draft_vocab=512)
        attn_shape = dict(batch=1, heads=4, kv_heads=2, seq=512, head_dim=32, steps=3)
        repeat = 1
    else:
        shape = dict(hidden=256, layers=4, seq=512, batch=2, ttt=4, vocab=8192, draft_vocab=2048)
        attn_shape = dict(batch=1, heads=8, kv_heads=2, seq=2048, head_dim=64, steps=3)
        repeat = 5
    losses = ["reference"]
    if importlib.util.find_spec("eagle_ext.ops.linear_kl") is not None:
        losses.append("fused")

    tokens = shape["batch"] * shape["seq"]
    name = "eagle3_step_quick" if args.quick else "eagle3_step"
    # every measurement is written as it lands: a run stopped early (SIGINT) keeps what it measured
    with PartialResults(name, device, shape=shape, attention_shape=attn_shape, repeat=repeat, step=[],
                        ttt_memory=[], attention=[], tables=[]) as out:
        _measure_all(out, device, shape, attn_shape, repeat, losses, tokens)


def _measure_all(out, device, shape, attn_shape, repeat, losses, tokens):
    results = {}
    cases = [(attn, loss_impl) for loss_impl in losses for attn in ("eager", "lean")]
    if device == "cuda" and "fused" in losses:
        cases.append(("flex", "fused"))  # compiled FlexAttention TTT (compile time in the warm-up call)
    for attn, loss_impl in cases:
        results[(attn, loss_impl)] = measure(_step_case, device=device, warmup=1, repeat=repeat, attn=attn,
                                             loss_impl=loss_impl, where=device, **shape)
        out.add("step", {"attention": attn, "loss": loss_impl, **results[(attn, loss_impl)]})
    base = results[BASELINE]
    rows = []
    for (attn, loss_impl), r in results.items():
        rows.append({
            "attention": attn, "loss": loss_impl, "step s": r["seconds"], "tokens/s": tokens / r["seconds"],
            "peak memory": fmt_bytes(r["peak_bytes"]),
            "speed vs eager+ref": base["seconds"] / r["seconds"],
            "memory vs eager+ref": r["peak_bytes"] / max(base["peak_bytes"], 1),
        })
    title = (f"EAGLE-3 train step ({device}): H={shape['hidden']}, {shape['layers']} target layers, "
             f"B={shape['batch']}, T={shape['seq']}, ttt={shape['ttt']}, V={shape['vocab']}, Vd={shape['draft_vocab']}")
    step_table = print_table(rows, ["attention", "loss", "step s", "tokens/s", "peak memory", "speed vs eager+ref",
                                    "memory vs eager+ref"], title)

    mem_shape = {**shape, "draft_vocab": shape["vocab"]}
    mem_results, mem_rows = {}, []
    for loss_impl in losses:
        for ttt in (1, 7):
            r = measure(_step_case, device=device, warmup=1, repeat=1, attn="lean", loss_impl=loss_impl,
                        where=device, **{**mem_shape, "ttt": ttt})
            r["vocab_wide_saved_bytes"] = _vocab_wide_saved_bytes(loss_impl=loss_impl, ttt=ttt, shape=mem_shape,
                                                                  where=device)
            mem_results[(loss_impl, ttt)] = r
            out.add("ttt_memory", {"loss": loss_impl, "ttt": ttt, **r})
        one, seven = mem_results[(loss_impl, 1)], mem_results[(loss_impl, 7)]
        mem_rows.append({
            "loss": loss_impl, "peak ttt=1": fmt_bytes(one["peak_bytes"]), "peak ttt=7": fmt_bytes(seven["peak_bytes"]),
            "peak 7/1": seven["peak_bytes"] / max(one["peak_bytes"], 1),
            "vocab-wide saved ttt=1": fmt_bytes(one["vocab_wide_saved_bytes"]),
            "vocab-wide saved ttt=7": fmt_bytes(seven["vocab_wide_saved_bytes"]),
            "vocab-wide 7/1": seven["vocab_wide_saved_bytes"] / max(one["vocab_wide_saved_bytes"], 1),
        })
    mem_title = (f"TTT memory, ttt=1 vs ttt=7 ({device}, lean attention): H={shape['hidden']}, B={shape['batch']}, "
                 f"T={shape['seq']}, V=Vd={mem_shape['draft_vocab']}")
    mem_table = print_table(mem_rows, ["loss", "peak ttt=1", "peak ttt=7", "peak 7/1", "vocab-wide saved ttt=1",
                                       "vocab-wide saved ttt=7", "vocab-wide 7/1"], mem_title)

    attn_results = {}
    for impl in ATTENTION_IMPLS + (("flex",) if device == "cuda" else ()):
        attn_results[impl] = measure(_attention_case, device=device, warmup=1, repeat=repeat, implementation=impl,
                                     where=device, **attn_shape)
        out.add("attention", {"attention": impl, **attn_results[impl]})
    a_base = attn_results["eager"]
    attn_rows = [{
        "attention": impl, "fwd+bwd ms": 1e3 * r["seconds"], "peak memory": fmt_bytes(r["peak_bytes"]),
        "speed vs eager": a_base["seconds"] / r["seconds"], "memory vs eager": r["peak_bytes"] / max(a_base["peak_bytes"], 1),
    } for impl, r in attn_results.items()]
    a = attn_shape
    attn_title = (f"TTT attention at step k={a['steps']} ({device}): B={a['batch']}, Hq={a['heads']}, Hkv={a['kv_heads']}, "
                  f"T={a['seq']}, D={a['head_dim']}")
    attn_table = print_table(attn_rows, ["attention", "fwd+bwd ms", "peak memory", "speed vs eager", "memory vs eager"],
                             attn_title)

    out.update(tables=[step_table, mem_table, attn_table])


if __name__ == "__main__":
    main()
