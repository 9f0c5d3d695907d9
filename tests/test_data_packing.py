"""Packed rows (on the C++ packer) and the collate functions, against the seed oracle and the pure-Python
reference of tests/reference/packing.py."""

from __future__ import annotations

import pytest
import torch

from eagle_ext.data.packing import (
    build_packed_eagle3_dataset,
    flatten_documents,
    pack_collate,
    pack_flat_documents,
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


# ---- list / numpy / Arrow inputs against the per-sample tensor path they replaced ----------------------


def _tensor_path(docs, width, pad_token_id=0, strategy="greedy"):
    """The rows as built before the C++ list reader: per-sample ``torch.as_tensor``, ``torch.cat``, then the
    ``[R, W]`` fill (``docs``: ``(ids, loss[, attention])`` tuples)."""
    ids, loss = [], []
    for doc in docs:
        t_ids, t_loss = torch.as_tensor(doc[0], dtype=torch.int64), torch.as_tensor(doc[1])
        if len(doc) > 2:
            n = int(torch.as_tensor(doc[2]).sum())
            t_ids, t_loss = t_ids[:n], t_loss[:n]
        ids.append(t_ids)
        loss.append((t_loss != 0).to(torch.int64))
    lengths = torch.tensor([t.numel() for t in ids], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    flat_ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
    flat_loss = torch.cat(loss) if loss else torch.zeros(0, dtype=torch.int64)
    packed = pack_flat_documents(flat_ids, flat_loss, offsets, width, pad_token_id, strategy)
    return [
        {**{k: packed[k][r] for k in KEYS}, "seq_lens": packed["seq_lens"][r, :n].tolist()}
        for r, n in enumerate(packed["num_docs"].tolist())
    ]


def _edge_docs():
    """Empty, length-1, longer-than-W (W = 8) and mixed documents; bool and int loss masks; big ids."""
    return [
        ([], []),
        ([5], [1]),
        ([7, 8, 9], [True, False, True]),
        (list(range(100, 120)), [0, 2] * 10),  # longer than W, loss values > 1
        ([], []),
        ([127_999, 0, 1], [0, 0, 0]),
        ([2**40, 3], [1, 1]),
        ([4] * 8, [1] * 8),  # exactly W
        ([6], [False]),
    ]


def _arrow_table(docs, ids_type, loss_type, batch_rows=None):
    pa = pytest.importorskip("pyarrow")
    as_loss = bool if loss_type == pa.bool_() else int
    table = pa.table(
        {
            "input_ids": pa.array([d[0] for d in docs], type=pa.list_(ids_type)),
            "loss_mask": pa.array([[as_loss(x) for x in d[1]] for d in docs], type=pa.list_(loss_type)),
        }
    )
    if batch_rows:
        table = pa.Table.from_batches(table.to_batches(max_chunksize=batch_rows), schema=table.schema)
    return table


def _inputs(kind, docs):
    """``docs`` in one of the accepted input forms."""
    if kind == "lists":
        return [{"input_ids": i, "loss_mask": m} for i, m in docs]
    if kind == "tuples":
        return [{"input_ids": tuple(i), "loss_mask": tuple(m)} for i, m in docs]
    if kind == "tensors":
        return [
            {"input_ids": torch.tensor(i, dtype=torch.int64), "loss_mask": torch.tensor(m, dtype=torch.bool)}
            for i, m in docs
        ]
    if kind == "numpy":
        np = pytest.importorskip("numpy")
        return [
            {"input_ids": np.array(i, dtype=np.int64), "loss_mask": np.array(m, dtype=np.int8)} for i, m in docs
        ]
    if kind == "columns":
        return {"input_ids": [i for i, _ in docs], "loss_mask": [m for _, m in docs]}
    pa = pytest.importorskip("pyarrow")
    if kind == "arrow_int64":
        return _arrow_table(docs, pa.int64(), pa.int64())
    if kind == "arrow_chunked":  # several record batches, large lists, bool masks
        return _arrow_table(docs, pa.int64(), pa.bool_(), batch_rows=2).cast(
            pa.schema([("input_ids", pa.large_list(pa.int64())), ("loss_mask", pa.large_list(pa.bool_()))])
        )
    if kind == "arrow_columns":  # the columns alone, chunked differently
        table = _arrow_table(docs, pa.int64(), pa.int8())
        whole = table["input_ids"].combine_chunks()
        ids = pa.chunked_array([whole[:4], whole[4:]])
        return {"input_ids": ids, "loss_mask": table["loss_mask"]}
    if kind == "dataset":
        datasets = pytest.importorskip("datasets")
        return datasets.Dataset(_arrow_table(docs, pa.int64(), pa.int8(), batch_rows=3))
    raise AssertionError(kind)


INPUT_KINDS = [
    "lists", "tuples", "tensors", "numpy", "columns", "arrow_int64", "arrow_chunked", "arrow_columns", "dataset"
]


def _assert_same_rows(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert list(g) == [*KEYS, "seq_lens"]
        for k in KEYS:
            assert g[k].dtype == torch.int64 and g[k].shape == e[k].shape and torch.equal(g[k], e[k]), k
        assert isinstance(g["seq_lens"], list) and g["seq_lens"] == e["seq_lens"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("strategy", ["greedy", "best_fit"])
def test_every_input_form_gives_the_tensor_path_rows_on_edge_cases(kind, strategy):
    docs = _edge_docs()
    rows = build_packed_eagle3_dataset(_inputs(kind, docs), 8, pad_token_id=3, strategy=strategy)
    _assert_same_rows(rows, _tensor_path(docs, 8, pad_token_id=3, strategy=strategy))


@pytest.mark.parametrize("kind", ["lists", "arrow_int64", "dataset"])
def test_random_mixed_lengths_match_the_tensor_path(kind):
    docs = _random_docs(seed=11, n=60, max_len=50)
    rows = build_packed_eagle3_dataset(_inputs(kind, docs), 32, pad_token_id=0)
    _assert_same_rows(rows, _tensor_path(docs, 32))


def test_int32_ids_and_int8_masks_from_arrow_match_the_tensor_path():
    pa = pytest.importorskip("pyarrow")
    docs = _random_docs(seed=5)
    rows = build_packed_eagle3_dataset(_arrow_table(docs, pa.int32(), pa.int8(), batch_rows=7), 16)
    _assert_same_rows(rows, _tensor_path(docs, 16))


ARROW_INT_TYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]


def _typed_docs(ids_type):
    """Empty, length-1, longer-than-W (W = 8) and exactly-W documents whose ids cycle through the extremes of
    ``ids_type`` (kept below 2**40 for the 64-bit types) and whose loss values include 2."""
    import numpy as np

    info = np.iinfo(ids_type)
    lo, hi = max(int(info.min), -(2**40)), min(int(info.max), 2**40)
    pattern, loss_pattern = [lo, hi, 0, 1, 5, hi - 1], [2, 0, 1, 0, 3]
    docs, k = [], 0
    for n in (0, 1, 3, 20, 0, 3, 2, 8, 1):
        docs.append(([pattern[(k + j) % 6] for j in range(n)], [loss_pattern[(k + j) % 5] for j in range(n)]))
        k += n
    return docs


@pytest.mark.parametrize("ids_type", ARROW_INT_TYPES)
@pytest.mark.parametrize(
    ("loss_type", "batch_rows"), [("bool", None), ("int8", 2), ("uint8", None), ("int32", 4)]
)
def test_arrow_columns_of_every_integer_type_match_the_tensor_path(ids_type, loss_type, batch_rows):
    pa = pytest.importorskip("pyarrow")
    docs = _typed_docs(ids_type)
    table = _arrow_table(docs, pa.from_numpy_dtype(ids_type), pa.from_numpy_dtype(loss_type), batch_rows)
    rows = build_packed_eagle3_dataset(table, 8, pad_token_id=3)
    _assert_same_rows(rows, _tensor_path(docs, 8, pad_token_id=3))
    ids, loss, offsets = flatten_documents(table)  # the public flat buffers stay int64, masks 0 / 1
    assert ids.dtype == loss.dtype == offsets.dtype == torch.int64
    assert ids.tolist() == [t for d in docs for t in d[0]]
    assert loss.tolist() == [int(x != 0) for d in docs for x in d[1]]


def test_narrow_arrow_columns_are_read_in_place():
    pa = pytest.importorskip("pyarrow")
    from eagle_ext.data.packing import _flat_documents

    docs = _random_docs(seed=6)
    table = _arrow_table(docs, pa.int32(), pa.int8())
    ids, loss, _ = _flat_documents(table)
    assert ids.dtype == torch.int32 and loss.dtype == torch.int8
    for got, name in ((ids, "input_ids"), (loss, "loss_mask")):  # one chunk: no copy at all
        values = table[name].chunks[0].values
        assert got.data_ptr() == values.buffers()[1].address + values.offset * got.element_size()
    chunked = _arrow_table(docs, pa.int32(), pa.int8(), batch_rows=7)
    ids, loss, _ = _flat_documents(chunked)  # several chunks: one narrow concatenation, no widening
    assert ids.dtype == torch.int32 and loss.dtype == torch.int8
    assert ids.tolist() == [t for d in docs for t in d[0]]
    assert loss.tolist() == [x for d in docs for x in d[1]]


def test_dataset_selection_order_is_honoured():
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    docs = _random_docs(seed=2, n=12)
    order = [5, 0, 11, 3, 3, 7]
    ds = datasets.Dataset(_arrow_table(docs, pa.int64(), pa.int64())).select(order)
    rows = build_packed_eagle3_dataset(ds, 16)
    _assert_same_rows(rows, _tensor_path([docs[i] for i in order], 16))


@pytest.mark.parametrize("kind", ["lists", "arrow"])
def test_pre_padded_samples_match_the_tensor_path(kind):
    docs = [([5, 6, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]), ([1, 2, 3], [0, 1, 1], [1, 1, 1]),
            ([9, 9], [1, 1], [0, 0]), ([4, 5, 6], [1, 0, 1], [1, 1, 1])]
    if kind == "lists":
        samples = [{"input_ids": i, "loss_mask": m, "attention_mask": a} for i, m, a in docs]
        samples.append({"input_ids": [8, 8], "loss_mask": [1, 1]})  # no attention_mask: all real
    else:
        pa = pytest.importorskip("pyarrow")
        samples = pa.table({"input_ids": [d[0] for d in docs], "loss_mask": [d[1] for d in docs],
                            "attention_mask": [d[2] for d in docs]})
    expected_docs = docs + ([([8, 8], [1, 1])] if kind == "lists" else [])
    _assert_same_rows(build_packed_eagle3_dataset(samples, 6), _tensor_path(expected_docs, 6))


def test_rows_own_their_memory():
    rows = build_packed_eagle3_dataset(_inputs("lists", _random_docs(seed=4)), 16)
    storages = {r[k].untyped_storage().data_ptr() for r in rows for k in KEYS}
    assert len(storages) == len(rows) * len(KEYS)
    assert all(r[k].untyped_storage().nbytes() == 16 * 8 for r in rows for k in KEYS)


@pytest.mark.parametrize("kind", ["lists", "columns", "arrow_int64", "dataset"])
def test_empty_input_gives_no_rows_error(kind):
    samples = [] if kind == "lists" else _inputs(kind, [])
    with pytest.raises(ValueError, match="produced no rows: all 0 samples are empty"):
        build_packed_eagle3_dataset(samples, 8)
    ids, loss, offsets = flatten_documents(samples)
    assert ids.numel() == loss.numel() == 0 and offsets.tolist() == [0]


@pytest.mark.parametrize(
    ("samples", "error", "match"),
    [
        ([{"input_ids": [1], "loss_mask": [1]}, {"input_ids": [1, "a"], "loss_mask": [1, 1]}], TypeError,
         r"sample 1: input_ids\[1\] must be an int, got str"),
        ([{"input_ids": [[1, 2]], "loss_mask": [1]}], TypeError, r"sample 0: input_ids\[0\] must be an int, got lis"),
        ([{"input_ids": [1, 2], "loss_mask": [1, None]}], TypeError, r"sample 0: loss_mask\[1\] must be an in"),
        ([{"input_ids": [1.0], "loss_mask": [1]}], TypeError, r"sample 0: input_ids\[0\] must be an int, got fl"),
        ([{"input_ids": [1], "loss_mask": [1]}, {"input_ids": [3, 4], "loss_mask": [1]}], ValueError,
         "sample 1: input_ids has 2 tokens but loss_mask has 1"),
        ([{"input_ids": "abc", "loss_mask": [1, 1, 1]}], TypeError, "sample 0: input_ids must be a list or tu"),
        ([{"input_ids": None, "loss_mask": []}], TypeError, "sample 0: input_ids must be a list or tuple"),
        ([{"input_ids": torch.tensor([1.5]), "loss_mask": [1]}], TypeError,
         "sample 0: input_ids must hold integers, got a tensor of dtype Float"),
        ([{"input_ids": [2**64], "loss_mask": [1]}], ValueError, r"sample 0: input_ids\[0\] does not fit in"),
        ([{"input_ids": [1]}], ValueError, "sample 0 must be a dict with input_ids and loss_mask"),
        ([[1, 2]], ValueError, "sample 0 must be a dict with input_ids and loss_mask, got list"),
        ({"input_ids": [[1]], "loss_mask": [[1], [1]]}, ValueError, "loss_mask has 2 samples but input_ids ha"),
        ({"input_ids": [[1]]}, ValueError, "must be columns with input_ids and loss_mask"),
    ],
)
def test_bad_list_input_names_the_sample(samples, error, match):
    with pytest.raises(error, match=match):
        build_packed_eagle3_dataset(samples, 8)


def test_bad_arrow_input_names_the_sample():
    pa = pytest.importorskip("pyarrow")
    mismatched = pa.table({"input_ids": [[1], [2, 3], [4]], "loss_mask": [[1], [1], [1]]})
    with pytest.raises(ValueError, match="sample 1: input_ids has 2 tokens but loss_mask has 1"):
        build_packed_eagle3_dataset(mismatched, 8)
    null_sample = pa.table({"input_ids": [[1], None], "loss_mask": [[1], [1]]})
    with pytest.raises(ValueError, match="sample 1: input_ids is null"):
        build_packed_eagle3_dataset(null_sample, 8)
    null_token = pa.table({"input_ids": [[1], [2, None]], "loss_mask": [[1], [1, 1]]})
    with pytest.raises(ValueError, match="sample 1: input_ids holds a null"):
        build_packed_eagle3_dataset(null_token, 8)
    floats = pa.table({"input_ids": [[1.0]], "loss_mask": [[1]]})
    with pytest.raises(TypeError, match="input_ids must hold integers, got Arrow type double"):
        build_packed_eagle3_dataset(floats, 8)
    flat = pa.table({"input_ids": [1, 2], "loss_mask": [[1], [1]]})
    with pytest.raises(TypeError, match="input_ids must be an Arrow list column, got type int64"):
        build_packed_eagle3_dataset(flat, 8)
    with pytest.raises(ValueError, match=r"lacks columns \['loss_mask'\]"):
        build_packed_eagle3_dataset(pa.table({"input_ids": [[1]]}), 8)
