"""Progress bars of the libraries eagle_ext calls (transformers' "Loading weights", datasets' "Map" / "Saving the
dataset"), switched off while a quiet command runs (``--no-progress``, ``train.progress: false``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["library_progress_bars"]


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled=False``, transformers' and datasets' progress bars are off inside the block and restored to
    their previous state after it; with ``enabled=True``, nothing changes (nothing is imported)."""
    if enabled:
        yield
        return
    restore: list[Callable[[], None]] = []
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    except ImportError:
        pass
    try:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    except ImportError:
        pass
    try:
        yield
    finally:
        for undo in restore:
            undo()
