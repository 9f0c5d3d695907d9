"""Eagle3TrainerModule: TTT unroll oracles, packing parity and gating, supervision sources, counters."""

import functools

import pytest
import torch
from transformers import LlamaConfig

from eagle_ext.eagle3 import Eagle3TrainerModule, compute_target_distribution, shift_left_with_zero
from eagle_ext.eagle3.loss import eagle3_step_loss
from eagle_ext.models import Eagle3DraftModel

V, H, VD = 80, 32, 40


def _config():
    return LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256)


def _vocab(vd=VD, seed=0):
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:vd]
    mask = torch.zeros(V, dtype=torch.bool)
    mask[ids] = True
    return ids, mask


def _trainer(ttt_steps, *, vd=VD, dtype=torch.float32, impl="lean", chunk=5, seed=0, draft=None):
    ids, mask = _vocab(vd)
    if draft is None:
        torch.manual_seed(seed)
        draft = Eagle3DraftModel.from_target_config(_config(), vd).to(dtype)
        with torch.no_grad():  # livelier logits than the 0.02 init
            draft.lm_head.weight.normal_(0.0, 0.3)
        draft.set_vocab_mapping(ids)
    draft.set_attn_implementation(impl, query_chunk_size=chunk)
    return Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=ttt_steps,
                               loss_impl="reference")


def _batch(b, t, *, vd=VD, dtype=torch.float32, seed=1, loss_density=0.8):
    g = torch.Generator().manual_seed(seed)
    ids, _ = _vocab(vd)
    logits = torch.randn(b, t, V, generator=g)
    # put each position's argmax on a draft-vocab token so most positions are supervised
    boost = ids[torch.randint(0, vd, (b, t), generator=g)]
    logits.scatter_add_(-1, boost[..., None], torch.full((b, t, 1), 4.0))
    loss_mask = (torch.rand(b, t, generator=g) < loss_density).long()
    loss_mask[:, -1] = 0  # the shifted tail
    return {
        "input_ids": torch.randint(0, V, (b, t), generator=g),
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "loss_mask": loss_mask,
        "aux_hidden_states": torch.randn(b, t, 3 * H, generator=g).to(dtype),
        "target_logits": logits.to(dtype),
    }


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_ttt_steps_and_supervision_sources_are_validated():
    ids, mask = _vocab()
    draft = Eagle3DraftModel.from_target_config(_config(), VD)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="ttt_steps must be an int >= 1"):
            Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=bad)
    with pytest.raises(ValueError, match="one id per lm_head row"):
        Eagle3TrainerModule(draft, selected_token_ids=ids[:-1], selected_token_mask=mask, ttt_steps=1)
    trainer = _trainer(2)
    batch = _batch(1, 6)
    probs, pmask = compute_target_distribution(batch["target_logits"], ids, mask, batch["loss_mask"])
    logits = batch.pop("target_logits")
    with pytest.raises(ValueError, match="exactly one supervision source"):
        trainer(**batch)
    with pytest.raises(ValueError, match="exactly one supervision source"):
        trainer(**batch, target_logits=logits, target_probs=probs, position_mask=pmask)
    with pytest.raises(ValueError, match="exactly one supervision source"):
        trainer(**batch, target_probs=probs)


def test_cached_supervision_equals_live_supervision():
    trainer = _trainer(3)
    batch = _batch(2, 9)
    live = trainer(**batch)
    probs, pmask = compute_target_distribution(batch.pop("target_logits"), trainer.selected_token_ids,
                                               trainer.selected_token_mask, batch["loss_mask"])
    cached = trainer(**batch, target_probs=probs, position_mask=pmask)
    torch.testing.assert_close(cached.loss, live.loss)
    assert torch.equal(cached.step_prefix_hits, live.step_prefix_hits)
    assert torch.equal(cached.step_valid, live.step_valid) and cached.valid_tokens == live.valid_tokens


def test_step_zero_loss_is_independent_of_ttt_steps_and_weighted_mean_is_recovered():
    draft = _trainer(1).draft_model
    batch = _batch(2, 10)
    runs = {k: _trainer(k, draft=draft)(**batch) for k in (1, 2, 3)}
    step0 = runs[1].loss
    for k in (2, 3):
        torch.testing.assert_close(runs[k].step_losses[0], step0)
    # invert loss_k = sum_i 0.8^i L_i / sum_i 0.8^i for k = 1, 2, 3
    l1 = (runs[2].loss * 1.8 - step0) / 0.8
    l2 = (runs[3].loss * 2.44 - step0 - 0.8 * l1) / 0.64
    torch.testing.assert_close(l1, runs[3].step_losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l2, runs[3].step_losses[2], rtol=1e-4, atol=1e-4)
    weights = torch.tensor([1.0, 0.8, 0.64])
    torch.testing.assert_close(runs[3].loss, (weights * runs[3].step_losses).sum() / weights.sum())


