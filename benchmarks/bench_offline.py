"""Offline cache: precompute throughput, and a training epoch from the cache vs the live (online) path.

Set-up: a small Llama target (default H=256, 4 layers, V=8192, saved with ``save_pretrained`` plus the demo
tokenizer), demo chats padded to T=256, a Vd=2048 draft vocabulary.

Table 1 runs ``precompute_cache`` twice (bf16 cache): lossless ``target_probs`` and top-64. It reports
samples/s and MB/s written (the target pass, the distribution, the top-k and the checksummed shard writes;
loading excluded) and the bytes a sample costs on disk.

Table 2 runs the same EAGLE-3 draft (same initial weights, ttt=3, AdamW) over the same batches, in the same
process, once live (``build_dataloader`` -> ``target.generate_batch`` -> trainer) and once cached
(``build_cached_dataloader`` -> trainer; the batches are read from the memory-mapped shards, padded and
cast), forward + backward + optimizer step. Tokens/s counts real (unpadded) tokens and padded row slots.

Usage: ``python -m benchmarks.bench_offline [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

import torch

from benchmarks._common import print_table, time_fn, write_results


def _workspace(root: str, *, vocab: int, hidden: int, layers: int, conversations: int) -> tuple[str, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from eagle_ext.testing.corpus import chat_conversations, corpus_words, write_jsonl
    from eagle_ext.testing.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(corpus_words())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128),
                         max_position_embeddings=4096, tie_word_embeddings=False)
    target = os.path.join(root, "target")
    LlamaForCausalLM(config).save_pretrained(target)
    tok.save_pretrained(target)
    data = os.path.join(root, "chats.jsonl")
    write_jsonl(data, chat_conversations(conversations, seed=0))
    return target, data


def _epoch_runner(trainer, batches, target=None):
    """One pass over ``batches`` (a list, materialised up front for live; a loader for cached): forward,
    backward and AdamW step per batch."""
    optimizer = torch.optim.AdamW([p for p in trainer.parameters() if p.requires_grad], lr=1e-4)
    device = next(trainer.parameters()).device

    def run():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = target.generate_batch(**batch).to_trainer_inputs() if target is not None else batch
            metrics = trainer(**inputs)
            optimizer.zero_grad(set_to_none=True)
            metrics.loss.backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = {"vocab": 8192, "hidden": 256, "layers": 4, "conversations": 32 if args.quick else 64}
    seq, batch, shard, vd, aux, ttt = 256, 8, 32, 2048, (0, 2, 3), 3

    from transformers import AutoTokenizer, LlamaForCausalLM

    from eagle_ext.data.loader import build_dataloader
    from eagle_ext.eagle3 import Eagle3TrainerModule
    from eagle_ext.models import DraftModel, TargetCapture
    from eagle_ext.offline import (
        build_cached_dataloader,
        load_cached_embeddings,
        load_cached_target_config,
        load_cached_token_mapping,
        precompute_cache,
    )

    with tempfile.TemporaryDirectory(prefix="bench_offline_") as root:
        target_dir, data = _workspace(root, **shape)
        common = dict(target_model=target_dir, input_data=data, seq_length=seq, draft_vocab_size=vd, batch_size=batch,
                      shard_size=shard, dtype="bf16", aux_layer_ids=aux, device=args.device, show_progress=False)
        rows1 = []
        caches = {}
        for label, topk in (("lossless", 0), ("top-64", 64)):
            out = os.path.join(root, f"cache_{topk}")
            s = precompute_cache(output_dir=out, target_probs_topk=topk, **common)
            caches[label] = out
            rows1.append({"cache": label, "samples": s["samples_written"], "shards": s["num_shards"],
                          "seconds": s["seconds"], "samples/s": s["samples_per_s"], "MB/s written": s["mb_per_s"],
                          "KiB/sample": s["bytes_written"] / 1024 / s["samples_written"]})
        t1 = print_table(rows1, ["cache", "samples", "shards", "seconds", "samples/s", "MB/s written", "KiB/sample"],
                         title=f"precompute (bf16 cache, H={shape['hidden']}, L={shape['layers']}, V={shape['vocab']}, "
                               f"Vd={vd}, T={seq}, B={batch}, {device.type})")

        cache = caches["lossless"]
        ids, mask = load_cached_token_mapping(cache)
        torch.manual_seed(0)
        draft = DraftModel.from_target_config(load_cached_target_config(cache), vd)
        draft.copy_embeddings_from(load_cached_embeddings(cache))
        draft.set_vocab_mapping(ids)
        base = Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=ttt).to(device)

        tok = AutoTokenizer.from_pretrained(target_dir)
        live_loader = build_dataloader(data, tok, seq, batch, shuffle=False, show_progress=False)
        live_batches = list(live_loader)
        target = TargetCapture(LlamaForCausalLM.from_pretrained(target_dir).to(device), aux_layer_ids=list(aux))
        cached_loader = build_cached_dataloader(cache, batch, shuffle=False, show_progress=False)
        real = sum(int(b["attention_mask"].sum()) for b in live_batches)
        slots = sum(b["attention_mask"].numel() for b in live_batches)

        cases = {
            "live (target forward + step)": _epoch_runner(copy.deepcopy(base), live_batches, target),
            "cached (read shards + step)": _epoch_runner(copy.deepcopy(base), cached_loader),
        }
        rows2 = []
        for name, run in cases.items():
            seconds = time_fn(run, device=device, warmup=1, repeat=3)
            rows2.append({"path": name, "batches": len(live_batches), "seconds/epoch": seconds,
                          "real tokens/s": real / seconds, "padded tokens/s": slots / seconds})
        for row in rows2:
            row["speed-up"] = rows2[0]["seconds/epoch"] / row["seconds/epoch"]
        t2 = print_table(rows2, ["path", "batches", "seconds/epoch", "real tokens/s", "padded tokens/s", "speed-up"],
                         title=f"training epoch, same draft and batches (ttt={ttt}, AdamW, {device.type})")

    write_results("offline", {"shape": {**shape, "seq_length": seq, "batch_size": batch, "shard_size": shard,
                                        "draft_vocab_size": vd, "ttt_steps": ttt, "cache_dtype": "bf16"},
                              "precompute": rows1, "training": rows2, "tables": [t1, t2]}, device)


if __name__ == "__main__":
    main()
