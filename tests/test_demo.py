"""The toy demo (``eagle-ext demo --target tiny``): corpus, tokenizer, optimiser schedule, target cache, and a tiny
end-to-end run through the command line and the public pipeline (EAGLE-3 and P-EAGLE drafts trained, logged,
plotted, saved and reloaded). The SmolLM2 demo is tested in test_demo_smollm2.py."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace

import pytest
import torch

from eagle_ext.cli import main
from eagle_ext.demo.target_cache import load_or_pretrain_target
from eagle_ext.demo.toy import QUICK, DemoConfig, run_pipeline
from eagle_ext.testing.corpus import chat_conversations, corpus_words, write_jsonl
from eagle_ext.testing.target import target_lm_loss, tiny_target_config
from eagle_ext.testing.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, build_word_tokenizer
from eagle_ext.train.checkpoint import load_checkpoint_draft
from eagle_ext.train.optim import build_optimizer, warmup_cosine
from eagle_ext.train.reporting import format_table, read_metrics

TINY = replace(
    DemoConfig(), num_conversations=96, eval_conversations=8, target_hidden_size=64, target_steps=40,
    packed_batch_size=4, draft_vocab_size=96, eagle3_steps=40, eagle3_lr=1e-2, peagle_steps=4,
    peagle_batch_size=2, log_every=10, eval_batches=1, show_progress=False,
)


def test_corpus_is_seeded_and_covered_by_the_tokenizer(tmp_path):
    rows = chat_conversations(50, seed=3)
    assert rows == chat_conversations(50, seed=3) and rows != chat_conversations(50, seed=4)
    assert all(m["role"] in {"system", "user", "assistant"} for r in rows for m in r["messages"])
    assert all(any(m["role"] == "assistant" for m in r["messages"]) for r in rows)
    tok = build_word_tokenizer(corpus_words())
    assert len(tok) == len(SPECIAL_TOKENS) + len(corpus_words())
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
    for row in rows:
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and mask_id not in ids
        words = [w for m in row["messages"]
                 for w in ("<|im_start|>", m["role"], *m["content"].split(), "<|im_end|>")]
        assert tok.convert_ids_to_tokens(ids) == words
    path = tmp_path / "chats.jsonl"
    write_jsonl(path, rows[:3])
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    with pytest.raises(ValueError, match="num_conversations must be an int >= 1, got 0"):
        chat_conversations(0)
    with pytest.raises(ValueError, match="not special tokens"):
        build_word_tokenizer(["hello", MASK_TOKEN])
    with pytest.raises(ValueError, match="words must hold at least one word"):
        build_word_tokenizer([])


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.1) == warmup_cosine(500, 10, 100)
    lrs = [warmup_cosine(s, 10, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler = build_optimizer([param], 1e-2, 20, warmup_steps=4)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(2.5e-3) and seen[3] == pytest.approx(1e-2) and seen[-1] < 2e-3
    with pytest.raises(ValueError, match="total_steps must be an int >= 1, got 0"):
        build_optimizer([param], 1e-2, 0)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], 1e-2, 5)


def test_packed_lm_loss_equals_per_document_loss():
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_target_config(32, hidden_size=32, num_hidden_layers=2)).eval()
    lengths = [5, 7, 3]
    docs = [torch.randint(0, 32, (n,)) for n in lengths]
    packed = {
        "input_ids": torch.cat([*docs, torch.zeros(1, dtype=torch.long)])[None],  # one pad slot
        "attention_mask": torch.tensor([[1] * 15 + [0]]),
        "position_ids": torch.cat([torch.arange(n) for n in [*lengths, 1]])[None],
        "seq_lens": torch.tensor([[5, 7, 3, 1]]),
    }
    with torch.no_grad():
        got = target_lm_loss(model, packed)
        total = sum(float(model(input_ids=d[None], labels=d[None]).loss) * (len(d) - 1) for d in docs)
    torch.testing.assert_close(got, torch.tensor(total / sum(n - 1 for n in lengths)), rtol=1e-5, atol=1e-6)


def test_target_cache_is_reused_and_keyed(tmp_path):
    config = tiny_target_config(32, hidden_size=32, num_hidden_layers=2)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 32, (2, 12), generator=g),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)}

    def batches():
        while True:
            yield batch

    kwargs = {"steps": 5, "lr": 1e-2, "data_key": "a", "show_progress": False}
    model, info = load_or_pretrain_target(tmp_path / "target", config, batches(), **kwargs)
    assert not info["cached"] and len(info["losses"]) == 5 and info["losses"][-1] < info["losses"][0]
    again, info2 = load_or_pretrain_target(tmp_path / "target", config, iter(()), **kwargs)
    assert info2["cached"] and info2["key"] == info["key"]
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    _, info3 = load_or_pretrain_target(tmp_path / "target", config, batches(), **{**kwargs, "data_key": "b"})
    assert not info3["cached"] and info3["key"] != info["key"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary directory left behind


def test_tiny_demo_end_to_end(tmp_path):
    summary = run_pipeline(TINY, str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["eagle3"] == summary["eagle3"]
    for name in ("summary.json", "data/train.jsonl", "data/eval.jsonl", "target/config.json", "eagle3/metrics.jsonl",
                 "eagle3/config.yaml", "eagle3/checkpoints/latest", "peagle/metrics.jsonl", "peagle/checkpoints/latest"):
        assert (tmp_path / name).is_file(), name
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert not (tmp_path / "curves.png").exists()

    records = read_metrics(tmp_path / "eagle3" / "metrics.jsonl")
    train = [r for r in records if r["phase"] == "eagle3" and r["split"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and 1 <= r["tau_sim"] <= 1 + TINY.ttt_steps
               for r in train)
    # the soft-CE floor is the (barely trained) target's entropy, so the loss falls little; accuracy and
    # tau_sim show the learning
    assert train[-1]["loss"] < train[0]["loss"] - 0.15, train
    assert train[-1]["accuracy"] > train[0]["accuracy"] + 0.2 and train[-1]["tau_sim"] > train[0]["tau_sim"] + 0.4
    before, after = summary["eagle3"]["before"], summary["eagle3"]["after"]
    assert after["loss"] < before["loss"] and after["tau_sim"] > before["tau_sim"] + 0.5, summary["eagle3"]
    peagle = read_metrics(tmp_path / "peagle" / "metrics.jsonl")
    assert [r["split"] for r in peagle] == ["eval", "train", "eval"]
    assert len(peagle[-1]["depth_accuracy"]) == TINY.num_depths
    assert summary["peagle"]["after"]["loss"] < summary["peagle"]["before"]["loss"]

    for name, layers in (("eagle3", 1), ("peagle", TINY.peagle_layers)):
        draft, meta = load_checkpoint_draft(tmp_path / name)
        state = draft.state_dict()
        assert {"d2t", "t2d", "model.fc.weight", "lm_head.weight"} <= set(state)
        assert state["lm_head.weight"].shape[0] == TINY.draft_vocab_size == meta["draft_vocab_size"]
        assert draft.config.num_hidden_layers == layers and meta["algorithm"] == name
        assert meta["aux_layer_ids"] == list(TINY.aux_layer_ids)
    assert "mask_hidden" in load_checkpoint_draft(tmp_path / "peagle")[0].state_dict()


def test_format_table():
    text = format_table(["metric", "value"], [["loss", 1.23456], ["steps", 7]])
    assert text.splitlines() == ["metric  value", "------  -----", "loss    1.235", "steps   7"]


def test_quick_demo_from_the_command_line(tmp_path, capsys):
    assert main(["demo", "--target", "tiny", "--quick", "--output-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"] == json.loads(json.dumps(asdict(QUICK)))
    assert summary["eagle3"]["after"]["tau_sim"] > summary["eagle3"]["before"]["tau_sim"] + 1.0, summary["eagle3"]
    out = capsys.readouterr().out
    assert "EAGLE-3 draft" in out and "P-EAGLE draft" in out and "tau_sim" in out
