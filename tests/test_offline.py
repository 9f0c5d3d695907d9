"""Offline cache: precompute -> shards -> reader; cached step == live step, resume, integrity, top-k, arguments,
and two gloo ranks writing disjoint shard ranges."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
from datetime import timedelta

import pytest
import torch

from eagle_ext.cli import main as cli_main
from eagle_ext.offline import (
    CACHED_BATCH_KEYS,
    CachedEagle3Dataset,
    CacheIntegrityError,
    build_cached_dataloader,
    check_cache_compatible,
    load_cached_embeddings,
    load_cached_target_config,
    load_cached_token_mapping,
    precompute_cache,
    read_cache_manifest,
    verify_cache,
)
from eagle_ext.offline.manifest import file_sha256, shard_name, sidecar_name

SEQ, BATCH, SHARD, VD, AUX = 64, 2, 2, 128, (0, 2, 3)


def _options(ws, out, **overrides):
    opts = dict(target_model=ws["target"], input_data=ws["data"], output_dir=out, seq_length=SEQ,
                draft_vocab_size=VD, batch_size=BATCH, shard_size=SHARD, dtype="fp32", aux_layer_ids=AUX,
                device="cpu", show_progress=False)
    return {**opts, **overrides}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny Llama target (saved with its tokenizer), 5 chats, and their cache written through the CLI."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from eagle_ext.testing.corpus import chat_conversations, corpus_words, write_jsonl
    from eagle_ext.testing.tokenizer import build_word_tokenizer

    root = tmp_path_factory.mktemp("offline")
    tok = build_word_tokenizer(corpus_words())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    target_dir = str(root / "target")
    LlamaForCausalLM(cfg).save_pretrained(target_dir)
    tok.save_pretrained(target_dir)
    data = str(root / "data.jsonl")
    write_jsonl(data, chat_conversations(5, seed=0))
    other = str(root / "other.jsonl")
    write_jsonl(other, chat_conversations(5, seed=1))
    cache = str(root / "cache")
    code = cli_main(["precompute", "--target-model", target_dir, "--input-data", data, "--output-dir", cache,
                     "--seq-length", str(SEQ), "--draft-vocab-size", str(VD), "--batch-size", str(BATCH),
                     "--shard-size", str(SHARD), "--dtype", "fp32", "--aux-layer-ids", *map(str, AUX),
                     "--device", "cpu", "--no-progress"])
    assert code == 0
    return {"root": root, "target": target_dir, "data": data, "other": other, "cache": cache}


def _copy_cache(ws, name):
    dst = str(ws["root"] / name)
    shutil.copytree(ws["cache"], dst)
    return dst


def test_five_samples_in_shard_size_two_give_three_shards(ws):
    m = read_cache_manifest(ws["cache"])
    assert (m["num_samples"], m["num_shards"], m["shard_size"], m["draft_vocab_size"]) == (5, 3, 2, VD)
    assert m["aux_layer_ids"] == list(AUX) and m["aux_hidden_dim"] == 3 * 64 and m["target_probs_topk"] == 0
    assert len(m["selected_token_ids"]) == VD and m["layout"] == "trimmed" and m["dtype"] == "fp32"
    shards = sorted(f for f in os.listdir(ws["cache"]) if f.startswith("shard-") and f.endswith(".safetensors"))
    assert shards == [shard_name(i) for i in range(3)]
    counts = [json.load(open(os.path.join(ws["cache"], sidecar_name(s))))["num_samples"] for s in shards]
    assert counts == [2, 2, 1]
    assert verify_cache(ws["cache"], show_progress=False) == []
    # trimmed storage: no shard holds more token rows than real tokens
    ds = CachedEagle3Dataset(ws["cache"], show_progress=False)
    real = sum(int(ds[i]["attention_mask"].sum()) for i in range(len(ds)))
    assert real < 5 * SEQ and sum(json.load(open(os.path.join(ws["cache"], sidecar_name(s))))["num_tokens"]
                                  for s in shards) == real
    assert len(ds) == 5 and torch.equal(ds[-1]["input_ids"], ds[4]["input_ids"])
    with pytest.raises(IndexError):
        ds[5]


def _live(ws):
    """The online path on the same data: padded unshuffled loader and the target capture."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from eagle_ext.data.loader import build_dataloader
    from eagle_ext.models import Eagle3TargetModel

    tok = AutoTokenizer.from_pretrained(ws["target"])
    loader = build_dataloader(ws["data"], tok, SEQ, BATCH, shuffle=False, show_progress=False)
    target = Eagle3TargetModel(LlamaForCausalLM.from_pretrained(ws["target"]), aux_layer_ids=list(AUX))
    return loader, target


