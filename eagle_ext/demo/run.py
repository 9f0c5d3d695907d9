"""``python -m eagle_ext demo``: train EAGLE-3 and P-EAGLE drafts for a tiny target on CPU, nothing downloaded.

In the order it runs (every step seeded: two runs with the same thread count print the same numbers):

1. a synthetic chat corpus (:mod:`eagle_ext.demo.corpus`) written as JSONL, plus a held-out eval split;
2. a word-level tokenizer with a ChatML template (:mod:`eagle_ext.demo.tokenizer`);
3. a tiny Llama target pre-trained on packed rows of the corpus, cached in the output directory
   (:mod:`eagle_ext.demo.target`);
4. EAGLE-3: ``build_eagle3_dataloader`` (packed best-fit rows), the draft vocabulary, target capture, a
   one-layer draft trained with ``ttt_steps`` TTT steps; loss, accuracy and tau_sim logged per window;
5. P-EAGLE: a two-layer parallel-drafting draft trained on padded rows with COD and exact sequence
   partitions (P-EAGLE rows are single documents, so it reads the padded layout);
6. ``metrics.jsonl``, ``curves.png``, both drafts (safetensors + ``config.json``), ``summary.json`` and a
   summary table of held-out metrics before and after training.

Output directory layout: ``data/{train,eval}.jsonl``, ``cache/`` (tokenised data, draft vocab),
``target/`` (pre-trained target + tokenizer), ``eagle3_draft/``, ``peagle_draft/``, ``metrics.jsonl``,
``curves.png``, ``summary.json``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from eagle_ext._io import write_json
from eagle_ext.data import (
    build_eagle3_dataloader,
    count_supervised_tokens,
    load_or_build_eagle3_token_mapping,
)
from eagle_ext.data.fingerprint import digest
from eagle_ext.demo.checkpoint import save_draft
from eagle_ext.demo.corpus import chat_conversations, corpus_words, write_jsonl
from eagle_ext.demo.optim import build_optimizer
from eagle_ext.demo.report import MetricsLog, format_table, plot_curves
from eagle_ext.demo.target import demo_target_config, evaluate_target, load_or_pretrain_target
from eagle_ext.demo.tokenizer import MASK_TOKEN, build_demo_tokenizer
from eagle_ext.eagle3 import Eagle3TrainerModule, simulated_accept_length
from eagle_ext.models import Eagle3DraftModel, Eagle3TargetModel
from eagle_ext.peagle import PEagleTrainerModule, generate_cod_sample_indices, run_partitioned_step

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from eagle_ext.data import Eagle3DataLoader

__all__ = ["DemoConfig", "QUICK", "run_demo", "run_pipeline"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and steps of one demo run (defaults: the full demo, a few minutes on a 2-core CPU)."""

    seed: int = 0
    num_conversations: int = 1500
    eval_conversations: int = 48
    # target
    target_hidden_size: int = 128
    target_layers: int = 4
    aux_layer_ids: tuple[int, int, int] = (0, 2, 3)  # low, middle, last: 4 layers are too shallow for the default
    target_steps: int = 250
    target_lr: float = 3e-3
    # data
    packed_width: int = 128  # packed best-fit rows: target pre-training and EAGLE-3
    packed_batch_size: int = 8
    seq_length: int = 128  # padded rows: P-EAGLE and the target's held-out loss
    draft_vocab_size: int = 128
    # EAGLE-3
    ttt_steps: int = 4
    eagle3_steps: int = 200
    eagle3_lr: float = 3e-3
    # P-EAGLE
    peagle_layers: int = 2
    num_depths: int = 4
    sequence_partitions: int = 2
    peagle_batch_size: int = 4
    peagle_steps: int = 150
    peagle_lr: float = 3e-3
    # logging
    log_every: int = 25
    eval_batches: int = 4
    show_progress: bool = True


