"""TTT attention: the memory-lean kernel against the eager reference, both against plain attention and
against fp64 on bf16 inputs; masked (P-EAGLE) attention with flex length buckets."""

import pytest
import torch
import torch.nn.functional as F

from eagle_ext.models.attention import (
    FLEX_RECOMPILE_LIMIT,
    flex_bucket_length,
    masked_attention,
    ttt_attention,
    ttt_attention_flex,
    ttt_attention_lean,
    ttt_attention_reference,
    ttt_block_mask,
)
from eagle_ext.models.masks import block_causal_visibility, document_ids_from_seq_lens
from eagle_ext.ops.cod import generate_cod_sample_indices
from eagle_ext.ops.cod_block_mask import build_cod_block_mask
from eagle_ext.ops.cod_mask import dense_cod_mask
from eagle_ext.peagle.mask import document_ids_from_lengths


def _inputs(b, hq, hkv, t, d, steps, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, t, d, generator=g, dtype=dtype).requires_grad_()
    keys = [torch.randn(b, hkv, t, d, generator=g, dtype=dtype).requires_grad_() for _ in range(steps + 1)]
    values = [torch.randn(b, hkv, t, d, generator=g, dtype=dtype).requires_grad_() for _ in range(steps + 1)]
    return q, keys, values


def _grads(out, tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, tensors, upstream)


LAYOUTS = {
    "plain": lambda b, t: (None, None),
    "right_pad": lambda b, t: (None, torch.arange(t)[None].expand(b, t) < torch.tensor([[t], [t - 4]])[:b]),
    "left_pad": lambda b, t: (None, torch.arange(t)[None].expand(b, t) >= torch.tensor([[0], [3]])[:b]),
    "packed": lambda b, t: (
        document_ids_from_seq_lens(torch.tensor([[4, t - 4, 0], [1, 5, t - 6]])[:b], t),
        torch.arange(t)[None].expand(b, t) < torch.tensor([[t], [t - 2]])[:b],
    ),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("chunk", [4, 64])
def test_lean_matches_eager_forward_and_gradients(layout, steps, chunk):
    b, hq, hkv, t, d = 2, 4, 2, 13, 8
    doc_ids, key_valid = LAYOUTS[layout](b, t)
    q, keys, values = _inputs(b, hq, hkv, t, d, steps)
    tensors = [q, *keys, *values]
    ref = ttt_attention_reference(q, keys, values, doc_ids=doc_ids, key_valid=key_valid)
    lean = ttt_attention_lean(q, keys, values, doc_ids=doc_ids, key_valid=key_valid, query_chunk_size=chunk)
    assert lean.shape == (b, hq, t, d) and torch.isfinite(lean).all()
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-5)
    for g_lean, g_ref in zip(_grads(lean, tensors), _grads(ref, tensors), strict=True):
        torch.testing.assert_close(g_lean, g_ref, rtol=1e-5, atol=1e-5)