def test_cached_step_equals_live_step(ws):
    from eagle_ext.eagle3 import Eagle3TrainerModule, compute_target_distribution
    from eagle_ext.models import Eagle3DraftModel

    loader, target = _live(ws)
    ids, mask = load_cached_token_mapping(ws["cache"])
    cached_loader = build_cached_dataloader(ws["cache"], BATCH, shuffle=False, show_progress=False)
    assert cached_loader.data_fingerprint == loader.data_fingerprint
    # no target needed: config and embeddings come from the cache and equal the target's
    cfg = load_cached_target_config(ws["cache"])
    assert cfg.to_dict()["hidden_size"] == target.config.hidden_size and cfg.vocab_size == target.config.vocab_size
    embeddings = load_cached_embeddings(ws["cache"])
    assert torch.equal(embeddings, target.get_input_embeddings().weight)

    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(cfg, VD)
    draft.copy_embeddings_from(embeddings)
    draft.set_vocab_mapping(ids)
    with torch.no_grad():
        draft.lm_head.weight.normal_(0.0, 0.3)
    live_trainer = Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=3)
    cached_trainer = copy.deepcopy(live_trainer)
    for live_batch, cached in zip(loader, cached_loader, strict=True):
        live = target.generate_batch(**live_batch).to_trainer_inputs()
        assert sorted(cached) == sorted(CACHED_BATCH_KEYS)
        probs, position_mask = compute_target_distribution(live["target_logits"], ids, mask, live["loss_mask"])
        for key in ("input_ids", "attention_mask", "loss_mask"):
            assert torch.equal(cached[key], live[key].to(torch.int64)), key
        assert torch.equal(cached["position_mask"], position_mask)
        real = live["attention_mask"].bool()
        assert torch.equal(cached["aux_hidden_states"][real], live["aux_hidden_states"][real])
        assert torch.equal(cached["target_probs"][real], probs[real])

        m_live, m_cached = live_trainer(**live), cached_trainer(**cached)
        assert int(m_cached.valid_tokens) == int(m_live.valid_tokens) > 0
        torch.testing.assert_close(m_cached.loss, m_live.loss, rtol=1e-6, atol=1e-7)
        live_trainer.zero_grad()
        cached_trainer.zero_grad()
        m_live.loss.backward()
        m_cached.loss.backward()
        for (name, p), q in zip(live_trainer.named_parameters(), cached_trainer.parameters(), strict=True):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_topk_round_trip(ws):
    full = CachedEagle3Dataset(ws["cache"], show_progress=False)
    out = str(ws["root"] / "topk_all")
    precompute_cache(**_options(ws, out, target_probs_topk=500))  # k >= Vd: every column, lossless
    assert read_cache_manifest(out)["target_probs_topk"] == VD
    every = CachedEagle3Dataset(out, show_progress=False)
    for i in range(len(full)):
        for key in CACHED_BATCH_KEYS:
            assert torch.equal(every[i][key], full[i][key]), (i, key)

    out = str(ws["root"] / "topk_4")
    precompute_cache(**_options(ws, out, target_probs_topk=4))
    four = CachedEagle3Dataset(out, show_progress=False)
    for i in range(len(full)):
        a, b = full[i], four[i]
        n = int(a["attention_mask"].sum())
        assert ((b["target_probs"][:n] > 0).sum(-1) <= 4).all() and not b["target_probs"][n:].any()
        top, idx = a["target_probs"][:n].topk(4, dim=-1)
        torch.testing.assert_close(b["target_probs"][:n].gather(1, idx), top / top.sum(-1, keepdim=True))
        torch.testing.assert_close(b["target_probs"][:n].sum(-1), torch.ones(n))


def test_resume_skips_finished_shards(ws):
    out = _copy_cache(ws, "resume")
    reference = {i: file_sha256(os.path.join(ws["cache"], shard_name(i))) for i in range(3)}
    before = os.stat(os.path.join(out, shard_name(0))).st_mtime_ns
    os.remove(os.path.join(out, shard_name(2)))
    os.remove(os.path.join(out, sidecar_name(shard_name(2))))
    os.remove(os.path.join(out, sidecar_name(shard_name(1))))  # shard 1 in place but unconfirmed: interrupted
    with pytest.raises(FileExistsError, match="--resume"):
        precompute_cache(**_options(ws, out))
    summary = precompute_cache(**_options(ws, out, resume=True))
    assert summary["shards_written"] == [1, 2] and summary["samples_written"] == 3
    assert os.stat(os.path.join(out, shard_name(0))).st_mtime_ns == before
    assert {i: file_sha256(os.path.join(out, shard_name(i))) for i in range(3)} == reference
    assert verify_cache(out, show_progress=False) == []
    assert precompute_cache(**_options(ws, out, resume=True))["shards_written"] == []


