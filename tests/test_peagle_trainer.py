"""P-EAGLE trainer: flat loss vs an independent reference, exact sequence partitioning, inputs of the
parallel forward, bad input."""

import math

import pytest
import torch
from transformers import LlamaConfig

from eagle_ext.models import Eagle3DraftModel
from eagle_ext.ops.cod import generate_cod_sample_indices
from eagle_ext.peagle import PEagleTrainerModule, run_partitioned_step
from eagle_ext.peagle.mask import dense_cod_mask

V, VD, H, MASK_ID = 96, 40, 48, 95


def _config(layers=4):
    return LlamaConfig(hidden_size=H, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=layers, vocab_size=V, max_position_embeddings=256)


def _trainer(num_layers=2, num_depths=4, sequence_partitions=1, loss_impl="reference", **kwargs):
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(_config(), VD, num_hidden_layers=num_layers,
                                                parallel_drafting=True, mask_token_id=MASK_ID)
    ids = torch.randperm(V - 1)[:VD].sort().values
    mask = torch.zeros(V, dtype=torch.bool)
    mask[ids] = True
    draft.set_vocab_mapping(ids)
    return PEagleTrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, num_depths=num_depths,
                               mask_token_id=MASK_ID, sequence_partitions=sequence_partitions,
                               loss_impl=loss_impl, **kwargs)


