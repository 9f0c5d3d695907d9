"""Targets of many families: per-layer-type packed masks (sliding windows), hybrid refusals, draft shapes."""

from __future__ import annotations

import os

import pytest
import torch

from eagle_ext.models import Eagle3TargetModel
from eagle_ext.models.families import (
    LayerAttention,
    check_packing_supported,
    default_draft_shape,
    stateful_layer_types,
    target_layer_attention,
)
from eagle_ext.models.masks import block_causal_visibility
from eagle_ext.models.target import build_block_causal_additive_mask
from tests.target_zoo import FAMILIES, SLIDING_FAMILIES, WINDOW, zoo_config, zoo_model

AUX = [0, 1, 3]


def _model_or_skip(family: str):
    model = zoo_model(family)
    if model is None:
        pytest.skip(f"the installed transformers has no {family}")
    return model


def _packed_row(doc_lengths, vocab=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.randint(3, vocab, (n,), generator=gen) for n in doc_lengths]
    ids = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(n) for n in doc_lengths])[None]
    return docs, ids, positions, torch.tensor([list(doc_lengths)])


def test_sliding_visibility_counts_the_query_itself():
    visible = block_causal_visibility(torch.zeros(1, 6, dtype=torch.int64), None, (0, 6), (0, 6), sliding_window=3)
    assert visible[0, 0, 5].int().tolist() == [0, 0, 0, 1, 1, 1]
    assert visible[0, 0, 1].int().tolist() == [1, 1, 0, 0, 0, 0]
    mask = build_block_causal_additive_mask(torch.tensor([[4, 2]]), 6, sliding_window=2)
    assert (mask[0, 0] == 0).int().tolist() == [
        [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="sliding_window must be None or a positive int, got 0"):
        block_causal_visibility(None, None, (0, 2), (0, 2), sliding_window=0, device=torch.device("cpu"))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "qwen3_next"])
def test_packed_rows_reproduce_each_document_alone_on_every_layer_type(family):
    """Aux states of every captured layer type and the supervision (logits, argmax) of a packed row equal each
    document run alone; documents are longer than the window, so a lost window shows from position WINDOW on."""
    model = _model_or_skip(family)
    kinds = {layer.kind for layer in target_layer_attention(model.config)}
    if family in SLIDING_FAMILIES:
        assert "sliding_attention" in kinds
    target = Eagle3TargetModel(model, aux_layer_ids=AUX)
    lengths = (3 * WINDOW, 2 * WINDOW + 3, WINDOW + 5)
    docs, ids, positions, seq_lens = _packed_row(lengths)
    batch = target.generate_batch(ids, torch.ones_like(ids), torch.ones_like(ids), position_ids=positions,
                                  seq_lens=seq_lens)
    start = 0
    for doc in docs:
        n = len(doc)
        alone = target.generate_batch(doc[None], torch.ones(1, n, dtype=torch.int64), torch.ones(1, n))
        end = start + n
        torch.testing.assert_close(batch.aux_hidden_states[:, start:end], alone.aux_hidden_states, rtol=1e-4,
                                   atol=1e-4)
        torch.testing.assert_close(batch.target_logits[:, start:end - 1], alone.target_logits[:, :-1], rtol=1e-4,
                                   atol=1e-4)
        assert torch.equal(batch.target_logits[:, start:end - 1].argmax(-1), alone.target_logits[:, :-1].argmax(-1))
        start = end


@pytest.mark.parametrize("family", SLIDING_FAMILIES)
def test_one_mask_for_every_layer_loses_the_window(family):
    """The defect the per-layer masks fix: the block-causal mask alone on a sliding target differs from the
    documents run alone (so the test above can fail)."""
    model = _model_or_skip(family)
    target = Eagle3TargetModel(model, aux_layer_ids=AUX)
    target._packed_layer_masks = lambda seq_lens, t: {}  # the old behaviour: one 4-D mask for all layers
    lengths = (3 * WINDOW, 2 * WINDOW)
    docs, ids, positions, seq_lens = _packed_row(lengths)
    batch = target.generate_batch(ids, torch.ones_like(ids), torch.ones_like(ids), position_ids=positions,
                                  seq_lens=seq_lens)
    alone = target.generate_batch(docs[0][None], torch.ones(1, lengths[0], dtype=torch.int64),
                                  torch.ones(1, lengths[0]))
    diff = (batch.aux_hidden_states[:, : lengths[0]] - alone.aux_hidden_states).abs().amax(-1)[0]
    assert float(diff[:WINDOW].max()) < 1e-4 and float(diff[WINDOW:].max()) > 1e-3