#: ``--quick``: about half a minute on a 2-core CPU.
QUICK = replace(DemoConfig(), num_conversations=500, target_steps=50, eagle3_steps=40, peagle_steps=20,
                log_every=10, eval_batches=2)


@dataclass
class DemoData:
    """The tokenizer and the loaders of every phase (train and held-out, packed and padded)."""

    tokenizer: PreTrainedTokenizerFast
    train_packed: Eagle3DataLoader  # packed best-fit rows: target pre-training, EAGLE-3
    train_padded: Eagle3DataLoader  # padded rows: P-EAGLE
    eval_packed: Eagle3DataLoader
    eval_padded: Eagle3DataLoader
    data_key: str  # identity of the target's pre-training data (keys its cache)


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def forever(loader) -> Iterator[dict]:
    """Batches of ``loader`` epoch after epoch, reshuffled per epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def prepare_data(cfg: DemoConfig, out: str) -> DemoData:
    """Write the corpus, build the tokenizer and every dataloader the phases read."""
    rows = chat_conversations(cfg.num_conversations + cfg.eval_conversations, seed=cfg.seed)
    train_path, eval_path = os.path.join(out, "data", "train.jsonl"), os.path.join(out, "data", "eval.jsonl")
    write_jsonl(train_path, rows[: cfg.num_conversations])
    write_jsonl(eval_path, rows[cfg.num_conversations:])
    tokenizer = build_demo_tokenizer(corpus_words())
    common = {"cache_dir": os.path.join(out, "cache"), "show_progress": False, "shuffle_seed": cfg.seed}

    def loader(path, batch_size, packed, shuffle=True):
        return build_eagle3_dataloader(
            path, tokenizer, cfg.seq_length, batch_size, shuffle=shuffle,
            packed_sequence_size=cfg.packed_width if packed else 0, packing_strategy="best_fit", **common,
        )

    return DemoData(
        tokenizer=tokenizer,
        train_packed=loader(train_path, cfg.packed_batch_size, packed=True),
        train_padded=loader(train_path, cfg.peagle_batch_size, packed=False),
        eval_packed=loader(eval_path, cfg.packed_batch_size, packed=True, shuffle=False),
        eval_padded=loader(eval_path, cfg.peagle_batch_size, packed=False, shuffle=False),
        # what shaped the target's pre-training batches (the loader's own fingerprint holds the file's path)
        data_key=digest({"corpus": _file_sha256(train_path), "vocab": tokenizer.get_vocab(),
                         "template": tokenizer.chat_template, "width": cfg.packed_width,
                         "batch_size": cfg.packed_batch_size, "seed": cfg.seed}),
    )


# ---------------------------------------------------------------------------------------------- EAGLE-3


def summarize_eagle3(steps: list) -> dict:
    """Loss (mean over steps), accuracy and tau_sim (from summed counts) of a list of Eagle3StepMetrics."""
    valid = sum(int(m.valid_tokens) for m in steps)
    correct = sum(float(m.accuracy) * int(m.valid_tokens) for m in steps)
    hits = sum(m.step_prefix_hits for m in steps)
    step_valid = sum(m.step_valid for m in steps)
    return {
        "loss": sum(float(m.loss) for m in steps) / len(steps),
        "accuracy": correct / max(valid, 1),
        "tau_sim": simulated_accept_length(hits, step_valid),
    }


@torch.no_grad()
def evaluate_eagle3(trainer: Eagle3TrainerModule, batches: list[dict]) -> dict:
    """:func:`summarize_eagle3` of the trainer on fixed held-out batches (already captured from the target)."""
    return summarize_eagle3([trainer(**inputs) for inputs in batches])


def train_eagle3(cfg: DemoConfig, target: Eagle3TargetModel, data: DemoData, selected_ids: torch.Tensor,
                 selected_mask: torch.Tensor, log: MetricsLog) -> tuple[Eagle3DraftModel, dict, dict]:
    """Train the one-layer EAGLE-3 draft; returns ``(draft, eval before, eval after)``."""
    torch.manual_seed(cfg.seed)
    draft = Eagle3DraftModel.from_target_config(target.config, cfg.draft_vocab_size)
    draft.copy_embeddings_from(target)
    draft.set_vocab_mapping(selected_ids)
    trainer = Eagle3TrainerModule(draft, selected_token_ids=selected_ids, selected_token_mask=selected_mask,
                                  ttt_steps=cfg.ttt_steps)
    optimizer, scheduler = build_optimizer(trainer.parameters(), cfg.eagle3_lr, cfg.eagle3_steps)
    eval_inputs = [target.generate_batch(**b).to_trainer_inputs() for b in islice(data.eval_packed, cfg.eval_batches)]
    before = evaluate_eagle3(trainer, eval_inputs)
    log.write({"phase": "eagle3", "split": "eval", "step": 0, **before})

    batches, window = forever(data.train_packed), []
    bar = tqdm(range(1, cfg.eagle3_steps + 1), desc="EAGLE-3", unit="step", mininterval=0.5,
               disable=not cfg.show_progress)
    for step in bar:
        metrics = trainer(**target.generate_batch(**next(batches)).to_trainer_inputs())
        optimizer.zero_grad(set_to_none=True)
        metrics.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        window.append(replace(metrics, loss=metrics.loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.eagle3_steps:
            record = {"phase": "eagle3", "split": "train", "step": step, "lr": scheduler.get_last_lr()[0],
                      **summarize_eagle3(window)}
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                            tau=f"{record['tau_sim']:.2f}")
            window = []
    after = evaluate_eagle3(trainer, eval_inputs)
    log.write({"phase": "eagle3", "split": "eval", "step": cfg.eagle3_steps, **after})
    return draft, before, after


# ---------------------------------------------------------------------------------------------- P-EAGLE


def summarize_peagle(steps: list) -> dict:
    """Loss (mean over steps), accuracy and per-depth accuracy of a list of PEagleStepMetrics."""
    depth_correct = sum(m.depth_correct for m in steps)
    depth_valid = sum(m.depth_valid for m in steps)
    return {
        "loss": sum(float(m.loss) for m in steps) / len(steps),
        "accuracy": int(depth_correct.sum()) / max(int(depth_valid.sum()), 1),
        "depth_accuracy": (depth_correct.double() / depth_valid.clamp_min(1).double()).tolist(),
    }


def peagle_inputs(target: Eagle3TargetModel, batch: dict) -> dict:
    """The P-EAGLE trainer's batch keywords from one padded batch of the loader."""
    captured = target.generate_batch(**batch)
    return {"input_ids": captured.input_ids, "attention_mask": captured.attention_mask,
            "loss_mask": captured.loss_mask, "aux_hidden_states": captured.aux_hidden_states,
            "target_logits": captured.target_logits}


