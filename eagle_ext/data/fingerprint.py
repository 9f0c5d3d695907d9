"""Stable fingerprints that key the on-disk caches (tokenised data, draft-vocabulary mapping).

A fingerprint is the hex sha256 of a canonical JSON document, so equal inputs give equal keys across
processes, machines and Python versions. What goes in:

- a data source: every file's absolute path and size, plus its content hash when the file is at most
  ``content_hash_limit`` bytes, else its modification time (hashing terabytes on every start is not an option);
- a tokenizer: its class, the serialised ``tokenizers`` model (vocabulary *and* merges, normaliser,
  pre-tokeniser) or, for Python tokenizers, the vocabulary, plus added tokens, special tokens and the chat
  template;
- settings: whatever the caller passes (mask options, sequence lengths, draft size, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

#: Files up to this size are fingerprinted by content; larger ones by size and modification time.
CONTENT_HASH_LIMIT = 256 * 2**20


def _json_default(obj: Any):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    return repr(obj)


def digest(obj: Any) -> str:
    """Hex sha256 of ``obj`` serialised as canonical JSON (sorted keys; unknown objects by ``repr``)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(
    path: str | os.PathLike, *, content_hash_limit: int = CONTENT_HASH_LIMIT
) -> dict[str, Any]:
    """Identity of one file: ``{"path", "size", "sha256"}`` or, above ``content_hash_limit`` bytes,
    ``{"path", "size", "mtime_ns"}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    entry: dict[str, Any] = {"path": path, "size": st.st_size}
    if st.st_size <= content_hash_limit:
        entry["sha256"] = _file_sha256(path)
    else:
        entry["mtime_ns"] = st.st_mtime_ns
    return entry


def path_fingerprint(path: str | os.PathLike, *, content_hash_limit: int = CONTENT_HASH_LIMIT) -> str:
    """Fingerprint of a file, or of every file under a directory (sorted, hidden files skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"path_fingerprint: {path!r} does not exist")
    if os.path.isfile(path):
        return digest({"file": file_fingerprint(path, content_hash_limit=content_hash_limit)})
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                files.append(
                    file_fingerprint(os.path.join(root, name), content_hash_limit=content_hash_limit)
                )
    return digest({"directory": path, "files": files})


def tokenizer_fingerprint(tokenizer, chat_template: str | None = None) -> str:
    """Fingerprint of everything in ``tokenizer`` that changes token ids or the rendered chat text.

    For a fast tokenizer the serialised ``tokenizers`` pipeline is hashed (without its runtime truncation
    and padding settings, which calls to the tokenizer change); for a Python tokenizer its vocabulary.
    ``chat_template`` overrides ``tokenizer.chat_template`` when given.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        model = digest(pipeline)
    else:
        model = digest(sorted(tokenizer.get_vocab().items()))
    added = {int(i): str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    return digest(
        {
            "class": type(tokenizer).__name__,
            "model": model,
            "added_tokens": added,
            "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
            "chat_template": chat_template
            if chat_template is not None
            else getattr(tokenizer, "chat_template", None),
        }
    )
