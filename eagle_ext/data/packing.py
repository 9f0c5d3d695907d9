"""Packed and padded batches.

Packing puts several chat samples (documents) into one fixed-width row of ``W`` tokens, on top of the C++
packer (:mod:`eagle_ext.ops.packing`): ``strategy="greedy"`` keeps the reference recipe's order-preserving
layout, ``"best_fit"`` (best-fit decreasing) leaves less padding. Row layout (automodel-notes §2.3):

- ``input_ids``, ``loss_mask``, ``attention_mask``, ``position_ids``, ``doc_remaining``: int64 ``[W]``;
  positions restart at 0 per document and continue the last one over the pad (clamped to ``W - 1``);
  ``doc_remaining[t]`` counts the real tokens after ``t`` in its document (0 on pad), which gates TTT
  supervision so it never crosses a document boundary;
- ``seq_lens``: per-document lengths with the trailing pad folded into the last one (sums to ``W``).

No per-token Python runs here: list input is read into flat buffers by one C++ pass over the Python ints,
Arrow input (tables, list columns, ``datasets.Dataset``) through its buffers in their own integer dtypes
(int32 ids and int8 masks are not widened first), and the op writes the rows in parallel on torch's
intra-op threads.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from eagle_ext.ops.packing import (
    PACKING_STRATEGIES,
    fill_packed_rows,
    flatten_sample_values,
    pack_documents,
    packed_row_list,
)

PACKED_KEYS = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining")
PADDED_KEYS = ("input_ids", "loss_mask", "attention_mask")  # a sample's keys; attention_mask is optional


def check_packing_args(packed_sequence_size, strategy: str) -> None:
    """Raise ValueError unless ``packed_sequence_size`` is an int >= 2 and ``strategy`` is known."""
    if (
        isinstance(packed_sequence_size, bool)
        or not isinstance(packed_sequence_size, int)
        or packed_sequence_size < 2
    ):
        raise ValueError(f"packed_sequence_size must be an int >= 2, got {packed_sequence_size!r}")
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"strategy must be one of {PACKING_STRATEGIES}, got {strategy!r}")


# numpy dtypes the row writers read as they are (eagle_ext.ops.packing); other integer columns are widened.
_NARROW_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_)


def _arrow_column(name: str, column) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list column (``Array`` or ``ChunkedArray``) as ``(values, lengths int64 [N])`` numpy arrays.

    ``values`` keeps the column's integer dtype when the row writers read it (int8 / uint8 / int16 / int32 /
    int64 / bool; other integers become int64) and shares the Arrow buffer when the column is one chunk;
    several chunks are concatenated in that dtype (a copy of the narrow values, not of int64 ones).
    """
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    values, lengths, base = [], [], 0
    for chunk in chunks:
        if not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)):
            raise TypeError(f"{name} must be an Arrow list column, got type {chunk.type}")
        if chunk.null_count:
            first = int(np.flatnonzero(~chunk.is_valid().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"sample {base + first}: {name} is null")
        offsets = chunk.offsets.to_numpy().astype(np.int64, copy=False)
        flat = chunk.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if not (pa.types.is_integer(flat.type) or pa.types.is_boolean(flat.type)):
            raise TypeError(f"{name} must hold integers, got Arrow type {flat.type}")
        if flat.null_count:
            token = int(np.flatnonzero(~flat.is_valid().to_numpy(zero_copy_only=False))[0])
            sample = base + int(np.searchsorted(offsets - offsets[0], token, side="right")) - 1
            raise ValueError(f"sample {sample}: {name} holds a null")
        values.append(flat.to_numpy(zero_copy_only=False))
        lengths.append(np.diff(offsets))
        base += len(chunk)
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dtype = values[0].dtype if values[0].dtype.type in _NARROW_DTYPES else np.dtype(np.int64)
    if len(values) == 1 and values[0].dtype == dtype:
        return values[0], lengths[0]
    return np.concatenate(values, dtype=dtype, casting="unsafe"), np.concatenate(lengths)


def _flatten_arrow(columns: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_flat_documents` for Arrow list columns: vectorised, no per-sample Python objects; ids and
    loss mask keep their column dtypes where the row writers read them."""
    ids, n_ids = _arrow_column("input_ids", columns["input_ids"])
    loss, n_loss = _arrow_column("loss_mask", columns["loss_mask"])
    if n_ids.shape != n_loss.shape:
        raise ValueError(f"loss_mask has {n_loss.size} samples but input_ids has {n_ids.size}")
    bad = np.flatnonzero(n_ids != n_loss)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"sample {i}: input_ids has {n_ids[i]} tokens but loss_mask has {n_loss[i]}")
    lengths = n_ids
    if columns.get("attention_mask") is not None:
        # Pre-padded samples keep their first attention_mask.sum() tokens (right padding dropped).
        attn, n_attn = _arrow_column("attention_mask", columns["attention_mask"])
        if n_attn.shape != n_ids.shape:
            raise ValueError(f"attention_mask has {n_attn.size} samples but input_ids has {n_ids.size}")
        ends = np.cumsum(n_attn)
        sums = np.concatenate([[0], np.cumsum(attn, dtype=np.int64)])
        kept = np.clip(sums[ends] - sums[ends - n_attn], 0, lengths)
        if (kept < lengths).any():
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            keep = np.arange(ids.size) - starts < np.repeat(kept, lengths)
            ids, loss, lengths = ids[keep], loss[keep], kept
    if ids.dtype == np.bool_:
        ids = ids.view(np.uint8)  # ids are integers; the row writers take bool only for the loss mask
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with warnings.catch_warnings():
        # Zero-copy views of Arrow buffers are read-only; the packer only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(ids), torch.from_numpy(loss), torch.from_numpy(offsets)


def _columns(samples) -> tuple[Mapping, bool]:
    """``(columns, is_arrow)``: ``input_ids``, ``loss_mask`` and (optional) ``attention_mask`` columns of any
    accepted input (see :func:`flatten_documents`)."""
    # An object can only be an Arrow or datasets object if its package is already imported.
    pa = sys.modules.get("pyarrow")
    hf = sys.modules.get("datasets")
    if hf is not None and isinstance(samples, hf.Dataset):
        names = [k for k in PADDED_KEYS if k in samples.column_names]
        samples = samples.with_format("arrow", columns=names)[:]  # honours select / shuffle indices
    if pa is not None and isinstance(samples, (pa.Table, pa.RecordBatch)):
        missing = [k for k in PADDED_KEYS[:2] if k not in samples.column_names]
        if missing:
            raise ValueError(
                f"samples (an Arrow table) lacks columns {missing}; it has {samples.column_names}"
            )
        names = [k for k in PADDED_KEYS if k in samples.column_names]
        return {k: samples.column(k) for k in names}, True
    if isinstance(samples, Mapping):
        if "input_ids" not in samples or "loss_mask" not in samples:
            raise ValueError(
                "samples as a mapping must be columns with input_ids and loss_mask, "
                f"got keys {sorted(samples)}"
            )
        columns = {k: samples[k] for k in PADDED_KEYS if k in samples}
        arrow = pa is not None and isinstance(columns["input_ids"], (pa.Array, pa.ChunkedArray))
        return columns, arrow
    ids, loss, attn = [], [], []
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or "input_ids" not in sample or "loss_mask" not in sample:
            raise ValueError(
                f"sample {i} must be a dict with input_ids and loss_mask, got {type(sample).__name__}"
            )
        ids.append(sample["input_ids"])
        loss.append(sample["loss_mask"])
        attn.append(sample.get("attention_mask"))
    columns = {"input_ids": ids, "loss_mask": loss}
    if any(a is not None for a in attn):
        columns["attention_mask"] = attn
    return columns, False


def flatten_documents(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate samples (one document each) into flat buffers.

    ``samples`` is any of:

    - an iterable of dicts with ``input_ids`` and ``loss_mask`` (lists or tuples of ints, tensors or numpy
      arrays) and optionally ``attention_mask``: list values are read once by C++, element by element;
    - a mapping of columns ``{"input_ids": ..., "loss_mask": ..., ["attention_mask": ...]}`` holding one such
      value per sample, or Arrow list columns (``pyarrow.Array`` / ``ChunkedArray``);
    - a ``pyarrow.Table`` / ``RecordBatch`` or a ``datasets.Dataset`` with those columns: read through
      Arrow buffers, without a Python object per sample (zero-copy for one chunk of int64 lists).

    Returns:
        ``(token_ids int64 [total], loss_mask int64 [total] of 0/1, offsets int64 [N+1])``; document ``i`` is
        ``token_ids[offsets[i]:offsets[i+1]]``. A sample with ``attention_mask`` keeps only its first
        ``attention_mask.sum()`` tokens.

    Raises:
        ValueError: a sample without ``input_ids`` / ``loss_mask``, with mismatched lengths or with nulls
            (the message names the sample index); missing columns.
        TypeError: a value or element that is not an integer (floats, strings, nested lists), naming the
            sample.
    """
    token_ids, loss_mask, offsets = _flat_documents(samples)
    return token_ids.to(torch.int64), (loss_mask != 0).to(torch.int64), offsets


def _flat_documents(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`flatten_documents` without widening: Arrow ids and masks keep their column dtypes (int8 /
    uint8 / int16 / int32 / int64; bool masks), which the row writers read directly."""
    columns, arrow = _columns(samples)
    if arrow:
        return _flatten_arrow(columns)
    return flatten_sample_values(columns["input_ids"], columns["loss_mask"], columns.get("attention_mask"))


def pack_flat_documents(
    token_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    offsets: torch.Tensor,
    packed_sequence_size: int,
    pad_token_id: int = 0,
    strategy: str = "greedy",
) -> dict[str, torch.Tensor]:
    """Pack flat documents (see :func:`flatten_documents`) into rows.

    Returns:
        the dict of :func:`eagle_ext.ops.packing.fill_packed_rows`: five int64 ``[R, W]`` tensors, ``seq_lens``
        int64 ``[R, max_docs]`` zero-padded and ``num_docs`` int64 ``[R]``. Documents longer than ``W`` are
        truncated; empty ones are dropped.
    """
    check_packing_args(packed_sequence_size, strategy)
    lengths = offsets[1:] - offsets[:-1]
    row_of_doc, num_rows = pack_documents(lengths, packed_sequence_size, strategy)
    return fill_packed_rows(
        token_ids, loss_mask, offsets, row_of_doc, num_rows, packed_sequence_size, pad_token_id
    )


def build_packed_eagle3_dataset(
    samples,
    packed_sequence_size: int,
    pad_token_id: int = 0,
    *,
    strategy: str = "greedy",
) -> list[dict]:
    """Pack chat samples (each one document) into rows.

    Args:
        samples: documents in order: dicts with ``input_ids`` and ``loss_mask`` (an ``attention_mask`` marks
            right padding to drop), a mapping of columns, Arrow list columns, a ``pyarrow.Table`` or a
            ``datasets.Dataset`` (see :func:`flatten_documents`; Arrow input is read without per-sample Python
            objects, list input by one C++ pass over the Python ints).
        packed_sequence_size: row width ``W`` (>= 2). Longer documents are truncated; empty ones skipped.
        pad_token_id: id of the trailing pad.
        strategy: ``"greedy"`` (a row is flushed when the next document does not fit; the reference
            layout) or ``"best_fit"`` (best-fit decreasing: fewer rows, less padding; documents keep their
            relative order within a row).

    Returns:
        a list of row dicts: ``input_ids, loss_mask, attention_mask, position_ids, doc_remaining`` (int64
        tensors of length ``W``, each its own allocation) and ``seq_lens`` (python list summing to ``W``).
        Rows are written in parallel on ``torch.get_num_threads()`` threads; they do not depend on it.

    Raises:
        ValueError: bad ``packed_sequence_size`` / ``strategy``, malformed samples (naming the sample index),
            or no rows (every document empty).
        TypeError: non-integer values (naming the sample index).
    """
    check_packing_args(packed_sequence_size, strategy)
    token_ids, loss_mask, offsets = _flat_documents(samples)
    row_of_doc, num_rows = pack_documents(offsets[1:] - offsets[:-1], packed_sequence_size, strategy)
    if num_rows == 0:
        raise ValueError(
            f"build_packed_eagle3_dataset produced no rows: all {offsets.numel() - 1} samples are empty"
        )
    return packed_row_list(
        token_ids, loss_mask, offsets, row_of_doc, num_rows, packed_sequence_size, pad_token_id
    )


@dataclass(frozen=True)
class PackingPlan:
    """Which documents form each row: row ``r`` holds ``doc_index[row_ptr[r]:row_ptr[r+1]]`` in order.

    Lets a dataset materialise rows lazily (one :func:`pack_row` call per row) instead of holding every
    packed row in memory.
    """

    row_ptr: torch.Tensor  # int64 [R + 1]
    doc_index: torch.Tensor  # int64 [M], M = number of non-empty documents

    @property
    def num_rows(self) -> int:
        return int(self.row_ptr.numel()) - 1

    def docs_of_row(self, r: int) -> torch.Tensor:
        return self.doc_index[int(self.row_ptr[r]) : int(self.row_ptr[r + 1])]


def plan_packing(lengths: torch.Tensor, packed_sequence_size: int, strategy: str = "greedy") -> PackingPlan:
    """Assign documents of the given lengths (int ``[N]``) to rows; see :class:`PackingPlan`.

    Raises:
        ValueError: bad ``packed_sequence_size`` / ``strategy`` or negative lengths.
    """
    from eagle_ext.ops.packing import pack_documents

    check_packing_args(packed_sequence_size, strategy)
    row_of_doc, num_rows = pack_documents(
        torch.as_tensor(lengths, dtype=torch.int64), packed_sequence_size, strategy
    )
    placed = torch.nonzero(row_of_doc >= 0).flatten()
    rows = row_of_doc[placed]
    order = torch.argsort(rows, stable=True)  # stable: documents keep their relative order inside a row
    row_ptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=num_rows), 0, out=row_ptr[1:])
    return PackingPlan(row_ptr=row_ptr, doc_index=placed[order])


def pack_row(
    token_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    offsets: torch.Tensor,
    packed_sequence_size: int,
    pad_token_id: int = 0,
) -> dict:
    """Write one packed row from the flat buffers of the documents that fill it (they must fit in ``W``).

    Returns a row dict as in :func:`build_packed_eagle3_dataset` (``seq_lens`` as an int64 tensor).
    """
    from eagle_ext.ops.packing import fill_packed_rows

    n_docs = offsets.numel() - 1
    packed = fill_packed_rows(
        token_ids,
        loss_mask,
        offsets,
        torch.zeros(n_docs, dtype=torch.int64),
        1,
        packed_sequence_size,
        pad_token_id,
    )
    row = {k: packed[k][0] for k in PACKED_KEYS}
    row["seq_lens"] = packed["seq_lens"][0, : int(packed["num_docs"][0])]
    return row


def pack_collate(rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Collate packed rows: the five fixed-width keys stacked as int64 ``[B, W]``, ``seq_lens`` zero-padded
    to int64 ``[B, max_docs]`` (zero entries are harmless: document boundaries are cumulative sums).

    Raises:
        ValueError: empty batch, missing keys, or rows of different widths.
    """
    if not rows:
        raise ValueError("pack_collate got an empty batch")
    missing = [k for k in (*PACKED_KEYS, "seq_lens") if k not in rows[0]]
    if missing:
        raise ValueError(f"pack_collate: rows lack keys {missing}; expected {[*PACKED_KEYS, 'seq_lens']}")
    try:
        batch = {
            k: torch.stack([torch.as_tensor(r[k], dtype=torch.int64) for r in rows]) for k in PACKED_KEYS
        }
    except RuntimeError as exc:
        raise ValueError(f"pack_collate: rows have different widths ({exc})") from None
    seq_lens = [torch.as_tensor(r["seq_lens"], dtype=torch.int64).flatten() for r in rows]
    batch["seq_lens"] = torch.nn.utils.rnn.pad_sequence(seq_lens, batch_first=True, padding_value=0)
    return batch


def pad_collate(
    samples: Sequence[Mapping], pad_token_id: int = 0, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack unshifted chat samples into int64 ``[B, S]`` ``input_ids``, ``loss_mask``, ``attention_mask``.

    Pre-padded samples of equal length are stacked as they are; shorter ones are right-padded to the longest
    (or to ``pad_to`` when larger) with ``pad_token_id`` / 0 / 0. A sample without ``attention_mask`` is all real.

    Raises:
        ValueError: empty batch, missing keys, or mismatched lengths within a sample.
    """
    if not samples:
        raise ValueError("pad_collate got an empty batch")
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in PADDED_KEYS}
    for i, s in enumerate(samples):
        if "input_ids" not in s or "loss_mask" not in s:
            raise ValueError(f"pad_collate: sample {i} lacks input_ids or loss_mask (keys: {sorted(s)})")
        ids = torch.as_tensor(s["input_ids"], dtype=torch.int64).flatten()
        loss = torch.as_tensor(s["loss_mask"], dtype=torch.int64).flatten()
        attn = torch.as_tensor(s.get("attention_mask", torch.ones_like(ids)), dtype=torch.int64).flatten()
        if not ids.numel() == loss.numel() == attn.numel():
            raise ValueError(
                f"pad_collate: sample {i} has {ids.numel()} input_ids, {loss.numel()} loss_mask and "
                f"{attn.numel()} attention_mask entries"
            )
        columns["input_ids"].append(ids)
        columns["loss_mask"].append(loss)
        columns["attention_mask"].append(attn)
    width = max(max(t.numel() for t in columns["input_ids"]), pad_to or 0)
    out = {}
    for key, values in columns.items():
        fill = pad_token_id if key == "input_ids" else 0
        out[key] = torch.stack(
            [torch.nn.functional.pad(v, (0, width - v.numel()), value=fill) for v in values]
        )
    return out