@pytest.mark.parametrize(
    "change, fields",
    [
        ({"input_data": "other"}, ["data_fingerprint", "input_data"]),
        ({"shuffle_seed": 7}, ["shuffle_seed"]),
        ({"draft_vocab_size": 16}, ["draft_vocab_size", "selected_token_ids"]),
        ({"dtype": "bf16"}, ["dtype"]),
    ],
)
def test_resume_rejects_a_changed_configuration(ws, monkeypatch, change, fields):
    import transformers

    out = _copy_cache(ws, f"reject_{next(iter(change))}")
    os.remove(os.path.join(out, shard_name(2)))
    manifest = open(os.path.join(out, "manifest.json")).read()
    change = {k: ws[v] if v in ws else v for k, v in change.items()}

    def no_model(*args, **kwargs):
        raise AssertionError("the target was loaded although the manifest differs")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    with pytest.raises(ValueError, match="--resume refuses") as info:
        precompute_cache(**_options(ws, out, resume=True, **change))
    for field in fields:
        assert f"{field}: cache" in str(info.value)
    assert open(os.path.join(out, "manifest.json")).read() == manifest
    assert not os.path.exists(os.path.join(out, shard_name(2)))


def test_corrupted_truncated_or_missing_shards_are_named(ws, capsys):
    out = _copy_cache(ws, "damaged")
    path = lambda i: os.path.join(out, shard_name(i))  # noqa: E731
    with open(path(1), "r+b") as f:  # bit rot: same size, one byte flipped
        f.seek(os.path.getsize(path(1)) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = verify_cache(out, show_progress=False)
    assert len(problems) == 1 and problems[0].startswith("shard-000001.safetensors: sha256 differs")
    with pytest.raises(CacheIntegrityError, match="shard-000001.safetensors"):
        CachedEagle3Dataset(out, show_progress=False)
    CachedEagle3Dataset(out, verify="size", show_progress=False)  # a size check cannot see bit rot

    with open(path(2), "r+b") as f:  # truncated copy
        f.truncate(os.path.getsize(path(2)) - 10)
    os.remove(path(0))
    problems = verify_cache(out, show_progress=False)
    assert [p.split(":")[0] for p in problems] == [shard_name(0), shard_name(1), shard_name(2)]
    assert "missing" in problems[0] and "truncated" in problems[2]
    with pytest.raises(CacheIntegrityError, match="shard-000000.safetensors: missing.*shard-000002.safetensors"):
        CachedEagle3Dataset(out, verify="size", show_progress=False)
    assert cli_main(["precompute", "--verify", out, "--no-progress"]) == 1
    assert "BROKEN" in capsys.readouterr().out

    out = _copy_cache(ws, "shrinks_later")  # damaged after the dataset was opened: caught on first open
    ds = CachedEagle3Dataset(out, show_progress=False)
    with open(os.path.join(out, shard_name(1)), "r+b") as f:
        f.truncate(100)
    ds[0]
    with pytest.raises(CacheIntegrityError, match="shard-000001.safetensors: size changed"):
        ds[2]


_BAD = [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"shard_size": 3}, ValueError, "multiple of batch_size"),
    ({"shard_size": -2}, ValueError, "shard_size"),
    ({"seq_length": 1}, ValueError, "seq_length"),
    ({"dtype": "fp8"}, ValueError, "--dtype"),
    ({"target_probs_topk": -1}, ValueError, "target_probs_topk"),
    ({"draft_vocab_size": 0}, ValueError, "draft_vocab_size"),
    ({"num_workers": -1}, ValueError, "num_workers"),
    ({"aux_layer_ids": (1, 1, 2)}, ValueError, "aux_layer_ids"),
    ({"device": "tpu"}, ValueError, "--device"),
    ({"input_data": "/nonexistent/chats.jsonl"}, FileNotFoundError, "--input-data"),
    ({"target_model": "/nonexistent/model"}, FileNotFoundError, "--target-model"),
    ({"token_map": "/nonexistent/cache"}, FileNotFoundError, "--token-map"),
    ({"aux_layer_ids": (0, 2, 9)}, ValueError, "aux_layer_ids"),  # out of range: needs the config, not the model
]


