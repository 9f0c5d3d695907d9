"""Recipe checks against the target's config.json (dry run and training alike): hybrid packing refused, Gemma 3's
per-layer-type RoPE, the draft.* section, MoE / MLA draft sizes, a shallow target without aux_layer_ids."""

from __future__ import annotations

import json
import os
import re

import pytest

from eagle_ext.cli import main
from eagle_ext.train.config import ConfigError, load_config
from tests.target_zoo import zoo_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "eagle_ext", "configs")
TINY = os.path.join(CONFIGS, "tiny_cpu_eagle3.yaml")

#: the real DeepSeek-V3 config.json's architecture fields (no weights)
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "first_k_dense_replace": 3, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_group": 8, "topk_group": 4, "vocab_size": 129280,
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000, "tie_word_embeddings": False,
    "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
}


def _target_dir(tmp_path, config) -> str:
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    data = config if isinstance(config, dict) else config.to_dict()
    (target / "config.json").write_text(json.dumps(data))
    return str(target)


def _dry_run(tmp_path, capsys, target, *overrides):
    data = tmp_path / "chats.jsonl"
    data.write_text("")
    args = ["train", "-c", TINY, f"target.name_or_path={target}", f"data.train_path={data}",
            f"data.eval_path={data}", f"output_dir={tmp_path / 'run'}", *overrides, "--dry-run"]
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def _family_or_skip(family):
    cfg = zoo_config(family)
    if cfg is None:
        pytest.skip(f"the installed transformers has no {family}")
    return cfg


def test_hybrid_target_with_packing_is_refused_by_the_dry_run(tmp_path, capsys):
    target = _target_dir(tmp_path, _family_or_skip("qwen3_next"))
    rc, out, err = _dry_run(tmp_path, capsys, target)
    assert rc == 2 and "Traceback" not in err
    assert "packed rows (data.packed_sequence_size > 0) are refused" in err and "linear_attention" in err
    rc, out, err = _dry_run(tmp_path, capsys, target, "data.packed_sequence_size=0")
    assert rc == 0, err


def test_gemma3_dry_run_takes_the_global_rope_by_default_and_the_config_can_choose(tmp_path, capsys):
    cfg = _family_or_skip("gemma3")
    cfg.rope_parameters = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    target = _target_dir(tmp_path, cfg)
    rc, out, err = _dry_run(tmp_path, capsys, target)
    assert rc == 0, err
    assert "'rope_type': 'linear'" in out and "1000000.0" in out
    rc, out, err = _dry_run(tmp_path, capsys, target, "draft.rope_layer_type=sliding_attention")
    assert rc == 0, err
    assert "'rope_type': 'default', 'rope_theta': 10000.0" in out
    rc, out, err = _dry_run(tmp_path, capsys, target, "draft.rope_layer_type=chunked_attention")
    assert rc == 2 and "Traceback" not in err
    assert "draft.rope_layer_type must name one of the target's per-layer-type RoPEs" in err


def test_deepseek_v3_dry_run_gives_a_llama_like_draft_and_prints_its_size(tmp_path, capsys):
    target = _target_dir(tmp_path, DEEPSEEK_V3)
    rc, out, err = _dry_run(tmp_path, capsys, target, "target.aux_layer_ids=null", "data.draft_vocab_size=32000")
    assert rc == 0, err
    line = re.search(r"^draft size: ([\d,]+) parameters \(([\d.]+)% of the target's", out, re.MULTILINE)
    total = int(line.group(1).replace(",", ""))
    assert "56 heads x 128 (8 KV heads), MLP 18432, bias no" in out
    assert "note: MLA target" in out
    # 0.93B frozen embedding (129280 x 7168) + ~0.96B trainable; the target-shaped draft was 1.19B trainable
    trainable = int(re.search(r"^draft \(eagle3\): ([\d,]+) trainable", out, re.MULTILINE).group(1).replace(",", ""))
    assert trainable < 1.0e9 and total < 2.0e9
    rc, out, err = _dry_run(tmp_path, capsys, target, "target.aux_layer_ids=null", "data.draft_vocab_size=32000",
                            "draft.intermediate_size=8192", "draft.num_key_value_heads=4")
    assert rc == 0, err
    assert "56 heads x 128 (4 KV heads), MLP 8192" in out


def test_draft_bias_is_a_choice_and_defaults_to_none(tmp_path, capsys):
    cfg = _family_or_skip("gpt_oss")
    assert cfg.attention_bias is True
    target = _target_dir(tmp_path, cfg)
    rc, out, err = _dry_run(tmp_path, capsys, target, "target.aux_layer_ids=[0,1,3]")
    assert rc == 0, err
    assert "bias no" in out and "note: MoE target" in out
    rc, out, err = _dry_run(tmp_path, capsys, target, "target.aux_layer_ids=[0,1,3]", "draft.bias=true")
    assert rc == 0 and "bias yes" in out


