"""Eagle3DraftModel: state-dict contract, vocab buffers, EAGLE-3.1 switches, TTT cache, RoPE, P-EAGLE pieces."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from eagle_ext.models import Eagle3DraftModel
from eagle_ext.models.rope import RotaryEmbedding, apply_rotary, compute_inv_freq

V, H = 120, 48


def _config(**overrides):
    base = dict(
        vocab_size=V, hidden_size=H, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0,
    )
    base.update(overrides)
    return LlamaConfig(**base)


LAYER0 = [
    "input_layernorm.weight", "hidden_norm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
]
COMMON = ["model.embed_tokens.weight", "model.fc.weight", "model.norm.weight", "lm_head.weight"]


def test_state_dict_keys_compressed_and_uncompressed():
    draft = Eagle3DraftModel.from_target_config(_config(), 32)
    expected = set(COMMON + [f"model.layers.0.{k}" for k in LAYER0] + ["d2t", "t2d"])
    assert set(draft.state_dict()) == expected
    full = Eagle3DraftModel.from_target_config(_config(), V)
    assert set(full.state_dict()) == expected - {"d2t", "t2d"}
    assert not full.is_compressed and not hasattr(full, "d2t")
    assert set(Eagle3DraftModel.from_target_config(_config(), None).state_dict()) == expected - {"d2t", "t2d"}


def test_state_dict_keys_eagle31_and_peagle():
    draft = Eagle3DraftModel.from_target_config(_config(), 32, fc_norm=True)
    assert {k for k in draft.state_dict() if "fc_norm" in k} == {f"model.fc_norm.{i}.weight" for i in range(3)}
    peagle = Eagle3DraftModel.from_target_config(
        _config(), 32, num_hidden_layers=3, parallel_drafting=True, mask_token_id=7
    )
    keys = set(peagle.state_dict())
    assert "mask_hidden" in keys
    for i in (1, 2):
        layer = {k[len(f"model.layers.{i}.") :] for k in keys if k.startswith(f"model.layers.{i}.")}
        assert layer == set(LAYER0) - {"hidden_norm.weight"}
    assert peagle.config.num_hidden_layers == 3 and peagle.config.mask_token_id == 7


def test_shapes_follow_the_target_config_with_gqa_and_explicit_head_dim():
    draft = Eagle3DraftModel.from_target_config(_config(head_dim=24), 32)
    attn = draft.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * 24, 2 * H)
    assert attn.k_proj.weight.shape == (2 * 24, 2 * H)
    assert attn.v_proj.weight.shape == (2 * 24, 2 * H)
    assert attn.o_proj.weight.shape == (H, 4 * 24)
    assert draft.model.fc.weight.shape == (H, 3 * H) and draft.model.fc.bias is None
    assert draft.lm_head.weight.shape == (32, H)
    assert draft.model.layers[0].mlp.gate_proj.weight.shape == (96, H)
    assert draft.config.architectures == ["LlamaEagle3DraftModel"] and draft.config.num_hidden_layers == 1
    assert draft.config.target_hidden_size == H and draft.config.draft_vocab_size == 32
    assert draft.config.tie_word_embeddings is False


def test_qwen3_target_config_builds_a_draft():
    cfg = Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=96, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    draft = Eagle3DraftModel.from_target_config(cfg, 16)
    assert draft.model.layers[0].self_attn.q_proj.weight.shape == (128, 2 * H)
    assert draft.config.layer_types == ["full_attention"]
    out = draft(torch.randint(0, V, (1, 5)), torch.randn(1, 5, H))
    assert out.shape == (1, 5, H)


def test_d2t_oracle_and_vocab_mapping_validation():
    draft = Eagle3DraftModel.from_target_config(_config(), 4)
    draft.set_vocab_mapping(torch.tensor([5, 9, 50, 100]))
    assert draft.d2t.tolist() == [5, 8, 48, 97]
    assert draft.d2t.dtype == torch.int64 and draft.t2d.dtype == torch.bool
    assert draft.t2d.nonzero().flatten().tolist() == [5, 9, 50, 100]
    with pytest.raises(ValueError, match=r"shape \[draft_vocab_size=4\], got \[3\]"):
        draft.set_vocab_mapping(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="distinct"):
        draft.set_vocab_mapping(torch.tensor([1, 2, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 120\)"):
        draft.set_vocab_mapping(torch.tensor([1, 2, 3, 120]))
    with pytest.raises(TypeError, match="integer"):
        draft.set_vocab_mapping(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    full = Eagle3DraftModel.from_target_config(_config(), None)
    full.set_vocab_mapping(torch.arange(V))  # no-op, no buffers
    assert not hasattr(full, "d2t")


def test_buffers_survive_dtype_cast_and_state_dict_round_trip():
    draft = Eagle3DraftModel.from_target_config(_config(), 4)
    draft.set_vocab_mapping(torch.tensor([5, 9, 50, 100]))
    draft = draft.to(torch.bfloat16)
    assert draft.d2t.dtype == torch.int64 and draft.t2d.dtype == torch.bool
    assert draft.d2t.tolist() == [5, 8, 48, 97]
    assert draft.model.fc.weight.dtype == torch.bfloat16
    fresh = Eagle3DraftModel.from_target_config(_config(), 4).to(torch.bfloat16)
    fresh.load_state_dict(draft.state_dict())
    for key, value in draft.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_rope_inverse_frequencies_stay_fp32_after_bf16_cast():
    draft = Eagle3DraftModel.from_target_config(_config(), 4).to(torch.bfloat16)
    assert draft.rotary_emb.inv_freq(torch.device("cpu")).dtype == torch.float32


def test_fc_norm_routes_chunk_i_through_norm_i():
    draft = Eagle3DraftModel.from_target_config(_config(), 8, fc_norm=True)
    with torch.no_grad():
        for i, norm in enumerate(draft.model.fc_norm):
            norm.weight.copy_(torch.linspace(0.5, 2.0, H) * (i + 1))
    aux = torch.randn(2, 3, 3 * H)
    chunks = aux.split(H, dim=-1)
    expected = draft.model.fc(torch.cat([draft.model.fc_norm[i](chunks[i]) for i in range(3)], dim=-1))
    torch.testing.assert_close(draft.project_hidden_states(aux), expected)
    plain = Eagle3DraftModel.from_target_config(_config(), 8)
    plain.model.fc.load_state_dict(draft.model.fc.state_dict())
    assert not torch.allclose(plain.project_hidden_states(aux), expected)
    with pytest.raises(ValueError, match="num_aux \\* H_t = 144"):
        draft.project_hidden_states(torch.randn(2, 3, 2 * H))


def test_norm_output_returns_post_norm_state_and_compute_logits_never_norms_twice():
    torch.manual_seed(0)
    plain = Eagle3DraftModel.from_target_config(_config(), 8)
    normed = Eagle3DraftModel.from_target_config(_config(), 8, norm_output=True)
    normed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.model.norm.weight.uniform_(0.5, 1.5)
        normed.model.norm.weight.copy_(plain.model.norm.weight)
    ids, hidden = torch.randint(0, V, (2, 6)), torch.randn(2, 6, H)
    pre = plain(ids, hidden)
    post = normed(ids, hidden)
    torch.testing.assert_close(post, plain.model.norm(pre))
    torch.testing.assert_close(normed.compute_logits(post), plain.compute_logits(pre))
    torch.testing.assert_close(normed.compute_logits(post), normed.lm_head(post))


def test_each_ttt_call_appends_one_key_value_rotated_at_pos_plus_step():
    draft = Eagle3DraftModel.from_target_config(_config(), 8).double()
    ids = torch.randint(0, V, (2, 6))
    positions = torch.tensor([[3, 4, 5, 6, 7, 8], [0, 1, 2, 0, 1, 2]])
    cache = [[], []]
    h1 = draft(ids, torch.randn(2, 6, H, dtype=torch.float64), position_ids=positions, cache_hidden=cache)
    assert len(cache[0]) == 1 and len(cache[1]) == 1
    ids2 = torch.randint(0, V, (2, 6))
    draft(ids2, h1, position_ids=positions, cache_hidden=cache)
    assert len(cache[0]) == 2 and len(cache[1]) == 2
    layer = draft.model.layers[0]
    combined = torch.cat((layer.input_layernorm(draft.embed_input_ids(ids2).double()), layer.hidden_norm(h1)), -1)
    k = layer.self_attn.k_proj(combined).view(2, 6, 2, 16).transpose(1, 2)
    cos, sin = draft.rotary_emb(positions + 1)
    torch.testing.assert_close(cache[0][1], apply_rotary(k, cos, sin))
    cos0, sin0 = draft.rotary_emb(positions)
    assert not torch.allclose(cache[0][1], apply_rotary(k, cos0, sin0))


def test_embeddings_frozen_for_eagle3_trainable_for_peagle_and_copied_from_the_target():
    cfg = _config()
    target = LlamaForCausalLM(cfg)
    draft = Eagle3DraftModel.from_target_config(cfg, 8)
    assert not draft.model.embed_tokens.weight.requires_grad
    draft.copy_embeddings_from(target)
    assert torch.equal(draft.model.embed_tokens.weight, target.get_input_embeddings().weight)
    peagle = Eagle3DraftModel.from_target_config(cfg, 8, parallel_drafting=True, mask_token_id=3)
    assert peagle.model.embed_tokens.weight.requires_grad
    peagle.copy_embeddings_from(target.get_input_embeddings().weight * 2)
    assert peagle.model.embed_tokens.weight.requires_grad
    torch.testing.assert_close(peagle.model.embed_tokens.weight, target.get_input_embeddings().weight * 2)
    unfrozen = Eagle3DraftModel.from_target_config(cfg, 8, freeze_embeddings=False)
    assert unfrozen.model.embed_tokens.weight.requires_grad
    with pytest.raises(ValueError, match=r"embedding shape must be \[120, 48\]"):
        draft.copy_embeddings_from(torch.zeros(10, H))
    with pytest.raises(TypeError, match="get_input_embeddings"):
        draft.copy_embeddings_from(42)


def test_peagle_mask_hidden_and_validation():
    draft = Eagle3DraftModel.from_target_config(
        _config(hidden_size=256, intermediate_size=64, head_dim=64), 8, parallel_drafting=True, mask_token_id=5
    )
    assert draft.mask_hidden.shape == (1, 1, 3 * 256)
    assert 0.85 < draft.mask_hidden.std().item() < 1.15  # N(0, 1), not the 0.02 weight init
    assert draft.project_hidden_states(draft.mask_hidden.view(1, -1)).shape == (1, 256)
    with pytest.raises(ValueError, match="needs mask_token_id"):
        Eagle3DraftModel.from_target_config(_config(), 8, parallel_drafting=True)
    with pytest.raises(ValueError, match=r"in \[0, 120\), got 120"):
        Eagle3DraftModel.from_target_config(_config(), 8, parallel_drafting=True, mask_token_id=120)
    with pytest.raises(ValueError, match="only used with parallel_drafting"):
        Eagle3DraftModel.from_target_config(_config(), 8, mask_token_id=3)
    with pytest.raises(ValueError, match="exactly one layer"):
        Eagle3DraftModel.from_target_config(_config(), 8, num_hidden_layers=2)
    with pytest.raises(ValueError, match="draft_vocab_size must be <= the target vocab_size 120"):
        Eagle3DraftModel.from_target_config(_config(), 121)
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        Eagle3DraftModel.from_target_config(_config(), 8, attn_implementation="flash")
    with pytest.raises(ValueError, match="rope_type must be one of"):
        Eagle3DraftModel.from_target_config(
            _config(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                     "long_factor": [1.0] * 8}), 8)


def test_forward_positions_with_causal_mask_equals_ttt_step_zero_and_reaches_deep_layers():
    torch.manual_seed(0)
    one = Eagle3DraftModel.from_target_config(_config(), 8, parallel_drafting=True, mask_token_id=1).double()
    ids, hidden = torch.randint(0, V, (1, 7)), torch.randn(1, 7, H, dtype=torch.float64)
    positions = torch.arange(7)[None]
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(one.forward_positions(ids, hidden, positions, causal), one(ids, hidden))
    deep = Eagle3DraftModel.from_target_config(
        _config(), 8, num_hidden_layers=3, parallel_drafting=True, mask_token_id=1
    ).double()
    out = deep.forward_positions(ids, hidden, positions, causal)
    assert Eagle3DraftModel.forward_peagle is Eagle3DraftModel.forward_positions  # the seed name
    deep.compute_logits(out).sum().backward()
    for i in (1, 2):
        assert deep.model.layers[i].self_attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="single-layer draft"):
        deep(ids, hidden)


ROPE_CASES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
                    "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2},
}


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_rope_tables_match_transformers(case):
    cfg = _config(head_dim=32, rope_parameters=dict(ROPE_CASES[case]))
    positions = torch.tensor([[0, 1, 5, 63, 64, 200]])
    cos, sin = RotaryEmbedding(cfg)(positions)
    hf_cos, hf_sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float32), positions)
    torch.testing.assert_close(cos, hf_cos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sin, hf_sin, rtol=1e-5, atol=1e-5)


def test_rope_reads_the_transformers4_config_layout_and_partial_rotary():
    new = _config(head_dim=32, rope_parameters={"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0})
    legacy = SimpleNamespace(hidden_size=H, num_attention_heads=4, head_dim=32, max_position_embeddings=256,
                             rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    torch.testing.assert_close(compute_inv_freq(legacy)[0], compute_inv_freq(new)[0])
    partial = SimpleNamespace(hidden_size=H, num_attention_heads=4, head_dim=32, max_position_embeddings=256,
                              rope_theta=1e4, rope_scaling=None, partial_rotary_factor=0.5)
    inv_freq, _, rot_dim = compute_inv_freq(partial)
    assert rot_dim == 16 and inv_freq.shape == (8,)
    x = torch.randn(1, 2, 3, 32)
    cos, sin = RotaryEmbedding(partial)(torch.arange(3)[None])
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., 16:], x[..., 16:]) and not torch.allclose(out[..., :16], x[..., :16])


# ---------------------------------------------------------------- row structure of the TTT unroll


def _ttt_unroll(draft, ids, hidden, attention, seq_lens, steps, *, rows=None):
    cache = [[], []]
    for _ in range(steps):
        hidden = draft(ids, hidden, attention, None, cache, seq_lens, rows=rows)
    return hidden


def test_document_ids_are_built_once_per_unroll_on_the_host(monkeypatch):
    """Per-batch work leaves the TTT unroll: the caller builds the row structure once (``ttt_rows``, seq_lens ->
    document ids on a host copy) and passes it to every step; the module keeps no state between calls, and the
    result equals a build at every step. The trainer module builds it once per batch."""
    import eagle_ext.models.draft as draft_module
    from eagle_ext.eagle3 import Eagle3TrainerModule

    calls = []
    original = draft_module.document_ids_from_seq_lens

    def counting(seq_lens, seq_len):
        calls.append(seq_lens.device.type)
        return original(seq_lens, seq_len)

    monkeypatch.setattr(draft_module, "document_ids_from_seq_lens", counting)
    draft = Eagle3DraftModel.from_target_config(_config(), 32)
    g = torch.Generator().manual_seed(0)
    b, t = 2, 12
    ids = torch.randint(0, V, (b, t), generator=g)
    hidden = torch.randn(b, t, H, generator=g)
    attention = torch.ones(b, t, dtype=torch.long)
    seq_lens = torch.tensor([[5, 7], [12, 0]])
    rows = draft.ttt_rows(attention, seq_lens, b, t, ids.device)
    out = _ttt_unroll(draft, ids, hidden, attention, seq_lens, 3, rows=rows)
    assert calls == ["cpu"]
    assert not any("cache" in name for name in vars(draft) if name.startswith("_ttt"))  # no hidden state
    rebuilt = _ttt_unroll(draft, ids, hidden, attention, seq_lens, 3)  # rows=None: built at every step
    assert len(calls) == 4
    torch.testing.assert_close(out, rebuilt, rtol=0, atol=0)
    # the trainer module: once per batch, whatever ttt_steps is
    vd = draft.lm_head.weight.shape[0]
    selected = torch.arange(vd)
    mask = torch.zeros(V, dtype=torch.bool)
    mask[selected] = True
    trainer = Eagle3TrainerModule(draft, selected_token_ids=selected, selected_token_mask=mask, ttt_steps=3,
                                  loss_impl="reference")
    calls.clear()
    aux = torch.randn(b, t, 3 * draft.config.target_hidden_size, generator=g)
    trainer(ids, attention, torch.ones(b, t), aux, torch.randn(b, t, V, generator=g), seq_lens=seq_lens)
    assert calls == ["cpu"]


def _sync_warnings_from(files, fn):
    """Run ``fn`` under ``torch.cuda.set_sync_debug_mode("warn")``; return the sync warnings raised from a
    line of one of ``files`` (path suffixes) and the total count."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    ours = [f"{w.filename}:{w.lineno}" for w in syncs if w.filename.replace("\\", "/").endswith(files)]
    return ours, len(syncs)


@pytest.mark.gpu
@pytest.mark.parametrize("seq_lens_device", ["cpu", "cuda"])
def test_ttt_unroll_has_no_host_sync_per_step(seq_lens_device):
    draft = Eagle3DraftModel.from_target_config(_config(), 32).cuda()
    b, t = 2, 300
    ids = torch.randint(0, V, (b, t), device="cuda")
    hidden = torch.randn(b, t, H, device="cuda", requires_grad=True)
    attention = torch.ones(b, t, dtype=torch.long, device="cuda")
    seq_lens = torch.tensor([[120, 180], [300, 0]], device=seq_lens_device)
    _ttt_unroll(draft, ids, hidden, attention, seq_lens, 4).sum().backward()  # warm-up
    files = ("models/draft.py", "models/attention.py", "models/masks.py", "models/rope.py")
    ours, total = _sync_warnings_from(
        files, lambda: _ttt_unroll(draft, ids, hidden, attention, seq_lens, 4).sum().backward()
    )
    # seq_lens on the host: none; on CUDA: one read-back per unroll (step 0), none per step.
    assert len(ours) == (0 if seq_lens_device == "cpu" else 1), (ours, total)