def full_cod_indices(inputs: dict, num_depths: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every chain at every depth (down-sampling ratios 1): the eval set of P-EAGLE."""
    length = inputs["loss_mask"].shape[1]
    return [
        generate_cod_sample_indices(length, loss, num_depths, 1.0, 1.0,
                                    document_ids=torch.where(attention != 0, 0, -1), seed=0)
        for loss, attention in zip(inputs["loss_mask"], inputs["attention_mask"])
    ]


@torch.no_grad()
def evaluate_peagle(trainer: PEagleTrainerModule, batches: list[tuple[dict, list]]) -> dict:
    """:func:`summarize_peagle` of the trainer on fixed held-out ``(inputs, cod_indices)`` pairs."""
    return summarize_peagle([trainer(**inputs, cod_indices=cod) for inputs, cod in batches])


def train_peagle(cfg: DemoConfig, target: Eagle3TargetModel, data: DemoData, selected_ids: torch.Tensor,
                 selected_mask: torch.Tensor, log: MetricsLog) -> tuple[Eagle3DraftModel, dict, dict]:
    """Train the parallel-drafting draft with COD and sequence partitions; ``(draft, eval before, after)``."""
    torch.manual_seed(cfg.seed)
    mask_token_id = data.tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    draft = Eagle3DraftModel.from_target_config(target.config, cfg.draft_vocab_size,
                                                num_hidden_layers=cfg.peagle_layers, parallel_drafting=True,
                                                mask_token_id=mask_token_id)
    draft.copy_embeddings_from(target)
    draft.set_vocab_mapping(selected_ids)
    trainer = PEagleTrainerModule(draft, selected_token_ids=selected_ids, selected_token_mask=selected_mask,
                                  num_depths=cfg.num_depths, mask_token_id=mask_token_id,
                                  sequence_partitions=cfg.sequence_partitions,
                                  generator=torch.Generator().manual_seed(cfg.seed))
    optimizer, scheduler = build_optimizer(trainer.parameters(), cfg.peagle_lr, cfg.peagle_steps)
    eval_set = []
    for batch in islice(data.eval_padded, cfg.eval_batches):
        inputs = peagle_inputs(target, batch)
        eval_set.append((inputs, full_cod_indices(inputs, cfg.num_depths)))
    before = evaluate_peagle(trainer, eval_set)
    log.write({"phase": "peagle", "split": "eval", "step": 0, **before})

    batches, window = forever(data.train_padded), []
    bar = tqdm(range(1, cfg.peagle_steps + 1), desc="P-EAGLE", unit="step", mininterval=0.5,
               disable=not cfg.show_progress)
    for step in bar:
        inputs = peagle_inputs(target, next(batches))
        plan = trainer.build_peagle_plan(inputs["loss_mask"], inputs["attention_mask"])
        optimizer.zero_grad(set_to_none=True)
        metrics = run_partitioned_step(trainer, plan, inputs)  # forward + backward per segment
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        window.append(metrics)
        if step % cfg.log_every == 0 or step == cfg.peagle_steps:
            record = {"phase": "peagle", "split": "train", "step": step, "lr": scheduler.get_last_lr()[0],
                      "segments": len(plan), **summarize_peagle(window)}
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
            window = []
    after = evaluate_peagle(trainer, eval_set)
    log.write({"phase": "peagle", "split": "eval", "step": cfg.peagle_steps, **after})
    return draft, before, after


# ---------------------------------------------------------------------------------------------- the job


def run_pipeline(cfg: DemoConfig, output_dir: str) -> dict:
    """Run every phase of the demo with ``cfg`` into ``output_dir``; returns the summary (also written to
    ``summary.json``)."""
    out = os.path.abspath(output_dir)
    os.makedirs(out, exist_ok=True)
    seconds, clock = {}, time.perf_counter()

    def lap(phase: str) -> str:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(now - clock, 1)
        clock = now
        return f"({seconds[phase]:.1f} s)"

    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, out)
    vocab = len(data.tokenizer)
    print(f"corpus: {cfg.num_conversations} train / {cfg.eval_conversations} eval chats; "
          f"tokenizer: {vocab} words; {data.train_packed.stats['num_rows']} packed rows of {cfg.packed_width} "
          f"(padding {100 * data.train_packed.stats['padding_fraction']:.1f}%) {lap('data')}")

    config = demo_target_config(vocab, hidden_size=cfg.target_hidden_size, num_hidden_layers=cfg.target_layers)
    model, info = load_or_pretrain_target(
        os.path.join(out, "target"), config, forever(data.train_packed), steps=cfg.target_steps, lr=cfg.target_lr,
        data_key=data.data_key, tokenizer=data.tokenizer, seed=cfg.seed, show_progress=cfg.show_progress,
    )
    target_eval = evaluate_target(model, list(data.eval_padded))
    print(f"target: {'loaded from cache' if info['cached'] else f'pre-trained {cfg.target_steps} steps'}; "
          f"held-out LM loss {target_eval['loss']:.3f}, greedy accuracy on assistant tokens "
          f"{target_eval['assistant_accuracy']:.3f} {lap('target')}")
    target = Eagle3TargetModel(model, aux_layer_ids=list(cfg.aux_layer_ids))

    specials = [data.tokenizer.pad_token_id, data.tokenizer.eos_token_id]
    selected_ids, selected_mask = load_or_build_eagle3_token_mapping(
        data.train_packed, vocab, cfg.draft_vocab_size, specials,
        cache_path=os.path.join(out, "cache", "draft_vocab.safetensors"), show_progress=False,
    )
    counts = count_supervised_tokens(data.train_packed, vocab, show_progress=False)
    coverage = float(counts[selected_mask].sum()) / max(float(counts.sum()), 1.0)
    print(f"draft vocab: {cfg.draft_vocab_size} of {vocab} tokens, covering {100 * coverage:.1f}% of supervised "
          f"tokens {lap('draft_vocab')}")

    files = {name: os.path.join(out, name) for name in
             ("metrics.jsonl", "curves.png", "eagle3_draft", "peagle_draft", "target", "data", "summary.json")}
    with MetricsLog(files["metrics.jsonl"]) as log:
        eagle3_draft, e3_before, e3_after = train_eagle3(cfg, target, data, selected_ids, selected_mask, log)
        save_draft(eagle3_draft, files["eagle3_draft"])
        lap("eagle3")
        peagle_draft, pe_before, pe_after = train_peagle(cfg, target, data, selected_ids, selected_mask, log)
        save_draft(peagle_draft, files["peagle_draft"])
        lap("peagle")
        records = log.records
    if not plot_curves(records, files["curves.png"]):
        print("note: matplotlib is not installed, curves.png skipped (pip install matplotlib)")
        del files["curves.png"]
    lap("report")
    summary = {
        "config": asdict(cfg),
        "target": {"cached": info["cached"], **target_eval},
        "draft_vocab_coverage": coverage,
        "eagle3": {"before": e3_before, "after": e3_after},
        "peagle": {"before": pe_before, "after": pe_after},
        "files": files,
        "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
    }
    write_json(files["summary.json"], summary, indent=2)
    return summary


def print_summary(summary: dict) -> None:
    """The closing report: held-out metrics before / after training, phase times, where the files are."""
    cfg, e3, pe = summary["config"], summary["eagle3"], summary["peagle"]
    print(f"\nEAGLE-3 draft, held-out eval ({cfg['ttt_steps']} TTT steps, {cfg['eagle3_steps']} training steps)")
    print(format_table(["metric", "initial", "final"],
                       [[k, e3["before"][k], e3["after"][k]] for k in ("loss", "accuracy", "tau_sim")]))
    print(f"\nP-EAGLE draft, held-out eval ({cfg['peagle_layers']} layers, {cfg['num_depths']} depths, "
          f"{cfg['sequence_partitions']} sequence partitions, {cfg['peagle_steps']} training steps)")
    rows = [["loss", pe["before"]["loss"], pe["after"]["loss"]]]
    rows += [[f"depth {d} accuracy", b, a]
             for d, (b, a) in enumerate(zip(pe["before"]["depth_accuracy"], pe["after"]["depth_accuracy"]))]
    print(format_table(["metric", "initial", "final"], rows))
    print("\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))
    print("files:")
    for name, path in summary["files"].items():
        print(f"  {name:14s} {path}")


def run_demo(quick: bool = False, output_dir: str = "runs/demo") -> int:
    """The ``demo`` command: :class:`DemoConfig` (or :data:`QUICK`) into ``output_dir``; returns the exit code.

    Tiny models run on a few threads; on a busy machine ``OMP_NUM_THREADS=1`` avoids thread oversubscription.
    """
    cfg = QUICK if quick else DemoConfig()
    print(f"eagle_ext demo{' (quick)' if quick else ''}: EAGLE-3 and P-EAGLE drafts for a tiny Llama target "
          f"on CPU, nothing downloaded -> {output_dir}\n")
    print_summary(run_pipeline(cfg, output_dir))
    return 0
