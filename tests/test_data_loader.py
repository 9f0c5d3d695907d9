"""build_dataloader (public-API name build_eagle3_dataloader) end to end: padded and packed batches, sharding, workers, epochs, the tokenisation
cache, and the errors that name what to change."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch.utils.data import DistributedSampler

from eagle_ext.data import chat as chat_module
from eagle_ext.data.chat import normalize_chat_row, tokenize_conversation
from eagle_ext.data.loader import build_dataloader
from eagle_ext.data.vocab import load_or_build_eagle3_token_mapping
from tests.test_data_helpers import build_tokenizer

WORDS = "hello there how are you today fine thank the weather is nice sun plants light sugar paris".split()


def _conversations(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))})
            turns.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 25)))})
        if i % 3 == 0:  # ShareGPT rows mixed in
            rows.append(
                {
                    "conversations": [
                        {"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]}
                        for t in turns
                    ]
                }
            )
        else:
            rows.append({"messages": turns})
    return rows


ROWS = _conversations(24)
BAD = [{"messages": [{"role": "user", "content": "no answer"}]}, {"text": "not a chat"}]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("llama3")


def _expected(tok, row, length):
    messages, _ = normalize_chat_row(row)
    return tokenize_conversation(messages, tok, seq_length=length)


def test_build_eagle3_dataloader_is_the_public_name_of_build_dataloader():
    import eagle_ext.data as data

    assert data.build_eagle3_dataloader is data.build_dataloader is build_dataloader


def test_padded_batches_match_per_row_tokenisation(tok):
    dl = build_dataloader(ROWS + BAD, tok, 48, 5, shuffle=False, show_progress=False)
    assert dl.stats["skipped"] == {"no_assistant": 1, "no_messages": 1} and dl.stats["num_samples"] == len(
        ROWS
    )
    batches = list(dl)
    assert [b["input_ids"].shape for b in batches] == [(5, 48)] * 4 + [(4, 48)]
    pad = tok.eos_token_id  # the llama3 tokenizer has no pad token: eos is used
    for i, row in enumerate(ROWS):
        b = batches[i // 5]
        want = _expected(tok, row, 48)
        n = len(want["input_ids"])
        assert b["input_ids"][i % 5, :n].tolist() == want["input_ids"]
        assert b["loss_mask"][i % 5, :n].tolist() == want["loss_mask"]
        assert b["attention_mask"][i % 5].tolist() == [1] * n + [0] * (48 - n)
        assert set(b["input_ids"][i % 5, n:].tolist()) <= {pad} and int(b["loss_mask"][i % 5, n:].sum()) == 0
    assert all(v.dtype == torch.int64 for b in batches for v in b.values())


@pytest.mark.parametrize("strategy", ["greedy", "best_fit"])
def test_packed_rows_hold_every_sample_once(tok, strategy):
    width = 96
    dl = build_dataloader(
        BAD + ROWS,
        tok,
        48,
        4,
        shuffle=False,
        packed_sequence_size=width,
        packing_strategy=strategy,
        show_progress=False,
    )
    docs = []
    for batch in dl:
        assert set(batch) == {
            "input_ids",
            "loss_mask",
            "attention_mask",
            "position_ids",
            "doc_remaining",
            "seq_lens",
        }
        assert batch["seq_lens"].sum(1).tolist() == [width] * batch["input_ids"].shape[0]
        for r in range(batch["input_ids"].shape[0]):
            starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist()
            real = int(batch["attention_mask"][r].sum())
            for a, b in zip(starts, starts[1:] + [real], strict=True):
                docs.append((batch["input_ids"][r, a:b].tolist(), batch["loss_mask"][r, a:b].tolist()))
    want = [_expected(tok, row, width) for row in ROWS]
    assert sorted(docs) == sorted((w["input_ids"], w["loss_mask"]) for w in want)
    assert 0.0 <= dl.stats["padding_fraction"] < 1.0 and dl.stats["num_rows"] == len(dl.dataset)


def test_best_fit_leaves_less_padding(tok):
    kwargs = {"shuffle": False, "packed_sequence_size": 160, "show_progress": False}
    greedy = build_dataloader(ROWS, tok, 48, 4, packing_strategy="greedy", **kwargs)
    best = build_dataloader(ROWS, tok, 48, 4, packing_strategy="best_fit", **kwargs)
    assert best.stats["padding_fraction"] <= greedy.stats["padding_fraction"]
    assert best.stats["num_rows"] <= greedy.stats["num_rows"]


class _Mesh:
    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def get_local_rank(self):
        return self._rank


def test_distributed_sampler_keys_on_the_dp_mesh(tok):
    dl = build_dataloader(ROWS, tok, 48, 2, distributed=True, dp_mesh=_Mesh(2, 1), show_progress=False)
    assert isinstance(dl.sampler, DistributedSampler)
    assert (dl.sampler.num_replicas, dl.sampler.rank, dl.sampler.seed) == (2, 1, 42)
    assert len(dl.sampler) == len(ROWS) // 2
    single = build_dataloader(
        ROWS, tok, 48, 2, distributed=True, dp_mesh=_Mesh(1, 0), show_progress=False
    )
    assert (single.sampler.num_replicas, single.sampler.rank) == (1, 0) and len(single.sampler) == len(ROWS)
    with pytest.raises(
        ValueError, match="distributed=True needs an initialised torch.distributed process group"
    ):
        build_dataloader(ROWS, tok, 48, 2, distributed=True, show_progress=False)


def test_epochs_reshuffle_reproducibly(tok):
    dl = build_dataloader(ROWS, tok, 48, 4, shuffle=True, shuffle_seed=7, show_progress=False)
    order = lambda: list(iter(dl.sampler))  # noqa: E731
    first = order()
    assert first == order() and sorted(first) == list(range(len(ROWS))) and first != list(range(len(ROWS)))
    dl.set_epoch(1)
    assert order() != first
    dl.set_epoch(0)
    assert order() == first


def test_worker_settings(tok, monkeypatch):
    dl = build_dataloader(ROWS, tok, 48, 4, num_workers=2, show_progress=False)
    assert dl.persistent_workers and dl.multiprocessing_context is None and not dl.pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dl = build_dataloader(ROWS, tok, 48, 4, num_workers=2, show_progress=False)
    assert dl.pin_memory and dl.persistent_workers
    assert dl.multiprocessing_context.get_start_method() == "forkserver"


def test_batches_through_worker_processes(tok):
    dl = build_dataloader(
        ROWS, tok, 48, 6, shuffle=False, num_workers=1, packed_sequence_size=64, show_progress=False
    )
    in_workers = list(dl)
    dl_main = build_dataloader(
        ROWS, tok, 48, 6, shuffle=False, packed_sequence_size=64, show_progress=False
    )
    assert all(torch.equal(a[k], b[k]) for a, b in zip(in_workers, dl_main, strict=True) for k in a)


def test_tokenisation_cache_is_reused_and_keyed(tok, tmp_path, monkeypatch):
    first = build_dataloader(ROWS, tok, 48, 4, cache_dir=tmp_path, show_progress=False)
    assert len(list(tmp_path.iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenised although the cache is valid")

    monkeypatch.setattr(chat_module.ChatTokenizer, "encode", fail)
    again = build_dataloader(ROWS, tok, 48, 4, cache_dir=tmp_path, show_progress=False)
    assert again.data_fingerprint == first.data_fingerprint and again.stats == first.stats
    packed = build_dataloader(
        ROWS, tok, 48, 4, cache_dir=tmp_path, packed_sequence_size=64, show_progress=False
    )  # same tokenised data, other truncation length
    assert packed.data_fingerprint != first.data_fingerprint
    with pytest.raises(AssertionError, match="re-tokenised"):  # another mask option is another cache entry
        build_dataloader(
            ROWS, tok, 48, 4, cache_dir=tmp_path, mask_generation_prompt=True, show_progress=False
        )


def test_parallel_tokenisation_matches_serial(tok):
    serial = build_dataloader(ROWS, tok, 48, 24, shuffle=False, num_proc=1, show_progress=False)
    parallel = build_dataloader(ROWS, tok, 48, 24, shuffle=False, num_proc=2, show_progress=False)
    a, b = next(iter(serial)), next(iter(parallel))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_jsonl_file_feeds_the_draft_vocab(tok, tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    dl = build_dataloader(str(path), tok, 48, 4, split="train[:12]", show_progress=False)
    assert dl.stats["num_source_rows"] == 12
    ids, mask = load_or_build_eagle3_token_mapping(
        dl, len(tok), 20, [tok.eos_token_id], tmp_path / "vocab.json", show_progress=False
    )
    assert ids[0] == tok.eos_token_id and int(mask.sum()) == 20
    supervised = torch.cat([b["input_ids"][b["loss_mask"] == 1] for b in dl])
    top = torch.bincount(supervised, minlength=len(tok)).argmax()
    assert top in ids.tolist()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"seq_length": 1}, ValueError, "seq_length must be an int >= 2, got 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
        ({"packed_sequence_size": 1}, ValueError, "packed_sequence_size must be 0 .* got 1"),
        (
            {"packing_strategy": "ffd", "packed_sequence_size": 64},
            ValueError,
            "packing_strategy must be one of",
        ),
        ({"data_path": BAD}, ValueError, "no usable chat rows .*no_assistant"),
        ({"data_path": "/nonexistent/chats.jsonl"}, FileNotFoundError, "does not exist"),
        (
            {"seq_length": 3},
            ValueError,
            "no sample .* keeps an assistant token within the first 3 tokens; raise seq_length",
        ),
    ],
)
def test_errors_name_what_to_change(tok, kwargs, error, match):
    args = {
        "data_path": ROWS,
        "tokenizer": tok,
        "seq_length": 48,
        "batch_size": 4,
        "show_progress": False,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        build_dataloader(**args)


def test_qwen3_multi_turn_without_generation_tags_fails_clearly():
    with pytest.raises(ValueError, match="not prefix-stable"):
        build_dataloader(ROWS, build_tokenizer("qwen3"), 48, 4, show_progress=False)
