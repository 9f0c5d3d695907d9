"""Test-wide setup.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, so it must be set before any
kernel module is imported: do it here, first thing, whenever no CUDA device is present.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def _vllm_missing() -> str | None:
    """Why the ``vllm`` tests cannot run here (None: an interpreter with vLLM was found)."""
    from eagle_ext.engines.vllm import VllmUnavailable, find_vllm_python

    try:
        find_vllm_python()
    except VllmUnavailable as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config, items):
    if not HAS_CUDA:
        skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
    if any("vllm" in item.keywords for item in items):
        missing = _vllm_missing()
        if missing:
            skip_vllm = pytest.mark.skip(reason=f"needs vLLM: {missing}")
            for item in items:
                if "vllm" in item.keywords:
                    item.add_marker(skip_vllm)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