def _manual_unroll(trainer, batch, ttt_steps, *, shared_cache):
    """Step losses of an unroll written out by hand; a fresh cache per step mimics independent steps."""
    draft = trainer.draft_model
    probs, pmask = compute_target_distribution(batch["target_logits"], trainer.selected_token_ids,
                                               trainer.selected_token_mask, batch["loss_mask"])
    pmask = pmask[..., 0]
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1])[None]
    hidden = draft.project_hidden_states(batch["aux_hidden_states"])
    cache, losses = [[], []], []
    for k in range(ttt_steps):
        if shared_cache:
            hidden = draft(ids, hidden, batch["attention_mask"], positions, cache)
        else:
            hidden = draft(ids, hidden, batch["attention_mask"], positions + k, [[], []])
        losses.append(eagle3_step_loss(draft, hidden, probs, pmask).loss)
        ids, probs, pmask = shift_left_with_zero(ids), shift_left_with_zero(probs), shift_left_with_zero(pmask)
    return torch.stack(losses)


def test_multi_step_differs_from_independent_single_steps():
    trainer = _trainer(3)
    batch = _batch(2, 10)
    metrics = trainer(**batch)
    with torch.no_grad():
        shared = _manual_unroll(trainer, batch, 3, shared_cache=True)
        independent = _manual_unroll(trainer, batch, 3, shared_cache=False)
    torch.testing.assert_close(shared, metrics.step_losses)  # positive control
    torch.testing.assert_close(independent[0], metrics.step_losses[0])
    assert (independent[1:] - metrics.step_losses[1:]).abs().min() > 1e-4


def _documents(lengths, seed=3):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        logits = torch.randn(n, V, generator=g)
        ids, _ = _vocab()
        logits[torch.arange(n), ids[torch.randint(0, VD, (n,), generator=g)]] += 4.0
        docs.append({
            "ids": torch.randint(1, V, (n,), generator=g),
            "loss": (torch.rand(n, generator=g) < 0.8).long(),
            "aux": torch.randn(n, 3 * H, generator=g),
            "logits": logits,
        })
    return docs


def _pad(x, width):
    out = torch.zeros((width,) + tuple(x.shape[1:]), dtype=x.dtype)
    out[: x.shape[0]] = x
    return out


def _shifted(ids, loss, aux, logits, attention, **extra):
    """Trainer inputs from unshifted tensors (what Eagle3TargetModel would return)."""
    return {
        "input_ids": shift_left_with_zero(ids), "loss_mask": shift_left_with_zero(loss),
        "target_logits": shift_left_with_zero(logits), "aux_hidden_states": aux, "attention_mask": attention, **extra,
    }


