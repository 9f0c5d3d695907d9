"""Packed rows (on the C++ packer) and the collate functions, against the seed oracle and the pure-Python
reference of tests/reference/packing.py."""

from __future__ import annotations

import pytest
import torch

from eagle_ext.data.packing import (
    build_packed_eagle3_dataset,
    pack_collate,
    pack_row,
    pad_collate,
    plan_packing,
)
from tests.reference.packing import best_fit_rows, fill_rows, greedy_rows

KEYS = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining")


def _as_lists(rows):
    return [{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in rows]


def test_oracle_3_2_7_at_width_8():
    samples = [
        {"input_ids": [10, 11, 12], "loss_mask": [0, 1, 1]},
        {"input_ids": [20, 21], "loss_mask": [1, 1]},
        {"input_ids": list(range(30, 37)), "loss_mask": [1] * 7},
    ]
    rows = build_packed_eagle3_dataset(samples, 8, pad_token_id=0)
    assert len(rows) == 2
    r0, r1 = _as_lists(rows)
    assert r0 == {
        "input_ids": [10, 11, 12, 20, 21, 0, 0, 0],
        "loss_mask": [0, 1, 1, 1, 1, 0, 0, 0],
        "attention_mask": [1, 1, 1, 1, 1, 0, 0, 0],
        "position_ids": [0, 1, 2, 0, 1, 2, 3, 4],
        "doc_remaining": [2, 1, 0, 1, 0, 0, 0, 0],
        "seq_lens": [3, 5],
    }
    assert r1["seq_lens"] == [8] and r1["doc_remaining"] == [6, 5, 4, 3, 2, 1, 0, 0]
    assert all(rows[0][k].dtype == torch.int64 and rows[0][k].shape == (8,) for k in KEYS)
    assert isinstance(rows[0]["seq_lens"], list)


def _random_docs(seed, n=40, max_len=30):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        length = int(torch.randint(0, max_len, (), generator=g))
        docs.append(
            (
                torch.randint(1, 500, (length,), generator=g).tolist(),
                torch.randint(0, 3, (length,), generator=g).tolist(),
            )
        )  # loss values > 1 coerced to 1
    return docs


@pytest.mark.parametrize("strategy, assign", [("greedy", greedy_rows), ("best_fit", best_fit_rows)])
@pytest.mark.parametrize("width", [7, 16, 64])
def test_matches_reference_rows(strategy, assign, width):
    docs = _random_docs(seed=width)
    rows = build_packed_eagle3_dataset(
        [{"input_ids": i, "loss_mask": m} for i, m in docs], width, pad_token_id=3, strategy=strategy
    )
    row_of_doc, num_rows = assign([len(i) for i, _ in docs], width)
    assert _as_lists(rows) == fill_rows(docs, row_of_doc, num_rows, width, pad_token_id=3)
    assert all(sum(r["seq_lens"]) == width for r in rows)


def test_best_fit_packs_tighter_than_greedy():
    docs = [{"input_ids": [d] * n, "loss_mask": [1] * n} for d, n in enumerate((5, 5, 3, 3))]
    greedy = _as_lists(build_packed_eagle3_dataset(docs, 8, strategy="greedy"))
    best = _as_lists(build_packed_eagle3_dataset(docs, 8, strategy="best_fit"))
    assert [r["seq_lens"] for r in greedy] == [[8], [5, 3], [8]]
    assert [r["seq_lens"] for r in best] == [[5, 3], [5, 3]]  # no pad at all
    assert [r["input_ids"] for r in best] == [[0] * 5 + [2] * 3, [1] * 5 + [3] * 3]  # order kept within a row


def test_padded_samples_drop_their_padding_and_long_ones_are_truncated():
    samples = [
        {"input_ids": [5, 6, 0, 0], "loss_mask": [1, 1, 0, 0], "attention_mask": [1, 1, 0, 0]},
        {"input_ids": list(range(1, 13)), "loss_mask": [1] * 12},
    ]
    rows = _as_lists(build_packed_eagle3_dataset(samples, 6, pad_token_id=9))
    assert rows[0]["input_ids"] == [5, 6, 9, 9, 9, 9] and rows[0]["seq_lens"] == [6]
    assert rows[1]["input_ids"] == [1, 2, 3, 4, 5, 6] and rows[1]["doc_remaining"] == [5, 4, 3, 2, 1, 0]


def test_errors():
    with pytest.raises(ValueError, match="no rows"):
        build_packed_eagle3_dataset([{"input_ids": [], "loss_mask": []}], 8)
    with pytest.raises(ValueError, match="no rows"):
        build_packed_eagle3_dataset([], 8)
    with pytest.raises(ValueError, match="packed_sequence_size must be an int >= 2, got 1"):
        build_packed_eagle3_dataset([{"input_ids": [1], "loss_mask": [1]}], 1)
    with pytest.raises(ValueError, match="strategy must be one of"):
        build_packed_eagle3_dataset([{"input_ids": [1], "loss_mask": [1]}], 8, strategy="first_fit")
    with pytest.raises(ValueError, match="sample 0 must be a dict with input_ids and loss_mask"):
        build_packed_eagle3_dataset([{"input_ids": [1]}], 8)
    with pytest.raises(ValueError, match="sample 0: input_ids has 2 tokens but loss_mask has 1"):
        build_packed_eagle3_dataset([{"input_ids": [1, 2], "loss_mask": [1]}], 8)


@pytest.mark.parametrize("strategy", ["greedy", "best_fit"])
def test_lazy_plan_and_pack_row_equal_the_eager_rows(strategy):
    docs = _random_docs(seed=3)
    samples = [{"input_ids": i, "loss_mask": m} for i, m in docs]
    eager = _as_lists(build_packed_eagle3_dataset(samples, 32, strategy=strategy))
    plan = plan_packing(torch.tensor([len(i) for i, _ in docs]), 32, strategy)
    assert plan.num_rows == len(eager)
    for r in range(plan.num_rows):
        chosen = plan.docs_of_row(r).tolist()
        assert chosen == sorted(chosen)  # original order inside a row
        ids = torch.tensor([t for d in chosen for t in docs[d][0]], dtype=torch.int64)
        loss = torch.tensor([t for d in chosen for t in docs[d][1]], dtype=torch.int64)
        offsets = torch.tensor([0] + [len(docs[d][0]) for d in chosen]).cumsum(0)
        assert _as_lists([pack_row(ids, loss, offsets, 32)]) == [eager[r]]


def test_pack_collate_pads_seq_lens():
    samples = [
        {"input_ids": [1, 2, 3], "loss_mask": [1, 1, 1]},
        {"input_ids": [4, 5], "loss_mask": [0, 1]},
        {"input_ids": [6] * 8, "loss_mask": [1] * 8},
    ]
    batch = pack_collate(build_packed_eagle3_dataset(samples, 8))
    assert {k: tuple(v.shape) for k, v in batch.items()} == {**{k: (2, 8) for k in KEYS}, "seq_lens": (2, 2)}
    assert batch["seq_lens"].tolist() == [[3, 5], [8, 0]] and batch["seq_lens"].dtype == torch.int64
    with pytest.raises(ValueError, match="empty batch"):
        pack_collate([])
    with pytest.raises(ValueError, match="lack keys"):
        pack_collate([{"input_ids": [1]}])


def test_pad_collate_stacks_and_pads():
    padded = [
        {"input_ids": [1, 2, 0], "loss_mask": [0, 1, 0], "attention_mask": [1, 1, 0]},
        {"input_ids": [3, 4, 5], "loss_mask": [1, 1, 1], "attention_mask": [1, 1, 1]},
    ]
    batch = pad_collate(padded)
    assert (
        batch["input_ids"].tolist() == [[1, 2, 0], [3, 4, 5]] and batch["attention_mask"].dtype == torch.int64
    )
    ragged = [{"input_ids": [1, 2], "loss_mask": [0, 1]}, {"input_ids": [3], "loss_mask": [1]}]
    batch = pad_collate(ragged, pad_token_id=7, pad_to=4)
    assert batch["input_ids"].tolist() == [[1, 2, 7, 7], [3, 7, 7, 7]]
    assert batch["loss_mask"].tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="sample 0 has 2 input_ids, 1 loss_mask"):
        pad_collate([{"input_ids": [1, 2], "loss_mask": [1]}])
