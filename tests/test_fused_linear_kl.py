"""fused_linear_kl: Triton (interpreted on CPU) and chunked paths against the plain-torch reference.

Shapes are small and deliberately not tile multiples (interpreter tiles: BLOCK_N=32, BLOCK_V=128,
BLOCK_H=64), so every masked edge of the kernels runs; N=37 / Vd=300 also gives several vocab splits in
forward and several vocab chunks in backward.
"""

from __future__ import annotations

import contextlib
import math
import types
import warnings

import pytest
import torch

from eagle_ext.ops import linear_kl
from eagle_ext.ops.linear_kl import (
    FusedLinearKLResult,
    fused_linear_kl,
    fused_linear_kl_reference,
    matmul_allows_tf32,
    triton_dot_dtype,
)

FUSED_IMPLS = ["chunked", "triton", "gemm"]
TOL = {torch.float32: dict(atol=1e-5, rtol=5e-4), torch.float16: dict(atol=2e-3, rtol=2e-3)}
GRAD_SCALE = 3.0


def make_case(kind: str, *, n=37, h=40, v=300, dtype=torch.float32, logits=False, seed=0):
    """(hidden, weight, mask, target kwargs) for one scenario; all tensors CPU."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.3
    mask = torch.rand(n, generator=g) > 0.3
    t = torch.randn(n, v, generator=g) * 2.0
    if kind == "all_masked":
        mask = torch.zeros(n, dtype=torch.bool)
    elif kind == "block_masked":  # first row block of the kernels entirely masked, the rest mixed
        mask[: min(32, n)] = False
    if logits:
        if kind == "zeros":  # -inf logits give exact zeros in p (never a whole row)
            t = t.masked_fill(torch.rand(n, v, generator=g) < 0.5, float("-inf"))
            t[:, 0] = 1.0
        elif kind == "one_hot":  # nearly one-hot target
            t = torch.full((n, v), -30.0)
            t[torch.arange(n), torch.randint(v, (n,), generator=g)] = 30.0
        target = dict(target_logits=t)
    else:
        p = torch.softmax(t, -1)
        if kind == "zeros":
            p = p.masked_fill(torch.rand(n, v, generator=g) < 0.5, 0.0)
            p[:, 0] += 0.1
            p = p / p.sum(-1, keepdim=True)
        elif kind == "one_hot":
            p = torch.nn.functional.one_hot(torch.randint(v, (n,), generator=g), v).float()
        elif kind == "unnormalised":  # row masses in [0, 2], some rows with mass 0
            p = p * (torch.rand(n, 1, generator=g) * 2.0)
            p[::5] = 0.0
        target = dict(target_probs=p)
    return hidden.to(dtype), weight.to(dtype), mask, target


def run(impl, hidden, weight, mask, target, *, mode, scale=GRAD_SCALE, **kwargs):
    """Forward + backward of ``scale * loss``; returns (result, dH, dW)."""
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    res = fused_linear_kl(h, w, mask, mode=mode, impl=impl, **target, **kwargs)
    (res.loss * scale).backward()
    return res, h.grad, w.grad


def assert_matches_reference(impl, hidden, weight, mask, target, *, mode, **kwargs):
    ref, ref_dh, ref_dw = run("reference", hidden, weight, mask, target, mode=mode)
    res, dh, dw = run(impl, hidden, weight, mask, target, mode=mode, **kwargs)
    tol = TOL[hidden.dtype]
    assert isinstance(res, FusedLinearKLResult)
    assert res.loss.dtype == torch.float32 and res.loss.dim() == 0
    torch.testing.assert_close(res.loss, ref.loss, **tol)
    assert dh.dtype == hidden.dtype and dw.dtype == weight.dtype
    torch.testing.assert_close(dh.float(), ref_dh.float(), **tol)
    torch.testing.assert_close(dw.float(), ref_dw.float(), **tol)
    assert res.draft_argmax.dtype == torch.int64 and res.target_argmax.dtype == torch.int64
    assert torch.equal(res.draft_argmax, ref.draft_argmax)
    assert torch.equal(res.target_argmax, ref.target_argmax)
    assert torch.isfinite(dh).all() and torch.isfinite(dw).all()
    return res, dh, dw


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("mode", ["soft_ce", "kl"])
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
@pytest.mark.parametrize("kind", ["random", "block_masked", "zeros", "one_hot"])
def test_matches_reference(impl, mode, logits, kind):
    hidden, weight, mask, target = make_case(kind, logits=logits)
    assert_matches_reference(impl, hidden, weight, mask, target, mode=mode)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("mode", ["soft_ce", "kl"])
def test_unnormalised_targets(impl, mode):
    hidden, weight, mask, target = make_case("unnormalised")
    assert_matches_reference(impl, hidden, weight, mask, target, mode=mode)
    # the gradient is Σp·softmax(z) - p, not softmax(z) - p: check one row by hand
    p = target["target_probs"]
    row = int(torch.nonzero(mask & (p.sum(-1) > 0))[0])
    h = hidden.clone().requires_grad_()
    fused_linear_kl(h, weight, torch.arange(37) == row, target_probs=p, mode=mode, impl=impl).loss.backward()
    z = hidden[row] @ weight.t()
    expected = (p[row].sum() * torch.softmax(z, -1) - p[row]) @ weight
    torch.testing.assert_close(h.grad[row], expected, atol=1e-5, rtol=5e-4)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_all_masked_gives_zero_loss_and_grads(impl, logits):
    hidden, weight, mask, target = make_case("all_masked", logits=logits)
    res, dh, dw = assert_matches_reference(impl, hidden, weight, mask, target, mode="kl")
    assert res.loss.item() == 0.0
    assert not dh.any() and not dw.any()


@pytest.mark.parametrize("impl", ["reference", *FUSED_IMPLS])
def test_empty_input(impl):
    hidden, weight = torch.zeros(0, 40), torch.randn(300, 40)
    target = dict(target_probs=torch.zeros(0, 300))
    res, dh, dw = run(impl, hidden, weight, torch.zeros(0, dtype=torch.bool), target, mode="soft_ce")
    assert res.loss.item() == 0.0 and res.loss.dtype == torch.float32
    assert res.draft_argmax.shape == (0,) and res.target_argmax.shape == (0,)
    assert dh.shape == (0, 40) and not dw.any() and torch.isfinite(dw).all()


@pytest.mark.parametrize("impl", ["reference", *FUSED_IMPLS])
@pytest.mark.parametrize("mode", ["soft_ce", "kl"])
def test_oracle_two_by_two(impl, mode):
    # z = hidden @ weight.T = [[2, 0], [0, 2]]; one-hot targets; only row 0 counts
    hidden, weight = 2.0 * torch.eye(2), torch.eye(2)
    target = torch.eye(2)
    res = fused_linear_kl(hidden, weight, torch.tensor([1, 0]), target_probs=target, mode=mode, impl=impl)
    expected = math.log1p(math.exp(-2.0))  # -log_softmax([2, 0])[0]
    assert abs(res.loss.item() - expected) < 1e-6
    assert abs(expected - 0.1269) < 1e-4
    assert res.draft_argmax.tolist() == [0, 1] and res.target_argmax.tolist() == [0, 1]


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
@pytest.mark.parametrize("n", [37, 256], ids=["3_splits", "1_split"])
def test_argmax_ties_take_lowest_index(impl, logits, n):
    # columns 5 and 200 (and 7 and 250) tie exactly and lie in different vocab tiles; with 37 rows the
    # Triton forward puts them in different vocab splits, with 256 rows in different tiles of one split
    h, v = 40, 300
    # small integers: the tied logits are exact in fp32 whatever order a dot sums in (the interpreter's
    # tile products are BLAS calls whose rounding may differ between tile positions)
    hidden = torch.randint(1, 3, (n, h)).float()
    weight = torch.randn(v, h) * 0.05
    weight[5] = weight[200] = torch.ones(h)
    t = torch.randn(n, v) * 0.1
    t[:, 7] = t[:, 250] = 10.0
    target = dict(target_logits=t) if logits else dict(target_probs=torch.softmax(t, -1))
    res = fused_linear_kl(hidden, weight, torch.ones(n, dtype=torch.bool), **target, impl=impl)
    assert (res.draft_argmax == 5).all()
    assert (res.target_argmax == 7).all()


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_grad_output_scaling(impl):
    hidden, weight, mask, target = make_case("random")
    _, dh1, dw1 = run(impl, hidden, weight, mask, target, mode="kl", scale=1.0)
    _, dh3, dw3 = run(impl, hidden, weight, mask, target, mode="kl", scale=-2.5)
    torch.testing.assert_close(dh3, -2.5 * dh1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dw3, -2.5 * dw1, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("impl", "chunk_size"),
    [("chunked", 1), ("chunked", 16), ("triton", 128), ("triton", 512), ("gemm", 1), ("gemm", 16)],
)
def test_chunk_sizes(impl, chunk_size):
    # chunked / gemm: rows per chunk (1 / 16 of 37 rows); triton: vocab columns per backward chunk (3 / 1)
    hidden, weight, mask, target = make_case("random", logits=True)
    assert_matches_reference(impl, hidden, weight, mask, target, mode="kl", chunk_size=chunk_size)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("n", [64, 300])
def test_larger_tail_shape(impl, n):
    # n = 300: 10 row blocks of 32, i.e. one full swizzle group of 8 row blocks and a partial one of 2
    hidden, weight, mask, target = make_case("random", n=n, h=96, v=300, seed=3)
    assert_matches_reference(impl, hidden, weight, mask, target, mode="soft_ce")


def test_forward_grid_covers_the_sms_for_any_autotuned_block():
    triton_kernels = pytest.importorskip("eagle_ext.ops.triton.linear_kl")
    for n, v, sms in [(8192, 32000, 132), (1000, 4001, 132), (64, 32000, 80), (100000, 128000, 132)]:
        splits = triton_kernels.num_splits(n, v, sms)
        for config in triton_kernels._FWD_CONFIGS:
            programs = -(-n // config.kwargs["BLOCK_N"]) * splits
            # either two programs per SM, or every split is already as narrow as it may be
            assert programs >= 2 * sms or splits == -(-v // triton_kernels._SPLIT_ALIGN), (n, v, sms, config)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_fp16(impl, logits):
    hidden, weight, mask, target = make_case("random", dtype=torch.float16, logits=logits)
    if logits:
        target = dict(target_logits=target["target_logits"].half())
    assert_matches_reference(impl, hidden, weight, mask, target, mode="kl")


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_strided_inputs(impl):
    hidden, weight, mask, target = make_case("random", logits=True)
    ref, ref_dh, ref_dw = run("reference", hidden, weight, mask, target, mode="kl")
    wide_h = torch.cat([hidden, torch.randn(37, 9)], 1)[:, :40].requires_grad_()  # row stride 49
    wide_t = torch.cat([target["target_logits"], torch.randn(37, 5)], 1)[:, :300]
    weight_t = weight.t().contiguous().t().requires_grad_()  # column-major [V, H]
    assert not wide_h.is_contiguous() and not wide_t.is_contiguous() and not weight_t.is_contiguous()
    res = fused_linear_kl(wide_h, weight_t, mask, target_logits=wide_t, mode="kl", impl=impl)
    (res.loss * GRAD_SCALE).backward()
    torch.testing.assert_close(res.loss, ref.loss, atol=1e-5, rtol=5e-4)
    torch.testing.assert_close(wide_h.grad, ref_dh, atol=1e-5, rtol=5e-4)
    torch.testing.assert_close(weight_t.grad, ref_dw, atol=1e-5, rtol=5e-4)
    assert torch.equal(res.draft_argmax, ref.draft_argmax)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_partial_grads_no_grad_and_int_mask(impl):
    hidden, weight, mask, target = make_case("random")
    ref = fused_linear_kl_reference(hidden, weight, mask, **target)
    h = hidden.clone().requires_grad_()
    res = fused_linear_kl(h, weight, mask.long(), **target, impl=impl)  # 0/1 int mask, frozen weight
    res.loss.backward()
    torch.testing.assert_close(res.loss, ref.loss, atol=1e-5, rtol=5e-4)
    assert h.grad is not None and h.grad.abs().sum() > 0
    with torch.no_grad():
        res = fused_linear_kl(h, weight, mask, **target, impl=impl)
    assert not res.loss.requires_grad
    torch.testing.assert_close(res.loss, ref.loss, atol=1e-5, rtol=5e-4)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("narrow", ["hidden", "weight"])
def test_mixed_dtypes_promote_and_return_input_dtypes(impl, narrow):
    # bf16 hidden + fp32 master weight, and the reverse (the Triton kernel casts weight tiles itself)
    hidden, weight, mask, target = make_case("random")
    if narrow == "hidden":
        hidden = hidden.to(torch.bfloat16)
    else:
        weight = weight.to(torch.bfloat16)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    res = fused_linear_kl(h, w, mask, **target, impl=impl)
    (res.loss * GRAD_SCALE).backward()
    ref, ref_dh, ref_dw = run("reference", hidden, weight, mask, target, mode="soft_ce")
    torch.testing.assert_close(res.loss, ref.loss, atol=1e-5, rtol=5e-4)
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    torch.testing.assert_close(h.grad.float(), ref_dh.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(w.grad.float(), ref_dw.float(), atol=1e-2, rtol=1e-2)


def _shifted_oracle(target, mask, k, seq_len):
    """What a TTT step k sees when the target and mask are shifted left k times per sequence (zero fill)."""
    n, v = target.shape
    t3 = target.view(n // seq_len, seq_len, v)
    shifted = torch.zeros_like(t3)
    shifted[:, : max(seq_len - k, 0)] = t3[:, k:]
    valid = (torch.arange(seq_len) + k < seq_len).repeat(n // seq_len)
    return shifted.view(n, v), mask & valid


@pytest.mark.parametrize("impl", ["reference", *FUSED_IMPLS])
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
@pytest.mark.parametrize(("k", "seq_len"), [(1, 13), (5, 13), (20, 13), (4, None)])
def test_row_offset_equals_a_shifted_zero_filled_target(impl, logits, k, seq_len):
    # 3 sequences of 13 rows (N = 39); k >= 13 leaves no target; seq_len None: one sequence of 39 rows.
    # chunked: 16-row chunks, so chunks straddle both sequence ends and the end of the target
    hidden, weight, mask, target = make_case("random", n=39, logits=logits, seed=k)
    (name, t), = target.items()
    shifted, shifted_mask = _shifted_oracle(t, mask, k, seq_len or 39)
    ref, ref_dh, ref_dw = run("reference", hidden, weight, shifted_mask, {name: shifted}, mode="kl")
    kwargs = dict(chunk_size=16) if impl in ("chunked", "gemm") else {}
    res, dh, dw = run(impl, hidden, weight, mask, target, mode="kl", row_offset=k, seq_len=seq_len, **kwargs)
    torch.testing.assert_close(res.loss, ref.loss, **TOL[torch.float32])
    torch.testing.assert_close(dh, ref_dh, **TOL[torch.float32])
    torch.testing.assert_close(dw, ref_dw, **TOL[torch.float32])
    assert torch.equal(res.draft_argmax, ref.draft_argmax)
    assert torch.equal(res.target_argmax, ref.target_argmax)  # 0 where the zero-filled target has no row
    if k >= (seq_len or 39):
        assert res.loss.item() == 0.0 and not dh.any() and not dw.any() and not res.target_argmax.any()


def test_row_offset_does_not_touch_the_target():
    hidden, weight, mask, target = make_case("random", n=39, logits=True)
    before = target["target_logits"].clone()
    for impl in FUSED_IMPLS:
        run(impl, hidden, weight, mask, target, mode="kl", row_offset=3, seq_len=13)
    assert torch.equal(target["target_logits"], before)


def test_matmul_allows_tf32_reads_both_apis_and_never_raises():
    ns = types.SimpleNamespace

    def backends(matmul_precision=None, cuda_precision=None, all_precision=None, allow_tf32=None):
        matmul = ns()
        if matmul_precision is not None:
            matmul.fp32_precision = matmul_precision
        if allow_tf32 is not None:
            matmul.allow_tf32 = allow_tf32
        cuda = ns(matmul=matmul)
        if cuda_precision is not None:
            cuda.fp32_precision = cuda_precision
        root = ns(cuda=cuda)
        if all_precision is not None:
            root.fp32_precision = all_precision
        return root

    # torch >= 2.9: the new API wins; "none" inherits from torch.backends.cuda, then torch.backends
    assert matmul_allows_tf32(backends("tf32", allow_tf32=False)) is True
    assert matmul_allows_tf32(backends("ieee", allow_tf32=True)) is False
    assert matmul_allows_tf32(backends("none", cuda_precision="tf32")) is True
    assert matmul_allows_tf32(backends("none", cuda_precision="none", all_precision="ieee", allow_tf32=True)) is False
    # nothing set anywhere, or older torch without fp32_precision: the legacy flag
    assert matmul_allows_tf32(backends("none", "none", "none", allow_tf32=True)) is True
    assert matmul_allows_tf32(backends(allow_tf32=True)) is True
    assert matmul_allows_tf32(backends(allow_tf32=False)) is False

    class Raising:  # torch >= 2.9 raises on allow_tf32 once fp32_precision has been set
        fp32_precision = "none"

        @property
        def allow_tf32(self):
            raise RuntimeError("mixing legacy and new precision APIs")

    class RaisingPrecision:
        @property
        def fp32_precision(self):
            raise RuntimeError("broken")

        allow_tf32 = True

    assert matmul_allows_tf32(ns(cuda=ns(matmul=Raising()))) is False
    assert matmul_allows_tf32(ns(cuda=ns(matmul=RaisingPrecision()))) is True
    assert matmul_allows_tf32(ns()) is False
    assert isinstance(matmul_allows_tf32(), bool)  # the real torch.backends


@pytest.mark.parametrize(
    ("hidden", "weight", "autocast", "tf32", "expected"),
    [
        (torch.bfloat16, torch.bfloat16, None, False, (torch.bfloat16, False)),
        (torch.float16, torch.float16, torch.bfloat16, False, (torch.float16, False)),
        # fp32 master weight with bf16 activations, fp32 RMSNorm output: autocast dtype under autocast
        (torch.bfloat16, torch.float32, torch.bfloat16, False, (torch.bfloat16, False)),
        (torch.float32, torch.float32, torch.float16, False, (torch.float16, False)),
        # outside autocast fp32 stays fp32: fine with TF32, a warning without
        (torch.bfloat16, torch.float32, None, True, (torch.float32, False)),
        (torch.float32, torch.float32, None, False, (torch.float32, True)),
    ],
)
def test_triton_dot_dtype_decision(hidden, weight, autocast, tf32, expected):
    assert triton_dot_dtype(hidden, weight, autocast_dtype=autocast, tf32=tf32) == expected


def test_fp32_dot_warning_is_issued_once(monkeypatch):
    monkeypatch.setattr(linear_kl, "_warned_fp32_dot", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            linear_kl._warn_fp32_dot_once()
    assert len(caught) == 1 and "without tensor cores" in str(caught[0].message)


def test_targets_get_no_gradient():
    hidden, weight, mask, target = make_case("random")
    p = target["target_probs"].clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    for impl in ["reference", "chunked", "gemm"]:
        fused_linear_kl(h, weight, mask, target_probs=p, impl=impl).loss.backward()
        assert p.grad is None


def _bad_calls():
    h, w, m, p = torch.randn(4, 8), torch.randn(10, 8), torch.ones(4, dtype=torch.bool), torch.rand(4, 10)
    return [
        (dict(hidden=h, weight=torch.randn(10, 7), mask=m, target_probs=p), ValueError, "weight must be 2-D"),
        (dict(hidden=h[0], weight=w, mask=m, target_probs=p), ValueError, "hidden must be 2-D"),
        (
            dict(hidden=h, weight=w, mask=m, target_probs=torch.rand(4, 11)),
            ValueError,
            r"target_probs must have shape",
        ),
        (
            dict(hidden=h, weight=w, mask=m, target_logits=torch.rand(3, 10)),
            ValueError,
            r"target_logits must have shape",
        ),
        (dict(hidden=h, weight=w, mask=m, target_probs=p, target_logits=p), ValueError, "got both"),
        (dict(hidden=h, weight=w, mask=m), ValueError, "got neither"),
        (dict(hidden=h, weight=w, mask=m, target_probs=p, mode="jsd"), ValueError, "mode must be one of"),
        (dict(hidden=h, weight=w, mask=m, target_probs=p, impl="cuda"), ValueError, "impl must be one of"),
        (dict(hidden=h, weight=w, mask=m[None], target_probs=p), ValueError, "mask must be 1-D"),
        (
            dict(hidden=h, weight=w, mask=m[:3], target_probs=p),
            ValueError,
            "mask must have length N = .* 4, got length 3",
        ),
        (dict(hidden=h, weight=w, mask=m.float(), target_probs=p), TypeError, "mask must be a bool"),
        (dict(hidden=h.long(), weight=w, mask=m, target_probs=p), TypeError, "hidden must be float32"),
        (
            dict(hidden=h, weight=w, mask=m, target_probs=p, chunk_size=0),
            ValueError,
            "chunk_size must be >= 1",
        ),
        (dict(hidden=h, weight=w, mask=m, target_probs=p, row_offset=-1), ValueError, "row_offset must be >= 0, got -1"),
        (dict(hidden=h, weight=w, mask=m, target_probs=p, row_offset=1.0), TypeError, "row_offset must be an int"),
        (
            dict(hidden=h, weight=w, mask=m, target_probs=p, row_offset=1, seq_len=3),
            ValueError,
            "seq_len must divide N = hidden.shape.0. = 4, got seq_len=3",
        ),
        (dict(hidden=h, weight=w, mask=m, target_probs=p, seq_len=0), ValueError, "seq_len must be >= 1, got 0"),
    ]


@pytest.mark.parametrize(("kwargs", "exc", "match"), _bad_calls())
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_validation_errors(kwargs, exc, match, impl):
    kwargs = {"impl": impl, **kwargs}
    with pytest.raises(exc, match=match):
        fused_linear_kl(kwargs.pop("hidden"), kwargs.pop("weight"), kwargs.pop("mask"), **kwargs)


def test_cuda_autotune_configs_fit_the_register_budget():
    kernels = pytest.importorskip("eagle_ext.ops.triton.linear_kl")
    for config in [*kernels.CUDA_FWD_CONFIGS, *kernels.CUDA_BWD_CONFIGS]:
        # one fp32 logits tile per thread at most 64 registers: three live tiles stay under 255
        assert kernels.tile_registers_per_thread(config) <= kernels.MAX_TILE_REGISTERS_PER_THREAD, config
        kw = config.kwargs
        smem = config.num_stages * (kw["BLOCK_N"] + kw["BLOCK_V"]) * kw["BLOCK_H"] * 2
        assert smem <= 160 * 1024, config  # fits an A100 / H100 / H200 SM with room for the epilogue


def test_autotune_trim_drops_spilling_configs_and_honours_the_env_limit(monkeypatch):
    kernels = pytest.importorskip("eagle_ext.ops.triton.linear_kl")
    configs = kernels._configs([(128, 256, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (64, 128, 64, 4, 4)])
    monkeypatch.delenv("EAGLE_EXT_AUTOTUNE_CONFIGS", raising=False)
    kept = kernels._trim(configs)
    assert [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_V"], c.num_warps) for c in kept] == [(128, 128, 8), (64, 128, 4)]
    monkeypatch.setenv("EAGLE_EXT_AUTOTUNE_CONFIGS", "1")
    assert kernels._trim(configs) == kept[:1]
    monkeypatch.setenv("EAGLE_EXT_AUTOTUNE_CONFIGS", "zero")
    with pytest.raises(ValueError, match="EAGLE_EXT_AUTOTUNE_CONFIGS must be an int >= 1, got 'zero'"):
        kernels._trim(configs)



# --- the gemm path's row kernel (Triton, interpreted in fp32) against its torch twin ------------------


def _rows_case(kind, *, m=37, v=300, logits=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, v, generator=g) * 3.0
    t = torch.randn(m, v, generator=g) * 2.0
    if kind == "ties":
        z[:, 5] = z[:, v - 1] = z.max() + 1.0  # the max twice (v = 300: in different tiles): lowest wins
        z[3] = 0.0  # a whole row tied
        t[:, 7] = t[:, v - 1] = t.max() + 1.0
    target = t if logits else torch.softmax(t, -1) * (torch.rand(m, 1, generator=g) * 2.0)
    if kind == "zero_rows" and not logits:
        target[::4] = 0.0  # empty targets: Σp = 0
    if kind == "neg_inf_logits" and logits:
        target[:, 100:] = float("-inf")  # the draft vocab masked out of the target
    keep = torch.rand(m, generator=g) > 0.3
    if kind == "all_masked":
        keep[:] = False
    return z, target, keep


def _run_rows(fn, z, target, keep, *, r0=0, n=None, **kw):
    n = n or z.shape[0] + r0
    out = (torch.full((n,), float("nan")), torch.full((n,), -1, dtype=torch.int64), torch.full((n,), -1, dtype=torch.int64))
    dz = torch.full_like(z, float("nan"))
    full_keep = torch.zeros(n, dtype=torch.uint8)
    full_keep[r0 : r0 + z.shape[0]] = keep.to(torch.uint8)
    fn(z, target, full_keep, dz, *out, r0=r0, **kw)
    return (*(o[r0 : r0 + z.shape[0]] for o in out), dz)


@pytest.mark.parametrize(
    ("kind", "kl", "v"),
    [("random", False, 300), ("random", True, 300), ("random", True, 128), ("random", True, 1),
     ("ties", True, 300), ("ties", False, 128), ("zero_rows", True, 300), ("neg_inf_logits", True, 300),
     ("all_masked", True, 300)],
)  # v = 300: three tiles with a tail; 128: exactly one tile; 1: a single column
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_gemm_row_kernel_matches_its_torch_twin(kind, logits, kl, v):
    kernels = pytest.importorskip("eagle_ext.ops.triton.linear_kl_rows")
    z, target, keep = _rows_case(kind, v=v, logits=logits)
    kw = dict(is_logits=logits, kl=kl, row_offset=0, seq_len=z.shape[0])
    ours = _run_rows(kernels.rows, z, target, keep, **kw)
    twin = _run_rows(linear_kl._rows_torch, z, target, keep, **kw)
    for name, a, b in zip(("row_loss", "draft_argmax", "target_argmax", "dz"), ours, twin):
        if name == "row_loss":  # rows outside keep may be non-finite (an all -inf target): not used
            a, b = a[keep], b[keep]
        if a.dtype == torch.int64:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=name)
    assert not ours[3][~keep].any()  # exact zeros, also where the target is non-finite
    if kind == "ties":
        assert (ours[1][torch.arange(37) != 3] == 5).all() and ours[1][3] == 0 and (ours[2] == 7).all()


@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_gemm_row_kernel_reads_offset_targets_of_later_chunks(logits):
    # a chunk of rows 26..38 of N = 39 (3 sequences of 13) read at row offset 4: rows past their sequence's
    # end read a zero target; fp16 dz output (the GEMM dtype) from fp32 logits
    kernels = pytest.importorskip("eagle_ext.ops.triton.linear_kl_rows")
    g = torch.Generator().manual_seed(5)
    z = torch.randn(13, 300, generator=g)
    target = torch.randn(39, 300, generator=g)
    target = target if logits else torch.softmax(target, -1)
    keep = torch.ones(13, dtype=torch.bool)
    keep[-4:] = False  # what _validate removes: rows without an offset target
    kw = dict(is_logits=logits, kl=True, row_offset=4, seq_len=13, r0=26, n=39)
    ours = _run_rows(kernels.rows, z, target, keep, **kw)
    twin = _run_rows(linear_kl._rows_torch, z, target, keep, **kw)
    torch.testing.assert_close(ours[0][:-4], twin[0][:-4], atol=2e-5, rtol=2e-5)
    assert torch.equal(ours[1], twin[1]) and torch.equal(ours[2][:-4], twin[2][:-4])
    torch.testing.assert_close(ours[3], twin[3], atol=2e-6, rtol=2e-5)
    dz16 = torch.empty(13, 300, dtype=torch.float16)
    full_keep = torch.zeros(39, dtype=torch.uint8)
    full_keep[26:] = keep.to(torch.uint8)
    kernels.rows(z, target, full_keep, dz16, torch.empty(39), torch.empty(39, dtype=torch.int64),
                 torch.empty(39, dtype=torch.int64), is_logits=logits, kl=True, row_offset=4, seq_len=13, r0=26)
    torch.testing.assert_close(dz16.float(), ours[3], atol=1e-3, rtol=1e-3)


def test_gemm_path_off_cuda_uses_the_torch_twin_and_matches_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no kernel: the twin runs the rows
    assert linear_kl._row_kernel(torch.device("cpu")) is linear_kl._rows_torch
    for logits in (False, True):
        hidden, weight, mask, target = make_case("random", logits=logits)
        assert_matches_reference("gemm", hidden, weight, mask, target, mode="kl", chunk_size=10)


def test_gemm_backward_runs_once_and_scales_the_forward_gradients():
    hidden, weight, mask, target = make_case("random")
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_linear_kl(h, w, mask, **target, impl="gemm").loss
    (loss * 2.0).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    _, dh, dw = run("reference", hidden, weight, mask, target, mode="soft_ce", scale=2.0)
    torch.testing.assert_close(h.grad, dh, **TOL[torch.float32])
    torch.testing.assert_close(w.grad, dw, **TOL[torch.float32])


def test_weight_cast_is_made_once_per_weight_version():
    weight = torch.randn(30, 8, requires_grad=True)
    first = linear_kl.cast_weight_cached(weight, torch.float16)
    assert linear_kl.cast_weight_cached(weight, torch.float16) is first  # the same step: reused
    with torch.no_grad():
        weight.add_(1.0)  # an optimiser step bumps the version counter
    second = linear_kl.cast_weight_cached(weight, torch.float16)
    assert second is not first and torch.equal(second, weight.detach().half())
    other = torch.randn(30, 8)  # another tensor never gets this one's cast
    assert torch.equal(linear_kl.cast_weight_cached(other, torch.float16), other.half())
    assert linear_kl.cast_weight_cached(weight, torch.float32).data_ptr() == weight.data_ptr()  # no cast needed


# --- GPU parity (bf16 needs real hardware: the interpreter's bf16 arithmetic is wrong) -------------


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["soft_ce", "kl"])
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_gpu_bf16_parity(mode, logits):
    hidden, weight, mask, target = make_case(
        "random", n=1000, h=520, v=4001, dtype=torch.bfloat16, logits=logits
    )
    dev = torch.device("cuda")
    hidden, weight, mask = hidden.to(dev), weight.to(dev), mask.to(dev)
    target = {k: t.to(dev, torch.bfloat16) for k, t in target.items()}
    ref, ref_dh, ref_dw = run("reference", hidden, weight, mask, target, mode=mode)
    for impl in FUSED_IMPLS:
        res, dh, dw = run(impl, hidden, weight, mask, target, mode=mode)
        torch.testing.assert_close(res.loss, ref.loss, atol=5e-3, rtol=1e-3)
        torch.testing.assert_close(dh.float(), ref_dh.float(), atol=5e-3, rtol=5e-2)
        torch.testing.assert_close(dw.float(), ref_dw.float(), atol=5e-3, rtol=5e-2)
        assert (res.draft_argmax == ref.draft_argmax).float().mean() > 0.99  # near-ties may flip in bf16
        assert torch.equal(res.target_argmax, ref.target_argmax)


@contextlib.contextmanager
def _cuda_tf32(enabled: bool):
    """Set TF32 for CUDA fp32 matmuls through the torch >= 2.9 API when present, else the legacy flag."""
    matmul = torch.backends.cuda.matmul
    try:
        prev = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        new_api = True
    except (AttributeError, RuntimeError):
        prev, new_api = matmul.allow_tf32, False
        matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if new_api:
            matmul.fp32_precision = prev
        else:
            matmul.allow_tf32 = prev


@pytest.mark.gpu
def test_gpu_fp32_parity_and_ttt_reuse(monkeypatch):
    dev = torch.device("cuda")
    hidden, weight, mask, target = make_case("unnormalised", n=777, h=300, v=5000)
    hidden, weight, mask = hidden.to(dev), weight.to(dev), mask.to(dev)
    target = {k: t.to(dev) for k, t in target.items()}
    monkeypatch.setattr(linear_kl, "_warned_fp32_dot", False)
    with _cuda_tf32(False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert matmul_allows_tf32() is False
        # 3 TTT-like steps reusing one weight: gradients accumulate across calls exactly like the reference
        grads = {}
        for impl in ["reference", "triton"]:
            w = weight.clone().requires_grad_()
            total = sum(
                fused_linear_kl(hidden * (1 + k), w, mask, **target, impl=impl, mode="kl").loss
                for k in range(3)
            )
            total.backward()
            grads[impl] = (total.detach(), w.grad)
        torch.testing.assert_close(grads["triton"][0], grads["reference"][0], atol=1e-4, rtol=5e-4)
        torch.testing.assert_close(grads["triton"][1], grads["reference"][1], atol=1e-4, rtol=5e-4)
    # fp32 outside autocast without TF32: one warning for the three calls
    assert sum("without tensor cores" in str(w.message) for w in caught) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_gpu_mid_shape_with_row_offset(dtype, logits):
    # mid shape (several backward chunks, several swizzle groups, a split forward grid), 4 sequences of 250
    # rows read at row offset 3, against the fp32 reference on the shifted target
    dev = torch.device("cuda")
    hidden, weight, mask, target = make_case("random", n=1000, h=520, v=4001, dtype=dtype, logits=logits, seed=7)
    (name, t), = target.items()
    shifted, shifted_mask = _shifted_oracle(t, mask, 3, 250)
    hidden, weight, mask, shifted_mask = hidden.to(dev), weight.to(dev), mask.to(dev), shifted_mask.to(dev)
    with _cuda_tf32(False):
        ref, ref_dh, ref_dw = run("reference", hidden, weight, shifted_mask, {name: shifted.to(dev)}, mode="kl")
        res, dh, dw = run("triton", hidden, weight, mask, {name: t.to(dev)}, mode="kl", row_offset=3, seq_len=250)
    tol = dict(atol=1e-4, rtol=5e-4) if dtype == torch.float32 else dict(atol=5e-3, rtol=5e-2)
    torch.testing.assert_close(res.loss, ref.loss, **(tol if dtype == torch.float32 else dict(atol=5e-3, rtol=1e-3)))
    torch.testing.assert_close(dh.float(), ref_dh.float(), **tol)
    torch.testing.assert_close(dw.float(), ref_dw.float(), **tol)
    assert torch.equal(res.target_argmax, ref.target_argmax)
    assert (res.draft_argmax == ref.draft_argmax).float().mean() > 0.99


@pytest.mark.gpu
def test_gpu_autocast_runs_fp32_inputs_in_bf16_without_copying_the_weight(monkeypatch):
    # fp32 master weight and fp32 (RMSNorm) hidden under bf16 autocast: the kernel casts tiles to bf16
    dev = torch.device("cuda")
    hidden, weight, mask, target = make_case("random", n=1000, h=520, v=4001, seed=9)
    hidden, weight, mask = hidden.to(dev), weight.to(dev), mask.to(dev)
    target = {k: t.to(dev) for k, t in target.items()}
    ref, ref_dh, ref_dw = run("reference", hidden.bfloat16(), weight.bfloat16(), mask, target, mode="soft_ce")
    monkeypatch.setattr(linear_kl, "_warned_fp32_dot", False)
    with torch.autocast("cuda", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res, dh, dw = run("triton", hidden, weight, mask, target, mode="soft_ce")
    assert not any("without tensor cores" in str(w.message) for w in caught)
    assert dh.dtype == torch.float32 and dw.dtype == torch.float32
    torch.testing.assert_close(res.loss, ref.loss, atol=5e-3, rtol=1e-3)
    torch.testing.assert_close(dh, ref_dh.float(), atol=5e-3, rtol=5e-2)
    torch.testing.assert_close(dw, ref_dw.float(), atol=5e-3, rtol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_gemm_mid_shape_with_row_offset_and_autocast_master_weight(dtype):
    # the gemm path (cuBLAS logits, Triton rows, cuBLAS dH / dW into fp32) at a mid shape with several row
    # chunks, row offset 3 over 4 sequences of 250 rows; then an fp32 master weight under bf16 autocast
    dev = torch.device("cuda")
    hidden, weight, mask, target = make_case("random", n=1000, h=520, v=4001, dtype=dtype, logits=True, seed=11)
    (name, t), = target.items()
    shifted, shifted_mask = _shifted_oracle(t, mask, 3, 250)
    hidden, weight, mask, shifted_mask = hidden.to(dev), weight.to(dev), mask.to(dev), shifted_mask.to(dev)
    with _cuda_tf32(False):
        ref, ref_dh, ref_dw = run("reference", hidden, weight, shifted_mask, {name: shifted.to(dev)}, mode="kl")
        res, dh, dw = run("gemm", hidden, weight, mask, {name: t.to(dev)}, mode="kl", row_offset=3, seq_len=250,
                          chunk_size=192)
    tol = dict(atol=1e-4, rtol=5e-4) if dtype == torch.float32 else dict(atol=5e-3, rtol=5e-2)
    torch.testing.assert_close(res.loss, ref.loss, **(tol if dtype == torch.float32 else dict(atol=5e-3, rtol=1e-3)))
    torch.testing.assert_close(dh.float(), ref_dh.float(), **tol)
    torch.testing.assert_close(dw.float(), ref_dw.float(), **tol)
    assert torch.equal(res.target_argmax, ref.target_argmax)
    assert (res.draft_argmax == ref.draft_argmax).float().mean() > 0.99
    if dtype == torch.float32:
        master = weight.clone().requires_grad_()
        h = hidden.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = fused_linear_kl(h, master, mask, target_logits=t.to(dev), mode="kl", impl="gemm")
            cast = linear_kl.cast_weight_cached(master, torch.bfloat16)
            assert linear_kl.cast_weight_cached(master, torch.bfloat16) is cast  # cast once per weight version
        got.loss.backward()
        assert master.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
        want, want_dh, want_dw = run("reference", hidden.bfloat16(), weight.bfloat16(), mask,
                                     {name: t.to(dev)}, mode="kl", scale=1.0)
        torch.testing.assert_close(got.loss, want.loss, atol=5e-3, rtol=1e-3)
        torch.testing.assert_close(h.grad, want_dh.float(), atol=5e-3, rtol=5e-2)
        torch.testing.assert_close(master.grad, want_dw.float(), atol=5e-3, rtol=5e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_helpers_write_and_accumulate_into_fp32(dtype):
    """``_mm_into`` / ``_addmm_into`` against plain fp32 matmuls: same dtype, and (off CUDA, or where torch has no
    ``out_dtype``) the fallback that forms the product in the operands' dtype and widens it."""
    from eagle_ext.ops._gemm import _addmm_into, _fp32_out_supported, _mm_into

    assert not _fp32_out_supported("cpu", dtype)  # the probe answers False off CUDA, without running anything
    a, b = torch.randn(5, 7).to(dtype), torch.randn(7, 3).to(dtype)
    expected = (a.float() @ b.float())
    out = torch.empty(5, 3, dtype=torch.float32)
    _mm_into(out, a, b)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    acc = torch.ones(5, 3, dtype=torch.float32)
    _addmm_into(acc, a, b)
    _addmm_into(acc, a, b)
    torch.testing.assert_close(acc, 1 + 2 * expected, atol=2 * tol, rtol=2 * tol)
    same = torch.empty(5, 3, dtype=dtype)
    _mm_into(same, a, b)
    assert torch.equal(same, a @ b)
