"""Tokenise a whole chat dataset: ``datasets.map`` (parallel with ``num_proc``, tqdm progress bar), rows
that cannot be used skipped and counted, and an optional on-disk cache keyed by a fingerprint.

The tokenised dataset holds *untruncated* samples, so one cache serves every ``seq_length`` and both the
padded and the packed layout. Columns:

- ``input_ids``: int32 list, the rendered conversation;
- ``loss_mask``: int8 list, 1 on supervised (assistant) tokens;
- ``num_tokens``: int32; ``first_supervised``: int32 index of the first supervised token (truncation to
  ``L`` tokens leaves a sample with supervision iff ``first_supervised < L``);
- ``row_index``: int64 index of the source row (after split selection).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eagle_ext.data.chat import ChatTokenizer, SkippedRow, normalize_chat_row
from eagle_ext.data.fingerprint import digest, tokenizer_fingerprint
from eagle_ext.data.sources import load_chat_source, source_rows_from_batch

logger = logging.getLogger(__name__)

#: Bump when the tokenised layout or the mask rules change, so old caches are not reused.
TOKENIZED_FORMAT_VERSION = 1
_META_FILE = "eagle_ext_tokenized.json"
_AUTO_PARALLEL_ROWS = 20_000


@dataclass
class TokenizedChats:
    """A tokenised chat dataset.

    Attributes:
        dataset: ``datasets.Dataset`` with the columns in the module docstring (only usable rows).
        fingerprint: identity of source data, split, tokenizer, chat template and mask options.
        num_source_rows: rows read from the source.
        skipped: rows dropped, by reason (``no_assistant``, ``template_error``, ``invalid_json``, ...).
        skip_examples: for each reason, ``(row_index, detail)`` of its first occurrence.
    """

    dataset: Any
    fingerprint: str
    num_source_rows: int
    skipped: dict[str, int] = field(default_factory=dict)
    skip_examples: dict[str, tuple[int, str]] = field(default_factory=dict)

    def summary(self) -> str:
        kept = len(self.dataset)
        parts = [f"{kept} of {self.num_source_rows} rows usable"]
        for reason, n in sorted(self.skipped.items()):
            index, detail = self.skip_examples.get(reason, (-1, ""))
            parts.append(f"{n} skipped as {reason} (first: row {index}: {detail[:200]})")
        return "; ".join(parts)


class _TokenizeBatch:
    """``datasets.map`` function: a batch of source rows -> tokenised columns (picklable for ``num_proc``)."""

    def __init__(self, renderer: ChatTokenizer):
        self.renderer = renderer

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        rendered, skips = [], []
        for row in source_rows_from_batch(batch):
            try:
                if row is None:
                    raise SkippedRow("blank_line")
                if isinstance(row, Exception):
                    raise SkippedRow("invalid_json", str(row))
                rendered.append(self.renderer.render(*normalize_chat_row(row)))
                skips.append(None)
            except SkippedRow as exc:
                skips.append(exc)
        encoded = iter(self.renderer.encode(rendered))
        out: dict[str, list] = {
            k: []
            for k in (
                "input_ids",
                "loss_mask",
                "num_tokens",
                "first_supervised",
                "row_index",
                "skip_reason",
                "skip_detail",
            )
        }
        for index, skip in zip(indices, skips, strict=True):
            if skip is None:
                ids, mask = next(encoded)
                if not mask.any():
                    skip = SkippedRow(
                        "no_supervised_tokens", f"{ids.size} tokens, none from an assistant turn"
                    )
            if skip is not None:
                ids, mask = np.zeros(0, np.int64), np.zeros(0, np.int8)
            out["input_ids"].append(ids.astype(np.int32))
            out["loss_mask"].append(mask.astype(np.int8))
            out["num_tokens"].append(int(ids.size))
            out["first_supervised"].append(int(np.argmax(mask)) if mask.any() else -1)
            out["row_index"].append(index)
            out["skip_reason"].append(skip.reason if skip else "")
            out["skip_detail"].append(skip.detail if skip else "")
        return out


def _features():
    import datasets

    return datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "loss_mask": datasets.Sequence(datasets.Value("int8")),
            "num_tokens": datasets.Value("int32"),
            "first_supervised": datasets.Value("int32"),
            "row_index": datasets.Value("int64"),
            "skip_reason": datasets.Value("string"),
            "skip_detail": datasets.Value("string"),
        }
    )


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    (ds_logging.enable_progress_bar if enabled else ds_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (ds_logging.enable_progress_bar if was_enabled else ds_logging.disable_progress_bar)()


def chat_data_fingerprint(
    source_fingerprint: str,
    tokenizer,
    *,
    chat_template: str | None = None,
    mask_reasoning_content: bool = False,
    mask_generation_prompt: bool = False,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Fingerprint of a tokenised chat dataset: source data + split, tokenizer, template and mask options."""
    return digest(
        {
            "version": TOKENIZED_FORMAT_VERSION,
            "source": source_fingerprint,
            "tokenizer": tokenizer_fingerprint(tokenizer, chat_template),
            "mask_reasoning_content": bool(mask_reasoning_content),
            "mask_generation_prompt": bool(mask_generation_prompt),
            "template_kwargs": dict(template_kwargs or {}),
        }
    )


