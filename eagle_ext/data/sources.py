"""Read chat rows from a local file, a directory, an HF dataset name or memory, with HF split slicing.

Rows come back as a ``datasets.Dataset`` (memory-mapped Arrow for file sources, so nothing is loaded
eagerly), in one of two shapes:

- structured columns (parquet, ``save_to_disk`` directories, HF hub datasets, ``datasets.Dataset``);
- one string column :data:`JSON_ROW_COLUMN` holding each row as JSON text (JSONL / JSON files and
  in-memory lists). Parsing happens per row during tokenisation, so rows whose fields change type from row
  to row (``content`` a string here and a list of parts there) load fine, where Arrow schema inference
  would reject the whole file.

Use :func:`source_rows_from_batch` to get plain dict rows from either shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eagle_ext.data.fingerprint import digest, path_fingerprint

#: Column that carries one JSON-encoded row per entry (JSONL / JSON / in-memory sources).
JSON_ROW_COLUMN = "_eagle_json_row"

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
_DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class ChatSource:
    """Rows of one data source.

    Attributes:
        dataset: the rows (structured, or one :data:`JSON_ROW_COLUMN` column of JSON text).
        fingerprint: identity of the data (content hash or size + mtime of files, HF fingerprint, ...) and
            of the split selection.
        description: a short human-readable name for messages.
    """

    dataset: Any
    fingerprint: str
    description: str


def _suffix(path: str) -> str:
    lower = path.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return os.path.splitext(lower)[1]


def _format_of(path: str) -> str | None:
    suffix = _suffix(path)
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return None


def _unknown_format(path: str) -> ValueError:
    return ValueError(
        f"data_path {path!r} has an unknown format (suffix {_suffix(path)!r}); expected a JSON Lines file "
        f"({', '.join(JSONL_SUFFIXES)}), a JSON file (.json), a parquet file (.parquet), a directory of "
        "such files, a directory written by datasets.save_to_disk, or an HF dataset name"
    )


def select_split(splits: Mapping[str, Any], split: str | None, *, what: str) -> Any:
    """Apply an HF split spec (``"train"``, ``"train[:1000]"``, ``"train[10%:]+test"``) to named datasets.

    ``split=None`` selects ``"train"`` when present, else the only split.

    Raises:
        ValueError: the spec is malformed or names a split ``what`` does not have.
    """
    import datasets

    if split is None:
        if _DEFAULT_SPLIT in splits:
            return splits[_DEFAULT_SPLIT]
        if len(splits) == 1:
            return next(iter(splits.values()))
        raise ValueError(f"{what} has splits {sorted(splits)}; pass split= to choose one")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str such as 'train' or 'train[:1000]', got {split!r}")
    try:
        instructions = datasets.ReadInstruction.from_spec(split).to_absolute(
            {name: len(ds) for name, ds in splits.items()}
        )
    except (ValueError, AssertionError) as exc:
        raise ValueError(
            f"split={split!r} is not a valid split of {what} (available: {sorted(splits)}; HF slice syntax "
            f"such as 'train[:1000]' or 'train[10%:20%]' is accepted): {exc}"
        ) from None
    parts = [splits[i.splitname].select(range(i.from_, i.to)) for i in instructions]
    if len(parts) == 1:
        return parts[0]
    return datasets.concatenate_datasets(parts)


def _rows_to_json_dataset(rows: Sequence[Any]):
    import datasets

    texts = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"data rows must be dicts, got {type(row).__name__} at index {i}")
        texts.append(json.dumps(row, ensure_ascii=False, default=str))
    return datasets.Dataset.from_dict({JSON_ROW_COLUMN: texts}), texts


def _read_json_file(path: str):
    """A ``.json`` file holds a list of rows, ``{"<key>": [rows]}``, or (misnamed) JSON Lines."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            if "Extra data" in exc.msg:
                return None  # several top-level values: JSON Lines in a .json file
            raise ValueError(f"data_path {path!r} is not valid JSON: {exc}") from None
    if isinstance(data, Mapping):
        if "messages" in data or "conversations" in data:
            data = [data]  # a single row
        else:
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise ValueError(
                    f"data_path {path!r} holds a JSON object with list fields {lists}; expected a list of "
                    "rows, an object with exactly one list of rows, or JSON Lines"
                )
            data = data[lists[0]]
    if not isinstance(data, list):
        raise ValueError(f"data_path {path!r} holds a JSON {type(data).__name__}; expected a list of rows")
    return data


