"""Direct COD BlockMask builders (torch and Triton) against create_block_mask, flex outputs and dense SDPA;
padding to a flex bucket, element order, layering of ops."""

import ast
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import _ordered_to_dense, flex_attention

from eagle_ext.ops import build_cod_block_mask
from eagle_ext.ops.cod import generate_cod_sample_indices
from eagle_ext.ops.cod_block_mask import BLOCK_MASK_TENSORS as TENSORS
from eagle_ext.ops.cod_block_mask import cod_block_mask_reference
from eagle_ext.ops.cod_mask import depth_major_order
from eagle_ext.peagle.mask import cod_mask_mod, dense_cod_mask, document_ids_from_lengths


def packed_cod_row(lengths, width, *, num_depths=8, supervised=0.8, seed=0, ratio=0.7, ratio_min=0.2):
    """A COD layout of one packed row: documents of ``lengths`` then padding up to ``width``."""
    gen = torch.Generator().manual_seed(seed)
    doc = document_ids_from_lengths(lengths, width)
    loss_mask = ((torch.rand(width, generator=gen) < supervised) & (doc >= 0)).long()
    anchor, depth = generate_cod_sample_indices(
        width, loss_mask, num_depths, ratio, ratio_min, document_ids=doc, seed=seed
    )
    return anchor, depth, doc


def random_depth_major_layout(seq_len, num_depths, seed, *, keep=0.6, full_depth0=True):
    """Depth-major layouts beyond what COD sampling emits: any sorted anchor subset per depth (chains may
    be incomplete, depth 0 may be a subset, depth >= 1 anchors may sit on padding)."""
    gen = torch.Generator().manual_seed(seed)
    anchors, depths = [], []
    for d in range(num_depths):
        if d == 0 and full_depth0:
            chosen = torch.arange(seq_len)
        else:
            chosen = torch.nonzero(torch.rand(seq_len, generator=gen) < keep ** (d + 1)).flatten()
        anchors.append(chosen)
        depths.append(torch.full_like(chosen, d))
    cuts = torch.randint(0, seq_len + 1, (3,), generator=gen).sort().values.tolist()
    lengths = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1]]
    return torch.cat(anchors), torch.cat(depths), document_ids_from_lengths(lengths, seq_len)


def assert_same_block_mask(ours, ref):
    """Same full and partial block sets on both sides (dense block grids, order-insensitive), then every
    BlockMask tensor equal as stored (values, shape, dtype: the builders reproduce the index layout)."""
    assert ours.seq_lengths == ref.seq_lengths
    assert ours.BLOCK_SIZE == ref.BLOCK_SIZE
    for num, idx in (
        ("kv_num_blocks", "kv_indices"),
        ("full_kv_num_blocks", "full_kv_indices"),
        ("q_num_blocks", "q_indices"),
        ("full_q_num_blocks", "full_q_indices"),
    ):
        width = getattr(ref, idx).shape[-1]
        dense_ours = _ordered_to_dense(getattr(ours, num), getattr(ours, idx), width)
        dense_ref = _ordered_to_dense(getattr(ref, num), getattr(ref, idx), width)
        assert torch.equal(dense_ours, dense_ref), (
            f"{num}: block sets differ\nours={dense_ours}\nref={dense_ref}"
        )
    for name in TENSORS:
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        assert torch.equal(a, b), f"{name} differs:\nours={a}\nref={b}"


def assert_block_semantics(block_mask, dense):
    """What FlexAttention computes from the BlockMask (mask_mod inside partial blocks, nothing outside the
    listed blocks, everything inside full blocks) must be exactly the dense mask."""
    n = dense.shape[0]
    bs = block_mask.BLOCK_SIZE[0]
    nb = -(-n // bs)
    partial = _ordered_to_dense(block_mask.kv_num_blocks, block_mask.kv_indices, nb)[0, 0].bool()
    full = _ordered_to_dense(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, nb)[0, 0].bool()
    assert not (partial & full).any()

    def expand(blocks):
        return blocks.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:n, :n]

    assert torch.equal(expand(full) | (expand(partial) & dense), dense)
    q_partial = _ordered_to_dense(block_mask.q_num_blocks, block_mask.q_indices, nb)[0, 0].bool()
    q_full = _ordered_to_dense(block_mask.full_q_num_blocks, block_mask.full_q_indices, nb)[0, 0].bool()
    assert torch.equal(q_partial, partial.t()) and torch.equal(q_full, full.t())