@pytest.mark.parametrize("bad, error, match", _BAD, ids=[next(iter(b)) + str(i) for i, (b, _, _) in enumerate(_BAD)])
def test_bad_arguments_raise_before_loading(ws, monkeypatch, bad, error, match):
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    if "aux_layer_ids" not in bad or bad["aux_layer_ids"] != (0, 2, 9):
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_load)
        monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_load)
    with pytest.raises(error, match=match):
        precompute_cache(**_options(ws, str(ws["root"] / "never"), **bad))
    assert not os.path.exists(ws["root"] / "never")


def test_cli_requires_paths_and_refuses_existing_shards(ws, capsys):
    """Both are user errors: one line, exit status 2 (the exception itself with --debug)."""
    assert cli_main(["precompute", "--input-data", ws["data"], "--output-dir", str(ws["root"] / "x")]) == 2
    assert "eagle-ext precompute: error: --target-model is required" in capsys.readouterr().err
    existing = ["precompute", "--target-model", ws["target"], "--input-data", ws["data"], "--output-dir",
                ws["cache"], "--batch-size", "2", "--shard-size", "2", "--device", "cpu"]
    assert cli_main(existing) == 2
    err = capsys.readouterr().err
    assert "already holds 3 shard" in err and "Traceback" not in err
    with pytest.raises(FileExistsError, match="already holds 3 shard"):
        cli_main([*existing, "--debug"])


def test_check_cache_compatible(ws):
    m = read_cache_manifest(ws["cache"])
    v = m["target_vocab_size"]
    check_cache_compatible(m, target_vocab_size=v, draft_vocab_size=VD, seq_length=SEQ, aux_layer_ids=AUX,
                           target_hidden_size=64, mask_reasoning_content=False, mask_generation_prompt=False)
    with pytest.raises(ValueError) as info:
        check_cache_compatible(m, target_vocab_size=v, draft_vocab_size=v + 5, seq_length=128, aux_layer_ids=[1, 2, 3],
                               target_hidden_size=32)
    text = str(info.value)
    for field in (f"draft_vocab_size: cache {VD}, config {v}", "seq_length: cache 64, config 128", "aux_layer_ids",
                  "aux_hidden_dim: cache 192, config 96"):
        assert field in text
    assert "target_vocab_size" not in text


def test_dataloader_shuffles_per_epoch_and_works_in_workers(ws):
    loader = build_cached_dataloader(ws["cache"], 2, shuffle=True, shuffle_seed=3, num_workers=1, verify="size",
                                     show_progress=False)
    ds = loader.dataset
    key = lambda b: [tuple(r.tolist()) for r in b["input_ids"]]  # noqa: E731
    order = lambda: [x for b in loader for x in key(b)]  # noqa: E731
    loader.set_epoch(0)
    first = order()
    loader.set_epoch(0)
    assert order() == first
    loader.set_epoch(1)
    second = order()
    everything = sorted(tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds)))
    assert sorted(first) == sorted(second) == everything and first != second
    assert loader.stats["num_samples"] == 5 and loader.stats["num_shards"] == 3


# ---------------------------------------------------------------------------------------------- two ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, options: dict, report: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        summary = precompute_cache(**options)
        with open(f"{report}.{rank}", "w") as f:
            json.dump(summary["shards_written"], f)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow  # two fresh processes import torch, transformers and datasets: ~30-90 s on a busy 2-core box
def test_two_gloo_ranks_write_disjoint_shards(ws):
    import torch.multiprocessing as mp

    out = str(ws["root"] / "two_ranks")
    report = str(ws["root"] / "two_ranks_report")
    mp.spawn(_rank_worker, args=(2, _free_port(), _options(ws, out), report), nprocs=2, join=True)
    assert [json.load(open(f"{report}.{r}")) for r in range(2)] == [[0, 2], [1]]
    assert verify_cache(out, show_progress=False) == []
    one, two = (CachedEagle3Dataset(d, show_progress=False) for d in (ws["cache"], out))
    assert read_cache_manifest(out)["selected_token_ids"] == read_cache_manifest(ws["cache"])["selected_token_ids"]
    for i in range(len(one)):
        for key in CACHED_BATCH_KEYS:
            torch.testing.assert_close(two[i][key], one[i][key], rtol=1e-5, atol=1e-6)
