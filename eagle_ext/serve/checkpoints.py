"""The on-disk layout of recipe checkpoints, as the recipe writes it and as export reads it: finding the
checkpoint a path names, its ``meta.json``, and the draft directory (``draft/config.json`` +
``draft/model.safetensors``). The training state around it (optimizer, scheduler, RNG, writing a whole
checkpoint) is :mod:`eagle_ext.train.checkpoint`, which documents the full layout.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from eagle_ext._io import atomic_directory

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint_draft",
    "load_draft",
    "load_token_mapping",
    "read_checkpoint_meta",
    "resolve_checkpoint",
    "save_draft",
]

CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
DRAFT_DIR, VOCAB_FILE, META_FILE = "draft", "vocab.safetensors", "meta.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


# ------------------------------------------------------------------------------------------------ draft


def save_draft(draft: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Save an :class:`~eagle_ext.models.DraftModel` (weights, ``d2t``/``t2d``, ``mask_hidden``) and its
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

    from eagle_ext.models import DraftModel

    directory = os.fspath(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise FileNotFoundError(f"directory {directory!r} has no {name}; expected a draft written by save_draft")
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config = AutoConfig.for_model(**json.load(f))
    draft = DraftModel(config)
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
