"""``eagle-ext demo --target tiny``: train EAGLE-3 and P-EAGLE drafts for a tiny target on CPU in minutes, nothing
downloaded and nothing to install (the quick, self-contained variant of the SmolLM2 demo, used by the tests).

In the order it runs (every step seeded: two runs with the same thread count print the same numbers):

1. a synthetic chat corpus (:mod:`eagle_ext.testing.corpus`) written as JSONL, plus a held-out eval split;
2. a word-level tokenizer with a ChatML template (:mod:`eagle_ext.testing.tokenizer`);
3. a tiny Llama target (:mod:`eagle_ext.testing.target`) pre-trained on packed rows of the corpus, cached in the
   output directory (:mod:`eagle_ext.demo.target_cache`);
4. EAGLE-3: the training recipe (``eagle-ext train`` on ``eagle_ext/configs/tiny_cpu_eagle3.yaml``, sized by
   :class:`DemoConfig`): packed best-fit rows, the draft vocabulary, target capture, a one-layer draft trained
   with ``ttt_steps`` TTT steps, held-out eval before and after, a checkpoint;
5. P-EAGLE: the same recipe on ``tiny_cpu_peagle.yaml``: a two-layer parallel-drafting draft trained on padded
   rows with COD and exact sequence partitions;
6. ``curves.png`` of both runs, ``summary.json`` and a table of held-out metrics before and after training.

Output directory layout: ``data/{train,eval}.jsonl``, ``cache/`` (tokenised data), ``target/`` (pre-trained
target + tokenizer), ``eagle3/`` and ``peagle/`` (recipe runs: ``metrics.jsonl``, ``config.yaml``,
``checkpoints/``), ``curves.png``, ``summary.json``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch

from eagle_ext._io import write_json
from eagle_ext.algorithms import ALGORITHM_NAMES, algorithm_spec
from eagle_ext.data import build_dataloader
from eagle_ext.data.fingerprint import digest
from eagle_ext.demo.target_cache import load_or_pretrain_target
from eagle_ext.testing import (
    MASK_TOKEN,
    build_word_tokenizer,
    chat_conversations,
    corpus_words,
    evaluate_target,
    forever,
    tiny_target_config,
    write_jsonl,
)
from eagle_ext.train.config import load_config
from eagle_ext.train.loop import run_training
from eagle_ext.train.reporting import format_table, plot_curves, read_metrics

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from eagle_ext.data import Eagle3DataLoader

__all__ = ["DemoConfig", "QUICK", "print_summary", "run_pipeline", "run_toy_demo"]


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
    """The tokenizer and the loaders the demo itself reads (the recipe builds its own from the JSONL files)."""

    tokenizer: PreTrainedTokenizerFast
    train_packed: Eagle3DataLoader  # packed best-fit rows: target pre-training
    eval_padded: Eagle3DataLoader  # padded rows: the target's held-out loss
    data_key: str  # identity of the target's pre-training data (keys its cache)


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def prepare_data(cfg: DemoConfig, out: str) -> DemoData:
    """Write the corpus, build the tokenizer and every dataloader the phases read."""
    rows = chat_conversations(cfg.num_conversations + cfg.eval_conversations, seed=cfg.seed)
    train_path, eval_path = os.path.join(out, "data", "train.jsonl"), os.path.join(out, "data", "eval.jsonl")
    write_jsonl(train_path, rows[: cfg.num_conversations])
    write_jsonl(eval_path, rows[cfg.num_conversations:])
    tokenizer = build_word_tokenizer(corpus_words())
    common = {"cache_dir": os.path.join(out, "cache"), "show_progress": False, "shuffle_seed": cfg.seed}

    def loader(path, batch_size, packed, shuffle=True):
        return build_dataloader(
            path, tokenizer, cfg.seq_length, batch_size, shuffle=shuffle,
            packed_sequence_size=cfg.packed_width if packed else 0, packing_strategy="best_fit", **common,
        )

    return DemoData(
        tokenizer=tokenizer,
        train_packed=loader(train_path, cfg.packed_batch_size, packed=True),
        eval_padded=loader(eval_path, cfg.peagle_batch_size, packed=False, shuffle=False),
        # what shaped the target's pre-training batches (the loader's own fingerprint holds the file's path)
        data_key=digest({"corpus": _file_sha256(train_path), "vocab": tokenizer.get_vocab(),
                         "template": tokenizer.chat_template, "width": cfg.packed_width,
                         "batch_size": cfg.packed_batch_size, "seed": cfg.seed}),
    )


# ---------------------------------------------------------------------------------------------- drafts


TINY_CONFIGS = {a: os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"tiny_cpu_{a}.yaml")
                for a in ALGORITHM_NAMES}


def recipe_overrides(cfg: DemoConfig, out: str, algorithm: str, mask_token_id: int) -> list[str]:
    """Dotted overrides that point eagle_ext/configs/tiny_cpu_<algorithm>.yaml at this demo's target and data and
    size the run from ``cfg``.

    What differs between algorithms comes from the registry (:func:`eagle_ext.algorithms.algorithm_spec`): packed
    rows where the algorithm packs (else padded rows of ``seq_length``), its depth knob (``ttt_steps`` /
    ``num_depths``, the :class:`DemoConfig` field of that name), and for a parallel drafter its layers, sequence
    partitions and mask token. Steps and learning rate are the ``<algorithm>_steps`` / ``<algorithm>_lr`` fields.
    """
    spec = algorithm_spec(algorithm)
    section = spec.config_section
    overrides = [
        f"output_dir={os.path.join(out, algorithm)}", f"target.name_or_path={os.path.join(out, 'target')}",
        f"target.aux_layer_ids={list(cfg.aux_layer_ids)}", f"data.train_path={os.path.join(out, 'data', 'train.jsonl')}",
        f"data.eval_path={os.path.join(out, 'data', 'eval.jsonl')}", f"data.cache_dir={os.path.join(out, 'cache')}",
        f"data.draft_vocab_size={cfg.draft_vocab_size}", f"train.seed={cfg.seed}", f"train.log_every_steps={cfg.log_every}",
        f"train.eval_batches={cfg.eval_batches}", "train.eval_at_start=true", f"train.progress={cfg.show_progress}",
        "train.tensorboard=false", "checkpoint.every_steps=null", "checkpoint.keep=1", "optim.warmup_ratio=0.1",
    ]
    if spec.packing:
        overrides += [f"data.packed_sequence_size={cfg.packed_width}", f"train.micro_batch_size={cfg.packed_batch_size}"]
    else:
        overrides += [f"data.seq_length={cfg.seq_length}", f"train.micro_batch_size={cfg.peagle_batch_size}"]
    overrides += [f"train.max_steps={getattr(cfg, f'{spec.name}_steps')}", f"optim.lr={getattr(cfg, f'{spec.name}_lr')}",
                  f"{section}.{spec.depth_key}={getattr(cfg, spec.depth_key)}"]
    if spec.parallel_drafting:
        overrides += [f"{section}.num_draft_layers={cfg.peagle_layers}",
                      f"{section}.sequence_partitions={cfg.sequence_partitions}", f"{section}.mask_token_id={mask_token_id}"]
    return overrides


def train_draft(cfg: DemoConfig, out: str, algorithm: str, mask_token_id: int) -> tuple[str, dict, dict]:
    """Train one draft with the recipe (``eagle-ext train`` on the tiny config); returns ``(run directory, eval
    before, eval after)``. A rerun starts the phase afresh."""
    run_dir = os.path.join(out, algorithm)
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe = load_config(TINY_CONFIGS[algorithm], recipe_overrides(cfg, out, algorithm, mask_token_id))
    run_training(recipe)
    evals = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == "eval"]
    return run_dir, evals[0], evals[-1]


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

    config = tiny_target_config(vocab, hidden_size=cfg.target_hidden_size, num_hidden_layers=cfg.target_layers)
    model, info = load_or_pretrain_target(
        os.path.join(out, "target"), config, forever(data.train_packed), steps=cfg.target_steps, lr=cfg.target_lr,
        data_key=data.data_key, tokenizer=data.tokenizer, seed=cfg.seed, show_progress=cfg.show_progress,
    )
    target_eval = evaluate_target(model, list(data.eval_padded))
    print(f"target: {'loaded from cache' if info['cached'] else f'pre-trained {cfg.target_steps} steps'}; "
          f"held-out LM loss {target_eval['loss']:.3f}, greedy accuracy on assistant tokens "
          f"{target_eval['assistant_accuracy']:.3f} {lap('target')}")
    del model
    mask_token_id = data.tokenizer.convert_tokens_to_ids(MASK_TOKEN)

    files = {"eagle3": os.path.join(out, "eagle3"), "peagle": os.path.join(out, "peagle"),
             "curves.png": os.path.join(out, "curves.png"), "target": os.path.join(out, "target"),
             "data": os.path.join(out, "data"), "summary.json": os.path.join(out, "summary.json")}
    print("\nEAGLE-3: eagle-ext train on eagle_ext/configs/tiny_cpu_eagle3.yaml")
    _, e3_before, e3_after = train_draft(cfg, out, "eagle3", mask_token_id)
    lap("eagle3")
    print("\nP-EAGLE: eagle-ext train on eagle_ext/configs/tiny_cpu_peagle.yaml")
    _, pe_before, pe_after = train_draft(cfg, out, "peagle", mask_token_id)
    lap("peagle")
    records = [r for a in ("eagle3", "peagle") for r in read_metrics(os.path.join(files[a], "metrics.jsonl"))]
    if not plot_curves(records, files["curves.png"]):
        print("note: matplotlib is not installed, curves.png skipped (pip install matplotlib)")
        del files["curves.png"]
    lap("report")
    summary = {
        "config": asdict(cfg),
        "target": {"cached": info["cached"], **target_eval},
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


def run_toy_demo(quick: bool = False, output_dir: str = "runs/demo", *, show_progress: bool = True) -> int:
    """``eagle-ext demo --target tiny``: :class:`DemoConfig` (or :data:`QUICK`) into ``output_dir``; returns the
    exit code. ``show_progress=False`` (``--no-progress``) silences every bar, the recipe's included.

    The command line runs it on one torch thread (``--threads``; see :func:`eagle_ext.demo.options.demo_threads`).
    """
    cfg = replace(QUICK if quick else DemoConfig(), show_progress=show_progress)
    print(f"eagle_ext demo{' (quick)' if quick else ''}: EAGLE-3 and P-EAGLE drafts for a tiny Llama target "
          f"on CPU ({torch.get_num_threads()} torch thread(s)), nothing downloaded -> {output_dir}\n")
    print_summary(run_pipeline(cfg, output_dir))
    return 0
