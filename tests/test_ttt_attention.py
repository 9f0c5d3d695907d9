"""TTT attention: the memory-lean kernel against the eager reference, and both against plain attention."""

import pytest
import torch
import torch.nn.functional as F

from eagle_ext.models.attention import (
    masked_attention,
    ttt_attention,
    ttt_attention_lean,
    ttt_attention_reference,
)
from eagle_ext.models.masks import block_causal_visibility, document_ids_from_seq_lens


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
    assert lean <= b * hkv * t * steps * d  # the stacked diagonal keys: O(T * D * k)


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)])
def test_lean_matches_eager_on_cuda(dtype, tol):
    b, hq, hkv, t, d, steps = 2, 8, 2, 300, 64, 3
    doc_ids, key_valid = LAYOUTS["packed"](b, t)
    q, keys, values = _inputs(b, hq, hkv, t, d, steps, dtype=dtype)
    q, keys, values = (
        q.detach().cuda().requires_grad_(),
        [k.detach().cuda().requires_grad_() for k in keys],
        [v.detach().cuda().requires_grad_() for v in values],
    )
    doc_ids, key_valid = doc_ids.cuda(), key_valid.cuda()
    tensors = [q, *keys, *values]
    ref = ttt_attention_reference(q, keys, values, doc_ids=doc_ids, key_valid=key_valid)
    lean = ttt_attention_lean(q, keys, values, doc_ids=doc_ids, key_valid=key_valid, query_chunk_size=64)
    torch.testing.assert_close(lean.float(), ref.float(), rtol=tol, atol=tol)
    upstream = torch.randn_like(ref)
    for g_lean, g_ref in zip(torch.autograd.grad(lean, tensors, upstream), torch.autograd.grad(ref, tensors, upstream),
                             strict=True):
        torch.testing.assert_close(g_lean.float(), g_ref.float(), rtol=tol, atol=tol)