def test_packing_parity_documents_in_one_row_equal_padded_rows():
    lengths, width = [5, 3, 6], 16
    docs = _documents(lengths)
    cat = {k: torch.cat([d[k] for d in docs]) for k in docs[0]}
    real = sum(lengths)
    packed = _shifted(
        _pad(cat["ids"], width)[None], _pad(cat["loss"], width)[None], _pad(cat["aux"], width)[None],
        _pad(cat["logits"], width)[None], (torch.arange(width) < real).long()[None],
        position_ids=torch.cat([torch.arange(n) for n in lengths[:-1]] + [torch.arange(width - real + lengths[-1])])[None],
        seq_lens=torch.tensor([lengths[:-1] + [lengths[-1] + width - real]]),
        doc_remaining=_pad(torch.cat([torch.arange(n - 1, -1, -1) for n in lengths]), width)[None],
    )
    row = max(lengths) + 1
    padded = _shifted(
        torch.stack([_pad(d["ids"], row) for d in docs]), torch.stack([_pad(d["loss"], row) for d in docs]),
        torch.stack([_pad(d["aux"], row) for d in docs]), torch.stack([_pad(d["logits"], row) for d in docs]),
        torch.stack([(torch.arange(row) < n).long() for n in lengths]),
    )
    trainer = _trainer(3, chunk=4)
    m_packed = trainer(**packed)
    m_packed.loss.backward()
    g_packed = _grads(trainer)
    trainer.zero_grad()
    m_padded = trainer(**padded)
    m_padded.loss.backward()
    g_padded = _grads(trainer)
    torch.testing.assert_close(m_packed.loss, m_padded.loss, rtol=1e-4, atol=1e-6)
    assert m_packed.valid_tokens == m_padded.valid_tokens > 0
    assert torch.equal(m_packed.step_valid, m_padded.step_valid)
    assert torch.equal(m_packed.step_prefix_hits, m_padded.step_prefix_hits)
    assert g_packed.keys() == g_padded.keys() and "draft_model.model.fc.weight" in g_packed
    for name in g_packed:
        torch.testing.assert_close(g_packed[name], g_padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_doc_remaining_gating_two_documents_of_four_tokens():
    trainer = _trainer(4, vd=V)
    batch = _batch(1, 8, vd=V)
    batch["loss_mask"] = torch.ones(1, 8, dtype=torch.long)
    packing = {"seq_lens": torch.tensor([[4, 4]]), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])}
    ungated = trainer(**batch, **packing)
    gated = trainer(**batch, **packing, doc_remaining=torch.tensor([[3, 2, 1, 0, 3, 2, 1, 0]]))
    assert ungated.valid_tokens.item() == 26
    assert gated.valid_tokens.item() == 12
    assert gated.step_valid.tolist() == [6, 4, 2, 0]


def test_out_of_draft_vocab_targets_are_dropped_from_the_loss_but_count_as_rejections():
    trainer = _trainer(1)
    batch = _batch(1, 6)
    batch["loss_mask"] = torch.tensor([[1, 1, 1, 1, 1, 0]])
    outside = (~trainer.selected_token_mask).nonzero()[0].item()
    batch["target_logits"][0, [1, 3], outside] = 100.0
    metrics = trainer(**batch)
    assert metrics.valid_tokens.item() == 3
    assert metrics.step_valid.tolist() == [5]
    assert metrics.step_prefix_hits.item() <= 3
    dropped = dict(batch, loss_mask=torch.tensor([[1, 0, 1, 0, 1, 0]]))
    torch.testing.assert_close(trainer(**dropped).loss, metrics.loss)


