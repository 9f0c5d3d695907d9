"""Eagle3TargetModel: aux layer selection, hooks, shifts, packing masks and the supervision contract."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from eagle_ext.models import (
    Eagle3TargetBatch,
    Eagle3TargetModel,
    build_block_causal_additive_mask,
    default_eagle3_aux_layer_ids,
)
from eagle_ext.models.target import find_decoder_layers


def _llama(num_layers=8, vocab=64):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_default_aux_layer_ids():
    assert default_eagle3_aux_layer_ids(32) == [1, 15, 28]
    assert default_eagle3_aux_layer_ids(8) == [1, 3, 4]
    assert default_eagle3_aux_layer_ids(7) == [1, 2, 3]
    for shallow in (1, 4, 6):
        with pytest.raises(ValueError, match=f"num_hidden_layers={shallow} is too shallow"):
            default_eagle3_aux_layer_ids(shallow)


def test_explicit_aux_layer_ids_are_validated():
    model = _llama(num_layers=4)
    assert Eagle3TargetModel(model, aux_layer_ids=[0, 2, 3]).aux_layer_ids == [0, 2, 3]
    for bad in ([0, 1], [0, 1, 1], [0, 1, 4], [-1, 1, 2], [0, 1, 2, 3]):
        with pytest.raises(ValueError, match=r"aux_layer_ids must be 3 distinct ints in \[0, 4\)"):
            Eagle3TargetModel(model, aux_layer_ids=bad)
    with pytest.raises(ValueError, match="too shallow"):
        Eagle3TargetModel(model)


def test_generate_batch_captures_layer_outputs_and_shifts_supervision():
    model = _llama()
    target = Eagle3TargetModel(model)
    assert target.aux_layer_ids == [1, 3, 4] and not model.training
    ids = torch.randint(0, 64, (2, 9))
    attention = torch.ones(2, 9, dtype=torch.int64)
    attention[1, 6:] = 0
    loss = torch.randint(0, 2, (2, 9))
    hooks_before = [len(layer._forward_hooks) for layer in find_decoder_layers(model)]
    batch = target.generate_batch(ids, attention, loss)
    assert [len(layer._forward_hooks) for layer in find_decoder_layers(model)] == hooks_before
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    expected_aux = torch.cat([ref.hidden_states[i + 1] for i in (1, 3, 4)], dim=-1)
    torch.testing.assert_close(batch.aux_hidden_states, expected_aux)
    assert batch.aux_hidden_states.shape == (2, 9, 3 * 32) and not batch.aux_hidden_states.requires_grad
    torch.testing.assert_close(batch.target_logits[:, :-1], ref.logits[:, 1:])
    assert torch.equal(batch.target_logits[:, -1], torch.zeros_like(ref.logits[:, -1]))
    assert torch.equal(batch.input_ids[:, :-1], ids[:, 1:]) and batch.input_ids[:, -1].eq(0).all()
    assert torch.equal(batch.loss_mask[:, :-1], loss[:, 1:]) and batch.loss_mask[:, -1].eq(0).all()
    assert batch.attention_mask is attention  # unshifted
    assert set(batch.to_trainer_inputs()) == {"input_ids", "attention_mask", "loss_mask", "aux_hidden_states",
                                              "target_logits"}


def test_hooks_are_removed_when_the_forward_raises():
    model = _llama()
    target = Eagle3TargetModel(model)
    hooks_before = [len(layer._forward_hooks) for layer in find_decoder_layers(model)]
    bad_ids = torch.full((1, 4), 10_000)  # out of the embedding table
    with pytest.raises(IndexError):
        target.generate_batch(bad_ids, torch.ones(1, 4), torch.ones(1, 4))
    assert [len(layer._forward_hooks) for layer in find_decoder_layers(model)] == hooks_before


def test_tuple_returning_layers_in_transformer_h_container():
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=7, n_head=4, n_positions=64)
    model = GPT2LMHeadModel(cfg)
    target = Eagle3TargetModel(model)
    assert target.aux_layer_ids == [1, 2, 3]
    ids = torch.randint(0, 50, (1, 6))
    batch = target.generate_batch(ids, torch.ones(1, 6, dtype=torch.int64), torch.ones(1, 6, dtype=torch.int64))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(batch.aux_hidden_states, torch.cat([ref.hidden_states[i + 1] for i in (1, 2, 3)], -1))


class _Wrapper(nn.Module):
    def __init__(self, layers, path):
        super().__init__()
        node = self
        parts = path.split(".")
        for part in parts[:-1]:
            child = nn.Module()
            setattr(node, part, child)
            node = child
        setattr(node, parts[-1], layers)


@pytest.mark.parametrize(
    "path", ["model.layers", "model.language_model.layers", "language_model.layers", "layers", "transformer.h"]
)
def test_layer_containers(path):
    layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
    assert find_decoder_layers(_Wrapper(layers, path)) == list(layers)
    keyed = nn.ModuleDict({str(i): layers[i] for i in (0, 1, 2)})
    assert find_decoder_layers(_Wrapper(keyed, path)) == list(layers)
    with pytest.raises(ValueError, match="cannot find the decoder layers"):
        find_decoder_layers(nn.Linear(2, 2))


def test_block_causal_additive_mask():
    mask = build_block_causal_additive_mask(torch.tensor([[2, 3], [5, 0]]), 5, torch.float32)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.float32
    visible = mask == 0
    assert visible[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]
    ]
    assert torch.equal(visible[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    assert mask[0, 0, 0, 1] == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="must sum to the row width T=5"):
        build_block_causal_additive_mask(torch.tensor([[2, 2]]), 5)


def test_packed_forward_equals_separate_documents():
    model = _llama()
    target = Eagle3TargetModel(model)
    docs = [torch.randint(1, 64, (n,)) for n in (3, 4, 2)]
    ids = torch.cat(docs + [torch.zeros(1, dtype=torch.int64)])[None]  # one pad folded into the last doc
    seq_lens = torch.tensor([[3, 4, 3]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1, 2]])
    attention = torch.tensor([[1] * 9 + [0]])
    remaining = torch.tensor([[2, 1, 0, 3, 2, 1, 0, 1, 0, 0]])
    batch = target.generate_batch(ids, attention, torch.ones_like(ids), position_ids=positions, seq_lens=seq_lens,
                                  doc_remaining=remaining)
    start = 0
    for doc in docs:
        single = target.generate_batch(doc[None], torch.ones(1, len(doc)), torch.ones(1, len(doc)))
        end = start + len(doc)
        torch.testing.assert_close(batch.aux_hidden_states[:, start:end], single.aux_hidden_states, rtol=1e-5,
                                   atol=1e-5)
        # shifted logits agree except at the document's last slot (which reads the next document)
        torch.testing.assert_close(batch.target_logits[:, start:end - 1], single.target_logits[:, :-1], rtol=1e-5,
                                   atol=1e-5)
        start = end
    inputs = batch.to_trainer_inputs()
    assert torch.equal(inputs["seq_lens"], seq_lens) and torch.equal(inputs["doc_remaining"], remaining)
    assert torch.equal(inputs["position_ids"], positions)
    with pytest.raises(ValueError, match="need per-document position_ids"):
        target.generate_batch(ids, attention, torch.ones_like(ids), seq_lens=seq_lens)


class _FakeFlashLM(nn.Module):
    """Records the kwargs a flash-attention target receives."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=3, _attn_implementation="flash_attention_2")
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(nn.Identity() for _ in range(3))
        self.embed = nn.Embedding(8, 4)
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        self.calls.append({"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": use_cache})
        h = self.embed(input_ids)
        for layer in self.model.layers:
            h = layer(h)
        return h @ self.embed.weight.T


