"""What the recipe's loop costs: train-step tokens/s of ``eagle-ext train`` vs a bare loop over the same trainer
module (same data, target, draft, optimiser), side by side in one run.

The bare loop is what README's quick start writes by hand: batch -> target capture -> trainer forward ->
backward -> clip -> AdamW -> scheduler. The recipe adds its bookkeeping (metric windows kept on the device,
no_sync contexts, logging, the progress bar). Both are timed the same way, wall clock over windows of
``--window`` optimiser steps after one warm-up window, and the medians are compared. Target: the loop costs < 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from benchmarks._common import print_table, write_results


def _inputs(root: str, hidden: int, layers: int, conversations: int) -> list[str]:
    from eagle_ext.testing import chat_conversations, save_tiny_target, write_jsonl

    target = save_tiny_target(os.path.join(root, "target"), hidden_size=hidden, num_layers=layers, seed=0)
    data = os.path.join(root, "train.jsonl")
    write_jsonl(data, chat_conversations(conversations, seed=0))
    return [f"target.name_or_path={target}", f"data.train_path={data}", "data.eval_path=null",
            f"data.cache_dir={os.path.join(root, 'cache')}", "train.progress=false", "train.tensorboard=false",
            "checkpoint.every_steps=null", "checkpoint.keep=1"]


def bare_loop(cfg, steps: int, window: int) -> list[float]:
    """tokens/s per window of a hand-written loop over the recipe's own building blocks."""
    from transformers import AutoConfig, AutoTokenizer

    from eagle_ext.data import load_or_build_eagle3_token_mapping
    from eagle_ext.models import TargetCapture
    from eagle_ext.train.builders import build_draft, build_loaders, build_trainer, load_target
    from eagle_ext.train.distributed import init_distributed
    from eagle_ext.train.optim import build_optimizer

    ctx = init_distributed("cpu")
    torch.manual_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.target.name_or_path)
    loader, _ = build_loaders(cfg, tokenizer, ctx, show_progress=False)
    target_config = AutoConfig.from_pretrained(cfg.target.name_or_path)
    ids, mask = load_or_build_eagle3_token_mapping(loader, target_config.vocab_size, cfg.data.draft_vocab_size,
                                                   show_progress=False)
    hf = load_target(cfg, ctx.device)
    draft = build_draft(cfg, target_config, cfg.data.draft_vocab_size)
    draft.copy_embeddings_from(hf)
    draft.set_vocab_mapping(ids)
    trainer = build_trainer(cfg, draft, ids, mask, None)
    target = TargetCapture(hf, aux_layer_ids=cfg.target.aux_layer_ids)
    optimizer, scheduler = build_optimizer(trainer.parameters(), cfg.optim.lr, steps)
    params = [p for p in trainer.parameters() if p.requires_grad]
    rates, tokens, clock, step, epoch = [], 0, time.perf_counter(), 0, 0
    while step < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            with torch.no_grad():
                captured = target.generate_batch(**batch)
            metrics = trainer(**captured.to_trainer_inputs())
            metrics.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if step % window == 0:
                now = time.perf_counter()
                rates.append(tokens / (now - clock))
                tokens, clock = 0, now
            if step == steps:
                break
        epoch += 1
    return rates


def recipe_loop(cfg) -> list[float]:
    from eagle_ext.train.loop import run_training

    run_training(cfg)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        return [r["tokens_per_s"] for r in map(json.loads, f) if r["split"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternate bare / recipe this many times")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from eagle_ext.train.config import load_config

    config = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "configs", "tiny_cpu_eagle3.yaml")
    with tempfile.TemporaryDirectory() as root:
        base = _inputs(root, args.hidden, args.layers, args.conversations)
        common = [*base, f"train.max_steps={args.steps}", f"train.log_every_steps={args.window}",
                  "data.draft_vocab_size=128", "optim.warmup_ratio=0.1"]
        bare_rates, recipe_rates = [], []
        for r in range(args.rounds):
            cfg = load_config(config, [*common, f"output_dir={os.path.join(root, f'recipe{r}')}"])
            bare_rates += bare_loop(cfg, args.steps, args.window)[1:]  # the first window warms up
            recipe_rates += recipe_loop(cfg)[1:]
        bare, recipe = statistics.median(bare_rates), statistics.median(recipe_rates)
        tokens = cfg.train.micro_batch_size * cfg.data.packed_sequence_size
    rows = [
        {"loop": "bare trainer module", "tokens_per_s": bare, "vs_bare": 1.0, "windows": len(bare_rates)},
        {"loop": "eagle-ext train", "tokens_per_s": recipe, "vs_bare": recipe / bare, "windows": len(recipe_rates)},
    ]
    title = (f"EAGLE-3 train step, recipe vs bare loop (cpu): target H={args.hidden}, {args.layers} layers, "
             f"{tokens} tokens per packed micro-batch, ttt={cfg.eagle3.ttt_steps}, median of {args.window}-step windows")
    table = print_table(rows, ["loop", "tokens_per_s", "vs_bare", "windows"], title=title)
    print(f"loop cost: {100 * (1 - recipe / bare):.1f}% (target < 5%)")
    write_results("recipe", {"rows": rows, "table": table, "args": vars(args),
                             "bare_windows": bare_rates, "recipe_windows": recipe_rates})


if __name__ == "__main__":
    main()
