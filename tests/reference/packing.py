"""Pure-Python references for document packing (csrc/packing.cpp) and the seed system's packer."""

from __future__ import annotations

import torch


def greedy_rows(lengths: list[int], capacity: int) -> tuple[list[int], int]:
    """Order-preserving next-fit: flush the open row when the next document does not fit."""
    rows, num_rows, used = [], 0, 0
    for length in lengths:
        length = min(length, capacity)
        if length == 0:
            rows.append(-1)
            continue
        if used and used + length > capacity:
            used = 0
        if used == 0:
            num_rows += 1
        rows.append(num_rows - 1)
        used += length
    return rows, num_rows


def best_fit_rows(lengths: list[int], capacity: int) -> tuple[list[int], int]:
    """Best-fit decreasing by linear scan: tightest open row that fits, ties to the lower row id."""
    rows = [-1] * len(lengths)
    free: list[int] = []
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -min(lengths[i], capacity))
    for i in order:
        length = min(lengths[i], capacity)
        best = None
        for r, f in enumerate(free):
            if f >= length and (best is None or f < free[best]):
                best = r
        if best is None:
            free.append(capacity)
            best = len(free) - 1
        free[best] -= length
        rows[i] = best
    return rows, len(free)


def fill_rows(docs: list[tuple[list[int], list[int]]], row_of_doc: list[int], num_rows: int, capacity: int,
              pad_token_id: int) -> list[dict]:
    """Build packed rows token by token (the layout of automodel-notes §2.3)."""
    rows = [
        {"input_ids": [], "loss_mask": [], "attention_mask": [], "position_ids": [], "doc_remaining": [],
         "seq_lens": []}
        for _ in range(num_rows)
    ]
    for (ids, loss), r in zip(docs, row_of_doc):
        if r < 0:
            continue
        ids, loss = ids[:capacity], loss[:capacity]
        n = len(ids)
        row = rows[r]
        row["input_ids"] += ids
        row["loss_mask"] += [1 if x else 0 for x in loss]
        row["attention_mask"] += [1] * n
        row["position_ids"] += list(range(n))
        row["doc_remaining"] += [n - 1 - j for j in range(n)]
        row["seq_lens"].append(n)
    for row in rows:
        pad = capacity - len(row["input_ids"])
        last = row["seq_lens"][-1]
        row["input_ids"] += [pad_token_id] * pad
        row["loss_mask"] += [0] * pad
        row["attention_mask"] += [0] * pad
        row["position_ids"] += [min(last + j, capacity - 1) for j in range(pad)]
        row["doc_remaining"] += [0] * pad
        row["seq_lens"][-1] += pad
    return rows


def seed_packed_dataset(samples, capacity: int, pad_token_id: int = 0) -> list[dict]:
    """The seed system's greedy packer (automodel-notes §2.3), one streaming pass in pure Python.

    ``samples`` is any iterable of dicts with list ``input_ids`` / ``loss_mask`` (a ``datasets.Dataset``
    iterates as such). Rows hold int64 tensors of length ``capacity`` plus a ``seq_lens`` list; the
    benchmarks time this as the reference for ``build_packed_eagle3_dataset``.
    """
    rows: list[dict] = []
    cur: dict = {"input_ids": [], "loss_mask": [], "position_ids": [], "doc_remaining": [], "seq_lens": []}

    def flush() -> None:
        n = len(cur["input_ids"])
        if n == 0:
            return
        pad = capacity - n
        last_pos = cur["position_ids"][-1]
        row = {
            "input_ids": cur["input_ids"] + [pad_token_id] * pad,
            "loss_mask": cur["loss_mask"] + [0] * pad,
            "attention_mask": [1] * n + [0] * pad,
            "position_ids": cur["position_ids"] + [min(last_pos + 1 + j, capacity - 1) for j in range(pad)],
            "doc_remaining": cur["doc_remaining"] + [0] * pad,
        }
        seq_lens = cur["seq_lens"][:-1] + [cur["seq_lens"][-1] + pad]
        rows.append({**{k: torch.tensor(v, dtype=torch.long) for k, v in row.items()}, "seq_lens": seq_lens})
        for v in cur.values():
            v.clear()

    for sample in samples:
        ids, loss = list(sample["input_ids"]), list(sample["loss_mask"])
        if not ids:
            continue
        ids, loss = ids[:capacity], loss[:capacity]
        n = len(ids)
        if cur["input_ids"] and len(cur["input_ids"]) + n > capacity:
            flush()
        cur["input_ids"].extend(ids)
        cur["loss_mask"].extend(1 if x else 0 for x in loss)
        cur["position_ids"].extend(range(n))
        cur["doc_remaining"].extend(range(n - 1, -1, -1))
        cur["seq_lens"].append(n)
    flush()
    if not rows:
        raise ValueError("no rows: every sample is empty")
    return rows
