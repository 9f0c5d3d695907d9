"""Process-group set-up for the recipe, and FSDP2 sharding of the frozen target. torch.distributed, DDP and FSDP2
are used as they are; ``torchrun`` launches (it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "shard_target_fsdp", "all_gather_objects"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` / ``world_size`` (1 without torchrun), ``local_rank``, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {raw!r}") from None


def init_distributed(device: str = "auto") -> DistContext:
    """Initialise the default process group when launched by torchrun with WORLD_SIZE > 1 (NCCL on CUDA, gloo
    on CPU) and pick the device: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.

    Raises:
        ValueError: ``device`` names CUDA on a machine without it.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device is {device!r} but CUDA is not available; use 'cpu' or 'auto'")
        dev = torch.device(device if ":" in device else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (a one-element list outside a distributed run)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_target_fsdp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Shard a frozen HF causal LM with FSDP2: ``fully_shard`` on every decoder layer, then on the root (which
    holds the embeddings, final norm and LM head). Every rank must then run the target's forward on each batch
    (the sampler gives all ranks the same number of batches).

    Raises:
        RuntimeError: this torch has no FSDP2 ``fully_shard``.
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as exc:
            raise RuntimeError(f"target.sharding: fsdp needs FSDP2 (fully_shard), missing in torch {torch.__version__}") from exc
    from torch.distributed.device_mesh import init_device_mesh

    from eagle_ext.models import find_decoder_layers

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for layer in find_decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model