def test_flash_target_gets_position_ids_instead_of_a_mask_and_needs_batch_one():
    model = _FakeFlashLM()
    target = Eagle3TargetModel(model, aux_layer_ids=[0, 1, 2])
    ids = torch.randint(0, 8, (1, 5))
    positions = torch.tensor([[0, 1, 0, 1, 2]])
    batch = target.generate_batch(ids, torch.ones(1, 5), torch.ones(1, 5), position_ids=positions,
                                  seq_lens=torch.tensor([[2, 3]]))
    call = model.calls[-1]
    assert call["attention_mask"] is None and torch.equal(call["position_ids"], positions)
    assert call["use_cache"] is False
    assert batch.target_logits.shape == (1, 5, 8)
    with pytest.raises(ValueError, match="batch size 1, got B=2"):
        target.generate_batch(ids.repeat(2, 1), torch.ones(2, 5), torch.ones(2, 5), position_ids=positions.repeat(2, 1),
                              seq_lens=torch.tensor([[2, 3], [5, 0]]))


def test_batch_needs_exactly_one_supervision_source():
    base = dict(input_ids=torch.zeros(1, 3, dtype=torch.int64), attention_mask=torch.ones(1, 3),
                loss_mask=torch.ones(1, 3), aux_hidden_states=torch.zeros(1, 3, 6))
    probs, pmask = torch.ones(1, 3, 4) / 4, torch.ones(1, 3, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="exactly one supervision source"):
        Eagle3TargetBatch(**base)
    with pytest.raises(ValueError, match="exactly one supervision source"):
        Eagle3TargetBatch(**base, target_logits=torch.zeros(1, 3, 8), target_probs=probs, position_mask=pmask)
    with pytest.raises(ValueError, match="together"):
        Eagle3TargetBatch(**base, target_probs=probs)
    cached = Eagle3TargetBatch(**base, target_probs=probs, position_mask=pmask,
                               position_ids=torch.arange(3)[None], doc_remaining=torch.zeros(1, 3))
    inputs = cached.to_trainer_inputs()
    assert set(inputs) == {"input_ids", "attention_mask", "loss_mask", "aux_hidden_states", "target_probs",
                           "position_mask", "position_ids"}
