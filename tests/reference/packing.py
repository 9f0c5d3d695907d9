"""Pure-Python references for document packing (csrc/packing.cpp)."""

from __future__ import annotations


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