# ---------------------------------------------------------------- torch builder vs create_block_mask


@pytest.mark.parametrize("seed", range(16))
def test_torch_builder_equals_create_block_mask_on_cod_rows(seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    width = int(torch.randint(24, 200, (), generator=gen))
    pieces = torch.randint(0, width // 2, (int(torch.randint(1, 5, (), generator=gen)),), generator=gen)
    lengths = [int(x) for x in pieces if x > 0]
    while sum(lengths) > width:
        lengths.pop()
    block_size = (16, 32, 64, 128)[seed % 4]
    anchor, depth, doc = packed_cod_row(
        lengths, width, num_depths=int(torch.randint(1, 9, (), generator=gen)), seed=seed
    )
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size, backend="torch")
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    assert_same_block_mask(ours, ref)
    assert_block_semantics(ours, dense_cod_mask(anchor, depth, doc))


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_torch_builder_larger_rows_have_full_and_partial_blocks(block_size):
    anchor, depth, doc = packed_cod_row([300, 90, 130], 540, supervised=1.0, seed=block_size)
    assert anchor.numel() % block_size != 0
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    assert int(ref.full_kv_num_blocks.sum()) > 0 and int(ref.kv_num_blocks.sum()) > 0
    assert_same_block_mask(ours, ref)


@pytest.mark.parametrize("seed", range(6))
def test_torch_builder_on_general_depth_major_layouts(seed):
    anchor, depth, doc = random_depth_major_layout(90, 6, seed, full_depth0=seed % 2 == 0)
    block_size = (16, 32)[seed % 2]
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    assert_same_block_mask(ours, ref)
    assert_block_semantics(ours, dense_cod_mask(anchor, depth, doc))


def test_full_blocks_inside_the_rollout_region():
    # One anchor with 80 single-element depth segments: the rollout part alone makes 16x16 blocks full.
    depth = torch.cat([torch.zeros(4, dtype=torch.long), torch.arange(1, 81)])
    anchor = torch.cat([torch.arange(4), torch.zeros(80, dtype=torch.long)])
    doc = torch.zeros(4, dtype=torch.long)
    ours = build_cod_block_mask(anchor, depth, doc, block_size=16)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=16)
    full = _ordered_to_dense(ref.full_kv_num_blocks, ref.full_kv_indices, 6)[0, 0]
    assert full[3, 1] == 1 and full[4, 2] == 1
    assert_same_block_mask(ours, ref)


@pytest.mark.parametrize(
    "lengths, width, block_size",
    [
        ([], 40, 16),  # all padding: every block empty
        ([40], 40, 16),  # no padding
        ([5], 5, 128),  # one ragged block
        ([30, 34], 64, 16),  # n need not be a multiple; documents meet inside a block
        ([1, 1, 1, 1], 4, 16),  # one-token documents: no chains at all
    ],
)
def test_edge_layouts(lengths, width, block_size):
    anchor, depth, doc = packed_cod_row(lengths, width, supervised=1.0, seed=width)
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    assert_same_block_mask(ours, ref)
    if not lengths:
        assert int(ours.kv_num_blocks.sum()) == 0 and int(ours.full_kv_num_blocks.sum()) == 0


def test_exact_multiple_of_block_size_and_padding_between_documents():
    doc = torch.tensor([0] * 20 + [-1] * 6 + [1] * 30 + [-1] * 8)
    loss_mask = (doc >= 0).long()
    anchor, depth = generate_cod_sample_indices(64, loss_mask, 4, document_ids=doc, seed=5)
    anchor, depth = anchor[:128], depth[:128]  # keep a depth-major prefix with n a multiple of 16
    assert anchor.numel() == 128
    ours = build_cod_block_mask(anchor, depth, doc, block_size=16)
    assert_same_block_mask(ours, cod_block_mask_reference(anchor, depth, doc, block_size=16))


