"""Document structure of padded and packed rows, and the block visibility it implies.

A batch row is either one padded sequence (``attention_mask`` marks its real tokens) or several documents
packed back to back (``seq_lens`` gives their lengths; trailing padding is folded into the last document,
so every row's lengths sum to the row width ``T``). Both the target forward and the draft's TTT attention
derive "who may attend to whom" from the same two per-token tensors built here:

- ``doc_ids``  int64 ``[B, T]``: index of the document each slot belongs to (all zero when unpacked);
- ``key_valid`` bool ``[B, T]``: the slot holds a real token (``attention_mask != 0``).

Visibility of the causal (step-0) block: query ``q`` sees key ``k`` iff ``k <= q``, both lie in the same
document and ``k`` is a real token; a slot always sees itself. The last rule only changes padded queries
(a real query already sees itself) and guarantees every softmax row has a finite entry, so padding never
produces NaN that could leak into gradients.
"""

from __future__ import annotations

import torch

__all__ = ["document_ids_from_seq_lens", "block_causal_visibility", "check_attention_mask"]


def check_attention_mask(attention_mask: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    """Validate ``attention_mask`` (``[B, T]``, any integer/bool dtype) and return it as bool, or None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"attention_mask must have shape [B, T] = {[batch, seq_len]}, got {list(attention_mask.shape)}"
        )
    return attention_mask != 0


def _assert_on_device(condition: torch.Tensor, message: str) -> None:
    """Device-side assertion of a 0-dim bool tensor: queued like a kernel, never read back by the host."""
    torch._assert_async(condition, message)


def document_ids_from_seq_lens(seq_lens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Per-slot document index of packed rows.

    Args:
        seq_lens: int ``[B, D]`` document lengths per row, zero-padded on the right (zeros are harmless:
            boundaries are cumulative sums). Every row must sum to ``seq_len``.
        seq_len: the row width ``T``.

    Returns:
        int64 ``[B, T]``; ``doc_ids[b, t]`` = number of document boundaries at or before ``t``.

    Raises:
        TypeError: ``seq_lens`` is not an integer tensor.
        ValueError: wrong rank, negative lengths, or a row that does not sum to ``seq_len``.

    Host syncs: none. On a host tensor the checks raise the errors above; on a device tensor reading the
    values back would stall the host until every queued kernel has run (the whole target forward, say),
    so there they are device-side assertions (``torch._assert_async``): no sync, and a violation makes
    the next synchronising CUDA call fail with the message below. Keep ``seq_lens`` on the host where you
    can (the recipe does: it is collated there and checked for free).
    """
    if not isinstance(seq_lens, torch.Tensor) or seq_lens.dtype.is_floating_point or seq_lens.dtype == torch.bool:
        raise TypeError(f"seq_lens must be an integer torch.Tensor [B, D], got {seq_lens!r:.80}")
    if seq_lens.dim() != 2:
        raise ValueError(f"seq_lens must have shape [B, D], got {list(seq_lens.shape)}")
    seq_lens = seq_lens.to(torch.int64)
    sums = seq_lens.sum(dim=1)
    if seq_lens.device.type != "cpu":
        _assert_on_device((seq_lens >= 0).all(), "seq_lens must be non-negative")
        _assert_on_device((sums == seq_len).all(), f"every row of seq_lens must sum to the row width T={seq_len}")
    else:
        if bool((seq_lens < 0).any()):
            raise ValueError(f"seq_lens must be non-negative, got {seq_lens.tolist()}")
        if bool((sums != seq_len).any()):
            raise ValueError(
                f"every row of seq_lens must sum to the row width T={seq_len} (pad is folded into the last "
                f"document), got row sums {sums.tolist()}"
            )
    ends = seq_lens.cumsum(dim=1)  # exclusive end of each document
    positions = torch.arange(seq_len, device=seq_lens.device).expand(seq_lens.shape[0], seq_len)
    return torch.searchsorted(ends.contiguous(), positions.contiguous(), right=True)


def block_causal_visibility(
    doc_ids: torch.Tensor | None,
    key_valid: torch.Tensor | None,
    q_range: tuple[int, int],
    k_range: tuple[int, int],
    *,
    device: torch.device | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Boolean visibility of a query block against a key block of the causal (step-0) attention.

    Args:
        doc_ids: int64 ``[B, T]`` or None (one document per row).
        key_valid: bool ``[B, T]`` or None (every slot is a real token).
        q_range: ``(q0, q1)`` query slots ``q0..q1-1``.
        k_range: ``(k0, k1)`` key slots ``k0..k1-1``.
        device: where to build the mask when both tensors are None.
        sliding_window: a sliding-window layer's window ``W``: the key must also satisfy ``q - k < W`` (slots
            of one document are consecutive positions, so this is the window of the positions); None: no window.

    Returns:
        bool ``[B or 1, 1, q1-q0, k1-k0]``; True where the query may attend to the key.

    Raises:
        ValueError: ``sliding_window`` is not None or a positive int.
    """
    if sliding_window is not None and (
        isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1
    ):
        raise ValueError(f"sliding_window must be None or a positive int, got {sliding_window!r}")
    q0, q1 = q_range
    k0, k1 = k_range
    ref = doc_ids if doc_ids is not None else key_valid
    dev = ref.device if ref is not None else device
    q_idx = torch.arange(q0, q1, device=dev)
    k_idx = torch.arange(k0, k1, device=dev)
    causal = k_idx[None, :] <= q_idx[:, None]
    if sliding_window is not None:
        causal = causal & (q_idx[:, None] - k_idx[None, :] < sliding_window)
    self_slot = k_idx[None, :] == q_idx[:, None]
    visible = causal[None, None]
    if doc_ids is not None:
        same_doc = doc_ids[:, q0:q1, None] == doc_ids[:, None, k0:k1]
        visible = visible & same_doc[:, None]
    if key_valid is not None:
        visible = visible & key_valid[:, None, None, k0:k1]
    return visible | self_slot[None, None]
