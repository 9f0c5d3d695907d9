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
