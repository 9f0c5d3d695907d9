"""Document packing into fixed-width rows (C++: csrc/packing.cpp).

``pack_documents`` decides which row each document goes to; ``fill_packed_rows`` writes the row tensors
(``input_ids, loss_mask, attention_mask, position_ids, doc_remaining, seq_lens``) from flat token buffers, so
building a packed dataset needs no per-token Python loop. The pure-Python references are in
tests/reference/packing.py.
"""

from __future__ import annotations

import torch

from eagle_ext._ext import load_extension
from eagle_ext.ops._checks import as_index_vector, check_int

PACKING_STRATEGIES = ("greedy", "best_fit")


def _check_message(exc: RuntimeError) -> str:
    """The TORCH_CHECK message (it already names the argument), without the C++ source location."""
    return str(exc).split("\nException raised from")[0]


def pack_documents(lengths: torch.Tensor, capacity: int, strategy: str = "greedy") -> tuple[torch.Tensor, int]:
    """Assign documents to rows of width ``capacity``.

    Args:
        lengths: int tensor ``[N]`` of document lengths (>= 0). Documents longer than ``capacity`` are
            truncated to it (a guard; callers normally truncate earlier).
        capacity: row width W (>= 1).
        strategy: ``"greedy"`` (order-preserving next-fit, the reference recipe's layout: a row is flushed
            when the next document does not fit) or ``"best_fit"`` (best-fit decreasing: fewest rows and
            least padding; deterministic).

    Returns:
        ``(row_of_doc, num_rows)``: ``row_of_doc`` int64 ``[N]`` with the row of each document, ``-1`` for
        empty documents; ``num_rows`` the number of rows used.

    Raises:
        TypeError / ValueError: ``lengths`` not a 1-D integer tensor or holding negative values,
        ``capacity < 1``, unknown ``strategy``.
    """
    lengths = as_index_vector("lengths", lengths)
    capacity = check_int("capacity", capacity, minimum=1)
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"strategy must be one of {PACKING_STRATEGIES}, got {strategy!r}")
    try:
        row_of_doc, num_rows = load_extension().pack_documents(lengths, capacity, strategy)
    except RuntimeError as exc:
        raise ValueError(_check_message(exc)) from None
    return row_of_doc, int(num_rows)


def fill_packed_rows(
    token_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    offsets: torch.Tensor,
    row_of_doc: torch.Tensor,
    num_rows: int,
    capacity: int,
    pad_token_id: int = 0,
) -> dict[str, torch.Tensor]:
    """Write packed rows from flat token buffers.

    Document ``i`` is ``token_ids[offsets[i]:offsets[i+1]]`` (truncated to ``capacity``); it goes to row
    ``row_of_doc[i]`` (from :func:`pack_documents`), after the earlier documents of that row, so documents
    keep their original relative order.

    Args:
        token_ids: int tensor ``[total]``.
        loss_mask: int or bool tensor ``[total]``; coerced to 0/1.
        offsets: int tensor ``[N + 1]``, non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == total``.
        row_of_doc: int tensor ``[N]``; ``-1`` exactly for empty documents.
        num_rows: number of rows (every row must receive a document).
        capacity: row width W.
        pad_token_id: id written into the trailing pad.

    Returns:
        dict of int64 tensors: ``input_ids, loss_mask, attention_mask, position_ids, doc_remaining``
        ``[num_rows, W]``; ``seq_lens`` ``[num_rows, max_docs]`` zero-padded, with the trailing pad folded
        into each row's last document so every row sums to W; ``num_docs`` ``[num_rows]``.
        ``position_ids`` restart at 0 for each document and continue the last document over the pad,
        clamped to ``W - 1``; ``doc_remaining[t]`` counts the real tokens after ``t`` in its document (0 on pad).

    Raises:
        TypeError / ValueError on malformed inputs (the message names the argument).
    """
    token_ids = as_index_vector("token_ids", token_ids)
    loss_mask = as_index_vector("loss_mask", loss_mask, allow_bool=True)
    offsets = as_index_vector("offsets", offsets)
    row_of_doc = as_index_vector("row_of_doc", row_of_doc)
    num_rows = check_int("num_rows", num_rows, minimum=0)
    capacity = check_int("capacity", capacity, minimum=1)
    pad_token_id = check_int("pad_token_id", pad_token_id)
    try:
        out = load_extension().fill_packed_rows(
            token_ids, loss_mask, offsets, row_of_doc, num_rows, capacity, pad_token_id
        )
    except RuntimeError as exc:
        raise ValueError(_check_message(exc)) from None
    keys = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining", "seq_lens", "num_docs")
    return dict(zip(keys, out, strict=True))
