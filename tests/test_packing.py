"""C++ document packing vs the pure-Python references, plus the recipe's oracle and input checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle_ext._ext import load_extension
from eagle_ext.ops.packing import fill_packed_rows, flatten_sample_values, pack_documents, packed_row_list
from tests.reference.packing import best_fit_rows, fill_rows, greedy_rows

lengths_st = st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=60)


def _flat(docs):
    ids = [t for d, _ in docs for t in d]
    loss = [t for _, m in docs for t in m]
    offsets = [0]
    for d, _ in docs:
        offsets.append(offsets[-1] + len(d))
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(loss, dtype=torch.int64), torch.tensor(offsets)


def _docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        ids = torch.randint(1, 1000, (n,), generator=g).tolist()
        loss = torch.randint(0, 3, (n,), generator=g).tolist()  # values > 1 must be coerced to 1
        docs.append((ids, loss))
    return docs


def test_oracle_3_2_7_at_width_8():
    docs = [([10, 11, 12], [0, 1, 1]), ([20, 21], [1, 1]), (list(range(30, 37)), [1] * 7)]
    rows, num_rows = pack_documents(torch.tensor([3, 2, 7]), 8, "greedy")
    assert rows.tolist() == [0, 0, 1] and num_rows == 2
    out = fill_packed_rows(*_flat(docs), rows, num_rows, 8, pad_token_id=0)
    assert out["input_ids"][0].tolist() == [10, 11, 12, 20, 21, 0, 0, 0]
    assert out["position_ids"][0].tolist()[:5] == [0, 1, 2, 0, 1]
    assert out["seq_lens"].tolist() == [[3, 5], [8, 0]]
    assert out["num_docs"].tolist() == [2, 1]
    assert out["doc_remaining"][0].tolist() == [2, 1, 0, 1, 0, 0, 0, 0]
    assert out["doc_remaining"][1].tolist() == [6, 5, 4, 3, 2, 1, 0, 0]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert out["loss_mask"][0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert out["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, capacity=st.integers(min_value=1, max_value=50))
def test_greedy_matches_reference(lengths, capacity):
    rows, num_rows = pack_documents(torch.tensor(lengths, dtype=torch.int64), capacity, "greedy")
    assert (rows.tolist(), num_rows) == greedy_rows(lengths, capacity)


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, capacity=st.integers(min_value=1, max_value=50))
def test_best_fit_matches_reference(lengths, capacity):
    rows, num_rows = pack_documents(torch.tensor(lengths, dtype=torch.int64), capacity, "best_fit")
    assert (rows.tolist(), num_rows) == best_fit_rows(lengths, capacity)


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, capacity=st.integers(min_value=1, max_value=50),
       strategy=st.sampled_from(["greedy", "best_fit"]))
def test_fill_matches_reference(lengths, capacity, strategy):
    docs = _docs(lengths)
    rows, num_rows = pack_documents(torch.tensor(lengths, dtype=torch.int64), capacity, strategy)
    out = fill_packed_rows(*_flat(docs), rows, num_rows, capacity, pad_token_id=7)
    expected = fill_rows(docs, rows.tolist(), num_rows, capacity, pad_token_id=7)
    for r, row in enumerate(expected):
        for key in ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining"):
            assert out[key][r].tolist() == row[key], key
        n = int(out["num_docs"][r])
        assert out["seq_lens"][r, :n].tolist() == row["seq_lens"]
        assert int(out["seq_lens"][r].sum()) == capacity
        assert not out["seq_lens"][r, n:].any()


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, capacity=st.integers(min_value=1, max_value=50))
def test_best_fit_never_uses_more_rows_than_greedy(lengths, capacity):
    t = torch.tensor(lengths, dtype=torch.int64)
    assert pack_documents(t, capacity, "best_fit")[1] <= pack_documents(t, capacity, "greedy")[1]


def test_empty_documents_and_truncation():
    rows, num_rows = pack_documents(torch.tensor([0, 12, 0, 3]), 8, "greedy")
    assert rows.tolist() == [-1, 0, -1, 1] and num_rows == 2
    docs = [([], []), (list(range(100, 112)), [1] * 12), ([], []), ([1, 2, 3], [1, 0, 1])]
    out = fill_packed_rows(*_flat(docs), rows, num_rows, 8)
    assert out["input_ids"][0].tolist() == list(range(100, 108))  # truncated to capacity
    assert out["seq_lens"][:, 0].tolist() == [8, 8]
    assert pack_documents(torch.tensor([], dtype=torch.int64), 8, "best_fit")[1] == 0


def test_best_fit_packs_tighter_than_greedy():
    lengths = torch.tensor([5, 6, 3, 2, 4, 7, 1])  # greedy needs 5 rows at W=8, best-fit 4
    assert pack_documents(lengths, 8, "greedy")[1] == 5
    assert pack_documents(lengths, 8, "best_fit")[1] == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lengths": torch.tensor([3, -1]), "capacity": 8}, r"lengths\[1\] = -1"),
        ({"lengths": torch.tensor([3]), "capacity": 0}, "capacity must be >= 1, got 0"),
        ({"lengths": torch.tensor([[3]]), "capacity": 8}, "lengths must be 1-D"),
        ({"lengths": torch.tensor([3.0]), "capacity": 8}, "lengths must be an integer tensor"),
        ({"lengths": torch.tensor([3]), "capacity": 8, "strategy": "first_fit"}, "strategy must be one of"),
    ],
)
def test_pack_documents_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pack_documents(**kwargs)


def test_fill_rejects_inconsistent_inputs():
    ids, loss, offsets = _flat([([1, 2], [1, 1]), ([3], [1])])
    with pytest.raises(ValueError, match="out of range"):
        fill_packed_rows(ids, loss, offsets, torch.tensor([0, 5]), 1, 8)
    with pytest.raises(ValueError, match="overflows capacity"):
        fill_packed_rows(ids, loss, offsets, torch.tensor([0, 0]), 1, 2)
    with pytest.raises(ValueError, match="offsets must have"):
        fill_packed_rows(ids, loss, offsets[:-1], torch.tensor([0, 0]), 1, 8)
    with pytest.raises(ValueError, match="loss_mask must have"):
        fill_packed_rows(ids, loss[:-1], offsets, torch.tensor([0, 0]), 1, 8)
    with pytest.raises(ValueError, match="holds no document"):
        fill_packed_rows(ids, loss, offsets, torch.tensor([0, 0]), 2, 8)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, capacity=st.integers(min_value=1, max_value=50),
       strategy=st.sampled_from(["greedy", "best_fit"]))
def test_row_list_equals_the_row_tensors(lengths, capacity, strategy):
    docs = _docs(lengths)
    rows, num_rows = pack_documents(torch.tensor(lengths, dtype=torch.int64), capacity, strategy)
    dense = fill_packed_rows(*_flat(docs), rows, num_rows, capacity, pad_token_id=7)
    listed = packed_row_list(*_flat(docs), rows, num_rows, capacity, pad_token_id=7)
    assert len(listed) == num_rows
    for r, row in enumerate(listed):
        for key in ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining"):
            assert row[key].dtype == torch.int64 and torch.equal(row[key], dense[key][r]), key
            assert row[key].untyped_storage().nbytes() == capacity * 8  # its own allocation
        assert row["seq_lens"] == dense["seq_lens"][r, : int(dense["num_docs"][r])].tolist()


def test_row_list_rejects_what_fill_rejects():
    ids, loss, offsets = _flat([([1, 2], [1, 1]), ([3], [1])])
    with pytest.raises(ValueError, match="overflows capacity"):
        packed_row_list(ids, loss, offsets, torch.tensor([0, 0]), 1, 2)
    with pytest.raises(ValueError, match="holds no document"):
        packed_row_list(ids, loss, offsets, torch.tensor([0, 0]), 2, 8)
    with pytest.raises(TypeError, match="token_ids must be a torch.Tensor"):
        packed_row_list([1, 2, 3], loss, offsets, torch.tensor([0, 0]), 1, 8)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st)
def test_flatten_sample_values_equals_concatenation(lengths):
    docs = _docs(lengths, seed=1)
    ids, loss, offsets = flatten_sample_values([d for d, _ in docs], [m for _, m in docs])
    want_ids, want_loss, want_offsets = _flat(docs)
    assert torch.equal(ids, want_ids) and torch.equal(offsets, want_offsets)
    assert torch.equal(loss, (want_loss != 0).long())


def test_flatten_sample_values_reads_every_integer_kind():
    np = pytest.importorskip("numpy")
    ids = [[1, True, np.int32(3)], (4, 5), torch.tensor([[6, 7]], dtype=torch.int16), np.array([8], np.uint8),
           torch.tensor([], dtype=torch.int64)]
    loss = [[0, 2, np.int64(-1)], (False, True), torch.tensor([1, 0]), np.array([True]), []]
    flat_ids, flat_loss, offsets = flatten_sample_values(ids, loss, [None, [1, 0], None, None, None])
    assert flat_ids.tolist() == [1, 1, 3, 4, 6, 7, 8] and flat_ids.dtype == torch.int64
    assert flat_loss.tolist() == [0, 1, 1, 0, 1, 0, 1]
    assert offsets.tolist() == [0, 3, 4, 6, 7, 7]


@pytest.mark.parametrize(
    ("ids", "loss", "error", "match"),
    [
        ([[1], [2, "x"]], [[1], [1, 1]], TypeError, r"sample 1: input_ids\[1\] must be an int, got str"),
        ([[1]], [[0.5]], TypeError, r"sample 0: loss_mask\[0\] must be an int, got float"),
        ([[1], [2]], [[1], [1, 1]], ValueError, "sample 1: input_ids has 1 tokens but loss_mask has 2"),
        ([[1]], [[1], [1]], ValueError, "loss_mask has 2 samples but input_ids has 1"),
        ([{"a": 1}], [[1]], TypeError, "sample 0: input_ids must be a list or tuple of ints, a tensor or"),
        ([torch.tensor([1.0])], [[1]], TypeError, "sample 0: input_ids must hold integers"),
        ([[-(2**63) - 1]], [[1]], ValueError, r"sample 0: input_ids\[0\] does not fit in int64"),
    ],
)
def test_flatten_sample_values_bad_input(ids, loss, error, match):
    with pytest.raises(error, match=match):
        flatten_sample_values(ids, loss)


# ---- narrow token buffers and the parallel row writers -------------------------------------------------


EDGE_LENGTHS = [0, 1, 3, 6, 0, 4, 1, 2, 5]  # at W = 4: empty, length-1, exactly-W and longer-than-W documents


def _edge_case(dtype=torch.int64):
    """Flat documents of EDGE_LENGTHS packed greedily at W = 4 into an odd number of rows. The ids cycle
    through ``dtype``'s extremes, 0 and 1, so a narrow read that loses the sign or the high bit shows; loss
    values other than 0 / 1 must come out as 1."""
    info = torch.iinfo(dtype)
    total = sum(EDGE_LENGTHS)
    pattern = [info.min, info.max, 0, 1, info.min + 1, info.max - 1, 5]
    ids = torch.tensor([pattern[i % len(pattern)] for i in range(total)], dtype=torch.int64)
    loss = torch.tensor([(2, 0, -1, 1, 3)[i % 5] for i in range(total)], dtype=torch.int64)
    offsets = torch.tensor([0, *torch.tensor(EDGE_LENGTHS).cumsum(0).tolist()], dtype=torch.int64)
    rows, num_rows = pack_documents(torch.tensor(EDGE_LENGTHS), 4, "greedy")
    return ids, loss, offsets, rows, num_rows


def _with_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


ROW_TENSOR_KEYS = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining")


@pytest.mark.parametrize(
    ("ids_dtype", "loss_dtype"),
    [(torch.int8, torch.bool), (torch.uint8, torch.uint8), (torch.int16, torch.int8),
     (torch.int32, torch.int8), (torch.int32, torch.bool), (torch.int64, torch.int32),
     (torch.int16, torch.int64)],
)
def test_narrow_buffers_are_read_as_int64(ids_dtype, loss_dtype):
    ids, loss, offsets, rows, num_rows = _edge_case(ids_dtype)
    want_dense = fill_packed_rows(ids, loss, offsets, rows, num_rows, 4, pad_token_id=7)
    want_list = packed_row_list(ids, loss, offsets, rows, num_rows, 4, pad_token_id=7)
    narrow_ids = ids.to(ids_dtype)
    narrow_loss = (loss != 0) if loss_dtype == torch.bool else loss.to(loss_dtype)
    assert torch.equal(narrow_ids.long(), ids)  # every id fits, so any difference is the reader's
    dense = fill_packed_rows(narrow_ids, narrow_loss, offsets, rows, num_rows, 4, pad_token_id=7)
    listed = packed_row_list(narrow_ids, narrow_loss, offsets, rows, num_rows, 4, pad_token_id=7)
    for key, want in want_dense.items():
        assert dense[key].dtype == torch.int64 and torch.equal(dense[key], want), key
    for got, want in zip(listed, want_list, strict=True):
        assert got["seq_lens"] == want["seq_lens"]
        for key in ROW_TENSOR_KEYS:
            assert got[key].dtype == torch.int64 and torch.equal(got[key], want[key]), key
    info = torch.iinfo(ids_dtype)
    assert want_dense["input_ids"][0].tolist() == [info.min, info.max, 0, 1]  # documents 1 and 2 fill row 0
    assert set(want_dense["loss_mask"].flatten().tolist()) == {0, 1}


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_st, capacity=st.integers(min_value=1, max_value=50),
       strategy=st.sampled_from(["greedy", "best_fit"]), threads=st.sampled_from([2, 3, 4]))
def test_parallel_rows_equal_serial_rows(lengths, capacity, strategy, threads):
    docs = _docs(lengths, seed=2)
    rows, num_rows = pack_documents(torch.tensor(lengths, dtype=torch.int64), capacity, strategy)
    args = (*_flat(docs), rows, num_rows, capacity, 7)
    serial_dense = _with_threads(1, lambda: fill_packed_rows(*args))
    serial_list = _with_threads(1, lambda: packed_row_list(*args))
    dense = _with_threads(threads, lambda: fill_packed_rows(*args))
    listed = _with_threads(threads, lambda: packed_row_list(*args))
    for key, want in serial_dense.items():
        assert torch.equal(dense[key], want), key
    assert len(listed) == len(serial_list) == num_rows
    for got, want in zip(listed, serial_list, strict=True):
        assert got["seq_lens"] == want["seq_lens"]
        for key in ROW_TENSOR_KEYS:
            assert torch.equal(got[key], want[key]), key
            assert got[key].untyped_storage().nbytes() == capacity * 8


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_parallel_rows_on_edge_documents(threads):
    ids, loss, offsets, rows, num_rows = _edge_case(torch.int32)
    assert num_rows % 2 == 1 and (rows == -1).any()  # an odd row count and empty documents
    bounds = zip(offsets[:-1].tolist(), offsets[1:].tolist())
    docs = [(ids[a:b].tolist(), loss[a:b].tolist()) for a, b in bounds]
    expected = fill_rows(docs, rows.tolist(), num_rows, 4, pad_token_id=7)
    args = (ids.int(), loss.char(), offsets, rows, num_rows, 4, 7)
    listed = _with_threads(threads, lambda: packed_row_list(*args))
    dense = _with_threads(threads, lambda: fill_packed_rows(*args))
    for r, want in enumerate(expected):
        assert listed[r]["seq_lens"] == want["seq_lens"]
        for key in ROW_TENSOR_KEYS:
            assert listed[r][key].tolist() == want[key] and dense[key][r].tolist() == want[key], key


def test_unreadable_token_dtypes_are_rejected():
    ids, loss, offsets, rows, num_rows = _edge_case()
    with pytest.raises(TypeError, match="token_ids must be an integer tensor, got dtype torch.float32"):
        packed_row_list(ids.float(), loss, offsets, rows, num_rows, 4)
    with pytest.raises(TypeError, match="token_ids must be an integer tensor, got dtype torch.bool"):
        fill_packed_rows(ids != 0, loss, offsets, rows, num_rows, 4)
    raw = load_extension()  # the C++ check behind the wrappers' conversion
    match = r"token_ids must be an integer tensor \(int8, uint8, int16, int32 or int64\), got Float"
    with pytest.raises(RuntimeError, match=match):
        raw.packed_row_list(ids.float(), loss, offsets, rows, num_rows, 4, 0)
    with pytest.raises(RuntimeError, match=r"loss_mask must be an integer tensor \(.* or bool\), got Double"):
        raw.fill_packed_rows(ids, loss.double(), offsets, rows, num_rows, 4, 0)
