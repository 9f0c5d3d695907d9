"""GEMMs into wider outputs: ``out = a @ b`` / ``acc += a @ b`` with fp32 accumulation and, where torch
allows it (CUDA, torch >= 2.8: ``out_dtype=torch.float32``), no temporary in the operands' dtype. Shared by
the fused projection + loss paths (``eagle_ext.ops.linear_kl`` and its Triton kernels)."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _fp32_out_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``mm`` / ``addmm`` with ``out_dtype=torch.float32`` work here for ``dtype`` operands (CUDA,
    torch >= 2.8); elsewhere the product is formed in ``dtype`` and then added."""
    if device_type != "cuda":
        return False
    try:
        a = torch.ones(16, 16, dtype=dtype, device=device_type)
        acc = torch.zeros(16, 16, dtype=torch.float32, device=device_type)
        out = torch.empty(16, 16, dtype=torch.float32, device=device_type)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        torch.mm(a, a, out_dtype=torch.float32, out=out)
        return bool(acc[0, 0] == 16 and out[0, 0] == 16)
    except (RuntimeError, TypeError):  # TypeError: no out_dtype keyword (torch < 2.8); RuntimeError: not for
        return False                  # this dtype / device. Either way the fallback below is exact, only wider


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b`` (operands share a dtype; ``out`` may be wider); fp32 accumulation throughout."""
    if out.dtype == a.dtype:
        torch.mm(a, b, out=out)
    elif out.dtype == torch.float32 and _fp32_out_supported(a.device.type, a.dtype):
        torch.mm(a, b, out_dtype=torch.float32, out=out)
    else:
        out.copy_(torch.mm(a, b))


def _addmm_into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` in place with fp32 ``acc`` (no [N, H] temporary where torch allows it)."""
    if a.dtype == torch.float32:
        torch.addmm(acc, a, b, out=acc)
    elif _fp32_out_supported(a.device.type, a.dtype):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.add_(torch.mm(a, b))


