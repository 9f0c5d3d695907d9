"""Reading chat rows: file formats, directories, save_to_disk, HF names, split slices, fingerprints, errors."""

from __future__ import annotations

import json

import pytest

datasets = pytest.importorskip("datasets")  # optional on the GPU check machine

from eagle_ext.data.sources import load_chat_source, source_rows_from_batch  # noqa: E402

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }
    for i in range(10)
]
# content changes type from row to row: Arrow schema inference would reject this file
MIXED = [
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "c"}]},
            {"role": "assistant", "content": "d"},
        ]
    },
]


def _rows(source) -> list[dict]:
    ds = source.dataset
    return source_rows_from_batch(ds[:]) if len(ds) else []


def _write_jsonl(path, rows, blank=False):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        if blank:
            f.write("\n")


def test_jsonl_with_mixed_types_and_blank_line(tmp_path):
    path = tmp_path / "data.jsonl"
    _write_jsonl(path, MIXED, blank=True)
    rows = _rows(load_chat_source(str(path)))
    assert rows[:2] == MIXED and rows[2] is None


def test_gzipped_jsonl(tmp_path):
    import gzip

    with gzip.open(tmp_path / "data.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    assert _rows(load_chat_source(str(tmp_path / "data.jsonl.gz"))) == ROWS


@pytest.mark.parametrize("layout", ["array", "object", "jsonl_in_json"])
def test_json_layouts(tmp_path, layout):
    path = tmp_path / "data.json"
    if layout == "array":
        path.write_text(json.dumps(ROWS))
    elif layout == "object":
        path.write_text(json.dumps({"data": ROWS, "version": "1"}))
    else:
        _write_jsonl(path, ROWS)
    assert _rows(load_chat_source(path)) == ROWS


def test_parquet_and_save_to_disk(tmp_path):
    flat = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(6)
    ]
    ds = datasets.Dataset.from_list(flat)
    ds.to_parquet(str(tmp_path / "data.parquet"))
    assert _rows(load_chat_source(str(tmp_path / "data.parquet"))) == flat
    ds.save_to_disk(str(tmp_path / "saved"))
    assert _rows(load_chat_source(str(tmp_path / "saved"))) == flat
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    assert _rows(load_chat_source(str(tmp_path / "saved_dict"), split="test")) == flat[:2]
    assert _rows(load_chat_source(str(tmp_path / "saved_dict"), split="train[2:4]")) == flat[2:4]


def test_directory_of_jsonl_files(tmp_path):
    (tmp_path / "d").mkdir()
    _write_jsonl(tmp_path / "d" / "a.jsonl", ROWS[:4])
    _write_jsonl(tmp_path / "d" / "b.jsonl", ROWS[4:])
    assert _rows(load_chat_source(tmp_path / "d")) == ROWS


@pytest.mark.parametrize(
    "split, expected",
    [
        ("train[:3]", ROWS[:3]),
        ("train[-2:]", ROWS[-2:]),
        ("train[20%:40%]", ROWS[2:4]),
        (None, ROWS),
    ],
)
def test_split_slices(split, expected):
    assert _rows(load_chat_source(ROWS, split=split)) == expected


def test_bad_split_names_the_available_splits():
    with pytest.raises(ValueError, match=r"split='test'.*available: \['train'\]"):
        load_chat_source(ROWS, split="test")


def test_fingerprint_follows_content_and_split(tmp_path):
    path = tmp_path / "data.jsonl"
    _write_jsonl(path, ROWS)
    a = load_chat_source(str(path)).fingerprint
    assert load_chat_source(str(path)).fingerprint == a
    assert load_chat_source(str(path), split="train[:5]").fingerprint != a
    _write_jsonl(path, ROWS[:-1])
    assert load_chat_source(str(path)).fingerprint != a


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_chat_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown format"):
        load_chat_source(str(tmp_path / "data.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without data files"):
        load_chat_source(str(tmp_path / "empty"))
    with pytest.raises(TypeError, match="data_path must be"):
        load_chat_source(42)


def test_hf_dataset_name_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split=None, cache_dir=None):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = load_chat_source("someorg/chat-data", split="train[:5]")
    assert calls == [("someorg/chat-data", "train[:5]")] and len(source.dataset) == len(ROWS)

    def unreachable(name, split=None, cache_dir=None):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(
        FileNotFoundError, match="neither a local file or directory nor a reachable HF dataset"
    ):
        load_chat_source("someorg/chat-data")