def test_layer_attention_layouts():
    cfg = zoo_config("gpt_oss")
    if cfg is not None:
        assert target_layer_attention(cfg) == [LayerAttention("sliding_attention", WINDOW),
                                               LayerAttention("full_attention")] * 2

    class Old:  # a transformers 4.x Qwen2-style config without layer_types
        model_type, num_hidden_layers, sliding_window, use_sliding_window, max_window_layers = "qwen2", 4, 16, True, 3

    assert [layer.kind for layer in target_layer_attention(Old())] == ["full_attention"] * 3 + ["sliding_attention"]
    Old.use_sliding_window = False
    assert {layer.kind for layer in target_layer_attention(Old())} == {"full_attention"}

    class Gemma3Old:  # Gemma 3 in transformers 4.5x: every 6th layer global
        model_type, num_hidden_layers, sliding_window, sliding_window_pattern = "gemma3_text", 6, 512, 6

    assert [layer.window for layer in target_layer_attention(Gemma3Old())] == [512] * 5 + [None]


def test_hybrid_targets_are_refused_for_packing_before_anything_loads():
    cfg = zoo_config("qwen3_next")
    if cfg is not None:
        assert stateful_layer_types(cfg) == ["linear_attention"]
        with pytest.raises(ValueError, match=r"packed rows \(data.packed_sequence_size > 0\) are refused .*'qwen3_next'"
                                             r".*linear_attention.*packed_sequence_size: 0"):
            check_packing_supported(cfg)

    class Jamba:  # a hybrid model type whose config lists no layer types
        model_type, num_hidden_layers = "jamba", 4

    assert stateful_layer_types(Jamba()) == ["jamba (hybrid model type)"]
    with pytest.raises(ValueError, match="recurrent / linear-attention state"):
        check_packing_supported(Jamba())

    class Chunked:
        model_type, num_hidden_layers, layer_types = "llama4_text", 2, ["chunked_attention", "full_attention"]

    with pytest.raises(ValueError, match=r"has \['chunked_attention'\]"):
        check_packing_supported(Chunked())
    for family in ("llama", "gpt_oss", "gemma3", "mistral_sliding"):
        if zoo_config(family) is not None:
            check_packing_supported(zoo_config(family))


def test_hybrid_target_capture_refuses_packed_rows():
    model = _model_or_skip("qwen3_next")
    target = Eagle3TargetModel(model, aux_layer_ids=AUX)
    docs, ids, positions, seq_lens = _packed_row((5, 4))
    with pytest.raises(ValueError, match="packed rows .* are refused .*linear_attention"):
        target.generate_batch(ids, torch.ones_like(ids), torch.ones_like(ids), position_ids=positions,
                              seq_lens=seq_lens)
    batch = target.generate_batch(ids, torch.ones_like(ids), torch.ones_like(ids))  # padded rows work
    assert batch.aux_hidden_states.shape == (1, 9, 3 * 64)


def test_default_draft_shape_for_mla_and_moe_targets():
    from transformers import AutoConfig

    ds = AutoConfig.for_model("deepseek_v3")  # the real DeepSeek-V3 sizes (hidden 7168, 128 heads, MLA)
    ds.hidden_size, ds.num_attention_heads, ds.num_key_value_heads = 7168, 128, 128
    ds.intermediate_size, ds.n_routed_experts, ds.kv_lora_rank = 18432, 256, 512
    shape = default_draft_shape(ds)
    assert (shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]) == (56, 8, 128)
    assert shape["intermediate_size"] == 18432 and shape["notes"]
    oss = zoo_config("gpt_oss")
    if oss is not None:
        oss.hidden_size, oss.intermediate_size = 2880, 2880
        assert default_draft_shape(oss)["intermediate_size"] == 7680  # 8/3 x 2880 rounded up to 256
    llama = zoo_config("llama")
    assert default_draft_shape(llama) == {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                                          "intermediate_size": 128, "notes": []}


def test_gemma3_draft_gets_one_rope_from_the_global_layers_and_it_survives_save_and_load(tmp_path):
    from eagle_ext.models import Eagle3DraftModel
    from eagle_ext.serve.checkpoints import load_draft, save_draft

    cfg = zoo_config("gemma3")
    if cfg is None:
        pytest.skip("the installed transformers has no gemma3")
    cfg.rope_parameters = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    draft = Eagle3DraftModel.from_target_config(cfg, 32)
    expected = 1.0 / (1e6 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)) / 8.0
    torch.testing.assert_close(draft.rotary_emb._inv_freq, expected)
    local = Eagle3DraftModel.from_target_config(cfg, 32, rope_layer_type="sliding_attention")
    torch.testing.assert_close(local.rotary_emb._inv_freq,
                               1.0 / (1e4 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)))
    save_draft(draft, tmp_path / "d")
    torch.testing.assert_close(load_draft(tmp_path / "d").rotary_emb._inv_freq, expected)
    with pytest.raises(ValueError, match="draft.rope_layer_type must name one of"):
        Eagle3DraftModel.from_target_config(cfg, 32, rope_layer_type="global")