def test_validate_false_gives_the_same_mask():
    anchor, depth, doc = packed_cod_row([70, 50], 130, seed=3)
    a = build_cod_block_mask(anchor, depth, doc, block_size=32)
    b = build_cod_block_mask(anchor, depth, doc, block_size=32, validate=False)
    assert_same_block_mask(a, b)


def test_int32_inputs_are_accepted():
    anchor, depth, doc = packed_cod_row([70, 50], 130, seed=4)
    a = build_cod_block_mask(anchor.int(), depth.int(), doc.int(), block_size=32)
    assert_same_block_mask(a, cod_block_mask_reference(anchor, depth, doc, block_size=32))


def test_long_row_is_built_without_a_dense_grid():
    # ~125k elements: the dense bool grid alone would be ~15 GiB (eager create_block_mask ~180 GiB), so
    # building at all shows the grid is never formed. Whole block rows are checked against the mask_mod
    # evaluated on just those rows.
    anchor, depth, doc = packed_cod_row([13000, 18000, 8000], 40000, supervised=0.95, seed=9)
    n, bs = anchor.numel(), 128
    assert n > 120_000
    ours = build_cod_block_mask(anchor, depth, doc, block_size=bs)
    nb = -(-n // bs)
    assert ours.kv_indices.shape == (1, 1, nb, nb) and ours.seq_lengths == (n, n)
    partial = _ordered_to_dense(ours.kv_num_blocks, ours.kv_indices, nb)[0, 0]
    full = _ordered_to_dense(ours.full_kv_num_blocks, ours.full_kv_indices, nb)[0, 0]
    mask_mod = cod_mask_mod(anchor, depth, doc)
    zero = torch.zeros((), dtype=torch.long)
    padded_cols = nb * bs - n
    for qb in (150, 400, nb - 1):  # depth 0 (second document), depth 1, the ragged last block
        rows = torch.arange(qb * bs, min(n, (qb + 1) * bs))
        visible = mask_mod(zero, zero, rows[:, None], torch.arange(n)[None, :])
        per_block = F.pad(visible, (0, padded_cols)).view(rows.numel(), nb, bs).sum((0, 2))
        assert torch.equal(full[qb].bool(), per_block == bs * bs)
        assert torch.equal(partial[qb].bool(), (per_block > 0) & (per_block < bs * bs))
        assert per_block.sum() > 0


# ---------------------------------------------------------------- Triton builder (interpreted on CPU)


@pytest.mark.parametrize(
    "lengths, width, block_size, seed",
    [
        ([60, 41], 120, 64, 0),  # n ~ 350: 6 programs per launch
        ([90], 140, 128, 1),
        ([], 30, 64, 2),  # all padding
    ],
)
def test_triton_builder_equals_create_block_mask(lengths, width, block_size, seed):
    anchor, depth, doc = packed_cod_row(lengths, width, supervised=0.9, seed=seed)
    assert anchor.numel() <= 512
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size, backend="triton")
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    assert_same_block_mask(ours, ref)


def test_triton_builder_general_layout_non_power_of_two_block():
    anchor, depth, doc = random_depth_major_layout(70, 5, 11, full_depth0=False)
    ours = build_cod_block_mask(anchor, depth, doc, block_size=48, backend="triton")
    assert_same_block_mask(ours, build_cod_block_mask(anchor, depth, doc, block_size=48, backend="torch"))
    assert_same_block_mask(ours, cod_block_mask_reference(anchor, depth, doc, block_size=48))


# ---------------------------------------------------------------- padding to a flex length bucket


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("lengths, width, block_size, pad_to", [
    ([60, 41], 120, 64, 512),  # n ~ 350 -> 8 blocks, several of them all padding
    ([30], 40, 16, 112),  # pad_to a multiple of the block size
    ([30], 40, 16, 101),  # ...or not: the last block stays ragged
])
def test_padded_builder_equals_create_block_mask_of_the_padded_mask_mod(backend, lengths, width, block_size,
                                                                        pad_to):
    anchor, depth, doc = packed_cod_row(lengths, width, supervised=0.9, seed=pad_to)
    n = anchor.numel()
    assert n < pad_to
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size, backend=backend, pad_to=pad_to)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size, pad_to=pad_to)
    assert ours.seq_lengths == (pad_to, pad_to)
    assert_same_block_mask(ours, ref)
    dense = torch.zeros(pad_to, pad_to, dtype=torch.bool)
    dense[:n, :n] = dense_cod_mask(anchor, depth, doc)
    assert_block_semantics(ours, dense)  # padded rows and columns are empty


