"""The target zoo end to end: a tiny random target of each family users bring goes through the recipe (target
capture, a few training steps), both exports, ``export --check`` and the evaluator (K = 3, fp32, greedy,
lossless). Families the installed transformers lacks are skipped. Known engine limits are printed by the
export and by ``--check``, naming the engine and its version."""

from __future__ import annotations

import json
import os

import pytest
import torch

from eagle_ext.cli import main
from tests.recipe_helpers import make_chats
from tests.target_zoo import zoo_config

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "eagle_ext", "configs", "tiny_cpu_eagle3.yaml")

#: family -> (packed rows?, engine known not to serve it with a draft, or None)
ZOO = {
    "llama": (True, None), "qwen3": (True, None), "qwen3_moe": (True, None), "qwen2": (True, None),
    "mistral_sliding": (True, None), "phi3": (True, None), "gpt_oss": (True, None),
    "gemma3": (True, "vLLM 0.32.0 cannot serve a gemma3/gemma3_text target"),
    "deepseek_v3": (True, "vLLM 0.32.0 (CPU build) cannot serve a deepseek_v3/deepseek_v2/kimi_k2 target"),
    "glm4": (True, "vLLM 0.32.0 cannot serve a glm4 target"),
    "qwen3_next": (False, "vLLM 0.32.0 (CPU build) cannot serve a qwen3_next target"),  # hybrid: padded rows
}


def _save_target(directory: str, family: str) -> None:
    from transformers import AutoModelForCausalLM

    from eagle_ext.testing.corpus import corpus_words
    from eagle_ext.testing.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(corpus_words())
    config = zoo_config(family, vocab=len(tokenizer))
    if config is None:
        pytest.skip(f"the installed transformers has no {family}")
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.mark.parametrize("family", list(ZOO))
def test_target_family_trains_exports_checks_and_decodes_losslessly(tmp_path, capsys, family):
    packed, limit = ZOO[family]
    target = str(tmp_path / "target")
    _save_target(target, family)
    train = make_chats(str(tmp_path / "train.jsonl"), 8)
    run = tmp_path / "run"
    args = ["train", "-c", TINY, f"target.name_or_path={target}", f"data.train_path={train}", "data.eval_path=null",
            f"output_dir={run}", f"data.cache_dir={tmp_path / 'cache'}", "target.aux_layer_ids=[0,1,3]",
            "target.attn_implementation=eager", "target.dtype=fp32", "train.max_steps=2", "checkpoint.every_steps=null",
            "checkpoint.export_formats=[speculators,sglang]", "train.progress=false", "train.tensorboard=false"]
    if not packed:
        args.append("data.packed_sequence_size=0")
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"hello world"\n' + json.dumps({"prompt": "count from one"}) + "\n")
    for fmt in ("speculators", "sglang"):
        export = run / "export" / fmt
        config = json.loads((export / "config.json").read_text())
        layer = config.get("transformer_layer_config", config)
        assert layer["attention_bias"] is False and layer["mlp_bias"] is False  # serves on both engines
        assert main(["export", "--check", str(export)]) == 0
        out = capsys.readouterr().out
        if limit is None:
            assert out.strip().endswith("OK") and "warning" not in out
            assert "engine_limits" not in config["eagle_ext"]
        else:
            assert f"warning: {limit}" in out and "known engine limit" in out
            assert any(note.startswith(limit) for note in config["eagle_ext"]["engine_limits"])
        report = tmp_path / f"report_{fmt}.json"
        assert main(["eval", "--target", target, "--draft", str(export), "--prompts", str(prompts),
                     "--num-draft-tokens", "3", "--max-new-tokens", "8", "--out", str(report), "--device", "cpu",
                     "--dtype", "fp32", "--ignore-eos", "--no-progress"]) == 0
        capsys.readouterr()
        spec = json.loads(report.read_text())["speculative"][0]
        assert spec["lossless"] is True and spec["new_tokens"] == 16 and spec["tau"] >= 1.0