def test_effective_norm_weight_reads_gemma_and_llama_conventions():
    from eagle_ext.models.draft import effective_norm_weight

    for family, expected in (("gemma3", 1.25), ("llama", 0.25)):  # Gemma: (1 + w) x; Llama: w x
        model = zoo_model(family)
        if model is None:
            continue
        with torch.no_grad():
            model.model.norm.weight.fill_(0.25)
        torch.testing.assert_close(effective_norm_weight(model.model.norm, 64), torch.full((64,), expected))


def test_draft_shape_is_a_choice_and_biases_are_not_copied_by_default():
    from eagle_ext.models import Eagle3DraftModel

    cfg = zoo_config("gpt_oss")
    if cfg is None:
        pytest.skip("the installed transformers has no gpt_oss")
    assert cfg.attention_bias
    draft = Eagle3DraftModel.from_target_config(cfg, 32)
    assert draft.model.layers[0].self_attn.q_proj.bias is None and draft.model.layers[0].mlp.up_proj.bias is None
    biased = Eagle3DraftModel.from_target_config(cfg, 32, bias=True, num_attention_heads=8, head_dim=8,
                                                 intermediate_size=96)
    attn = biased.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and biased.model.layers[0].mlp.up_proj.bias is not None
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (8, 2, 8)
    assert biased.model.layers[0].mlp.up_proj.out_features == 96
    with pytest.raises(ValueError, match=r"num_attention_heads \(6\) must be a multiple of num_key_value_heads \(4\)"):
        Eagle3DraftModel.from_target_config(cfg, 32, num_attention_heads=6, num_key_value_heads=4)


# ------------------------------------------------------------------------------------------------ evaluator

ROLLBACK_FAMILIES = SLIDING_FAMILIES + ("qwen3_next",)


def _oracle_decode(runner, model, prompt, base, k, seed):
    from eagle_ext.serve.speculative import speculative_decode
    from tests.test_speculative import OracleDrafter

    oracle = OracleDrafter(model, prompt, reference=base.tokens + [0] * k, noise=0.3, seed=seed)
    return speculative_decode(runner, oracle, prompt, num_draft_tokens=k, max_new_tokens=len(base.tokens))


@pytest.mark.parametrize("family", ROLLBACK_FAMILIES)
def test_speculative_greedy_equals_target_only_on_sliding_and_hybrid_targets(family):
    """Prompts longer than the window, every acceptance length (a noisy oracle): the target cache must roll
    back sliding layers (crop past a full window) and linear-attention state; output == target-only greedy."""
    from eagle_ext.models import Eagle3DraftModel
    from eagle_ext.serve.speculative import TargetRunner, build_drafter, speculative_decode, target_decode

    model = _model_or_skip(family)
    runner = TargetRunner(model, AUX)
    assert runner.rollback == ("record" if family == "qwen3_next" else "crop")
    seen: set[int] = set()
    for seed in range(2):
        prompt = torch.randint(3, 96, (2 * WINDOW + 3,), generator=torch.Generator().manual_seed(seed)).tolist()
        base = target_decode(runner, prompt, max_new_tokens=20)
        for k in (1, 3):
            res = _oracle_decode(runner, model, prompt, base, k, seed)
            assert res.tokens == base.tokens
            seen.update(res.accepted)
    assert seen >= {0, 1, 2, 3}
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(model.config, None).eval()  # a real drafter, K = 3, fp32
    draft.copy_embeddings_from(model)
    res = speculative_decode(runner, build_drafter(draft), prompt, num_draft_tokens=3, max_new_tokens=20)
    assert res.tokens == base.tokens


def test_hybrid_target_rolls_back_by_rerunning_from_a_saved_state():
    from eagle_ext.serve.speculative import TargetRunner, target_decode

    model = _model_or_skip("qwen3_next")
    runner = TargetRunner(model, AUX, rollback="rerun")
    prompt = list(range(3, 3 + 2 * WINDOW))
    base = target_decode(runner, prompt, max_new_tokens=12)
    for k in (1, 3):
        assert _oracle_decode(runner, model, prompt, base, k, seed=k).tokens == base.tokens
    with pytest.raises(ValueError, match="rollback='crop' cannot roll back this target's \\['linear_attention'\\]"):
        TargetRunner(model, AUX, rollback="crop")


def test_a_cache_built_from_the_config_cannot_roll_back_a_sliding_target():
    """The defect: transformers' DynamicCache(config=...) keeps only the window on sliding layers and refuses
    the crop a rejected draft needs once the window is full (what TargetRunner.reset used to build)."""
    from transformers import DynamicCache

    model = _model_or_skip("gpt_oss")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.arange(3, 3 + 2 * WINDOW)[None], cache=cache, use_cache=True)
    with pytest.raises(RuntimeError, match="does not track past states"):
        cache.crop(-2)