# ---------------------------------------------------------------- element order


def test_permuted_indices_are_rejected_and_depth_major_order_restores_them():
    """Unsorted indices (a user's, a dataloader worker's) would give a wrong BlockMask if built as they
    are; the builder rejects them and ``depth_major_order`` gives the permutation after which the
    BlockMask equals the dense mask of the same (permuted) elements."""
    anchor, depth, doc = packed_cod_row([50, 37], 100, seed=2)
    assert depth_major_order(anchor, depth, doc.numel()) is None
    gen = torch.Generator().manual_seed(0)
    shuffle = torch.randperm(anchor.numel(), generator=gen)
    a, d = anchor[shuffle], depth[shuffle]
    with pytest.raises(ValueError, match="depth-major COD order"):
        build_cod_block_mask(a, d, doc, block_size=32)
    perm = depth_major_order(a, d, doc.numel())
    assert torch.equal(a[perm], anchor) and torch.equal(d[perm], depth)
    ours = build_cod_block_mask(a[perm], d[perm], doc, block_size=32)
    assert_block_semantics(ours, dense_cod_mask(a[perm], d[perm], doc))
    # The dense mask follows the elements: permuting rows and columns back gives the shuffled one.
    inverse = torch.argsort(perm)
    assert torch.equal(dense_cod_mask(a[perm], d[perm], doc)[inverse][:, inverse], dense_cod_mask(a, d, doc))


def test_depth_major_order_is_stable_and_rejects_repeated_pairs():
    anchor, depth = torch.tensor([2, 0, 1, 0, 1]), torch.tensor([0, 1, 0, 0, 1])
    perm = depth_major_order(anchor, depth, 3)
    assert perm.tolist() == [3, 2, 0, 1, 4]
    with pytest.raises(ValueError, match=r"COD element 3 repeats \(anchor, depth\) = \(0, 1\)"):
        depth_major_order(torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 1, 1]), 2)


# ---------------------------------------------------------------- layering


def test_ops_import_nothing_above_them():
    """ops is the bottom layer: no module under eagle_ext/ops imports models, peagle, eagle3, data, train,
    serve, offline or demo (the COD mask predicate lives in ops for that reason; peagle re-exports it)."""
    import eagle_ext.ops as ops_pkg
    import eagle_ext.peagle as peagle_pkg
    import eagle_ext.peagle.mask as peagle_mask
    from eagle_ext.ops import cod_mask

    allowed = ("eagle_ext.ops", "eagle_ext._")
    root = pathlib.Path(ops_pkg.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("eagle_ext"):
                    assert name == "eagle_ext" or name.startswith(allowed), f"{path.name} imports {name}"
    for name in ("cod_mask_mod", "dense_cod_mask", "check_cod_inputs"):
        assert getattr(peagle_mask, name) is getattr(cod_mask, name)
    assert peagle_pkg.cod_mask_mod is cod_mask.cod_mask_mod


# ---------------------------------------------------------------- flex attention outputs


@pytest.mark.parametrize("block_size", [16, 64])
def test_flex_forward_matches_reference_mask_and_dense_sdpa(block_size):
    anchor, depth, doc = packed_cod_row([60, 30], 110, seed=7)
    n = anchor.numel()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for _ in range(3))
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    out = flex_attention(q, k, v, block_mask=ours)
    assert torch.equal(out, flex_attention(q, k, v, block_mask=ref))

    dense = dense_cod_mask(anchor, depth, doc)
    visible = dense.any(-1)
    assert not visible.all()  # padded queries exist and see nothing
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    torch.testing.assert_close(out[:, :, visible], sdpa[:, :, visible], rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :, ~visible], torch.zeros_like(out[:, :, ~visible]))


# ---------------------------------------------------------------- bad input


