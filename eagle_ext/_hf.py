"""Small shims over transformers versions (imported lazily by the modules that load HF models)."""

from __future__ import annotations

import torch


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype keyword argument: ``dtype`` from transformers 4.56 on (where ``torch_dtype`` is
    deprecated), ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def saved_generation_config(path: str):
    """The ``generation_config`` a model loaded from ``path`` would have, without loading its weights: its
    generation_config.json, else the one transformers derives from config.json; None when neither reads."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        try:
            return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
        except (OSError, ValueError):
            return None
