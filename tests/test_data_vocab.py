"""Draft-vocabulary selection and its cache (single process; the 2-rank test is test_data_vocab_distributed)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from eagle_ext.data.vocab import (
    build_eagle3_token_mapping,
    count_draft_vocab,
    count_supervised_tokens,
    draft_vocab_coverage,
    load_eagle3_token_mapping,
    load_or_build_eagle3_token_mapping,
    save_eagle3_token_mapping,
    select_draft_vocab,
    token_mapping_fingerprint,
)


def _batches(ids, mask=None, batch=2):
    ids = torch.as_tensor(ids)
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    return [
        {"input_ids": ids[i : i + batch], "loss_mask": mask[i : i + batch]} for i in range(0, len(ids), batch)
    ]


class Exploding:
    """A dataloader that must not be iterated (proves a cache hit)."""

    data_fingerprint = "data-v1"

    def __iter__(self):
        raise AssertionError("the dataloader was scanned although a valid cache exists")


def test_oracle_7_9_4():
    ids, mask = build_eagle3_token_mapping(
        [
            {
                "input_ids": torch.tensor([[7, 7, 7, 7, 9, 9, 4]]),
                "loss_mask": torch.ones(1, 7, dtype=torch.int64),
            }
        ],
        32,
        3,
        show_progress=False,
    )
    assert ids.tolist() == [7, 9, 4] and ids.dtype == torch.int64
    assert (
        mask.dtype == torch.bool
        and mask.shape == (32,)
        and torch.nonzero(mask).flatten().tolist() == [4, 7, 9]
    )


@pytest.mark.parametrize(
    "v, d", [(0, 3), (-1, 3), (32, 0), (32, -1), (32, 2.5), ("32", 3), (True, 3), (32, True)]
)
def test_invalid_sizes_raise(v, d):
    with pytest.raises(ValueError, match="vocab_size must be"):
        count_draft_vocab(v, d)
    with pytest.raises(ValueError, match="vocab_size must be"):
        build_eagle3_token_mapping([], v, d)


def test_identity_when_draft_is_none_or_not_smaller():
    assert (
        count_draft_vocab(32, None) == 32
        and count_draft_vocab(32, 64) == 32
        and count_draft_vocab(32, 5) == 5
    )
    for d in (None, 32, 100):
        ids, mask = build_eagle3_token_mapping(Exploding(), 32, d)  # identity never scans
        assert ids.tolist() == list(range(32)) and bool(mask.all())


def test_specials_first_then_frequency_ties_to_lower_id_then_fill():
    # counts: 5 -> 3, 2 -> 2, 8 -> 2 (tie: 2 before 8), 6 -> 1; unsupervised 1s are ignored
    ids = [[5, 5, 5, 8, 8, 2], [2, 6, 1, 1, 1, 1]]
    mask = [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    got, _ = build_eagle3_token_mapping(
        _batches(ids, mask), 12, 9, special_token_ids=[11, None, 40, 11, 2, -1], show_progress=False
    )
    # specials 11, 2 (None / out of range / repeated skipped), then 5, 8, 6 by count, then lowest unseen 0, 1, 3, 4
    assert got.tolist() == [11, 2, 5, 8, 6, 0, 1, 3, 4]


def test_selection_is_truncated_when_specials_fill_it():
    counts = torch.tensor([0, 9, 9, 9, 0])
    assert select_draft_vocab(counts, 2, [4, 3, 1]).tolist() == [4, 3]
    assert select_draft_vocab(counts, 4).tolist() == [1, 2, 3, 0]


def test_counting_ignores_out_of_range_ids_and_checks_shapes():
    counts = count_supervised_tokens(_batches([[1, 40, -3, 1]], [[1, 1, 1, 1]]), 8, show_progress=False)
    assert counts.tolist() == [0, 2, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="shape"):
        count_supervised_tokens([{"input_ids": torch.zeros(2, 3), "loss_mask": torch.zeros(2, 4)}], 8)
    with pytest.raises(ValueError, match="input_ids and loss_mask"):
        count_supervised_tokens([{"ids": torch.zeros(2, 3)}], 8)


def test_coverage():
    counts = torch.tensor([10, 0, 30, 60])
    assert draft_vocab_coverage(counts, torch.tensor([3, 0])) == pytest.approx(0.7)
    assert draft_vocab_coverage(torch.zeros(4, dtype=torch.int64), torch.tensor([1])) == 1.0


@pytest.mark.parametrize("name", ["map.safetensors", "nested/dir/map.json", "map.pt"])
def test_save_load_round_trip(tmp_path, name):
    path = tmp_path / name
    ids = torch.tensor([7, 9, 4])
    save_eagle3_token_mapping(path, ids, 32, fingerprint="fp1")
    assert os.listdir(path.parent) == [path.name]  # atomic: no temp file left behind
    assert load_eagle3_token_mapping(path, 32, 3).tolist() == [7, 9, 4]
    assert load_eagle3_token_mapping(path, 32, 3, fingerprint="fp1").tolist() == [7, 9, 4]
    if name.endswith(".json"):
        assert json.loads(path.read_text())["selected_token_ids"] == [7, 9, 4]
    else:  # safetensors whatever the suffix, never a pickle
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            assert f.get_tensor("selected_token_ids").tolist() == [7, 9, 4]


def test_stale_or_broken_caches_return_none(tmp_path, caplog):
    path = tmp_path / "map.safetensors"
    assert load_eagle3_token_mapping(path, 32, 3) is None  # missing
    save_eagle3_token_mapping(path, torch.tensor([7, 9, 4]), 32, fingerprint="fp1")
    with caplog.at_level(logging.WARNING, logger="eagle_ext.data.vocab"):
        assert load_eagle3_token_mapping(path, 33, 3) is None  # other target vocab
        assert load_eagle3_token_mapping(path, 32, 4) is None  # other draft size
        assert load_eagle3_token_mapping(path, 32, 3, fingerprint="fp2") is None  # other data / tokenizer
    assert sum("stale" in r.message for r in caplog.records) == 3
    path.write_bytes(b"not a safetensors file")
    assert load_eagle3_token_mapping(path, 32, 3) is None
    pickled = tmp_path / "legacy.pt"
    torch.save({"selected_token_ids": torch.tensor([7, 9, 4]), "target_vocab_size": 32}, pickled)
    assert load_eagle3_token_mapping(pickled, 32, 3) is None  # a pickle is never unpickled
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "format": "eagle_ext.eagle3_token_mapping",
                "target_vocab_size": 32,
                "selected_token_ids": [7, 7, 4],
            }
        )
    )
    assert load_eagle3_token_mapping(bad, 32, 3) is None  # repeated ids


def test_save_rejects_invalid_ids(tmp_path):
    for ids in (torch.tensor([1, 1]), torch.tensor([0, 40]), torch.tensor([[1, 2]]), torch.tensor([0.5])):
        with pytest.raises(ValueError, match="selected_token_ids"):
            save_eagle3_token_mapping(tmp_path / "m.json", ids, 32)


def test_load_or_build_writes_then_reuses_and_rebuilds_when_stale(tmp_path):
    path = tmp_path / "cache" / "map.safetensors"
    data = _batches([[7, 7, 7, 7, 9, 9, 4]])
    direct, _ = build_eagle3_token_mapping(data, 32, 3, show_progress=False)

    class Loader(list):
        data_fingerprint = "data-v1"

    ids, mask = load_or_build_eagle3_token_mapping(Loader(data), 32, 3, cache_path=path, show_progress=False)
    assert ids.tolist() == direct.tolist() == [7, 9, 4] and path.exists()
    ids, mask = load_or_build_eagle3_token_mapping(Exploding(), 32, 3, cache_path=path)  # cache hit
    assert ids.tolist() == [7, 9, 4] and int(mask.sum()) == 3

    # other data (fingerprint) -> rebuilt from the new data and rewritten
    other = Loader(_batches([[5, 5, 5, 6, 6, 1]]))
    other.data_fingerprint = "data-v2"
    ids, _ = load_or_build_eagle3_token_mapping(other, 32, 3, cache_path=path, show_progress=False)
    assert ids.tolist() == [5, 6, 1]
    assert (
        load_eagle3_token_mapping(path, 32, 3, fingerprint=token_mapping_fingerprint("data-v2", 32, 3))
        is not None
    )
    # other specials change the key too
    ids, _ = load_or_build_eagle3_token_mapping(other, 32, 3, [0], cache_path=path, show_progress=False)
    assert ids.tolist() == [0, 5, 6]
