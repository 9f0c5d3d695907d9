"""Demo draft checkpoints: the state dict as ``model.safetensors`` plus the draft config as ``config.json``.

This is the plain training-side layout (the same state-dict keys SGLang / NeMo AutoModel drafts use); the
serving-engine exports live in :mod:`eagle_ext.serve`. Both files are written to a temporary directory that
is renamed into place, so a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import json
import os

import torch

from eagle_ext._io import atomic_directory

__all__ = ["load_draft", "save_draft"]

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def save_draft(draft: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Save an :class:`~eagle_ext.models.Eagle3DraftModel` (weights, ``d2t``/``t2d``, ``mask_hidden``) and its
    config to ``directory``, replacing what was there."""
    from safetensors.torch import save_file

    with atomic_directory(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in draft.state_dict().items()}
        save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(draft.config.to_json_string(use_diff=False))


def load_draft(directory: str | os.PathLike):
    """Rebuild the draft saved by :func:`save_draft` (strict state-dict load, so a missing or extra key raises).

    Raises:
        FileNotFoundError: ``directory`` lacks ``config.json`` or ``model.safetensors``.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from eagle_ext.models import Eagle3DraftModel

    directory = os.fspath(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise FileNotFoundError(
                f"directory {directory!r} has no {name}; expected a draft written by save_draft"
            )
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config_dict = json.load(f)
    config = AutoConfig.for_model(**config_dict)
    draft = Eagle3DraftModel(config)
    draft.load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)), strict=True)
    return draft