def _is_blank(path: str) -> bool:
    """True when the file holds nothing but whitespace (read in chunks; stops at the first other byte)."""
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return False
    return True


def _drop_blank_files(paths: list[str], description: str) -> list[str]:
    """``paths`` less the empty (whitespace-only) files, which ``datasets`` cannot infer a schema from.

    Raises:
        ValueError: every file is empty (the message names it and the expected content).
    """
    kept = [p for p in paths if not _is_blank(p)]
    if not kept:
        what = f"data_path {paths[0]!r} is empty" if len(paths) == 1 else f"every data file of {description} is empty"
        raise ValueError(f"{what}; expected JSON Lines, one chat row per line such as "
                         '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}')
    return kept


def _load_files(paths: list[str], fmt: str, split: str | None, description: str, cache_dir: str | None):
    import datasets

    if fmt == "jsonl":
        paths = _drop_blank_files(paths, description)
        ds = datasets.load_dataset("text", data_files={_DEFAULT_SPLIT: paths}, cache_dir=cache_dir)
        ds = {name: d.rename_column("text", JSON_ROW_COLUMN) for name, d in ds.items()}
        return select_split(ds, split, what=description)
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files={_DEFAULT_SPLIT: paths}, cache_dir=cache_dir)
        return select_split(dict(ds), split, what=description)
    rows: list[Any] = []
    jsonl_paths = []
    for path in paths:
        data = _read_json_file(path)
        if data is None:
            jsonl_paths.append(path)
        else:
            rows.extend(data)
    if jsonl_paths and rows:
        raise ValueError(f"{description} mixes JSON arrays and JSON Lines in .json files; use one layout")
    if jsonl_paths:
        return _load_files(jsonl_paths, "jsonl", split, description, cache_dir)
    ds, _ = _rows_to_json_dataset(rows)
    return select_split({_DEFAULT_SPLIT: ds}, split, what=description)


def _is_saved_dataset_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _data_files_in(path: str) -> tuple[list[str], str]:
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    formats = {f: _format_of(f) for f in files}
    found = sorted({fmt for fmt in formats.values() if fmt is not None})
    if not found:
        raise ValueError(
            f"data_path {path!r} is a directory without data files ({', '.join(SUPPORTED_SUFFIXES)}) and was "
            "not written by datasets.save_to_disk"
        )
    if len(found) > 1:
        raise ValueError(f"data_path {path!r} mixes data formats {found}; keep one format per directory")
    return [f for f, fmt in formats.items() if fmt is not None], found[0]


def _looks_like_local_path(path: str) -> bool:
    """True for strings that can only mean a local file (HF names look like ``org/name``)."""
    return (
        _format_of(path) is not None
        or os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.count("/") > 1
        or os.sep != "/"
        and os.sep in path
    )


