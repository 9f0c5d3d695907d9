"""COD sampling and segment assignment: C++ vs the torch reference, invariants, oracles, input checks."""

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle_ext._ext import load_extension
from eagle_ext.ops.cod import assign_cod_segments, generate_cod_sample_indices
from tests.reference.cod import cod_reference, keys, segments_reference


def _sizes(depth):
    counts = Counter(depth.tolist())
    return [counts[d] for d in range(max(counts) + 1)]


def _doc_ids(lengths, total):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return torch.cat([doc, torch.full((total - doc.numel(),), -1)])


def test_keys_match_reference():
    positions = torch.tensor([0, 1, 2, 7, 1000, 2**40])
    for seed, stream in [(0, 0), (42, 3), (2**64 - 1, 7)]:
        got = load_extension().cod_random_keys(positions, seed, stream).numpy().view(np.uint64)
        assert (got == keys(positions.numpy(), seed, stream)).all()


def test_oracle_sizes_l20_mask_4_to_17():
    mask = torch.zeros(20, dtype=torch.long)
    mask[4:18] = 1
    target = [20, 9, 5, 3, 2, 1, 1, 1]
    reached = 0
    for seed in range(50):
        _, depth = generate_cod_sample_indices(20, mask, seed=seed)
        sizes = _sizes(depth)
        # Pools may run dry at the end of the supervised span, never exceed the formula.
        assert all(s <= t for s, t in zip(sizes, target)) and sizes[:4] == target[:4]
        reached += sizes == target
    assert reached > 25


def test_sizes_follow_formula_when_fully_supervised():
    L, K, r, r_min = 512, 8, 0.7, 0.2
    _, depth = generate_cod_sample_indices(L, torch.ones(L), K, r, r_min, seed=3)
    expected = [L] + [int(max(0, L - d) * max(r**d, r_min)) for d in range(1, K)]
    sizes = _sizes(depth)
    assert sizes[:6] == expected[:6]
    # Past the floor the pool (the previous depth's survivors) is shorter than the formula: keep all of it;
    # at most one chain per depth ends at the last position.
    for d in range(6, K):
        assert sizes[d] == expected[d] or sizes[d - 1] - 1 <= sizes[d] < expected[d]


