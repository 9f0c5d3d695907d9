"""Document packing into fixed-width rows (C++: csrc/packing.cpp).

``flatten_sample_values`` reads per-sample Python lists (or tensors) into flat token buffers in one pass;
``pack_documents`` decides which row each document goes to; ``fill_packed_rows`` (one ``[R, W]`` tensor
per key) and ``packed_row_list`` (one dict of row tensors per row) write the rows (``input_ids, loss_mask,
attention_mask, position_ids, doc_remaining, seq_lens``) from the flat buffers, so building a packed dataset
needs no per-token Python loop. The pure-Python references are in tests/reference/packing.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch

from eagle_ext._ext import load_extension
from eagle_ext.ops._checks import as_index_vector, check_int

PACKING_STRATEGIES = ("greedy", "best_fit")
ROW_KEYS = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining", "seq_lens")


# Dtypes the row writers read as they are (csrc/packing.cpp): widening narrow Arrow ids / masks to int64
# first would cost a copy of every token.
_TOKEN_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _token_vector(name: str, t, *, allow_bool: bool = False) -> torch.Tensor:
    """``t`` as a contiguous 1-D CPU tensor in a dtype the row writers read (any other integer dtype becomes
    int64); raise naming ``name`` if it is not a 1-D integer (or, with ``allow_bool``, bool) tensor."""
    readable = (*_TOKEN_DTYPES, torch.bool) if allow_bool else _TOKEN_DTYPES
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype in readable:
        return t.detach().to(device="cpu").contiguous()
    return as_index_vector(name, t, allow_bool=allow_bool)


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


def _call_row_writer(name, token_ids, loss_mask, offsets, row_of_doc, num_rows, capacity, pad_token_id):
    """Validate the row writers' shared arguments, then call ``_C.<name>`` (its checks re-raised as ValueError)."""
    token_ids = _token_vector("token_ids", token_ids)
    loss_mask = _token_vector("loss_mask", loss_mask, allow_bool=True)
    offsets = as_index_vector("offsets", offsets)
    row_of_doc = as_index_vector("row_of_doc", row_of_doc)
    num_rows = check_int("num_rows", num_rows, minimum=0)
    capacity = check_int("capacity", capacity, minimum=1)
    pad_token_id = check_int("pad_token_id", pad_token_id)
    try:
        return getattr(load_extension(), name)(token_ids, loss_mask, offsets, row_of_doc, num_rows, capacity,
                                               pad_token_id)
    except RuntimeError as exc:
        raise ValueError(_check_message(exc)) from None


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
        token_ids: int tensor ``[total]``; int8 / uint8 / int16 / int32 / int64 are read as they are (no
            int64 copy), other integer dtypes are converted to int64 first.
        loss_mask: int or bool tensor ``[total]`` (read as it is, like ``token_ids``); coerced to 0/1.
        offsets: int tensor ``[N + 1]``, non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == total``.
        row_of_doc: int tensor ``[N]``; ``-1`` exactly for empty documents.
        num_rows: number of rows (every row must receive a document).
        capacity: row width W.
        pad_token_id: id written into the trailing pad.

    Rows are written in parallel on torch's intra-op threads; the result does not depend on their number.

    Returns:
        dict of int64 tensors: ``input_ids, loss_mask, attention_mask, position_ids, doc_remaining``
        ``[num_rows, W]``; ``seq_lens`` ``[num_rows, max_docs]`` zero-padded, with the trailing pad folded
        into each row's last document so every row sums to W; ``num_docs`` ``[num_rows]``.
        ``position_ids`` restart at 0 for each document and continue the last document over the pad,
        clamped to ``W - 1``; ``doc_remaining[t]`` counts the real tokens after ``t`` in its document (0 on pad).

    Raises:
        TypeError / ValueError on malformed inputs (the message names the argument).
    """
    out = _call_row_writer("fill_packed_rows", token_ids, loss_mask, offsets, row_of_doc, num_rows, capacity,
                           pad_token_id)
    keys = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining", "seq_lens", "num_docs")
    return dict(zip(keys, out, strict=True))


def packed_row_list(
    token_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    offsets: torch.Tensor,
    row_of_doc: torch.Tensor,
    num_rows: int,
    capacity: int,
    pad_token_id: int = 0,
) -> list[dict]:
    """The rows of :func:`fill_packed_rows`, one dict per row.

    Same arguments, layout and checks as :func:`fill_packed_rows`, but row ``r`` is a dict with
    ``input_ids, loss_mask, attention_mask, position_ids, doc_remaining`` (int64 ``[W]``, each tensor its own
    allocation, so one row pickles or travels to a dataloader worker alone) and ``seq_lens`` (a list of
    ints summing to W). Writes each row once, without the GIL, rows in parallel on torch's intra-op threads
    (``torch.get_num_threads()``); the result does not depend on the thread count.
    """
    rows = _call_row_writer("packed_row_list", token_ids, loss_mask, offsets, row_of_doc, num_rows, capacity,
                            pad_token_id)
    return [dict(zip(ROW_KEYS, row, strict=True)) for row in rows]


_READ_DIRECTLY = (list, tuple, torch.Tensor)


def _sample_values(name: str, column: Sequence, *, allow_none: bool = False) -> list:
    """``column`` as a list whose items are lists, tuples or tensors (the types the C++ reader takes; ``None``
    too when ``allow_none``): other items (numpy arrays, array-likes) become tensors, without a copy where
    possible."""
    values = column if isinstance(column, list) else list(column)
    direct = (*_READ_DIRECTLY, type(None)) if allow_none else _READ_DIRECTLY
    if all(type(v) in direct for v in values):
        return values
    out = []
    with warnings.catch_warnings():
        # Arrays read from Arrow are read-only; they are only ever read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for i, v in enumerate(values):
            if isinstance(v, direct):
                out.append(v)
                continue
            if v is None or isinstance(v, (str, bytes, Mapping)):
                raise TypeError(
                    f"sample {i}: {name} must be a list or tuple of ints, a tensor or an array, "
                    f"got {type(v).__name__}"
                )
            try:
                out.append(torch.as_tensor(v))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TypeError(f"sample {i}: {name} could not be read as integers ({exc})") from None
    return out


def flatten_sample_values(
    input_ids: Sequence,
    loss_mask: Sequence,
    attention_mask: Sequence | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate per-sample values into flat buffers, reading each element once (C++, no per-sample tensor
    for list input).

    Args:
        input_ids: one value per sample: a list or tuple of ints (numpy integers are accepted too), an integer
            tensor or an integer array (any shape; flattened).
        loss_mask: the same, with ints or bools; non-zero means supervised.
        attention_mask: ``None`` or one value (or ``None``) per sample; a sample with one keeps only its first
            ``attention_mask.sum()`` tokens (right padding dropped).

    Returns:
        ``(token_ids int64 [total], loss_mask int64 [total] of 0/1, offsets int64 [N+1])``; sample ``i`` is
        ``token_ids[offsets[i]:offsets[i+1]]``.

    Raises:
        TypeError: a value or element that is not an integer (floats, strings, nested lists, None), naming
            the sample and position.
        ValueError: ``input_ids`` and ``loss_mask`` of a sample differ in length (naming the sample), columns
            of different lengths, or an id outside int64.
    """
    ids = _sample_values("input_ids", input_ids)
    loss = _sample_values("loss_mask", loss_mask)
    if len(loss) != len(ids):
        raise ValueError(f"loss_mask has {len(loss)} samples but input_ids has {len(ids)}")
    attn = [] if attention_mask is None else _sample_values("attention_mask", attention_mask, allow_none=True)
    if attention_mask is not None and len(attn) != len(ids):
        raise ValueError(f"attention_mask has {len(attn)} samples but input_ids has {len(ids)}")
    try:
        token_ids, flat_loss, offsets = load_extension().flatten_sample_values(ids, loss, attn)
    except RuntimeError as exc:
        raise ValueError(_check_message(exc)) from None
    return token_ids, flat_loss, offsets
