"""Packed and padded batches.

Packing puts several chat samples (documents) into one fixed-width row of ``W`` tokens, on top of the C++
packer (:mod:`eagle_ext.ops.packing`): ``strategy="greedy"`` keeps the reference recipe's order-preserving
layout, ``"best_fit"`` (best-fit decreasing) leaves less padding. Row layout (automodel-notes §2.3):

- ``input_ids``, ``loss_mask``, ``attention_mask``, ``position_ids``, ``doc_remaining``: int64 ``[W]``;
  positions restart at 0 per document and continue the last one over the pad (clamped to ``W - 1``);
  ``doc_remaining[t]`` counts the real tokens after ``t`` in its document (0 on pad), which gates TTT
  supervision so it never crosses a document boundary;
- ``seq_lens``: per-document lengths with the trailing pad folded into the last one (sums to ``W``).

No per-token Python runs here: documents are flattened with ``torch.cat`` and the op writes the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from eagle_ext.ops.packing import PACKING_STRATEGIES, fill_packed_rows, pack_documents

PACKED_KEYS = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining")
PADDED_KEYS = ("input_ids", "loss_mask", "attention_mask")


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


def _document(sample: Mapping, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(sample, Mapping) or "input_ids" not in sample or "loss_mask" not in sample:
        raise ValueError(
            f"sample {index} must be a dict with input_ids and loss_mask, got {type(sample).__name__}"
        )
    ids = torch.as_tensor(sample["input_ids"], dtype=torch.int64).flatten()
    loss = torch.as_tensor(sample["loss_mask"]).flatten()
    if ids.shape != loss.shape:
        raise ValueError(
            f"sample {index}: input_ids has {ids.numel()} tokens but loss_mask has {loss.numel()}"
        )
    if "attention_mask" in sample:  # pre-padded sample: keep its real (right-aligned padding) tokens only
        n = int(torch.as_tensor(sample["attention_mask"]).sum())
        ids, loss = ids[:n], loss[:n]
    return ids, (loss != 0).to(torch.int64)


def flatten_documents(samples: Iterable[Mapping]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate samples into flat buffers.

    Returns:
        ``(token_ids int64 [total], loss_mask int64 [total] of 0/1, offsets int64 [N+1])``; document ``i``
        is ``token_ids[offsets[i]:offsets[i+1]]``. A sample with ``attention_mask`` keeps only its first
        ``attention_mask.sum()`` tokens.

    Raises:
        ValueError: a sample without ``input_ids`` / ``loss_mask`` or with mismatched lengths.
    """
    docs = [_document(s, i) for i, s in enumerate(samples)]
    lengths = torch.tensor([ids.numel() for ids, _ in docs], dtype=torch.int64)
    offsets = torch.zeros(len(docs) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    if not docs:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), offsets
    return torch.cat([d[0] for d in docs]), torch.cat([d[1] for d in docs]), offsets


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


def _row(packed: Mapping[str, torch.Tensor], r: int) -> dict:
    row = {k: packed[k][r] for k in PACKED_KEYS}
    row["seq_lens"] = packed["seq_lens"][r, : int(packed["num_docs"][r])].tolist()
    return row


def build_packed_eagle3_dataset(
    samples: Iterable[Mapping],
    packed_sequence_size: int,
    pad_token_id: int = 0,
    *,
    strategy: str = "greedy",
) -> list[dict]:
    """Pack chat samples (dicts with ``input_ids`` and ``loss_mask``; each one document) into rows.

    Args:
        samples: documents in order; an ``attention_mask`` marks right padding to drop.
        packed_sequence_size: row width ``W`` (>= 2). Longer documents are truncated; empty ones skipped.
        pad_token_id: id of the trailing pad.
        strategy: ``"greedy"`` (a row is flushed when the next document does not fit; the reference
            layout) or ``"best_fit"`` (best-fit decreasing: fewer rows, less padding; documents keep their
            relative order within a row).

    Returns:
        a list of row dicts: ``input_ids, loss_mask, attention_mask, position_ids, doc_remaining`` (int64
        tensors of length ``W``) and ``seq_lens`` (python list summing to ``W``).

    Raises:
        ValueError: bad ``packed_sequence_size`` / ``strategy``, malformed samples, or no rows (every
            document empty).
    """
    check_packing_args(packed_sequence_size, strategy)
    flat = flatten_documents(samples)
    packed = pack_flat_documents(*flat, packed_sequence_size, pad_token_id, strategy)
    num_rows = int(packed["num_docs"].numel())
    if num_rows == 0:
        raise ValueError(
            f"build_packed_eagle3_dataset produced no rows: all {flat[2].numel() - 1} samples are empty"
        )
    # Each row owns its memory (clone), so pickling one row never drags the whole buffer along.
    return [
        {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in _row(packed, r).items()}
        for r in range(num_rows)
    ]


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