@settings(max_examples=150, deadline=None)
@given(
    L=st.integers(min_value=0, max_value=200),
    K=st.integers(min_value=1, max_value=9),
    r=st.floats(min_value=0.05, max_value=1.0),
    r_min=st.floats(min_value=0.05, max_value=1.0),
    p=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    cap=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
    docs=st.booleans(),
)
def test_cpp_matches_reference_and_invariants(L, K, r, r_min, p, seed, cap, docs):
    g = torch.Generator().manual_seed(seed % 2**31)
    mask = (torch.rand(L, generator=g) < p).long()
    document_ids = None
    if docs and L:
        cuts = sorted(set(torch.randint(0, L + 1, (3,), generator=g).tolist()) | {0})
        lengths = [b - a for a, b in zip(cuts, cuts[1:] + [L - L // 5])] if cuts[-1] < L - L // 5 else [L]
        lengths = [n for n in lengths if n > 0] or [L]
        document_ids = _doc_ids(lengths, L)
        mask = mask * (document_ids >= 0)
    anchor, depth = generate_cod_sample_indices(
        L, mask, K, r, r_min, document_ids=document_ids, max_anchors=cap, seed=seed
    )
    ra, rd = cod_reference(L, mask, K, r, r_min, document_ids=document_ids, max_anchors=cap, seed=seed)
    assert torch.equal(anchor, ra) and torch.equal(depth, rd)

    assert torch.equal(anchor[:L], torch.arange(L)) and not depth[:L].any()
    assert bool((anchor >= 0).all())
    ref = anchor + depth
    deep = depth > 0
    assert bool((ref[deep] < L).all()) and bool((mask[ref[deep]] != 0).all())
    if document_ids is not None:
        assert bool((document_ids[ref[deep]] == document_ids[anchor[deep]]).all())
        assert bool((document_ids[anchor[deep]] >= 0).all())
    # Chains are complete prefixes: (anchor, d) exists only with (anchor, d - 1).
    present = set(zip(anchor.tolist(), depth.tolist()))
    assert all((a, d - 1) in present for a, d in present if d > 0)
    # Depth-major order, each depth sorted by position.
    assert bool((depth[1:] >= depth[:-1]).all())
    for d in range(1, K):
        refs = ref[depth == d]
        assert bool((refs[1:] > refs[:-1]).all())
    if cap is not None:
        assert int((depth == 1).sum()) <= cap


def test_no_negative_anchor_when_first_token_supervised():
    mask = torch.ones(16)
    for seed in range(8):
        anchor, depth = generate_cod_sample_indices(16, mask, filter_position_zero=False, seed=seed)
        assert int(anchor.min()) >= 0


def test_no_chain_crosses_documents():
    document_ids = _doc_ids([5, 5, 5], 18)
    mask = (document_ids >= 0).long()
    for seed in range(20):
        anchor, depth = generate_cod_sample_indices(18, mask, document_ids=document_ids, seed=seed)
        deep = depth > 0
        assert torch.equal(document_ids[anchor[deep]], document_ids[(anchor + depth)[deep]])
        # First token of a document never starts a chain from the previous document.
        assert not bool(torch.isin((anchor + 1)[depth == 1], torch.tensor([5, 10])).any())


def test_same_seed_same_indices_and_generator_reproducible():
    mask = (torch.arange(300) % 3 != 0).long()
    a1 = generate_cod_sample_indices(300, mask, seed=11)
    a2 = generate_cod_sample_indices(300, mask, seed=11)
    assert all(torch.equal(x, y) for x, y in zip(a1, a2))
    b1 = generate_cod_sample_indices(300, mask, generator=torch.Generator().manual_seed(5))
    b2 = generate_cod_sample_indices(300, mask, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    c = generate_cod_sample_indices(300, mask, seed=12)
    assert not torch.equal(a1[0], c[0])
    torch.manual_seed(1)
    d1 = generate_cod_sample_indices(300, mask)
    torch.manual_seed(1)
    d2 = generate_cod_sample_indices(300, mask)
    assert torch.equal(d1[0], d2[0])


def test_mask_shapes_and_empty():
    anchor, depth = generate_cod_sample_indices(6, torch.ones(1, 6, dtype=torch.bool), 3, seed=0)
    assert anchor[:6].tolist() == list(range(6))
    anchor, depth = generate_cod_sample_indices(6, torch.zeros(6), 8, seed=0)
    assert anchor.tolist() == list(range(6)) and depth.tolist() == [0] * 6
    anchor, depth = generate_cod_sample_indices(0, torch.zeros(0), 8, seed=0)
    assert anchor.numel() == 0 and anchor.dtype == torch.int64


def test_segments_oracle_and_inheritance():
    seg = assign_cod_segments(torch.arange(8), torch.zeros(8, dtype=torch.long), 8, 2)
    assert seg.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # Depth-1 and depth-2 elements at anchor 3 take the segment of position 4.
    seg = assign_cod_segments(torch.tensor([3, 3, 3]), torch.tensor([0, 1, 2]), 8, 2)
    assert seg.tolist() == [0, 1, 1]
    # Clamping at the right edge.
    assert assign_cod_segments(torch.tensor([7]), torch.tensor([1]), 8, 2).tolist() == [1]


@settings(max_examples=100, deadline=None)
@given(L=st.integers(1, 300), S=st.integers(1, 9), seed=st.integers(0, 1000))
def test_segments_match_reference(L, S, seed):
    mask = torch.ones(L)
    anchor, depth = generate_cod_sample_indices(L, mask, 6, seed=seed)
    got = assign_cod_segments(anchor, depth, L, S)
    assert torch.equal(got, segments_reference(anchor, depth, L, S))
    assert int(got.min()) >= 0 and int(got.max()) < S
    if S == 1:
        assert not got.any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_depths": 0}, "num_depths must be >= 1, got 0"),
        ({"down_sample_ratio": 0.0}, r"down_sample_ratio must be in \(0, 1\], got 0.0"),
        ({"down_sample_ratio": 1.5}, "down_sample_ratio must be in"),
        ({"down_sample_ratio_min": -0.1}, "down_sample_ratio_min must be in"),
        ({"seq_length": 9}, "loss_mask must have seq_length = 9 entries, got 8"),
        ({"loss_mask": torch.ones(2, 4)}, r"loss_mask must have shape \[L\] or \[1, L\]"),
        ({"max_anchors": 0}, "max_anchors must be >= 1, got 0"),
        ({"document_ids": torch.zeros(7, dtype=torch.long)}, "document_ids must have seq_length = 8"),
        ({"document_ids": torch.zeros(8)}, "document_ids must be an integer tensor"),
        ({"seed": 1, "generator": torch.Generator()}, "at most one of seed and generator"),
    ],
)
def test_cod_bad_input(kwargs, match):
    args = {"seq_length": 8, "loss_mask": torch.ones(8)}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        generate_cod_sample_indices(**args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.arange(3), torch.zeros(2, dtype=torch.long), 8, 2), "same length"),
        ((torch.arange(3), torch.zeros(3, dtype=torch.long), 8, 0), "num_segments must be >= 1, got 0"),
        ((torch.arange(3), torch.zeros(3, dtype=torch.long), 0, 2), "seq_length must be >= 1, got 0"),
        ((torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, dtype=torch.long), 8, 2), "anchor_pos must be 1-D"),
        ((torch.zeros(3), torch.zeros(3, dtype=torch.long), 8, 2), "anchor_pos must be an integer tensor"),
    ],
)
def test_segments_bad_input(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        assign_cod_segments(*args)