# ------------------------------------------------------------------------------------------------ engine limits


def test_engine_limits_are_recorded_for_known_families_only_and_read_back_from_exports(tmp_path):
    import json

    from eagle_ext.models import Eagle3DraftModel
    from eagle_ext.serve.engine_limits import KNOWN_ENGINE_LIMITS, known_engine_limits
    from eagle_ext.serve.export import export_draft, export_engine_notes

    assert {(limit.engine, limit.version) for limit in KNOWN_ENGINE_LIMITS} == {("vllm", "0.32.0")}
    assert [limit.model_types[0] for limit in known_engine_limits("glm4")] == ["glm4"]
    assert known_engine_limits(architectures=["Gemma3ForConditionalGeneration"])[0].engine == "vllm"
    assert known_engine_limits("llama", ["LlamaForCausalLM"]) == []
    assert known_engine_limits("glm4", engine="sglang") == []

    for family, expected in (("glm4", "vLLM 0.32.0 cannot serve a glm4 target with a draft: its GLM-4 model has "
                                      "no EAGLE-3 interface"), ("llama", None)):
        cfg = zoo_config(family)
        if cfg is None:
            continue
        draft = Eagle3DraftModel.from_target_config(cfg, None)
        out = export_draft(draft, tmp_path / family, format="speculators", aux_layer_ids=AUX, dtype="fp32")
        block = json.loads(open(os.path.join(out, "config.json")).read())["eagle_ext"]
        if expected is None:
            assert "engine_limits" not in block and "target_model_type" not in block
            assert export_engine_notes(out) == []
        else:
            assert block["target_model_type"] == family and block["engine_limits"][0].startswith(expected)
            assert export_engine_notes(out)[0].startswith(expected)
            # a foreign speculators export without the eagle_ext block: read from the verifier's architectures
            config = json.loads(open(os.path.join(out, "config.json")).read())
            del config["eagle_ext"]
            with open(os.path.join(out, "config.json"), "w") as f:
                json.dump(config, f)
            assert export_engine_notes(out)[0].startswith(expected)


def test_init_head_from_target_copies_gemmas_effective_norm_gain():
    from eagle_ext.models import Eagle3DraftModel
    from eagle_ext.train.builders import init_head_from_target

    model = _model_or_skip("gemma3")
    with torch.no_grad():
        model.model.norm.weight.fill_(0.25)  # Gemma: gain 1 + 0.25
    draft = Eagle3DraftModel.from_target_config(model.config, 32)
    init_head_from_target(draft, model, torch.arange(32))
    torch.testing.assert_close(draft.model.norm.weight.detach(), torch.full((64,), 1.25))
    torch.testing.assert_close(draft.lm_head.weight.detach(), model.lm_head.weight[:32].detach())


def test_sliding_layers_called_without_a_mask_keyword_are_refused_not_silently_unwindowed():
    """A model whose decoder layers take the mask positionally cannot get the per-layer mask: a clear error."""
    from types import SimpleNamespace

    from torch import nn

    class Layer(nn.Module):
        def forward(self, hidden, mask):
            return hidden + 1.0

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(4))

    class FakeLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.config = SimpleNamespace(model_type="fake", num_hidden_layers=4, sliding_window=2,
                                          layer_types=["sliding_attention", "full_attention"] * 2)
            self.embed = nn.Embedding(16, 4)

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            h = self.embed(input_ids)
            for layer in self.model.layers:
                h = layer(h, attention_mask)
            return h @ self.embed.weight.T

    target = Eagle3TargetModel(FakeLM(), aux_layer_ids=[0, 1, 3])
    docs, ids, positions, seq_lens = _packed_row((4, 3), vocab=16)
    with pytest.raises(ValueError, match=r"target decoder layers \[0, 2\] run sliding-window attention but were "
                                         "called without an attention_mask keyword"):
        target.generate_batch(ids, torch.ones_like(ids), torch.ones_like(ids), position_ids=positions,
                              seq_lens=seq_lens)


def test_recorded_rollback_deeper_than_max_rollback_is_refused():
    from eagle_ext.serve.speculative import TargetRunner

    model = _model_or_skip("qwen3_next")
    runner = TargetRunner(model, AUX, max_rollback=1)
    runner.reset()
    runner.forward(torch.arange(3, 13), capture_aux=False)
    runner.forward(torch.arange(3, 7), capture_aux=True)
    with pytest.raises(ValueError, match="cannot roll back 3 positions; this runner records 1"):
        runner.crop(runner.length - 3)
