"""Host-to-device copies that never stall the host.

``tensor.to("cuda", non_blocking=True)`` is only asynchronous from page-locked (pinned) host memory: from
pageable memory the CUDA driver stages the data and may first synchronise with the stream, i.e. wait for
every kernel queued before it (the whole target forward, say). :func:`to_device_async` pins a pageable
host tensor first (torch's caching host allocator keeps the pinned block alive until the copy is done),
then copies asynchronously. Anything else (already on the device, CPU to CPU, device to host) is a plain
``.to``.
"""

from __future__ import annotations

import torch

__all__ = ["to_device_async"]


def to_device_async(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a host-to-CUDA copy goes through pinned memory and does not block."""
    device = torch.device(device)
    if tensor.device == device or (device.type == tensor.device.type and device.index is None):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)
