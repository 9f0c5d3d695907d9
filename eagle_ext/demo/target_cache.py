"""The toy demo's target cache: the tiny target pre-trained once on the demo corpus and kept in the output
directory, so a rerun loads it instead of training it again.

The trained weights are saved with ``save_pretrained`` under a key of everything that shaped them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from eagle_ext._io import atomic_directory
from eagle_ext.data.fingerprint import digest
from eagle_ext.testing.target import pretrain_target

__all__ = ["load_or_pretrain_target"]

#: Bump when the pre-training recipe changes, so cached targets are retrained.
TARGET_RECIPE_VERSION = 1
_META_FILE = "demo_target.json"


@contextlib.contextmanager
def _hf_progress_bars_off():
    """Silence transformers' per-file progress bars (one tiny file here) and restore the previous setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_or_pretrain_target(
    directory: str | os.PathLike, config: Any, batches: Iterator[Mapping[str, torch.Tensor]], *, steps: int,
    lr: float, data_key: str, tokenizer=None, seed: int = 0, show_progress: bool = True,
) -> tuple[torch.nn.Module, dict]:
    """The pre-trained target from ``directory`` if its cache key matches, else a new one trained and saved.

    The key is a digest of ``config``, ``steps``, ``lr``, ``seed``, ``data_key`` (identity of the corpus and
    tokenizer, chosen by the caller) and the recipe version. Saving writes a temporary directory next to
    ``directory`` (weights as safetensors, ``config.json``, the tokenizer when given, the key) and renames it
    into place, so an interrupted run never leaves a half-written cache.

    Returns:
        ``(model in eval mode, info)``; ``info``: ``{"cached": bool, "key": str, "losses": [...]}`` (the
        pre-training losses; empty when loaded from the cache).
    """
    from transformers import LlamaForCausalLM

    directory = os.fspath(directory)
    key = digest({"config": config.to_dict(), "steps": steps, "lr": lr, "seed": seed, "data": data_key,
                  "recipe": TARGET_RECIPE_VERSION})
    meta_path = os.path.join(directory, _META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f).get("key") == key:
                with _hf_progress_bars_off():
                    model = LlamaForCausalLM.from_pretrained(directory)
                return model.eval(), {"cached": True, "key": key, "losses": []}

    torch.manual_seed(seed)
    model = LlamaForCausalLM(copy.deepcopy(config))  # the model writes into its config; keep the key's copy intact
    losses = pretrain_target(model, batches, steps, lr, show_progress=show_progress)
    model.eval()
    with atomic_directory(directory) as tmp:
        with _hf_progress_bars_off():
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, _META_FILE), "w") as f:
            json.dump({"key": key, "steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}, f, indent=2)
    return model, {"cached": False, "key": key, "losses": losses}