def _batch(b=2, t=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    attention = torch.ones(b, t, dtype=torch.long)
    attention[b - 1, t - 5:] = 0
    loss = (torch.rand(b, t, generator=g) < 0.8).long() * attention
    loss[:, :3] = 0
    return {
        "input_ids": torch.randint(0, V - 1, (b, t), generator=g),
        "attention_mask": attention,
        "loss_mask": loss,
        "aux_hidden_states": torch.randn(b, t, 3 * H, generator=g),
        "target_logits": torch.randn(b, t, V, generator=g) * 3,
    }


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _flat_cod(trainer, batch):
    plan = trainer.build_peagle_plan(batch["loss_mask"], batch["attention_mask"], num_segments=1)
    assert [u.row for u in plan.units] == list(range(batch["input_ids"].shape[0]))
    return [(u.anchor, u.depth) for u in plan.units]


def _reference_loss(trainer, batch, cod):
    """Independent formulation: dense mask + full logits + KL(softmax(t) || softmax(z)), count-normalised."""
    draft = trainer.draft_model
    num, den = 0.0, 0
    for b, (anchor, depth) in enumerate(cod):
        orig = anchor + depth
        doc = torch.where(batch["attention_mask"][b] != 0, 0, -1)
        ids = batch["input_ids"][b, orig].clone()
        ids[depth > 0] = MASK_ID
        hid = draft.project_hidden_states(batch["aux_hidden_states"][b, orig])
        mh = draft.project_hidden_states(draft.mask_hidden.view(1, -1))
        hid = torch.where((depth > 0)[:, None], mh, hid)
        mask = dense_cod_mask(anchor, depth, doc)[None, None]
        out = draft.forward_peagle(ids[None], hid[None], orig[None], mask)[0]
        logits = draft.compute_logits(out).float()
        tgt = batch["target_logits"][b, orig][:, trainer.selected_token_ids].float()
        kl = (tgt.softmax(-1) * (tgt.log_softmax(-1) - logits.log_softmax(-1))).sum(-1)
        sup = batch["loss_mask"][b, orig] != 0
        num = num + kl[sup].sum()
        den += int(sup.sum())
    return num / max(den, 1)


@pytest.mark.parametrize("loss_impl", ["reference", "chunked"])
def test_flat_loss_matches_independent_reference(loss_impl):
    trainer = _trainer(loss_impl=loss_impl)
    batch = _batch()
    cod = _flat_cod(trainer, batch)
    metrics = trainer(**batch, cod_indices=cod)
    metrics.loss.backward()
    grads = _grads(trainer)
    trainer.zero_grad()
    ref = _reference_loss(trainer, batch, cod)
    ref.backward()
    torch.testing.assert_close(metrics.loss, ref.detach(), rtol=1e-5, atol=1e-6)
    for name, g in _grads(trainer).items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert metrics.loss.dtype == torch.float32 and metrics.valid_tokens.dtype == torch.int64
    expected_valid = sum(int((batch["loss_mask"][b, a + d] != 0).sum()) for b, (a, d) in enumerate(cod))
    assert int(metrics.valid_tokens) == expected_valid == int(metrics.depth_valid.sum())


@pytest.mark.parametrize("segments", [2, 3, 5])
def test_partitioned_equals_flat(segments):
    trainer = _trainer(num_layers=3, sequence_partitions=segments)
    batch = _batch(t=32)
    cod = _flat_cod(trainer, batch)
    flat = trainer(**batch, cod_indices=cod)
    flat.loss.backward()
    flat_grads = _grads(trainer)
    trainer.zero_grad()
    plan = trainer.build_peagle_plan(batch["loss_mask"], batch["attention_mask"], cod_indices=cod)
    assert len(plan) > batch["input_ids"].shape[0]  # really split
    parts = run_partitioned_step(trainer, plan, batch)
    torch.testing.assert_close(parts.loss, flat.loss.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(parts.depth_valid, flat.depth_valid) and torch.equal(parts.depth_correct, flat.depth_correct)
    grads = _grads(trainer)
    assert grads.keys() == flat_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, flat_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_each_supervised_element_charged_once():
    trainer = _trainer(sequence_partitions=4)
    batch = _batch(b=3, t=40)
    cod = _flat_cod(trainer, batch)
    plan = trainer.build_peagle_plan(batch["loss_mask"], batch["attention_mask"], cod_indices=cod)
    charged = []
    for unit in plan.units:
        lp = unit.loss_positions
        charged += [(unit.row, a, d) for a, d in zip(unit.anchor[lp].tolist(), unit.depth[lp].tolist())]
    expected = []
    for b, (anchor, depth) in enumerate(cod):
        sup = batch["loss_mask"][b, anchor + depth] != 0
        expected += [(b, a, d) for a, d in zip(anchor[sup].tolist(), depth[sup].tolist())]
    assert sorted(charged) == sorted(expected) and len(set(charged)) == len(charged)
    assert float(plan.total_den) == len(expected)


def test_parallel_forward_inputs():
    trainer = _trainer(num_depths=3)
    batch = _batch(b=1, t=20)
    seen = {}
    original = trainer.draft_model.forward_positions

    def spy(input_ids, hidden, position_ids, mask):
        seen.update(ids=input_ids, hidden=hidden, pos=position_ids, mask=mask)
        return original(input_ids, hidden, position_ids, mask)

    trainer.draft_model.forward_positions = spy
    (anchor, depth), = _flat_cod(trainer, batch)
    trainer(**batch, cod_indices=[(anchor, depth)])
    deep = depth > 0
    assert bool(deep.any())
    assert torch.equal(seen["pos"][0], anchor + depth)  # RoPE at anchor + depth
    assert bool((seen["ids"][0, deep] == MASK_ID).all())
    assert torch.equal(seen["ids"][0, ~deep], batch["input_ids"][0, anchor[~deep]])
    draft = trainer.draft_model
    mh = draft.project_hidden_states(draft.mask_hidden.view(1, -1))
    torch.testing.assert_close(seen["hidden"][0, deep], mh.expand(int(deep.sum()), -1))
    torch.testing.assert_close(seen["hidden"][0, ~deep],
                               draft.project_hidden_states(batch["aux_hidden_states"][0, anchor[~deep]]))
    assert seen["mask"].dtype == torch.bool  # dense mask on CPU


def test_single_depth_gives_mask_hidden_no_gradient():
    trainer = _trainer(num_depths=1)
    batch = _batch()
    metrics = trainer(**batch)
    metrics.loss.backward()
    grad = trainer.draft_model.mask_hidden.grad
    assert grad is None or not bool(grad.any())
    assert metrics.depth_valid.numel() == 1
    trainer.zero_grad()
    trainer2 = _trainer(num_depths=4)
    trainer2(**batch).loss.backward()
    assert bool(trainer2.draft_model.mask_hidden.grad.abs().sum() > 0)


def test_supervision_ignores_draft_vocab_coverage():
    trainer = _trainer()
    batch = _batch()
    outside = (~trainer.selected_token_mask).nonzero()[0, 0]
    batch["target_logits"][..., outside] = 100.0  # every target argmax is outside the draft vocab
    cod = _flat_cod(trainer, batch)
    metrics = trainer(**batch, cod_indices=cod)
    expected = sum(int((batch["loss_mask"][b, a + d] != 0).sum()) for b, (a, d) in enumerate(cod))
    assert int(metrics.valid_tokens) == expected > 0


def test_rows_without_supervision_give_finite_zero_loss():
    trainer = _trainer(sequence_partitions=2)
    batch = _batch()
    batch["loss_mask"].zero_()
    metrics = trainer(**batch)
    assert float(metrics.loss.detach()) == 0.0 and math.isfinite(float(metrics.loss.detach()))
    metrics.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainer.parameters() if p.grad is not None)
    plan = trainer.build_peagle_plan(batch["loss_mask"], batch["attention_mask"])
    parts = run_partitioned_step(trainer, plan, batch)
    assert float(parts.loss) == 0.0 and int(parts.valid_tokens) == 0


def test_loss_decreases_under_adamw():
    trainer = _trainer(loss_impl="chunked")
    batch = _batch()
    cod = _flat_cod(trainer, batch)
    opt = torch.optim.AdamW([p for p in trainer.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        metrics = trainer(**batch, cod_indices=cod)
        metrics.loss.backward()
        opt.step()
        losses.append(float(metrics.loss))
    assert losses[-1] < 0.6 * losses[0]


def test_generator_makes_sampling_reproducible():
    batch = _batch()
    t1 = _trainer(generator=torch.Generator().manual_seed(3))
    t2 = _trainer(generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1(**batch).loss, t2(**batch).loss)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_depths": 0}, "num_depths must be an int >= 1, got 0"),
        ({"sequence_partitions": 0}, "sequence_partitions must be an int >= 1, got 0"),
        ({"down_sample_ratio": 0.0}, r"down_sample_ratio must be a float in \(0, 1\], got 0.0"),
        ({"down_sample_ratio_min": 1.5}, "down_sample_ratio_min must be a float in"),
        ({"mask_token_id": V}, f"mask_token_id must be in \\[0, {V}\\), got {V}"),
        ({"mask_token_id": 3}, "differs from the draft config's mask_token_id"),
        ({"loss_impl": "fast"}, "loss_impl must be one of"),
        ({"attention": "sparse"}, "attention must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    draft = Eagle3DraftModel.from_target_config(_config(), VD, num_hidden_layers=1, parallel_drafting=True,
                                                mask_token_id=MASK_ID)
    args = {"selected_token_ids": torch.arange(VD), "selected_token_mask": torch.arange(V) < VD,
            "num_depths": 4, "mask_token_id": MASK_ID}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PEagleTrainerModule(draft, **args)


def test_draft_without_mask_hidden_and_bad_mask_token_rejected():
    eagle3 = Eagle3DraftModel.from_target_config(_config(), VD)
    with pytest.raises(ValueError, match="no mask_hidden"):
        PEagleTrainerModule(eagle3, selected_token_ids=torch.arange(VD), selected_token_mask=torch.arange(V) < VD,
                            num_depths=4, mask_token_id=MASK_ID)
    with pytest.raises(ValueError, match="mask_token_id"):
        Eagle3DraftModel.from_target_config(_config(), VD, parallel_drafting=True, mask_token_id=V)
    with pytest.raises(ValueError, match="mask_token_id"):
        Eagle3DraftModel.from_target_config(_config(), VD, parallel_drafting=True)


def test_bad_cod_indices_rejected():
    trainer = _trainer()
    batch = _batch(b=1, t=10)
    with pytest.raises(ValueError, match="sequence of 1"):
        trainer(**batch, cod_indices=[])
    with pytest.raises(ValueError, match="anchor \\+ depth < 10"):
        trainer(**batch, cod_indices=[(torch.tensor([9]), torch.tensor([1]))])
    with pytest.raises(ValueError, match=r"cod_indices\[0\]: COD element 2 repeats \(anchor, depth\) = \(3, 0\)"):
        trainer(**batch, cod_indices=[(torch.tensor([3, 4, 3]), torch.tensor([0, 0, 0]))])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_permuted_cod_indices_give_the_same_loss_on_the_dense_and_flex_paths():
    """Indices in any order (a user's, a dataloader worker's) are put in depth-major order before ids,
    hidden states, targets and the mask are built from them, so the flex path's BlockMask (which needs
    that order) agrees with the dense path and with the sorted indices. Flex runs forward-only on CPU."""
    trainer = _trainer(block_size=16)
    batch = _batch(t=30)
    cod = _flat_cod(trainer, batch)
    gen = torch.Generator().manual_seed(5)
    shuffled = []
    for anchor, depth in cod:
        perm = torch.randperm(anchor.numel(), generator=gen)
        shuffled.append((anchor[perm], depth[perm]))
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(shuffled, cod, strict=True))
    with torch.no_grad():
        trainer.attention = "dense"
        sorted_dense = trainer(**batch, cod_indices=cod)
        shuffled_dense = trainer(**batch, cod_indices=shuffled)
        trainer.attention = "flex"
        shuffled_flex = trainer(**batch, cod_indices=shuffled)
    torch.testing.assert_close(shuffled_dense.loss, sorted_dense.loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(shuffled_flex.loss, sorted_dense.loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(shuffled_flex.depth_valid, sorted_dense.depth_valid)
    assert torch.equal(shuffled_flex.depth_correct, sorted_dense.depth_correct)
    torch.testing.assert_close(_reference_loss(trainer, batch, cod), sorted_dense.loss.detach())


@pytest.mark.gpu
def test_flex_path_matches_dense_on_gpu():
    trainer = _trainer(loss_impl="reference").cuda()
    batch = {k: v.cuda() for k, v in _batch(t=160).items()}
    cod = _flat_cod(trainer, batch)
    trainer.attention = "dense"
    dense = trainer(**batch, cod_indices=cod)
    dense.loss.backward()
    dense_grads = _grads(trainer)
    trainer.zero_grad()
    trainer.attention = "flex"
    flex = trainer(**batch, cod_indices=cod)
    flex.loss.backward()
    torch.testing.assert_close(flex.loss, dense.loss, rtol=1e-4, atol=1e-5)
    for name, g in _grads(trainer).items():
        torch.testing.assert_close(g, dense_grads[name], rtol=2e-3, atol=1e-5, msg=name)


@pytest.mark.gpu
def test_flat_step_reads_the_masks_back_once_and_syncs_nowhere_else_in_our_code():
    import warnings

    trainer = _trainer(loss_impl="auto").cuda()
    batch = {k: v.cuda() for k, v in _batch(t=160).items()}
    cod = _flat_cod(trainer, batch)
    assert all(a.is_cpu for a, _ in cod)  # host indices, as dataloader workers make them
    trainer(**batch, cod_indices=cod).loss.backward()  # warm-up: flex compile, Triton autotune
    files = ("peagle/trainer.py", "ops/cod_block_mask.py", "ops/cod_mask.py", "ops/cod.py",
             "models/attention.py", "models/draft.py")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer(**batch, cod_indices=cod).loss.backward()
            plan = trainer.build_peagle_plan(batch["loss_mask"], batch["attention_mask"], num_segments=2)
            run_partitioned_step(trainer, plan, batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    ours = [f"{w.filename}:{w.lineno}" for w in syncs if w.filename.replace("\\", "/").endswith(files)]
    # One mask read-back in forward, one in build_peagle_plan; none per row, segment or backward.
    assert len(ours) == 2, (ours, len(syncs))


def test_cod_sampler_uses_document_ids_of_the_row():
    trainer = _trainer(num_depths=6)
    batch = _batch(b=2, t=30)
    plan = trainer.build_peagle_plan(batch["loss_mask"], batch["attention_mask"], num_segments=1)
    for unit in plan.units:
        real = batch["attention_mask"][unit.row] != 0
        ref = unit.anchor + unit.depth
        assert bool(real[ref[unit.depth > 0]].all())
    anchor, depth = generate_cod_sample_indices(30, batch["loss_mask"][1], 6, seed=0)
    assert anchor.numel() == depth.numel()
