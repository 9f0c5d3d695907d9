"""Export for vLLM (speculators) and SGLang (specforge): round trips with identical logits, the config fields of
../shared/reference/serving-formats.md one by one, tensor names and shapes, check_export on corrupted exports,
argument errors, and the `eagle-ext export` command on a hand-built recipe checkpoint."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from eagle_ext import cli
from eagle_ext.models import Eagle3DraftModel
from eagle_ext.serve import check_export, export_checkpoint, export_draft, load_exported_draft

V, VD, H, L = 256, 96, 64, 6
AUX = [1, 2, 3]  # eagle_ext convention: outputs of target layers 1, 2, 3
MASK = 255
T = 9


def _target_config(**overrides):
    base = dict(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=L, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6)
    base.update(overrides)
    return LlamaConfig(**base)


def _draft(kind="eagle3", vd=VD, *, sorted_vocab=False, config=None, **kw):
    config = config or _target_config()
    if kind == "peagle":
        draft = Eagle3DraftModel.from_target_config(config, vd, num_hidden_layers=2, parallel_drafting=True,
                                                    mask_token_id=MASK, **kw)
    else:
        draft = Eagle3DraftModel.from_target_config(config, vd, **kw)
    with torch.no_grad():  # non-trivial norms too, so a mis-mapped tensor changes the logits
        for p in draft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randperm(V)[:vd]
    draft.set_vocab_mapping(ids.sort().values if sorted_vocab else ids)
    return draft.eval()


def _inputs(kind):
    """Token ids, aux hidden states, and for P-EAGLE a COD-style layout: rows 0..5 real, then the parallel
    block of anchor 5 (depths 1..3: mask token + mask_hidden, positions 6..8)."""
    ids = torch.randint(0, V, (1, T))
    aux = torch.randn(1, T, 3 * H)
    if kind == "eagle3":
        return ids, aux, None, None
    real = 6
    mask = torch.zeros(T, T, dtype=torch.bool)
    mask[:real, :real] = torch.ones(real, real, dtype=torch.bool).tril()
    for d in range(1, T - real + 1):
        row = real + d - 1
        mask[row, :real] = True  # anchor 5 sees rows <= 5
        mask[row, real:row + 1] = True  # and its own depths <= d
    ids[0, real:] = MASK
    positions = torch.cat([torch.arange(real), torch.arange(real, T)])[None]
    return ids, aux, positions, mask


def _logits(draft, inputs):
    """Draft-vocab logits scattered into the target vocabulary (-inf elsewhere): compares drafts whose draft
    vocabulary order differs. EAGLE-3: two TTT steps; P-EAGLE: the parallel forward."""
    ids, aux, positions, mask = inputs
    with torch.no_grad():
        if draft.config.parallel_drafting:
            is_mask = (torch.arange(T) >= 6)[None, :, None]
            hidden = torch.where(is_mask, draft.mask_hidden.expand(1, T, -1), aux)
            out = [draft.compute_logits(draft.forward_peagle(ids, draft.project_hidden_states(hidden), positions,
                                                             mask[None, None]))]
        else:
            cache = [[], []]
            h0 = draft(ids, draft.project_hidden_states(aux), cache_hidden=cache)
            h1 = draft(torch.roll(ids, -1, dims=1), h0, cache_hidden=cache)
            out = [draft.compute_logits(h0), draft.compute_logits(h1)]
    logits = torch.stack(out)
    target_ids = draft.d2t + torch.arange(draft.config.draft_vocab_size) if draft.is_compressed else torch.arange(V)
    full = torch.full((*logits.shape[:-1], V), float("-inf"))
    full[..., target_ids] = logits
    return full


def _export(draft, path, fmt=None, **kw):
    fmt = fmt or ("speculators" if not draft.config.parallel_drafting else "specforge_peagle")
    kw.setdefault("aux_layer_ids", AUX)
    kw.setdefault("target_num_hidden_layers", L)
    kw.setdefault("target_name_or_path", "example-org/target")
    return export_draft(draft, path, format=fmt, **kw)


def _config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


CASES = [("speculators", "eagle3"), ("sglang", "eagle3"), ("speculators", "peagle"), ("specforge_peagle", "peagle")]


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("fmt,kind", CASES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_every_format_reloads_with_identical_logits(tmp_path, fmt, kind, dtype):
    draft = _draft(kind)
    inputs = _inputs(kind)
    out = _export(draft, tmp_path / "x", fmt, dtype=dtype)
    assert check_export(out) == []
    loaded = load_exported_draft(out)
    assert loaded.format == fmt and loaded.algorithm == kind
    assert loaded.aux_layer_ids == AUX and loaded.target_name_or_path == "example-org/target"
    assert loaded.mask_token_id == (MASK if kind == "peagle" else None)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.draft.state_dict().values()
               if p.is_floating_point())
    got = _logits(loaded.draft, inputs)
    if dtype == "fp32":
        assert torch.equal(got, _logits(draft, inputs))
    else:
        # exactly the original draft with its weights rounded to the export dtype
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        rounded = _draft(kind)
        rounded.load_state_dict({k: v.to(torch_dtype).float() if v.is_floating_point() else v
                                 for k, v in draft.state_dict().items()})
        assert torch.equal(got, _logits(rounded, inputs))
        finite = torch.isfinite(got)
        torch.testing.assert_close(got[finite], _logits(draft, inputs)[finite], atol=0.1, rtol=0.05)


def test_sorted_vocab_keeps_the_draft_row_order(tmp_path):
    draft = _draft(sorted_vocab=True)
    ids, aux, _, _ = _inputs("eagle3")
    loaded = load_exported_draft(_export(draft, tmp_path / "x", dtype="fp32")).draft
    assert torch.equal(loaded.d2t, draft.d2t) and torch.equal(loaded.t2d, draft.t2d)
    with torch.no_grad():
        a = draft.compute_logits(draft(ids, draft.project_hidden_states(aux)))
        b = loaded.compute_logits(loaded(ids, loaded.project_hidden_states(aux)))
    assert torch.equal(a, b)


@pytest.mark.parametrize("fmt", ["speculators", "sglang"])
def test_full_vocab_vocab_map(tmp_path, fmt):
    """speculators: no d2t / t2d; specforge formats: identity maps (specforge leaves absent buffers as garbage)."""
    draft = _draft(vd=V)
    out = _export(draft, tmp_path / "x", fmt, dtype="fp32")
    tensors = load_file(os.path.join(out, "model.safetensors"))
    if fmt == "speculators":
        assert not {"d2t", "t2d"} & set(tensors)
    else:
        assert torch.equal(tensors["d2t"], torch.zeros(V, dtype=torch.int64))
        assert torch.equal(tensors["t2d"], torch.ones(V, dtype=torch.bool))
        _rewrite(out, tensors=_drop("d2t", "t2d"))
        assert any("write the identity" in p for p in check_export(out))
        _rewrite(out, tensors=lambda s: {**s, "d2t": torch.ones(V, dtype=torch.int64)})
        assert any("t2d is missing although d2t is present" in p for p in check_export(out))
        _rewrite(out, tensors=lambda s: {**s, "t2d": torch.ones(V, dtype=torch.bool)})
        assert any("must be the identity" in p for p in check_export(out))
        _export(draft, out, fmt, dtype="fp32")
    assert _config(out)["draft_vocab_size"] == V
    assert check_export(out) == []
    inputs = _inputs("eagle3")
    assert torch.equal(_logits(load_exported_draft(out).draft, inputs), _logits(draft, inputs))


@pytest.mark.parametrize("fmt", ["speculators", "sglang"])
def test_rope_scaling_written_in_both_spellings_and_round_trips(tmp_path, fmt):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    draft = _draft(config=_target_config(rope_parameters=rope))
    out = _export(draft, tmp_path / "x", fmt, dtype="fp32")
    cfg = _config(out)
    layer = cfg["transformer_layer_config"] if fmt == "speculators" else cfg
    assert layer["rope_theta"] == 500000.0
    assert layer["rope_parameters"] == rope and layer["rope_scaling"] == rope
    inputs = _inputs("eagle3")
    assert torch.equal(_logits(load_exported_draft(out).draft, inputs), _logits(draft, inputs))


def test_fc_norm_and_norm_output_round_trip_in_speculators(tmp_path):
    draft = _draft(fc_norm=True, norm_output=True)
    out = _export(draft, tmp_path / "x", dtype="fp32")
    cfg = _config(out)
    assert cfg["fc_norm"] is True and cfg["norm_output"] is True
    assert {f"fc_norm.{i}.weight" for i in range(3)} <= set(load_file(os.path.join(out, "model.safetensors")))
    assert check_export(out) == []
    inputs = _inputs("eagle3")
    assert torch.equal(_logits(load_exported_draft(out).draft, inputs), _logits(draft, inputs))


def test_attention_bias_round_trips_in_speculators(tmp_path):
    draft = _draft(config=_target_config(attention_bias=True), bias=True)
    out = _export(draft, tmp_path / "x", dtype="fp32")
    assert _config(out)["transformer_layer_config"]["attention_bias"] is True
    assert "layers.0.self_attn.q_proj.bias" in load_file(os.path.join(out, "model.safetensors"))
    assert check_export(out) == []
    inputs = _inputs("eagle3")
    assert torch.equal(_logits(load_exported_draft(out).draft, inputs), _logits(draft, inputs))


def test_export_without_embeddings_needs_them_at_load(tmp_path):
    draft = _draft()
    out = _export(draft, tmp_path / "x", dtype="fp32", include_embeddings=False)
    assert "embed_tokens.weight" not in load_file(os.path.join(out, "model.safetensors"))
    assert _config(out)["eagle_ext"]["embed_tokens"] == "target"
    assert check_export(out) == []
    with pytest.raises(ValueError, match="embed_tokens"):
        load_exported_draft(out)
    with pytest.raises(ValueError, match=r"embed_tokens must be a tensor of shape \[256, 64\]"):
        load_exported_draft(out, embed_tokens=torch.zeros(V, H + 1))
    loaded = load_exported_draft(out, embed_tokens=draft.model.embed_tokens.weight)
    inputs = _inputs("eagle3")
    assert torch.equal(_logits(loaded.draft, inputs), _logits(draft, inputs))


def test_sharded_weights_load_and_check(tmp_path):
    draft = _draft()
    out = _export(draft, tmp_path / "x", dtype="fp32")
    tensors = load_file(os.path.join(out, "model.safetensors"))
    os.remove(os.path.join(out, "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, os.path.join(out, file))
        weight_map.update({k: file for k in part})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    assert check_export(out) == []
    inputs = _inputs("eagle3")
    assert torch.equal(_logits(load_exported_draft(out).draft, inputs), _logits(draft, inputs))


def test_export_replaces_the_directory(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    _export(_draft(), out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp directory left behind


# ------------------------------------------------------------------------------------------------ configs


def _layer_fields(layer, num_layers):
    assert layer["model_type"] == "llama"
    assert layer["hidden_size"] == H and layer["num_attention_heads"] == 4 and layer["num_key_value_heads"] == 2
    assert layer["head_dim"] == 16 and layer["intermediate_size"] == 128
    assert layer["num_hidden_layers"] == num_layers  # the real draft layer count, not the target's 6
    assert layer["vocab_size"] == V  # the target vocab
    assert layer["hidden_act"] == "silu" and layer["rms_norm_eps"] == 1e-6
    assert layer["max_position_embeddings"] == 512
    assert layer["rope_theta"] == 10000.0
    assert layer["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert "rope_scaling" not in layer  # default RoPE
    assert layer["attention_bias"] is False and layer["mlp_bias"] is False
    assert layer["tie_word_embeddings"] is False


def test_speculators_eagle3_config_fields(tmp_path):
    cfg = _config(_export(_draft(), tmp_path / "x", speculative_tokens=5, metadata={"run": "r1"}))
    assert cfg["speculators_model_type"] == "eagle3"
    assert cfg["architectures"] == ["Eagle3DraftModel"]
    _layer_fields(cfg["transformer_layer_config"], 1)
    assert cfg["draft_vocab_size"] == VD
    assert cfg["norm_before_residual"] is False  # explicit: vLLM assumes true when absent
    assert cfg["norm_before_fc"] is False and cfg["fc_norm"] is False and cfg["norm_output"] is False
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [2, 3, 4]  # our id + 1 (speculators / vLLM: layer inputs)
    assert cfg["target_hidden_size"] is None
    assert cfg["tie_word_embeddings"] is False
    assert cfg["dtype"] == "bfloat16"
    sc = cfg["speculators_config"]
    assert sc["algorithm"] == "eagle3"
    assert sc["default_proposal_method"] == "greedy"
    assert sc["proposal_methods"][0]["proposal_type"] == "greedy"
    assert sc["proposal_methods"][0]["speculative_tokens"] == 5
    assert sc["verifier"] == {"name_or_path": "example-org/target", "architectures": ["LlamaForCausalLM"]}
    assert "mask_token_id" not in cfg
    block = cfg["eagle_ext"]
    assert block["aux_layer_ids"] == AUX and block["target_num_hidden_layers"] == L
    assert block["format"] == "speculators" and block["algorithm"] == "eagle3"
    assert block["embed_tokens"] == "included" and block["metadata"] == {"run": "r1"}


def test_speculators_peagle_config_fields(tmp_path):
    cfg = _config(_export(_draft("peagle"), tmp_path / "x", "speculators", speculative_tokens=4))
    assert cfg["speculators_model_type"] == "peagle"
    assert cfg["architectures"] == ["PEagleDraftModel"]
    assert cfg["speculators_config"]["algorithm"] == "peagle"
    assert cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 4  # the parallel depth
    assert cfg["mask_token_id"] == MASK and cfg["pard_token"] == MASK
    _layer_fields(cfg["transformer_layer_config"], 2)
    assert cfg["norm_before_residual"] is False
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [2, 3, 4]
    assert cfg["draft_vocab_size"] == VD


def test_sglang_config_fields(tmp_path):
    cfg = _config(_export(_draft(), tmp_path / "x", "sglang"))
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    _layer_fields(cfg, 1)
    assert cfg["draft_vocab_size"] == VD
    assert cfg["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": AUX, "use_aux_hidden_state": True}  # our id
    assert cfg["norm_before_residual"] is False
    assert "norm_output" not in cfg  # specforge would read false as "drop the final norm"
    assert cfg["target_hidden_size"] == H
    assert "fc_norm" not in cfg and "speculators_model_type" not in cfg


def test_specforge_peagle_config_fields(tmp_path):
    cfg = _config(_export(_draft("peagle"), tmp_path / "x", "specforge_peagle"))
    assert cfg["architectures"] == ["PEagleDraftModel"]
    _layer_fields(cfg, 2)
    assert cfg["norm_before_residual"] is False  # explicit
    assert cfg["mask_token_id"] == MASK and cfg["pard_token"] == MASK
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == AUX
    assert cfg["draft_vocab_size"] == VD
    assert "norm_output" not in cfg and "speculators_model_type" not in cfg


LAYER = {
    "input_layernorm.weight": [H], "post_attention_layernorm.weight": [H],
    "self_attn.o_proj.weight": [H, 64], "mlp.gate_proj.weight": [128, H], "mlp.up_proj.weight": [128, H],
    "mlp.down_proj.weight": [H, 128],
}


def _layer(prefix, width, first):
    names = dict(LAYER, **{"self_attn.q_proj.weight": [64, width], "self_attn.k_proj.weight": [32, width],
                           "self_attn.v_proj.weight": [32, width]})
    if first:
        names["hidden_norm.weight"] = [H]
    return {prefix + k: v for k, v in names.items()}


COMMON = {"embed_tokens.weight": [V, H], "fc.weight": [H, 3 * H], "norm.weight": [H], "lm_head.weight": [VD, H],
          "d2t": [VD], "t2d": [V]}
EXPECTED_KEYS = {
    ("speculators", "eagle3"): {**COMMON, **_layer("layers.0.", 2 * H, True)},
    ("sglang", "eagle3"): {**COMMON, **_layer("midlayer.", 2 * H, True)},
    ("speculators", "peagle"): {**COMMON, **_layer("layers.0.", 2 * H, True), **_layer("layers.1.", H, False),
                                "mask_hidden": [1, 1, 3 * H]},
}
EXPECTED_KEYS[("specforge_peagle", "peagle")] = EXPECTED_KEYS[("speculators", "peagle")]


@pytest.mark.parametrize("fmt,kind", CASES)
def test_tensor_names_shapes_and_vocab_map(tmp_path, fmt, kind):
    draft = _draft(kind)
    tensors = load_file(os.path.join(_export(draft, tmp_path / "x", fmt), "model.safetensors"))
    assert {k: list(v.shape) for k, v in tensors.items()} == EXPECTED_KEYS[(fmt, kind)]
    assert not any(k.startswith("model.") for k in tensors)
    assert all(v.dtype == torch.bfloat16 for k, v in tensors.items() if k not in ("d2t", "t2d"))
    d2t, t2d = tensors["d2t"], tensors["t2d"]
    assert d2t.dtype == torch.int64 and t2d.dtype == torch.bool
    target_ids = d2t + torch.arange(VD)  # offsets
    assert torch.equal(torch.nonzero(t2d).flatten(), target_ids)
    assert bool((target_ids[1:] > target_ids[:-1]).all())  # ascending
    assert set(target_ids.tolist()) == set((draft.d2t + torch.arange(VD)).tolist())  # the same draft vocabulary


# ------------------------------------------------------------------------------------------------ check_export


def _rewrite(path, *, config=None, tensors=None):
    if config is not None:
        cfg = _config(path)
        config(cfg)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f)
    if tensors is not None:
        file = os.path.join(path, "model.safetensors")
        state = load_file(file)
        state = tensors(state) or state
        save_file(state, file)


def _drop(*names):
    return lambda s: {k: v for k, v in s.items() if k not in names}


def _prefix(s):
    return {(k if k in ("lm_head.weight", "d2t", "t2d", "mask_hidden") else "model." + k): v for k, v in s.items()}


CORRUPTIONS = {
    "missing d2t": ("speculators", "eagle3", None, _drop("d2t"), "d2t is missing"),
    "missing d2t and t2d": ("sglang", "eagle3", None, _drop("d2t", "t2d"), "d2t and t2d are missing"),
    "extra key": ("speculators", "eagle3", None,
                  lambda s: {**s, "verifier_lm_head.weight": s["lm_head.weight"].clone()},
                  "unexpected tensor 'verifier_lm_head.weight'"),
    "prefixed names": ("speculators", "eagle3", None, _prefix, "carries the 'model.' prefix"),
    "layers.0 in sglang": ("sglang", "eagle3", None,
                           lambda s: {k.replace("midlayer.", "layers.0."): v for k, v in s.items()},
                           "unexpected tensor 'layers.0."),
    "wrong shape": ("speculators", "eagle3", None, lambda s: {**s, "fc.weight": s["fc.weight"].t().contiguous()},
                    "'fc.weight' has shape"),
    "missing tensor": ("sglang", "eagle3", None, _drop("midlayer.hidden_norm.weight"),
                       "'midlayer.hidden_norm.weight' [64] is missing"),
    "t2d wrong dtype": ("speculators", "eagle3", None, lambda s: {**s, "t2d": s["t2d"].to(torch.uint8)},
                        "tensor t2d must be BOOL"),
    "t2d wrong member": ("speculators", "eagle3", None,
                         lambda s: {**s, "t2d": torch.roll(s["t2d"], 1)}, "t2d disagrees with d2t"),
    "d2t unsorted": ("speculators", "eagle3", None, lambda s: {**s, "d2t": s["d2t"].flip(0) + 0},
                     "ascending target ids"),
    "mixed dtypes": ("speculators", "eagle3", None, lambda s: {**s, "norm.weight": s["norm.weight"].float()},
                     "mix dtypes"),
    "aux id out of range (speculators)": ("speculators", "eagle3",
                                          lambda c: c.update(eagle_aux_hidden_state_layer_ids=[2, 3, 7]), None,
                                          "out of range [0, 6]"),
    "aux id out of range (sglang)": ("sglang", "eagle3",
                                     lambda c: c["eagle_config"].update(eagle_aux_hidden_state_layer_ids=[1, 2, 6]),
                                     None, "out of range [0, 5]"),
    "aux ids in the wrong convention": ("sglang", "eagle3",
                                        lambda c: c["eagle_config"].update(eagle_aux_hidden_state_layer_ids=[2, 3, 4]),
                                        None, "convention mix-up"),
    "aux ids missing": ("speculators", "eagle3", lambda c: c.pop("eagle_aux_hidden_state_layer_ids"), None,
                        "eagle_aux_hidden_state_layer_ids is missing"),
    "draft_vocab_size missing": ("speculators", "eagle3", lambda c: c.pop("draft_vocab_size"), None,
                                 "draft_vocab_size must be an int"),
    "norm_before_residual missing": ("speculators", "eagle3", lambda c: c.pop("norm_before_residual"), None,
                                     "norm_before_residual must be written explicitly"),
    "norm_output in sglang": ("sglang", "eagle3", lambda c: c.update(norm_output=False), None,
                              "norm_output must be omitted"),
    "tied embeddings": ("sglang", "eagle3", lambda c: c.update(tie_word_embeddings=True), None,
                        "tie_word_embeddings must be false"),
    "one RoPE spelling": ("speculators", "eagle3", lambda c: c["transformer_layer_config"].pop("rope_theta"), None,
                          "both spellings"),
    "no speculative_tokens": ("speculators", "eagle3",
                              lambda c: c["speculators_config"]["proposal_methods"][0].pop("speculative_tokens"),
                              None, "speculative_tokens must be an int"),
    "no transformer_layer_config": ("speculators", "eagle3", lambda c: c.pop("transformer_layer_config"), None,
                                    "transformer_layer_config is missing"),
    "two sglang layers": ("sglang", "eagle3", lambda c: c.update(num_hidden_layers=2), None,
                          "num_hidden_layers must be 1"),
    "mask_token_id missing": ("speculators", "peagle", lambda c: c.pop("mask_token_id"), None,
                              "mask_token_id must be an int"),
    "mask_hidden missing": ("specforge_peagle", "peagle", None, _drop("mask_hidden"), "'mask_hidden' [1, 1, 192]"),
    "embedding missing": ("speculators", "eagle3", None, _drop("embed_tokens.weight"),
                          "'embed_tokens.weight' is missing"),
    "declared dtype differs": ("speculators", "eagle3", lambda c: c.update(dtype="float16"), None,
                               "declares dtype 'float16'"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_check_export_catches_corruption(tmp_path, name, capsys):
    fmt, kind, config, tensors, expected = CORRUPTIONS[name]
    out = _export(_draft(kind), tmp_path / "x", fmt)
    assert check_export(out) == []
    _rewrite(out, config=config, tensors=tensors)
    problems = check_export(out)
    assert any(expected in p for p in problems), problems
    assert cli.main(["export", "--check", out]) == 1
    printed = capsys.readouterr().out
    assert expected in printed and "OK" not in printed.splitlines()


def test_check_export_on_unusable_directories(tmp_path):
    assert "does not exist" in check_export(tmp_path / "nope")[0]
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in check_export(tmp_path / "empty")[0]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert "none of the export formats" in check_export(tmp_path / "other")[0]
    out = _export(_draft(), tmp_path / "x")
    os.remove(os.path.join(out, "model.safetensors"))
    assert any("neither model.safetensors" in p for p in check_export(out))


# ------------------------------------------------------------------------------------------------ argument errors


@pytest.mark.parametrize("kwargs,match", [
    (dict(format="vllm"), "format must be one of"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(aux_layer_ids=[1, 2]), "aux_layer_ids must be 3 ints"),
    (dict(aux_layer_ids=[-1, 2, 3]), "aux_layer_ids must be 3 ints"),
    (dict(aux_layer_ids=[1, 2, 6]), r"aux_layer_ids must lie in \[0, target_num_hidden_layers=6\)"),
    (dict(target_num_hidden_layers=0), "target_num_hidden_layers must be an int"),
    (dict(speculative_tokens=0), "speculative_tokens must be an int >= 1"),
    (dict(target_architectures=[]), "target_architectures must be a non-empty list"),
    (dict(metadata={"x": object()}), "metadata must be JSON-serialisable"),
    (dict(target_name_or_path=3), "target_name_or_path must be a str"),
])
def test_export_bad_arguments(tmp_path, kwargs, match):
    fmt = kwargs.pop("format", "speculators")
    with pytest.raises((ValueError, TypeError), match=match):
        _export(_draft(), tmp_path / "x", fmt, **kwargs)
    assert not os.path.exists(tmp_path / "x")


def test_export_rejects_a_format_that_cannot_hold_the_draft(tmp_path):
    with pytest.raises(ValueError, match="holds EAGLE-3 drafts only"):
        _export(_draft("peagle"), tmp_path / "x", "sglang")
    with pytest.raises(ValueError, match="holds P-EAGLE drafts only"):
        _export(_draft(), tmp_path / "x", "specforge_peagle")
    with pytest.raises(ValueError, match="norm_output"):
        _export(_draft(norm_output=True), tmp_path / "x", "sglang")
    with pytest.raises(ValueError, match="biases"):
        _export(_draft(config=_target_config(attention_bias=True), bias=True), tmp_path / "x", "sglang")
    with pytest.raises(TypeError, match="eagle_ext DraftModel, got Linear"):
        export_draft(torch.nn.Linear(2, 2), tmp_path / "x", format="speculators", aux_layer_ids=AUX)
    assert not os.path.exists(tmp_path / "x")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_exported_draft(tmp_path / "nope")
    out = _export(_draft(), tmp_path / "x")
    _rewrite(out, config=lambda c: c.pop("eagle_aux_hidden_state_layer_ids"))
    with pytest.raises(ValueError, match="eagle_aux_hidden_state_layer_ids"):
        load_exported_draft(out)
    out = _export(_draft(), tmp_path / "y")
    _rewrite(out, tensors=lambda s: {**s, "extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="do not fit the config"):
        load_exported_draft(out)


# ------------------------------------------------------------------------------------------------ CLI


def _checkpoint_run(root, kind="eagle3"):
    """A recipe run directory in the layout of the checkpoint contract, written by hand."""
    from eagle_ext.train.checkpoint import save_draft

    draft = _draft(kind)
    ckpt = root / "checkpoints" / "step_00000010"
    save_draft(draft, ckpt / "draft")
    meta = {"format_version": 1, "step": 10, "epoch": 0, "batches_in_epoch": 10, "world_size": 1,
            "algorithm": kind, "aux_layer_ids": [0, 2, 4],
            "target": {"name_or_path": "org/tiny-target", "model_type": "llama", "num_hidden_layers": L,
                       "hidden_size": H, "vocab_size": V},
            "draft_vocab_size": VD, "ttt_steps": 4 if kind == "eagle3" else None,
            "num_depths": 5 if kind == "peagle" else None, "mask_token_id": MASK if kind == "peagle" else None}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (root / "checkpoints" / "latest").write_text("step_00000010\n")
    return draft


@pytest.mark.parametrize("kind,fmt", [("eagle3", "speculators"), ("eagle3", "sglang"), ("peagle", "speculators"),
                                      ("peagle", "specforge_peagle")])
def test_cli_exports_a_run_directory(tmp_path, capsys, kind, fmt):
    run = tmp_path / "run"
    draft = _checkpoint_run(run, kind)
    assert cli.main(["export", str(run), "--format", fmt, "--dtype", "fp32"]) == 0
    out = run / "export" / fmt
    assert f"to {out}" in capsys.readouterr().out
    loaded = load_exported_draft(out)
    assert loaded.aux_layer_ids == [0, 2, 4] and loaded.target_name_or_path == "org/tiny-target"
    assert loaded.algorithm == kind and loaded.mask_token_id == (MASK if kind == "peagle" else None)
    inputs = _inputs(kind)
    assert torch.equal(_logits(loaded.draft, inputs), _logits(draft, inputs))
    cfg = _config(out)
    if fmt == "speculators":
        assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 3, 5]
        assert cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == (4 if kind == "eagle3" else 5)
    else:
        assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 2, 4]
    assert cfg["eagle_ext"]["metadata"]["step"] == 10
    assert cli.main(["export", "--check", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "OK"


def test_cli_checkpoint_dir_out_and_no_embeddings(tmp_path):
    run = tmp_path / "run"
    _checkpoint_run(run)
    ckpt = run / "checkpoints" / "step_00000010"
    out = tmp_path / "elsewhere"
    assert cli.main(["export", str(ckpt), "--format", "sglang", "--out", str(out), "--no-embeddings"]) == 0
    assert "embed_tokens.weight" not in load_file(os.path.join(out, "model.safetensors"))
    assert _config(out)["torch_dtype"] == "bfloat16"
    assert export_checkpoint(run, "speculators") == str(run / "export" / "speculators")


@pytest.mark.parametrize("argv,match", [
    (["export", "--format", "speculators"], "needs SRC"),
    (["export", "RUN"], "needs SRC"),
    (["export", "RUN", "--check", "DIR"], "--check DIR takes no SRC"),
    (["export", "MISSING", "--format", "speculators"], "does not exist"),
])
def test_cli_bad_arguments(tmp_path, capsys, argv, match):
    run = tmp_path / "run"
    _checkpoint_run(run)
    argv = [str(run) if a == "RUN" else str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err
    assert "[eagle-ext export] failed (exit code 2)" in err and "done" not in err


def test_cli_rejects_unknown_format_and_dtype(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["export", str(tmp_path), "--format", "vllm"])
    with pytest.raises(SystemExit):
        cli.main(["export", str(tmp_path), "--format", "sglang", "--dtype", "int8"])
    with pytest.raises(ValueError, match="format must be one of"):
        export_checkpoint(tmp_path, "vllm")
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_checkpoint(tmp_path, "sglang", dtype="int8")


def test_cli_peagle_to_sglang_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    _checkpoint_run(run, "peagle")
    assert cli.main(["export", str(run), "--format", "sglang"]) == 2
    assert "cannot hold the peagle draft" in capsys.readouterr().err
    assert not os.path.exists(run / "export")