def test_shallow_target_without_aux_layer_ids_gets_a_clear_error(tmp_path, capsys):
    target = _target_dir(tmp_path, zoo_config("llama"))  # 4 layers
    rc, out, err = _dry_run(tmp_path, capsys, target, "target.aux_layer_ids=null")
    assert rc == 2 and "Traceback" not in err
    assert "target.aux_layer_ids is unset and the target has num_hidden_layers=4" in err
    assert "needs L >= 7" in err


def test_draft_section_is_validated(tmp_path):
    base = [f"output_dir={tmp_path}", "target.name_or_path=x", "data.train_path=y"]
    with pytest.raises(ConfigError, match="draft.num_hidden_layers must be 1 or null with algorithm 'eagle3'"):
        load_config(None, base + ["draft.num_hidden_layers=2"])
    with pytest.raises(ConfigError, match=r"draft.num_key_value_heads must be a divisor of draft.num_attention_heads"):
        load_config(None, base + ["draft.num_attention_heads=8", "draft.num_key_value_heads=3"])
    with pytest.raises(ConfigError, match="draft.head_dim must be an int >= 1"):
        load_config(None, base + ["draft.head_dim=0"])
    with pytest.raises(ConfigError, match="unknown config key 'draft.biases'; did you mean draft.bias"):
        load_config(None, base + ["draft.biases=true"])
    peagle = base + ["algorithm=peagle", "peagle.mask_token_id=1"]
    with pytest.raises(ConfigError, match="null or equal to peagle.num_draft_layers"):
        load_config(None, peagle + ["peagle.num_draft_layers=3", "draft.num_hidden_layers=2"])
    from eagle_ext.train.target_checks import draft_num_layers

    assert draft_num_layers(load_config(None, peagle + ["draft.num_hidden_layers=2"])) == 2
    assert draft_num_layers(load_config(None, peagle)) == 4


def test_a_run_from_before_the_draft_section_still_resumes(tmp_path):
    """Its saved config.yaml has no draft section: that is the defaults, not a difference."""
    import torch
    import yaml

    from eagle_ext.train.config import config_to_dict
    from eagle_ext.train.distributed import DistContext
    from eagle_ext.train.resume import check_resume_compatible as _check_resume_compatible

    cfg = load_config(None, [f"output_dir={tmp_path}", "target.name_or_path=x", "data.train_path=y"])
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    old = config_to_dict(cfg)
    del old["draft"]
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(old))
    (checkpoint / "meta.json").write_text(json.dumps({"format_version": 1, "world_size": 1}))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _check_resume_compatible(str(checkpoint), cfg, ctx)
    changed = load_config(None, [f"output_dir={tmp_path}", "target.name_or_path=x", "data.train_path=y",
                                 "draft.bias=true"])
    with pytest.raises(ConfigError, match="draft.bias: False -> True"):
        _check_resume_compatible(str(checkpoint), changed, ctx)


def test_unsupported_rope_of_the_target_is_a_config_error_not_a_traceback(tmp_path, capsys):
    cfg = zoo_config("phi3")
    data = cfg.to_dict()
    data["rope_parameters"] = data["rope_scaling"] = {"rope_type": "longrope", "rope_theta": 10000.0,
                                                      "short_factor": [1.0] * 4, "long_factor": [1.0] * 4}
    target = _target_dir(tmp_path, data)
    rc, out, err = _dry_run(tmp_path, capsys, target, "target.aux_layer_ids=[0,1,3]")
    assert rc == 2 and "Traceback" not in err, err
    assert "draft: the draft for this target cannot be built: rope_type must be one of" in err


def test_vocabulary_knobs_beyond_the_target_are_refused_by_the_dry_run_and_the_run(tmp_path, capsys):
    """One check (target_checks.check_target_for_run) serves the dry run and the run: a draft vocabulary or a P-EAGLE
    mask token beyond the target's vocabulary is refused with one line naming the key, before any weights load
    (the target directory holds only config.json)."""
    target = _target_dir(tmp_path, DEEPSEEK_V3)
    rc, _, err = _dry_run(tmp_path, capsys, target, "data.draft_vocab_size=200000")
    assert rc == 2 and "data.draft_vocab_size must be <= the target's vocab_size (129280), got 200000" in err
    data = tmp_path / "chats.jsonl"
    rc = main(["train", "-c", os.path.join(CONFIGS, "tiny_cpu_peagle.yaml"), f"target.name_or_path={target}",
               f"data.train_path={data}", "data.eval_path=null", f"output_dir={tmp_path / 'run'}",
               "peagle.mask_token_id=129280"])
    err = capsys.readouterr().err
    assert rc == 2 and "peagle.mask_token_id must be < the target's vocab_size (129280), got 129280" in err
    assert "Traceback" not in err