def load_chat_source(data_path, split: str | None = None, *, cache_dir: str | None = None) -> ChatSource:
    """Open the rows of ``data_path``.

    Args:
        data_path: a JSONL / JSON / parquet file, a directory of such files, a directory written by
            ``datasets.save_to_disk`` (a ``Dataset`` or ``DatasetDict``), an HF hub dataset name (loaded with
            ``datasets.load_dataset``, which needs the hub or its local cache), a ``datasets.Dataset`` /
            ``DatasetDict``, or a list of row dicts.
        split: HF split spec; slices (``"train[:1000]"``, ``"train[10%:]"``) work for every kind of source.
            Local files and lists form the single split ``"train"``. ``None`` picks ``"train"`` or the only split.
        cache_dir: where ``datasets`` keeps its Arrow copies of JSONL / parquet files (its default otherwise).

    Raises:
        FileNotFoundError: a local path that does not exist, or a name that is neither a local path nor a
            reachable HF dataset.
        ValueError: unknown file format, malformed JSON layout, invalid split.
    """
    import datasets

    spec = {"split": split}
    if isinstance(data_path, datasets.DatasetDict):
        ds = select_split(dict(data_path), split, what="the DatasetDict")
        return ChatSource(
            ds,
            digest({**spec, "dataset_dict": {k: v._fingerprint for k, v in data_path.items()}}),
            "in-memory DatasetDict",
        )
    if isinstance(data_path, datasets.Dataset):
        ds = select_split({_DEFAULT_SPLIT: data_path}, split, what="the Dataset")
        return ChatSource(ds, digest({**spec, "dataset": data_path._fingerprint}), "in-memory Dataset")
    if isinstance(data_path, Sequence) and not isinstance(data_path, (str, bytes)):
        ds, texts = _rows_to_json_dataset(data_path)
        ds = select_split({_DEFAULT_SPLIT: ds}, split, what="the list of rows")
        return ChatSource(ds, digest({**spec, "rows": digest(texts)}), f"list of {len(texts)} rows")
    if not isinstance(data_path, (str, os.PathLike)):
        raise TypeError(
            f"data_path must be a path, an HF dataset name, a datasets.Dataset or a list of rows, got "
            f"{type(data_path).__name__}"
        )

    path = os.path.expanduser(os.fspath(data_path))
    if os.path.isfile(path):
        fmt = _format_of(path)
        if fmt is None:
            raise _unknown_format(path)
        ds = _load_files([os.path.abspath(path)], fmt, split, repr(path), cache_dir)
        return ChatSource(ds, digest({**spec, "path": path_fingerprint(path)}), path)
    if os.path.isdir(path):
        if _is_saved_dataset_dir(path):
            loaded = datasets.load_from_disk(path)
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {_DEFAULT_SPLIT: loaded}
            ds = select_split(splits, split, what=repr(path))
        else:
            files, fmt = _data_files_in(path)
            ds = _load_files(files, fmt, split, repr(path), cache_dir)
        return ChatSource(ds, digest({**spec, "path": path_fingerprint(path)}), path)
    if _looks_like_local_path(path):
        raise FileNotFoundError(f"data_path {path!r} does not exist (no such file or directory)")
    try:
        ds = datasets.load_dataset(path, split=split or _DEFAULT_SPLIT, cache_dir=cache_dir)
    except Exception as exc:  # the hub raises many kinds (connection, missing repo, gated, ...)
        raise FileNotFoundError(
            f"data_path {path!r} is neither a local file or directory nor a reachable HF dataset "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return ChatSource(ds, digest({**spec, "hub": path, "dataset": ds._fingerprint}), f"HF dataset {path!r}")


def source_rows_from_batch(batch: Mapping[str, list]) -> list[dict | Exception | None]:
    """Turn a batch of a :class:`ChatSource` dataset (dict of columns) into row dicts.

    A blank JSON line gives ``None`` and a JSON text that does not parse to an object a ``ValueError`` in
    its place (the caller counts them).
    """
    if JSON_ROW_COLUMN in batch:
        rows: list[dict | Exception | None] = []
        for text in batch[JSON_ROW_COLUMN]:
            if text is None or not text.strip():
                rows.append(None)
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                rows.append(ValueError(f"invalid JSON: {exc}"))
                continue
            rows.append(
                row if isinstance(row, dict) else ValueError(f"JSON {type(row).__name__}, not an object")
            )
        return rows
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{c: batch[c][i] for c in columns} for i in range(n)]
