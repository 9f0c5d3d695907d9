"""Recipe checkpoints: the draft, the vocabulary mapping, the optimiser / scheduler / RNG state of every rank and
the data position, in one directory per optimiser step, written atomically with a ``latest`` pointer last.

Layout of a run directory ``RUN`` (the recipe's ``output_dir``)::

    RUN/checkpoints/latest                 name of the newest complete checkpoint ("step_00000100")
    RUN/checkpoints/step_00000100/
        draft/config.json                  DraftModel config
        draft/model.safetensors            draft state dict (model.* keys, lm_head, d2t/t2d, mask_hidden)
        vocab.safetensors                  selected_token_ids int64 [Vd], selected_token_mask bool [V]
        meta.json                          step, epoch, batches consumed in the epoch, world size, algorithm,
                                           aux layer ids (0-indexed decoder layers whose output is captured),
                                           target identity, draft vocab size, algorithm knobs
        config.yaml                        the resolved training config
        optimizer.pt                       optimizer.state_dict() (loaded with weights_only=True)
        scheduler.json                     scheduler.state_dict()
        rng/rank_00000.json ...            Python / NumPy / torch / CUDA / COD generator states of each rank

Nothing loaded runs code: tensors are safetensors, metadata JSON, and the one torch file is read with
``torch.load(weights_only=True)``. The directory is built under a temporary name and renamed into place, and
``latest`` is rewritten (atomically) only after that, so a run killed mid-save leaves the previous checkpoint
as the latest and no half-written directory under a ``step_*`` name.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from typing import Any

import torch

from eagle_ext._io import atomic_directory, write_json, write_text
from eagle_ext.serve.checkpoints import (
    CHECKPOINT_FORMAT_VERSION,
    DRAFT_DIR,
    LATEST,
    META_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint_draft,
    load_draft,
    load_token_mapping,
    read_checkpoint_meta,
    resolve_checkpoint,
    save_draft,
)

__all__ = [  # the layout's readers are re-exported from eagle_ext.serve.checkpoints
    "capture_rng_state",
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint_draft",
    "load_draft",
    "load_token_mapping",
    "load_training_state",
    "read_checkpoint_meta",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_draft",
    "save_training_checkpoint",
]

OPTIMIZER_FILE, SCHEDULER_FILE, RNG_DIR, RUN_CONFIG_FILE = "optimizer.pt", "scheduler.json", "rng", "config.yaml"


# ------------------------------------------------------------------------------------------------ RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """This process's RNG states as JSON-able data: Python, NumPy, torch CPU, every CUDA device, and the named
    ``generators`` (e.g. the P-EAGLE COD generator)."""
    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "generators": {k: _b64(g.get_state()) for k, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state`.

    Raises:
        ValueError: the state names generators other than ``generators`` or another CUDA device count.
    """
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"]:
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(f"the checkpoint holds RNG states of {len(state['cuda'])} CUDA devices, this process "
                             f"sees {torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    generators = generators or {}
    if set(state["generators"]) != set(generators):
        raise ValueError(f"the checkpoint holds generator states {sorted(state['generators'])}, this run has "
                         f"{sorted(generators)}")
    for k, g in generators.items():
        g.set_state(_unb64(state["generators"][k]))


# ------------------------------------------------------------------------------------------------ save / load


def save_training_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    step: int,
    draft: torch.nn.Module,
    selected_token_ids: torch.Tensor,
    selected_token_mask: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng_states: list[dict[str, Any]],
    meta: dict[str, Any],
    config_yaml: str,
    keep: int | None = None,
) -> str:
    """Write checkpoint ``step`` under ``checkpoint_dir`` (rank 0 only; ``rng_states`` holds every rank's state,
    gathered by the caller), then point ``latest`` at it and delete all but the newest ``keep`` checkpoints.
    Returns the checkpoint path."""
    from safetensors.torch import save_file

    final = os.path.join(os.fspath(checkpoint_dir), checkpoint_name(step))
    with atomic_directory(final) as tmp:
        save_draft(draft, os.path.join(tmp, DRAFT_DIR))
        save_file({"selected_token_ids": selected_token_ids.detach().cpu().to(torch.int64).contiguous(),
                   "selected_token_mask": selected_token_mask.detach().cpu().to(torch.bool).contiguous()},
                  os.path.join(tmp, VOCAB_FILE))
        torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
        write_json(os.path.join(tmp, SCHEDULER_FILE), scheduler.state_dict())
        for rank, state in enumerate(rng_states):
            write_json(os.path.join(tmp, RNG_DIR, f"rank_{rank:05d}.json"), state)
        write_text(os.path.join(tmp, RUN_CONFIG_FILE), config_yaml)
        write_json(os.path.join(tmp, META_FILE),
                   {"format_version": CHECKPOINT_FORMAT_VERSION, "step": step, **meta}, indent=2)
    write_text(os.path.join(os.fspath(checkpoint_dir), LATEST), checkpoint_name(step) + "\n")
    if keep is not None:
        for _, old in list_checkpoints(checkpoint_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(
    checkpoint: str | os.PathLike, *, rank: int, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """What resuming needs from a checkpoint: ``draft_state`` (state dict), ``optimizer``, ``scheduler``,
    ``rng`` (this rank's), ``selected_token_ids``, ``selected_token_mask``, ``meta``."""
    from safetensors.torch import load_file

    checkpoint = os.fspath(checkpoint)
    ids, mask = load_token_mapping(checkpoint)
    with open(os.path.join(checkpoint, SCHEDULER_FILE)) as f:
        scheduler = json.load(f)
    rng_path = os.path.join(checkpoint, RNG_DIR, f"rank_{rank:05d}.json")
    with open(rng_path) as f:
        rng = json.load(f)
    return {
        "meta": read_checkpoint_meta(checkpoint),
        "draft_state": load_file(os.path.join(checkpoint, DRAFT_DIR, WEIGHTS_FILE)),
        "optimizer": torch.load(os.path.join(checkpoint, OPTIMIZER_FILE), map_location=map_location,
                                weights_only=True),
        "scheduler": scheduler,
        "rng": rng,
        "selected_token_ids": ids,
        "selected_token_mask": mask,
    }