def _load_cached(path: str, fingerprint: str) -> TokenizedChats | None:
    import datasets

    meta_path = os.path.join(path, _META_FILE)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("fingerprint") != fingerprint:
            logger.warning(
                "tokenised-data cache %s has fingerprint %s, expected %s; re-tokenising",
                path,
                meta.get("fingerprint"),
                fingerprint,
            )
            return None
        ds = datasets.load_from_disk(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a half-deleted or foreign directory
        logger.warning(
            "cannot read tokenised-data cache %s (%s: %s); re-tokenising", path, type(exc).__name__, exc
        )
        return None
    return TokenizedChats(
        ds,
        fingerprint,
        meta["num_source_rows"],
        meta["skipped"],
        {k: tuple(v) for k, v in meta["skip_examples"].items()},
    )


def _save_cached(result: TokenizedChats, path: str) -> None:
    """Write to a temp directory beside ``path`` and rename it into place (atomic on POSIX); if another
    process got there first, keep its copy."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.")
    try:
        result.dataset.save_to_disk(tmp)
        with open(os.path.join(tmp, _META_FILE), "w") as f:
            json.dump(
                {
                    "fingerprint": result.fingerprint,
                    "num_source_rows": result.num_source_rows,
                    "skipped": result.skipped,
                    "skip_examples": result.skip_examples,
                },
                f,
            )
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isdir(path):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def tokenized_cache_path(cache_dir: str | os.PathLike, fingerprint: str) -> str:
    """Directory that caches the tokenised dataset with ``fingerprint`` under ``cache_dir``."""
    return os.path.join(os.fspath(cache_dir), f"tokenized-{fingerprint[:24]}")


def _tokenize_rows(source, renderer: ChatTokenizer, fingerprint: str, *, num_proc: int | None,
                   batch_size: int, show_progress: bool) -> TokenizedChats:
    """Render and tokenise every row of ``source`` with ``datasets.map`` (``num_proc`` processes; ``None``: several
    for large sources), then keep the usable rows and count the skipped ones by reason (with the first row index
    and detail of each reason)."""
    rows = source.dataset
    if num_proc is None:
        num_proc = min(8, os.cpu_count() or 1) if len(rows) >= _AUTO_PARALLEL_ROWS else 1
    with _progress_bars(show_progress):
        mapped = rows.map(
            _TokenizeBatch(renderer),
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            remove_columns=rows.column_names,
            features=_features(),
            num_proc=num_proc if num_proc > 1 and len(rows) > 1 else None,
            new_fingerprint=fingerprint[:32],  # skip hashing the tokenizer-holding transform
            desc=f"tokenising {source.description}",
        )
    status = mapped.select_columns(["row_index", "skip_reason", "skip_detail"]).with_format("arrow")[:]
    reasons = status.column("skip_reason").to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(reasons == "")
    skipped = Counter(r for r in reasons if r)
    examples = {}
    for reason in skipped:
        first = int(np.flatnonzero(reasons == reason)[0])
        examples[reason] = (
            status.column("row_index")[first].as_py(),
            status.column("skip_detail")[first].as_py(),
        )
    usable = mapped.select(keep).remove_columns(["skip_reason", "skip_detail"])
    return TokenizedChats(usable, fingerprint, len(rows), dict(skipped), examples)


def tokenize_chat_dataset(
    data_path,
    tokenizer,
    *,
    split: str | None = None,
    chat_template: str | None = None,
    mask_reasoning_content: bool = False,
    mask_generation_prompt: bool = False,
    template_kwargs: Mapping[str, Any] | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    batch_size: int = 64,
) -> TokenizedChats:
    """Read, render and tokenise every row of ``data_path`` (see :func:`eagle_ext.data.sources.load_chat_source`).

    Args:
        num_proc: worker processes for ``datasets.map``; ``None`` picks ``min(8, cpus)`` for sources of at
            least 20k rows and 1 otherwise.
        cache_dir: when given, the result is saved under it (atomically) keyed by
            :func:`chat_data_fingerprint` and reused by later calls with the same fingerprint.
        show_progress: show ``datasets``' tqdm bar while tokenising.

    Other arguments as in :class:`eagle_ext.data.chat.ChatTokenizer`.

    Raises:
        ValueError: no usable rows (the message lists how many rows were skipped for which reason), or the
            errors of :class:`~eagle_ext.data.chat.ChatTokenizer` and ``load_chat_source``.
    """
    renderer = ChatTokenizer(
        tokenizer,
        chat_template=chat_template,
        mask_reasoning_content=mask_reasoning_content,
        mask_generation_prompt=mask_generation_prompt,
        template_kwargs=template_kwargs,
    )
    with _progress_bars(show_progress):
        source = load_chat_source(data_path, split)
    fingerprint = chat_data_fingerprint(
        source.fingerprint,
        tokenizer,
        chat_template=chat_template,
        mask_reasoning_content=mask_reasoning_content,
        mask_generation_prompt=mask_generation_prompt,
        template_kwargs=template_kwargs,
    )
    cache_path = tokenized_cache_path(cache_dir, fingerprint) if cache_dir is not None else None
    if cache_path is not None and (cached := _load_cached(cache_path, fingerprint)) is not None:
        logger.info("loaded tokenised data from %s: %s", cache_path, cached.summary())
        return cached

    result = _tokenize_rows(source, renderer, fingerprint, num_proc=num_proc, batch_size=batch_size,
                            show_progress=show_progress)
    usable = result.dataset
    if len(usable) == 0:
        raise ValueError(
            f"no usable chat rows in {source.description} (split={split!r}): {result.summary()}. Rows need a "
            "'messages' (OpenAI) or 'conversations' (ShareGPT) list with at least one assistant turn that the "
            "chat template renders."
        )
    noteworthy = set(result.skipped) - {"blank_line"}
    (logger.warning if noteworthy else logger.info)("tokenised %s: %s", source.description, result.summary())
    if cache_path is not None:
        with _progress_bars(show_progress):
            _save_cached(result, cache_path)
        logger.info("saved tokenised data to %s", cache_path)
    return result