def test_lean_is_exact_in_float64_and_passes_gradcheck():
    b, hq, hkv, t, d, steps = 1, 2, 1, 6, 4, 2
    doc_ids = document_ids_from_seq_lens(torch.tensor([[2, 4]]), t)
    q, keys, values = _inputs(b, hq, hkv, t, d, steps, dtype=torch.float64)
    lean = ttt_attention_lean(q, keys, values, doc_ids=doc_ids, query_chunk_size=4)
    ref = ttt_attention_reference(q, keys, values, doc_ids=doc_ids)
    torch.testing.assert_close(lean, ref, rtol=1e-12, atol=1e-12)

    def fn(q_, k0, k1, k2, v0, v1, v2):
        return ttt_attention_lean(q_, [k0, k1, k2], [v0, v1, v2], doc_ids=doc_ids, query_chunk_size=4)

    assert torch.autograd.gradcheck(fn, (q, *keys, *values), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("implementation", ["lean", "eager"])
def test_step_zero_is_plain_causal_attention(implementation):
    b, hq, hkv, t, d = 2, 4, 2, 9, 8
    q, keys, values = _inputs(b, hq, hkv, t, d, 0)
    out = ttt_attention(q, keys, values, implementation=implementation, query_chunk_size=4)
    expected = F.scaled_dot_product_attention(
        q, keys[0].repeat_interleave(2, dim=1), values[0].repeat_interleave(2, dim=1), is_causal=True
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_step_zero_packed_equals_attention_per_document():
    b, hq, hkv, t, d = 1, 2, 2, 10, 8
    seq_lens = torch.tensor([[3, 7]])
    q, keys, values = _inputs(b, hq, hkv, t, d, 0)
    out = ttt_attention_lean(q, keys, values, doc_ids=document_ids_from_seq_lens(seq_lens, t), query_chunk_size=4)
    for start, end in ((0, 3), (3, 10)):
        expected = F.scaled_dot_product_attention(
            q[:, :, start:end], keys[0][:, :, start:end], values[0][:, :, start:end], is_causal=True
        )
        torch.testing.assert_close(out[:, :, start:end], expected, rtol=1e-5, atol=1e-5)


def test_diagonal_keys_change_the_output_and_match_a_loop_reference():
    """Step k: query t sees causal K_0 plus K_1[t]..K_k[t] only, in one softmax (per-slot loop oracle)."""
    b, h, t, d, steps = 1, 2, 5, 4, 2
    q, keys, values = _inputs(b, h, h, t, d, steps, dtype=torch.float64)
    out = ttt_attention_lean(q, keys, values, query_chunk_size=2)
    expected = torch.empty_like(out)
    for s in range(t):
        ks = torch.cat([keys[0][:, :, : s + 1]] + [k[:, :, s : s + 1] for k in keys[1:]], dim=2)
        vs = torch.cat([values[0][:, :, : s + 1]] + [v[:, :, s : s + 1] for v in values[1:]], dim=2)
        p = torch.softmax(q[:, :, s : s + 1] @ ks.transpose(-1, -2) * d**-0.5, dim=-1)
        expected[:, :, s : s + 1] = p @ vs
    torch.testing.assert_close(out, expected)
    step0 = ttt_attention_lean(q, keys[:1], values[:1])
    assert not torch.allclose(out, step0)


def test_padded_rows_stay_finite_and_do_not_leak_into_real_slots():
    b, h, t, d = 1, 2, 8, 4
    key_valid = torch.tensor([[False, False, True, True, True, True, True, True]])
    q, keys, values = _inputs(b, h, h, t, d, 1)
    out = ttt_attention_lean(q, keys, values, key_valid=key_valid, query_chunk_size=3)
    assert torch.isfinite(out).all()
    poisoned = [k.detach().clone() for k in keys]
    poisoned[0][:, :, :2] = 1e4  # keys of padded slots must not matter to real queries
    again = ttt_attention_lean(q, poisoned, values, key_valid=key_valid, query_chunk_size=3)
    torch.testing.assert_close(again[:, :, 2:], out[:, :, 2:])


def _largest_saved_numel(fn):
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return max(sizes)


def test_lean_saves_no_quadratic_tensor_for_backward():
    b, hq, hkv, t, d, steps = 1, 4, 2, 64, 8, 3
    q, keys, values = _inputs(b, hq, hkv, t, d, steps)
    quadratic = b * hq * t * t
    eager = _largest_saved_numel(lambda: ttt_attention_reference(q, keys, values))
    lean = _largest_saved_numel(lambda: ttt_attention_lean(q, keys, values, query_chunk_size=16))
    assert eager >= quadratic
    assert lean <= b * hq * t * d  # the grouped query copy; no stacked diagonal keys [B, Hkv, T, k, D]


def test_lean_keeps_no_copy_of_the_cache_for_backward():
    """The cache's K_1..K_k are saved by reference, never stacked: a step-k copy saved per TTT step would
    add up to O(k^2) over the unroll. What the lean step saves beyond its inputs is the grouped query and
    the row lse, whatever k is."""
    b, hq, hkv, t, d = 1, 4, 2, 64, 8
    for steps in (1, 4):
        q, keys, values = _inputs(b, hq, hkv, t, d, steps)
        inputs = {x.untyped_storage().data_ptr() for x in (q, *keys, *values)}
        extra = {}

        def pack(x, inputs=inputs, extra=extra):
            if x.untyped_storage().data_ptr() not in inputs:
                extra[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            ttt_attention_lean(q, keys, values, query_chunk_size=16)
        assert sum(extra.values()) <= 4 * (b * hq * t * d + b * hq * t), (steps, extra)


def test_bad_inputs_raise_with_the_value():
    q, keys, values = _inputs(1, 3, 2, 4, 4, 0)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        ttt_attention(q, keys, values)
    q, keys, values = _inputs(1, 2, 2, 4, 4, 0)
    with pytest.raises(ValueError, match="equally long"):
        ttt_attention(q, keys, values + values)
    with pytest.raises(ValueError, match="implementation must be one of"):
        ttt_attention(q, keys, values, implementation="flash")
    with pytest.raises(ValueError, match="query_chunk_size"):
        ttt_attention_lean(q, keys, values, query_chunk_size=0)
    with pytest.raises(ValueError, match=r"doc_ids must have shape \[B, T\]"):
        ttt_attention(q, keys, values, doc_ids=torch.zeros(1, 5, dtype=torch.int64))


def test_document_ids_and_visibility_oracle():
    doc = document_ids_from_seq_lens(torch.tensor([[2, 3, 0]]), 5)
    assert doc.tolist() == [[0, 0, 1, 1, 1]]
    vis = block_causal_visibility(doc, torch.tensor([[True, True, True, True, False]]), (0, 5), (0, 5))[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],  # a padded query still sees itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(vis, expected)
    with pytest.raises(ValueError, match="must sum to the row width T=5"):
        document_ids_from_seq_lens(torch.tensor([[2, 2]]), 5)
    with pytest.raises(TypeError, match="integer"):
        document_ids_from_seq_lens(torch.tensor([[2.0, 3.0]]), 5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_masked_attention_dense_matches_flex_forward_and_zeroes_empty_rows():
    from torch.nn.attention.flex_attention import create_block_mask

    b, hq, hkv, n, d = 1, 4, 2, 10, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, n, d, generator=g)
    k = torch.randn(b, hkv, n, d, generator=g)
    v = torch.randn(b, hkv, n, d, generator=g)

    def mask_mod(_b, _h, qi, ki):
        return (ki <= qi) & (qi < 8)  # queries 8, 9 see nothing

    dense = torch.stack([torch.tensor([[mask_mod(0, 0, i, j) for j in range(n)] for i in range(n)])])[:, None]
    out = masked_attention(q, k, v, dense)
    assert torch.equal(out[:, :, 8:], torch.zeros_like(out[:, :, 8:]))
    expected = F.scaled_dot_product_attention(
        q[:, :, :8], k.repeat_interleave(2, 1)[:, :, :8], v.repeat_interleave(2, 1)[:, :, :8], is_causal=True
    )
    torch.testing.assert_close(out[:, :, :8], expected, rtol=1e-5, atol=1e-5)
    block_mask = create_block_mask(mask_mod, None, None, n, n, device="cpu")
    torch.testing.assert_close(masked_attention(q, k, v, block_mask), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="BlockMask or a bool tensor"):
        masked_attention(q, k, v, "causal")


# ---------------------------------------------------------------- bf16 precision


def _peaked_bf16(b, hq, hkv, t, d, steps, seed=0):
    """bf16 inputs whose softmax rows are peaked (scores of std ~ 9 after scaling) and whose values share
    an offset, so that dP = dO V^T is large next to dP - rowsum(P * dP): the two places where rounding
    to bf16 hurts."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, hq, t, d, generator=g) * 3).bfloat16()
    keys = [(torch.randn(b, hkv, t, d, generator=g) * 3).bfloat16() for _ in range(steps + 1)]
    values = [(torch.randn(b, hkv, t, d, generator=g) + 4).bfloat16() for _ in range(steps + 1)]
    upstream = torch.randn(b, hq, t, d, generator=g).bfloat16()
    return q, keys, values, upstream


def _max_rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


BF16_TOL = 6e-3  # measured: 0.2-0.4 % here; rounding scores or dP to bf16 gives 1-3 % (next test)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("implementation", ["lean", "eager"])
def test_bf16_inputs_match_an_fp64_reference_on_peaked_rows(implementation, autocast):
    """Also under bf16 autocast, which would otherwise cast the fp32 score products back down."""
    b, hq, hkv, t, d, steps = 1, 4, 2, 40, 64, 2
    q, keys, values, upstream = _peaked_bf16(b, hq, hkv, t, d, steps)
    exact = [x.double().requires_grad_() for x in (q, *keys, *values)]
    ref = ttt_attention_reference(exact[0], exact[1 : steps + 2], exact[steps + 2 :])
    ref_grads = torch.autograd.grad(ref, exact, upstream.double())
    ours = [x.clone().requires_grad_() for x in (q, *keys, *values)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = ttt_attention(ours[0], ours[1 : steps + 2], ours[steps + 2 :], implementation=implementation,
                            query_chunk_size=16)
    grads = torch.autograd.grad(out, ours, upstream)  # backward outside autocast, as recommended
    assert out.dtype == torch.bfloat16
    assert _max_rel(out, ref) < BF16_TOL
    for name, g_ours, g_ref in zip(["q", "k0", "k1", "k2", "v0", "v1", "v2"], grads, ref_grads, strict=True):
        assert _max_rel(g_ours, g_ref) < BF16_TOL, name


def test_bf16_rounded_scores_and_dp_fail_that_tolerance():
    """The previous kernel rounded QK^T and dP to bf16 (and took rowsum(dO * O) from the bf16 output):
    written out here for step 0, it misses BF16_TOL on the same inputs the kernels meet it on."""
    b, h, t, d = 1, 2, 40, 64
    q, keys, values, upstream = _peaked_bf16(b, h, h, t, d, 0)
    k, v = keys[0], values[0]
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    ref = ttt_attention_reference(exact[0], [exact[1]], [exact[2]])
    ref_dq = torch.autograd.grad(ref, exact[0], upstream.double())[0]

    scale = d**-0.5
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    probs = ((q @ k.transpose(-1, -2)).float() * scale).masked_fill(~causal, float("-inf")).softmax(-1)
    out_rounded = probs.bfloat16() @ v
    dp = (upstream @ v.transpose(-1, -2)).float()
    delta = (upstream.float() * out_rounded.float()).sum(-1, keepdim=True)
    dq_rounded = (probs * (dp - delta) * scale).bfloat16() @ k
    assert _max_rel(out_rounded, ref) > BF16_TOL
    assert _max_rel(dq_rounded, ref_dq) > BF16_TOL

    qb = q.clone().requires_grad_()
    out = ttt_attention_lean(qb, [k], [v], query_chunk_size=16)
    assert _max_rel(out, ref) < BF16_TOL
    assert _max_rel(torch.autograd.grad(out, qb, upstream)[0], ref_dq) < BF16_TOL


def test_host_copy_of_doc_ids_gives_the_same_result_and_is_checked():
    b, hq, hkv, t, d, steps = 2, 4, 2, 13, 8, 1
    doc_ids, key_valid = LAYOUTS["packed"](b, t)
    q, keys, values = _inputs(b, hq, hkv, t, d, steps)
    plain = ttt_attention_lean(q, keys, values, doc_ids=doc_ids, key_valid=key_valid, query_chunk_size=4)
    hosted = ttt_attention_lean(q, keys, values, doc_ids=doc_ids, key_valid=key_valid, query_chunk_size=4,
                                doc_ids_host=doc_ids.clone())
    assert torch.equal(plain, hosted)
    with pytest.raises(ValueError, match="doc_ids_host must be a CPU copy of doc_ids"):
        ttt_attention_lean(q, keys, values, doc_ids=doc_ids, doc_ids_host=doc_ids[:1])
    with pytest.raises(ValueError, match="without doc_ids"):
        ttt_attention_lean(q, keys, values, doc_ids_host=doc_ids)


# ---------------------------------------------------------------- flex length buckets


def test_flex_bucket_length_ladder():
    ladder = [flex_bucket_length(n, 128) for n in (1, 128, 129, 256, 257, 384, 385, 512, 513, 769, 1025, 1537)]
    assert ladder == [128, 128, 256, 256, 384, 384, 512, 512, 768, 1024, 1536, 2048]
    assert flex_bucket_length(100, 16) == 128 and flex_bucket_length(16 * 5, 16) == 96
    # Every n up to 64k at block 128 lands on one of 18 lengths, well under the recompile limit.
    buckets = {flex_bucket_length(n, 128) for n in range(1, 65537, 7)}
    assert len(buckets) == 18 < FLEX_RECOMPILE_LIMIT
    for n in range(1, 3000, 37):
        bucket = flex_bucket_length(n, 64)
        assert bucket >= n and bucket % 64 == 0 and bucket <= max(128, 1.5 * -(-n // 64) * 64)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive int"):
            flex_bucket_length(bad)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        flex_bucket_length(10, 0)


def _cod_layout(lengths, width, seed):
    doc = document_ids_from_lengths(lengths, width)
    loss_mask = (doc >= 0).long()
    anchor, depth = generate_cod_sample_indices(width, loss_mask, 4, document_ids=doc, seed=seed)
    return anchor, depth, doc


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("block_size", [16, 32])
def test_flex_on_a_padded_block_mask_equals_the_unpadded_dense_path(block_size):
    """Padding to the bucket (padded elements in no document) changes nothing: the flex forward (CPU,
    eager) on the padded BlockMask equals the dense-mask path at the real length."""
    anchor, depth, doc = _cod_layout([20, 13], 40, seed=3)
    n = anchor.numel()
    bucket = flex_bucket_length(n, block_size)
    assert bucket > n
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, n, 16, generator=g)
    k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(2))
    padded = build_cod_block_mask(anchor, depth, doc, block_size=block_size, pad_to=bucket)
    assert padded.seq_lengths == (bucket, bucket)
    out = masked_attention(q, k, v, padded)
    assert out.shape == q.shape
    dense = masked_attention(q, k, v, dense_cod_mask(anchor, depth, doc)[None, None])
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    exact = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    torch.testing.assert_close(out, masked_attention(q, k, v, exact), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="at least the sequence length n"):
        masked_attention(torch.randn(1, 4, bucket + 1, 16), torch.randn(1, 2, bucket + 1, 16),
                         torch.randn(1, 2, bucket + 1, 16), padded)


# ---------------------------------------------------------------- TTT on flex


def _dense_flex_twin(query, key, value, block_mask, scale, enable_gqa, return_lse=False):
    """Differentiable dense stand-in for the flex call (out and natural-log lse under the BlockMask's
    mask_mod): lets the CPU test run ttt_attention_flex's log-space merge with gradients."""
    b, hq, t, _ = query.shape
    idx = torch.arange(t)
    visible = block_mask.mask_mod(torch.arange(b)[:, None, None, None], None, idx[None, None, :, None],
                                  idx[None, None, None, :])
    k = key.repeat_interleave(hq // key.shape[1], dim=1)
    v = value.repeat_interleave(hq // value.shape[1], dim=1)
    acc = torch.promote_types(query.dtype, torch.float32)
    scores = (query.to(acc) @ k.to(acc).transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.softmax(scores, dim=-1) @ v.to(acc)).to(query.dtype)
    return (out, lse) if return_lse else out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_flex_ttt_forward_matches_the_reference_on_cpu(layout, steps):
    # the real FlexAttention forward (eager on CPU), t not a multiple of the block size, GQA 2
    b, hq, hkv, t, d = 2, 4, 2, 40, 16
    q, keys, values = (x.detach() if isinstance(x, torch.Tensor) else [y.detach() for y in x]
                       for x in _inputs(b, hq, hkv, t, d, steps))
    doc_ids, key_valid = LAYOUTS[layout](b, t)
    with torch.no_grad():
        ref = ttt_attention_reference(q, keys, values, doc_ids=doc_ids, key_valid=key_valid)
        out = ttt_attention_flex(q, keys, values, doc_ids=doc_ids, key_valid=key_valid)
        lean = ttt_attention(q, keys, values, doc_ids=doc_ids, key_valid=key_valid, implementation="flex")
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(lean, ref, atol=2e-6, rtol=2e-5)  # off CUDA "flex" is the lean path


@pytest.mark.parametrize("layout", ["packed", "right_pad"])
def test_flex_ttt_merge_gradients_match_the_reference(layout, monkeypatch):
    # the log-space merge of the K_0 part with the diagonal keys, differentiated on CPU with a dense twin
    # of the flex call (flex's own backward is checked on CUDA below)
    from eagle_ext.models import attention

    monkeypatch.setattr(attention, "_run_flex", _dense_flex_twin)
    b, hq, hkv, t, d, steps = 2, 4, 2, 24, 8, 3
    q, keys, values = _inputs(b, hq, hkv, t, d, steps, dtype=torch.float64)
    doc_ids, key_valid = LAYOUTS[layout](b, t)
    tensors = [q, *keys, *values]
    ref = ttt_attention_reference(q, keys, values, doc_ids=doc_ids, key_valid=key_valid)
    out = ttt_attention_flex(q, keys, values, doc_ids=doc_ids, key_valid=key_valid)
    torch.testing.assert_close(out, ref)
    for got, want in zip(_grads(out, tensors), _grads(ref, tensors), strict=True):
        torch.testing.assert_close(got, want)


def test_ttt_block_mask_is_built_once_per_unroll():
    doc_ids, key_valid = LAYOUTS["packed"](2, 40)
    first = ttt_block_mask(doc_ids, key_valid, 2, 40, torch.device("cpu"))
    assert ttt_block_mask(doc_ids, key_valid, 2, 40, torch.device("cpu")) is first  # the same objects: cached
    other = ttt_block_mask(doc_ids.clone(), key_valid, 2, 40, torch.device("cpu"))
    assert other is not first


def test_flex_ttt_saves_no_copy_of_the_cache(monkeypatch):
    # like the lean path: what a step saves beyond its inputs does not grow with k
    from eagle_ext.models import attention

    monkeypatch.setattr(attention, "_run_flex", _dense_flex_twin)
    b, hq, hkv, t, d = 1, 4, 2, 32, 8
    totals = []
    for steps in (1, 4):
        q, keys, values = _inputs(b, hq, hkv, t, d, steps)
        inputs = {x.untyped_storage().data_ptr() for x in (q, *keys, *values)}
        seen = {}

        def pack(x, inputs=inputs, seen=seen):
            if x.untyped_storage().data_ptr() not in inputs and x.numel() >= b * hkv * t * d:
                seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            ttt_attention_flex(q, keys, values)
        totals.append(sum(seen.values()))
    # the twin's dense scores are [B, Hq, T, T] either way; what grows is O(k * T) (the diagonal scores and
    # weights), while a copy of K_1..K_k alone would add (4 - 1) * B * Hkv * T * D fp32 (K and V: twice that)
    assert totals[1] - totals[0] < (4 - 1) * b * hkv * t * d * 4, totals


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, BF16_TOL)])
def test_lean_and_eager_match_fp64_on_cuda(dtype, tol):
    b, hq, hkv, t, d, steps = 2, 8, 2, 300, 64, 3
    doc_ids, key_valid = LAYOUTS["packed"](b, t)
    q, keys, values, upstream = _peaked_bf16(b, hq, hkv, t, d, steps)
    exact = [x.double().cuda().requires_grad_() for x in (q, *keys, *values)]
    doc_ids, key_valid = doc_ids.cuda(), key_valid.cuda()
    upstream = upstream.cuda()
    ref = ttt_attention_reference(exact[0], exact[1 : steps + 2], exact[steps + 2 :], doc_ids=doc_ids,
                                  key_valid=key_valid)
    ref_grads = torch.autograd.grad(ref, exact, upstream.double())
    for implementation in ("lean", "eager"):
        ours = [x.detach().to(dtype).requires_grad_() for x in exact]
        out = ttt_attention(ours[0], ours[1 : steps + 2], ours[steps + 2 :], doc_ids=doc_ids,
                            key_valid=key_valid, implementation=implementation, query_chunk_size=64,
                            doc_ids_host=doc_ids.cpu())
        assert _max_rel(out, ref) < tol, implementation
        for g_ours, g_ref in zip(torch.autograd.grad(out, ours, upstream.to(dtype)), ref_grads, strict=True):
            assert _max_rel(g_ours, g_ref) < tol, implementation


@pytest.mark.gpu
def test_compiled_flex_compiles_at_most_once_per_bucket_over_ten_lengths():
    from torch._dynamo.utils import counters

    widths = [150, 160, 170, 185, 200, 215, 230, 250, 270, 290]
    layouts = [_cod_layout([w // 2, w // 3], w, seed=w) for w in widths]
    lengths = [a.numel() for a, _, _ in layouts]
    assert len(set(lengths)) == 10
    buckets = {flex_bucket_length(n) for n in lengths}
    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for (anchor, depth, doc), n in zip(layouts, lengths, strict=True):
        block_mask = build_cod_block_mask(anchor, depth, doc, pad_to=flex_bucket_length(n), device="cuda")
        q = torch.randn(1, 4, n, 64, device="cuda", generator=gen, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(1, 2, n, 64, device="cuda", generator=gen, dtype=torch.bfloat16,
                            requires_grad=True) for _ in range(2))
        out = masked_attention(q, k, v, block_mask)
        out.float().square().sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
        dense = masked_attention(q.detach().float(), k.detach().float(), v.detach().float(),
                                 dense_cod_mask(anchor, depth, doc).cuda()[None, None])
        torch.testing.assert_close(out.float(), dense, rtol=3e-2, atol=3e-2)
    compiles = counters["stats"]["unique_graphs"]
    assert 1 <= compiles <= len(buckets) < len(lengths), (compiles, sorted(buckets))


@pytest.mark.gpu
def test_a_recompile_limit_hit_is_an_error_not_an_eager_fallback(monkeypatch):
    import torch._dynamo.config as dynamo_config

    from eagle_ext.models import attention

    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    fail = "fail_on_recompile_limit_hit" if hasattr(dynamo_config, "fail_on_recompile_limit_hit") else (
        "fail_on_cache_limit_hit")
    monkeypatch.setattr(attention, "_flex_compile_settings", lambda: {limit: 1, fail: True})
    torch._dynamo.reset()
    anchor, depth, doc = _cod_layout([60, 40], 120, seed=0)
    n = anchor.numel()
    block_mask = build_cod_block_mask(anchor, depth, doc, pad_to=flex_bucket_length(n), device="cuda")
    q, k, v = (torch.randn(1, 2, n, 64, device="cuda") for _ in range(3))
    masked_attention(q, k, v, block_mask)
    with pytest.raises(RuntimeError, match="recompile limit"):  # a new dtype forces a second compile
        masked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_mask)
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, BF16_TOL)])
def test_flex_ttt_matches_fp64_on_cuda_forward_and_backward(dtype, tol):
    # the compiled FlexAttention path (K_0 under the BlockMask + diagonal keys merged in log space),
    # forward and backward, against the fp64 reference; the lean path on the same inputs as a yardstick
    b, hq, hkv, t, d, steps = 2, 8, 2, 300, 64, 3
    doc_ids, key_valid = LAYOUTS["packed"](b, t)
    q, keys, values, upstream = _peaked_bf16(b, hq, hkv, t, d, steps)
    exact = [x.double().cuda().requires_grad_() for x in (q, *keys, *values)]
    doc_ids, key_valid = doc_ids.cuda(), key_valid.cuda()
    upstream = upstream.cuda()
    ref = ttt_attention_reference(exact[0], exact[1 : steps + 2], exact[steps + 2 :], doc_ids=doc_ids,
                                  key_valid=key_valid)
    ref_grads = torch.autograd.grad(ref, exact, upstream.double())
    ours = [x.detach().to(dtype).requires_grad_() for x in exact]
    out = ttt_attention(ours[0], ours[1 : steps + 2], ours[steps + 2 :], doc_ids=doc_ids, key_valid=key_valid,
                        implementation="flex")
    assert _max_rel(out, ref) < tol
    for g_ours, g_ref in zip(torch.autograd.grad(out, ours, upstream.to(dtype)), ref_grads, strict=True):
        assert _max_rel(g_ours, g_ref) < tol
