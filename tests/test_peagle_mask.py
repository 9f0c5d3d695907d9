"""The P-EAGLE COD mask: mask_mod oracle, dense mask vs a per-pair brute force, document ids, bad input."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from eagle_ext.ops.cod import generate_cod_sample_indices
from eagle_ext.peagle import create_peagle_mask_mod
from eagle_ext.peagle.mask import cod_mask_mod, dense_cod_mask, document_ids_from_lengths

ORACLE_ANCHOR = torch.tensor([0, 1, 2, 3, 0, 1, 0])
ORACLE_DEPTH = torch.tensor([0, 0, 0, 0, 1, 1, 2])


def _sees(mask_mod, q, kv) -> bool:
    zero = torch.tensor(0)
    return bool(mask_mod(zero, zero, torch.tensor(q), torch.tensor(kv)))


def _brute_force(anchor, depth, doc):
    """The COD predicate written out pair by pair in plain Python, straight from its definition."""
    a, d, doc = anchor.tolist(), depth.tolist(), doc.tolist()
    n = len(a)
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for kv in range(n):
            same_doc = doc[a[q]] != -1 and doc[a[q]] == doc[a[kv]]
            context = d[kv] == 0 and a[q] >= a[kv]
            own_chain = a[q] == a[kv] and d[q] >= d[kv]
            out[q, kv] = same_doc and (context or own_chain)
    return out


def _packed_row(lengths, width, seed):
    doc = document_ids_from_lengths(lengths, width)
    loss_mask = (doc >= 0).long()
    anchor, depth = generate_cod_sample_indices(width, loss_mask, 5, document_ids=doc, seed=seed)
    return anchor, depth, doc


def test_oracle_pairs():
    mm = create_peagle_mask_mod(ORACLE_ANCHOR, ORACLE_DEPTH, [4], 4)
    for q, kv in [(2, 1), (4, 0), (6, 4)]:
        assert _sees(mm, q, kv), (q, kv)
    for q, kv in [(1, 2), (4, 5)]:
        assert not _sees(mm, q, kv), (q, kv)


def test_oracle_dense_matrix():
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 0, 0, 0, 1, 0, 0],  # depth 1 at anchor 0: context 0 plus itself
            [1, 1, 0, 0, 0, 1, 0],  # depth 1 at anchor 1: context 0..1 plus itself
            [1, 0, 0, 0, 1, 0, 1],  # depth 2 at anchor 0: context 0, its depth-1 slot, itself
        ],
        dtype=torch.bool,
    )
    doc = document_ids_from_lengths([4], 4)
    assert torch.equal(dense_cod_mask(ORACLE_ANCHOR, ORACLE_DEPTH, doc), expected)


def test_padded_queries_see_nothing():
    # Positions 4 and 5 are padding; the chains stay on the real document.
    anchor = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 0])
    depth = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])
    doc = document_ids_from_lengths([4], 6)
    dense = dense_cod_mask(anchor, depth, doc)
    assert not dense[4:6].any()
    assert not dense[:, 4:6].any()  # nobody shares document -1 with a real query
    mm = create_peagle_mask_mod(anchor, depth, [4], 6)
    assert not any(_sees(mm, q, kv) for q in (4, 5) for kv in range(9))
    assert _sees(mm, 8, 6) and _sees(mm, 7, 1)


def test_documents_do_not_see_each_other():
    anchor = torch.tensor([0, 1, 2, 3, 4, 1, 3])
    depth = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    doc = document_ids_from_lengths([2, 3], 5)  # [0, 0, 1, 1, 1]
    dense = dense_cod_mask(anchor, depth, doc)
    assert dense[6].nonzero().flatten().tolist() == [2, 3, 6]  # anchor 3 in doc 1: context 2..3 + itself
    assert dense[5].nonzero().flatten().tolist() == [0, 1, 5]
    assert not dense[2, :2].any()


@pytest.mark.parametrize("seed", range(4))
def test_dense_matches_brute_force_and_mask_mod(seed):
    anchor, depth, doc = _packed_row([7, 0, 11, 5], 28, seed)
    expected = _brute_force(anchor, depth, doc)
    assert torch.equal(dense_cod_mask(anchor, depth, doc), expected)
    lengths = torch.tensor([7, 0, 11, 5])
    mm = create_peagle_mask_mod(anchor, depth, lengths, 28)
    n = anchor.numel()
    assert torch.equal(create_mask(mm, 1, 1, n, n, device="cpu")[0, 0], expected)


def test_incomplete_chains_and_depth0_subset():
    # The predicate is defined for any element list, not only complete COD chains.
    anchor = torch.tensor([1, 2, 4, 5, 2, 5, 1, 2])
    depth = torch.tensor([0, 0, 0, 0, 1, 1, 3, 3])
    doc = torch.tensor([0, 0, 0, 1, 1, 1, -1])
    assert torch.equal(dense_cod_mask(anchor, depth, doc), _brute_force(anchor, depth, doc))
    mm = cod_mask_mod(anchor, depth, doc)
    n = anchor.numel()
    assert torch.equal(create_mask(mm, 1, 1, n, n, device="cpu")[0, 0], _brute_force(anchor, depth, doc))


def test_document_ids_from_lengths():
    assert document_ids_from_lengths([2, 0, 3], 7).tolist() == [0, 0, 2, 2, 2, -1, -1]
    assert document_ids_from_lengths(torch.tensor([3]), 3).tolist() == [0, 0, 0]
    assert document_ids_from_lengths(torch.tensor(2), 3).tolist() == [0, 0, -1]
    assert document_ids_from_lengths([], 2).tolist() == [-1, -1]


@pytest.mark.parametrize(
    "lengths, total, match",
    [
        ([3, 4], 6, "exceeds total_seq_len"),
        ([-1, 2], 6, "lengths must be >= 0"),
        ([1.5], 6, "lengths must be"),
        (torch.tensor([[1, 2]]), 6, "lengths must be"),
        ([1], 0, "total_seq_len"),
    ],
)
def test_lengths_errors(lengths, total, match):
    with pytest.raises((ValueError, TypeError), match=match):
        create_peagle_mask_mod(ORACLE_ANCHOR, ORACLE_DEPTH, lengths, total)


@pytest.mark.parametrize(
    "anchor, depth, match",
    [
        (torch.tensor([0, 1, 4]), torch.tensor([0, 0, 0]), r"anchor_pos values span \[0, 4\]"),
        (torch.tensor([0, -1, 2]), torch.tensor([0, 0, 0]), r"anchor_pos values span \[-1, 2\]"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, -2, 0]), "depth has a negative value"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 0]), "depth has shape"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), "anchor_pos must have an integer dtype"),
        (torch.tensor([[0, 1]]), torch.tensor([0, 0]), "anchor_pos must be 1-D"),
        ([0, 1], torch.tensor([0, 0]), "anchor_pos must be a torch.Tensor"),
        (torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), "anchor_pos is empty"),
    ],
)
def test_bad_cod_inputs(anchor, depth, match):
    doc = torch.zeros(4, dtype=torch.long)
    with pytest.raises((ValueError, TypeError), match=match):
        dense_cod_mask(anchor, depth, doc)
    with pytest.raises((ValueError, TypeError), match=match):
        cod_mask_mod(anchor, depth, doc)


def test_bad_document_ids():
    with pytest.raises(ValueError, match="document_ids has value -2"):
        dense_cod_mask(ORACLE_ANCHOR, ORACLE_DEPTH, torch.tensor([0, 0, -2, 0]))
    with pytest.raises(ValueError, match="document_ids is empty"):
        dense_cod_mask(ORACLE_ANCHOR, ORACLE_DEPTH, torch.tensor([], dtype=torch.long))