def test_lean_and_eager_attention_give_the_same_loss_and_gradients():
    lengths, width = [4, 7], 12
    docs = _documents(lengths, seed=5)
    cat = {k: _pad(torch.cat([d[k] for d in docs]), width)[None] for k in docs[0]}
    batch = _shifted(cat["ids"], cat["loss"], cat["aux"], cat["logits"], (torch.arange(width) < 11).long()[None],
                     seq_lens=torch.tensor([[4, 8]]), position_ids=torch.tensor([[0, 1, 2, 3] + list(range(8))]),
                     doc_remaining=_pad(torch.tensor([3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0]), width)[None])
    results = {}
    for impl in ("eager", "lean"):
        trainer = _trainer(3, impl=impl, chunk=5)
        metrics = trainer(**batch)
        metrics.loss.backward()
        results[impl] = (metrics, _grads(trainer))
    (m_e, g_e), (m_l, g_l) = results["eager"], results["lean"]
    torch.testing.assert_close(m_l.loss, m_e.loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(m_l.step_prefix_hits, m_e.step_prefix_hits)
    for name in g_e:
        torch.testing.assert_close(g_l[name], g_e[name], rtol=1e-4, atol=1e-6, msg=name)


def test_counters_are_exact_integers_and_the_loss_is_fp32_for_a_bf16_draft():
    trainer = _trainer(1, vd=V, dtype=torch.bfloat16, chunk=None)
    batch = _batch(1, 2050, vd=V, dtype=torch.bfloat16)
    batch["loss_mask"] = torch.ones(1, 2050, dtype=torch.long)
    batch["loss_mask"][0, -1] = 0
    metrics = trainer(**batch)
    assert metrics.loss.dtype == torch.float32 and torch.isfinite(metrics.loss)
    assert metrics.valid_tokens.dtype == torch.int64 and metrics.valid_tokens.item() == 2049
    assert metrics.step_valid.dtype == torch.int64 and metrics.step_valid.tolist() == [2049]
    assert metrics.accuracy.dtype == torch.float32


def test_gradients_flow_through_the_unroll_but_not_into_frozen_embeddings():
    trainer = _trainer(3)
    metrics = trainer(**_batch(2, 8))
    metrics.loss.backward()
    draft = trainer.draft_model
    assert draft.model.fc.weight.grad.abs().sum() > 0
    assert draft.model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    assert draft.model.embed_tokens.weight.grad is None
    hits, valid = metrics.step_prefix_hits, metrics.step_valid
    assert (hits[1:] <= hits[:-1]).all() and (valid[1:] <= valid[:-1]).all() and (hits <= valid).all()
    assert 0.0 <= metrics.accuracy.item() <= 1.0 and not metrics.accuracy.requires_grad


def test_fused_loss_matches_reference_loss_and_gradients():
    pytest.importorskip("eagle_ext.ops.linear_kl")
    batch = _batch(2, 11)
    results = {}
    for impl in ("reference", "fused"):
        trainer = _trainer(3)
        trainer.loss_impl = impl
        metrics = trainer(**batch)
        metrics.loss.backward()
        results[impl] = (metrics, _grads(trainer))
    (m_r, g_r), (m_f, g_f) = results["reference"], results["fused"]
    torch.testing.assert_close(m_f.loss, m_r.loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(m_f.step_prefix_hits, m_r.step_prefix_hits) and m_f.valid_tokens == m_r.valid_tokens
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("ttt, t", [(3, 11), (7, 5)], ids=["ttt3", "ttt7_past_row_end"])
def test_fused_loss_matches_reference_with_row_offsets_past_the_row_end(ttt, t):
    # ttt = 7 on rows of 5 slots: steps k >= T have no target left (the op's row offset reaches past the row)
    batch = _batch(2, t, seed=4)
    results = {}
    for impl in ("reference", "fused"):
        trainer = _trainer(ttt)
        trainer.loss_impl = impl
        metrics = trainer(**batch)
        metrics.loss.backward()
        results[impl] = (metrics, _grads(trainer))
    (m_r, g_r), (m_f, g_f) = results["reference"], results["fused"]
    torch.testing.assert_close(m_f.step_losses, m_r.step_losses, rtol=1e-5, atol=1e-6)
    assert torch.equal(m_f.step_prefix_hits, m_r.step_prefix_hits) and torch.equal(m_f.step_valid, m_r.step_valid)
    if ttt > t:
        assert (m_f.step_losses[t:] == 0).all() and (m_f.step_valid[t:] == 0).all()
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-6, msg=name)


def _vocab_wide_saved_bytes(trainer, batch, vd, h):
    """Bytes of the distinct storages autograd keeps for backward that are vocab-wide (last dim Vd, or at
    least Vd x H elements), measured with saved-tensor hooks over one forward + backward."""
    storages = {}

    def pack(x):
        if x.dim() >= 1 and (x.shape[-1] == vd or x.numel() >= vd * h):
            storage = x.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        metrics = trainer(**batch)
    metrics.loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("path", ["chunked", "triton", "reference"])
def test_vocab_wide_memory_kept_for_backward_does_not_grow_with_ttt_steps(path, monkeypatch):
    # The fused op reads the step-0 target with a row offset (no shifted copy per step) and keeps only
    # per-row statistics for its recompute backward, on the CPU (chunked) and the Triton path alike.
    # The reference loss keeps fp32 [B, T, Vd] logits per step: the positive control of the measurement.
    from eagle_ext.ops import linear_kl

    if path == "triton":
        pytest.importorskip("triton")
        monkeypatch.setattr(linear_kl, "fused_linear_kl", functools.partial(linear_kl.fused_linear_kl, impl="triton"))
    elif path == "chunked":
        monkeypatch.setattr(linear_kl, "fused_linear_kl", functools.partial(linear_kl.fused_linear_kl, impl="chunked"))
    batch = _batch(2, 9, vd=V)
    draft = _trainer(1, vd=V).draft_model
    saved = {}
    for ttt in (1, 7):
        trainer = _trainer(ttt, vd=V, draft=draft)
        trainer.loss_impl = "reference" if path == "reference" else "fused"
        saved[ttt] = _vocab_wide_saved_bytes(trainer, batch, V, H)
        trainer.zero_grad()
    assert saved[1] > 0  # the lm-head weight and the target distribution are there at any ttt
    if path == "reference":
        assert saved[7] > 2 * saved[1], saved
    else:
        assert saved[7] <= saved[1], saved
