"""Telling a local model path from a Hugging Face hub id (``owner/name``) without touching the hub (a leaf: imports
nothing heavy)."""

from __future__ import annotations

import os
import re

__all__ = ["looks_like_local_path"]

#: a hub model id: ``owner/name`` or a bare legacy ``name`` (letters, digits, ``_ . -``)
HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def looks_like_local_path(path: str) -> bool:
    """True when ``path`` can only mean a local directory: it exists; it is absolute or starts with ``.`` or ``~``;
    it ends with a separator; it is no hub id (``a/b/c``); or its first part is a local directory (``runs/nope``
    where ``runs/`` exists). ``meta-llama/Llama-3.1-8B-Instruct`` and ``gpt2`` are hub ids."""
    if os.path.exists(path) or path.startswith((os.sep, ".", "~")) or path.endswith(("/", os.sep)):
        return True
    if not HUB_ID.match(path):
        return True
    return "/" in path and os.path.isdir(path.split("/", 1)[0])
