"""Recipe checkpoints: the draft, the vocabulary mapping, the optimiser / scheduler / RNG state of every rank and
the data position, in one directory per optimiser step, written atomically with a ``latest`` pointer last.

Layout of a run directory ``RUN`` (the recipe's ``output_dir``)::

    RUN/checkpoints/latest                 name of the newest complete checkpoint ("step_00000100")
    RUN/checkpoints/step_00000100/
        draft/config.json                  Eagle3DraftModel config
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
import re
import shutil
from typing import Any

import torch

from eagle_ext._io import atomic_directory, write_json, write_text

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint_draft",
    "load_draft",
    "read_checkpoint_meta",
    "resolve_checkpoint",
    "save_draft",
]

CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
DRAFT_DIR, VOCAB_FILE, META_FILE = "draft", "vocab.safetensors", "meta.json"
OPTIMIZER_FILE, SCHEDULER_FILE, RNG_DIR, RUN_CONFIG_FILE = "optimizer.pt", "scheduler.json", "rng", "config.yaml"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


# ------------------------------------------------------------------------------------------------ draft


def save_draft(draft: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Save an :class:`~eagle_ext.models.Eagle3DraftModel` (weights, ``d2t``/``t2d``, ``mask_hidden``) and its
    config to ``directory`` (``model.safetensors`` + ``config.json``), replacing what was there, atomically."""
    from safetensors.torch import save_file

    with atomic_directory(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in draft.state_dict().items()}
        save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(draft.config.to_json_string(use_diff=False))


def load_draft(directory: str | os.PathLike):
    """Rebuild the draft saved by :func:`save_draft`: fp32 on CPU, strict state-dict load (a missing or extra key
    raises).

    Raises:
        FileNotFoundError: ``directory`` lacks ``config.json`` or ``model.safetensors``.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from eagle_ext.models import Eagle3DraftModel

    directory = os.fspath(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise FileNotFoundError(f"directory {directory!r} has no {name}; expected a draft written by save_draft")
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config = AutoConfig.for_model(**json.load(f))
    draft = Eagle3DraftModel(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(os.path.join(directory, WEIGHTS_FILE)).items()}
    draft.load_state_dict(state, strict=True)
    return draft


# ------------------------------------------------------------------------------------------------ finding


def checkpoint_name(step: int) -> str:
    """``step_00000100`` for step 100."""
    return f"step_{step:08d}"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete checkpoint under ``checkpoint_dir`` (has ``meta.json``), by step."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        m = _STEP_DIR.match(name)
        path = os.path.join(checkpoint_dir, name)
        if m and os.path.isfile(os.path.join(path, META_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve_checkpoint(src: str | os.PathLike) -> str:
    """The checkpoint directory that ``src`` names: a checkpoint (has ``meta.json``), a run directory (its
    ``checkpoints/latest``) or a ``checkpoints`` directory (its ``latest``).

    Raises:
        FileNotFoundError: ``src`` does not exist or holds no complete checkpoint.
    """
    path = os.path.abspath(os.fspath(src))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint source {os.fspath(src)!r} does not exist")
    if os.path.isfile(os.path.join(path, META_FILE)):
        return path
    for checkpoints in (os.path.join(path, "checkpoints"), path):
        pointer = os.path.join(checkpoints, LATEST)
        if os.path.isfile(pointer):
            with open(pointer) as f:
                name = f.read().strip()
            target = os.path.join(checkpoints, name)
            if _STEP_DIR.match(name) and os.path.isfile(os.path.join(target, META_FILE)):
                return target
            raise FileNotFoundError(f"{pointer!r} names {name!r}, which is not a complete checkpoint in {checkpoints!r}")
    raise FileNotFoundError(
        f"{os.fspath(src)!r} is neither a checkpoint directory (with {META_FILE}) nor a run directory with "
        f"checkpoints/{LATEST}"
    )


def read_checkpoint_meta(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory (see the module docstring).

    Raises:
        ValueError: a checkpoint of another format version.
    """
    with open(os.path.join(os.fspath(checkpoint), META_FILE)) as f:
        meta = json.load(f)
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint)!r} has format_version {meta.get('format_version')!r}; this "
            f"eagle_ext reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    return meta


def load_checkpoint_draft(src: str | os.PathLike):
    """``(draft, meta)``: the draft of the checkpoint that ``src`` names (see :func:`resolve_checkpoint`), fp32 on
    CPU, and its ``meta.json``."""
    path = resolve_checkpoint(src)
    meta = read_checkpoint_meta(path)
    return load_draft(os.path.join(path, DRAFT_DIR)), meta


def load_token_mapping(checkpoint: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(selected_token_ids int64 [Vd], selected_token_mask bool [V])`` stored in a checkpoint."""
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(os.fspath(checkpoint), VOCAB_FILE))
    return tensors["selected_token_ids"], tensors["selected_token_mask"]


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
