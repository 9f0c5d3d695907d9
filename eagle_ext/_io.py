"""Atomic file and directory writes: a temp entry beside the target, renamed into place only when complete,
so a crash never leaves a half-written file that a later run would load."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temp file path beside ``path`` to write; on success it replaces ``path`` (with the
    permissions a plain ``open`` would give), on error it is removed. ``suffix`` lets writers that infer the
    format from the extension (matplotlib) see the right one. Parent directories are created."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[str]:
    """Yield a temp directory beside ``directory`` to fill; on success it replaces ``directory`` (an existing
    one is removed first), on error it is removed. Files in it get the permissions a plain ``open`` would give
    (writers such as safetensors create theirs readable by the owner only), executable bits kept."""
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.")
    try:
        yield tmp
        mask = _umask()
        for root, dirs, files in os.walk(tmp):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                path = os.path.join(root, name)
                os.chmod(path, (os.stat(path).st_mode & 0o111 | 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, payload: Any, **dump_kwargs: Any) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (``dump_kwargs`` go to ``json.dump``)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, **dump_kwargs)
        f.write("\n")