def test_rejects_non_depth_major_order():
    anchor = torch.tensor([0, 1, 2, 3, 1, 0])
    depth = torch.tensor([0, 0, 0, 0, 1, 1])
    with pytest.raises(
        ValueError, match=r"depth-major COD order.*element 5 has \(anchor, depth\) = \(0, 1\)"
    ):
        build_cod_block_mask(anchor, depth, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="depth-major"):
        build_cod_block_mask(
            torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]), torch.zeros(2, dtype=torch.long)
        )


def test_rejects_split_documents():
    anchor, depth = torch.arange(5), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="document 0 appears in several runs"):
        build_cod_block_mask(anchor, depth, torch.tensor([0, 0, 1, 0, -1]))
    # Padding runs may repeat.
    build_cod_block_mask(anchor, depth, torch.tensor([0, -1, 1, -1, -1]))


@pytest.mark.parametrize("block_size", [0, -16, 1.5, True])
def test_rejects_bad_block_size(block_size):
    anchor, depth = torch.arange(3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        build_cod_block_mask(anchor, depth, torch.zeros(3, dtype=torch.long), block_size=block_size)


def test_rejects_bad_backend_and_values(monkeypatch):
    anchor, depth, doc = torch.arange(3), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_cod_block_mask(anchor, depth, doc, backend="cuda")
    with pytest.raises(ValueError, match=r"anchor_pos values span \[0, 2\]"):
        build_cod_block_mask(anchor, depth, doc[:2])
    with pytest.raises(ValueError, match="depth has shape"):
        build_cod_block_mask(anchor, depth[:2], doc)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA device"):
        build_cod_block_mask(anchor, depth, doc, backend="triton")
    for pad_to in (2, 3.0, True):
        with pytest.raises(ValueError, match=r"pad_to must be an int >= the number of COD elements \(3\)"):
            build_cod_block_mask(anchor, depth, doc, pad_to=pad_to)


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [64, 128])
def test_cuda_triton_builder_equals_create_block_mask(block_size):
    anchor, depth, doc = packed_cod_row([900, 1300, 700], 3200, seed=block_size)
    anchor, depth, doc = anchor.cuda(), depth.cuda(), doc.cuda()
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    assert_same_block_mask(ours, ref)
    torch_ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size, backend="torch")
    assert_same_block_mask(torch_ours, ref)


@pytest.mark.gpu
def test_cuda_compiled_flex_forward_and_backward_match_reference_mask():
    anchor, depth, doc = packed_cod_row([500, 300], 900, seed=1)
    anchor, depth, doc = anchor.cuda(), depth.cuda(), doc.cuda()
    n = anchor.numel()
    ours = build_cod_block_mask(anchor, depth, doc)
    ref = cod_block_mask_reference(anchor, depth, doc)
    flex = torch.compile(flex_attention)
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = [torch.randn(1, 4, n, 64, device="cuda", generator=gen) for _ in range(3)]
    results = []
    for block_mask in (ours, ref):
        q, k, v = (t.clone().requires_grad_() for t in base)
        out = flex(q, k, v, block_mask=block_mask)
        out.sum().backward()
        results.append((out, q.grad, k.grad, v.grad))
    ours_out, ref_out = results
    assert torch.equal(ours_out[0], ref_out[0])
    for a, b in zip(ours_out[1:], ref_out[1:], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_cuda_build_from_host_indices_makes_no_host_sync():
    """The trainer's route: host indices, BlockMask on CUDA. After a warm-up (Triton compile) the build
    must not synchronise at all, and still equal create_block_mask, padded or not."""
    anchor, depth, doc = packed_cod_row([900, 1300, 700], 3200, seed=3)
    n = anchor.numel()
    for pad_to in (None, -(-n // 128) * 128 + 256):
        build_cod_block_mask(anchor, depth, doc, device="cuda", pad_to=pad_to)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            ours = build_cod_block_mask(anchor, depth, doc, device="cuda", pad_to=pad_to)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        ref = cod_block_mask_reference(anchor.cuda(), depth.cuda(), doc.cuda(), pad_to=pad_to)
        assert_same_block_mask(ours, ref)
