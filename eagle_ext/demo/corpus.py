"""Synthetic chat-like documents for the demo and the benchmarks: realistic length mixes, no downloads."""

from __future__ import annotations

import torch


def lognormal_lengths(num_docs: int, median: float = 600.0, sigma: float = 0.9, max_len: int = 8192,
                      seed: int = 0) -> torch.Tensor:
    """int64 ``[num_docs]`` document lengths from a log-normal mix (median ``median``), clipped to [1, max_len]."""
    g = torch.Generator().manual_seed(seed)
    logs = torch.randn(num_docs, generator=g, dtype=torch.float64) * sigma + torch.log(torch.tensor(median)).item()
    return logs.exp().round().clamp(1, max_len).to(torch.int64)


def assistant_mask(lengths: torch.Tensor, prompt_fraction: float = 0.4, seed: int = 0) -> list[torch.Tensor]:
    """Per document, an int64 loss mask that supervises everything after a prompt of ~``prompt_fraction``."""
    g = torch.Generator().manual_seed(seed + 1)
    masks = []
    for n in lengths.tolist():
        cut = int(n * prompt_fraction * float(torch.rand((), generator=g) * 2))
        m = torch.zeros(n, dtype=torch.int64)
        m[min(cut, n):] = 1
        masks.append(m)
    return masks
