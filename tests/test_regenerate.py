"""``eagle-ext regenerate`` end to end on a tiny target (config + word-level tokenizer with a ChatML
template): rows, turn-by-turn multi-turn answers, end-token stripping, resume, refusal of changed settings or
prompts, bad arguments before any model loads; and the demo's committed prompt sets."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from eagle_ext.cli import main as cli_main
from eagle_ext.data.regenerate import read_prompts, regenerate_chats, settings_path
from eagle_ext.testing.tokenizer import build_word_tokenizer

WORDS = "what is the capital of france give me a word say it again answer in one sky colour blue".split()
PROMPTS = [
    "what is the capital of france ?",
    {"messages": [{"role": "system", "content": "answer in one word ."}, {"role": "user", "content": "sky colour ?"}]},
    {"messages": [{"role": "user", "content": "give me a word"}, {"role": "assistant", "content": None},
                  {"role": "user", "content": "say it again"}]},
]


def _save_target(directory, *, always_end: bool = False) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_word_tokenizer(WORDS)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=len(tok), max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    if always_end:
        # Layers add nothing (zero output projections), so the final hidden state is the embedding, whose
        # channel 0 is large and positive; only the end token reads channel 0: it always wins the argmax.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.model.embed_tokens.weight[:, 0] = 10.0
            model.model.norm.weight.zero_()
            model.model.norm.weight[0] = 1.0
            model.lm_head.weight.zero_()
            model.lm_head.weight[tok.eos_token_id, 0] = 1.0
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return _save_target(tmp_path_factory.mktemp("tiny_target"))


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return str(path)


def _rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _run(target, prompts, out, *extra) -> int:
    return cli_main(["regenerate", "--target", target, "--prompts", prompts, "--out", out, "--max-new-tokens", "6",
                     "--batch-size", "2", "--no-progress", *extra])


def test_regenerate_three_prompts_end_to_end(target, prompts_file, tmp_path):
    out = str(tmp_path / "out.jsonl")
    assert _run(target, prompts_file, out) == 0
    rows = _rows(out)
    assert [r["prompt_index"] for r in rows] == [0, 1, 2]
    assert len({r["prompt_hash"] for r in rows}) == 3
    # the prompt turns come back unchanged, the slot and the final turn are filled with the target's text
    assert rows[0]["messages"][0] == {"role": "user", "content": PROMPTS[0]}
    assert rows[1]["messages"][:2] == PROMPTS[1]["messages"]
    multi = rows[2]["messages"]
    assert [m["role"] for m in multi] == ["user", "assistant", "user", "assistant"]
    assert multi[0] == PROMPTS[2]["messages"][0] and multi[2] == PROMPTS[2]["messages"][2]
    for row, generated in zip(rows, (1, 1, 2)):
        assert row["messages"][-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) for m in row["messages"])
        assert len(row["finish_reasons"]) == generated
        assert set(row["finish_reasons"]) <= {"stop", "length"}
    # a random tiny model rarely ends within 6 tokens: a cut answer is not empty and has no end token in it
    assert all("<|im_end|>" not in m["content"] for r in rows for m in r["messages"])
    settings = json.load(open(settings_path(out)))
    assert settings["max_new_tokens"] == 6 and settings["temperature"] == 0.0 and settings["seed"] == 0
    # the rows are training chats: the data pipeline reads them
    from eagle_ext.data.chat import normalize_chat_row

    assert all(normalize_chat_row(r)[0][-1]["role"] == "assistant" for r in rows)


def test_end_token_is_stripped_and_reported(tmp_path, prompts_file):
    target = _save_target(tmp_path / "ends", always_end=True)
    out = str(tmp_path / "out.jsonl")
    stats = regenerate_chats(target, prompts_file, out, max_new_tokens=5, batch_size=3, show_progress=False)
    rows = _rows(out)
    assert [r["finish_reasons"] for r in rows] == [["stop"], ["stop"], ["stop", "stop"]]
    assert all(m["content"] == "" for r in rows for m in r["messages"] if m["role"] == "assistant")
    assert stats["generated_tokens"] == 4 and stats["truncated_turns"] == 0  # one end token per turn


def test_greedy_is_independent_of_batching_and_sampling_is_seeded(target, prompts_file, tmp_path):
    def answers(name, **kw):
        regenerate_chats(target, prompts_file, str(tmp_path / name), max_new_tokens=6, show_progress=False, **kw)
        return [r["messages"] for r in _rows(tmp_path / name)]

    assert answers("b1.jsonl", batch_size=1) == answers("b3.jsonl", batch_size=3)
    s1 = answers("s1.jsonl", batch_size=2, temperature=1.0, seed=5)
    assert s1 == answers("s2.jsonl", batch_size=2, temperature=1.0, seed=5)
    assert s1 != answers("s3.jsonl", batch_size=2, temperature=1.0, seed=6)


def test_prompts_are_batched_by_turns_to_generate(target, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in [PROMPTS[2], PROMPTS[0], PROMPTS[1]]))
    out = tmp_path / "out.jsonl"
    regenerate_chats(target, str(path), str(out), max_new_tokens=3, batch_size=2, show_progress=False)
    assert [(r["prompt_index"], len(r["finish_reasons"])) for r in _rows(out)] == [(1, 1), (2, 1), (0, 2)]


def test_resume_skips_answered_prompts_and_cuts_a_torn_line(target, prompts_file, tmp_path):
    out = str(tmp_path / "out.jsonl")
    first = regenerate_chats(target, prompts_file, out, max_new_tokens=6, limit=2, show_progress=False)
    assert first["answered"] == 2 and len(_rows(out)) == 2
    before = open(out).read()
    with open(out, "a") as f:
        f.write('{"messages": [{"role": "user", "con')  # a crash in the middle of a write
    second = regenerate_chats(target, prompts_file, out, max_new_tokens=6, batch_size=1, show_progress=False)
    assert second["already_answered"] == 2 and second["answered"] == 1
    text = open(out).read()
    assert text.startswith(before)
    assert [r["prompt_index"] for r in _rows(out)] == [0, 1, 2]
    third = regenerate_chats(target, prompts_file, out, max_new_tokens=6, show_progress=False)
    assert third["answered"] == 0 and open(out).read() == text


def test_resume_refuses_changed_settings_and_changed_prompts(target, prompts_file, tmp_path, capsys):
    out = str(tmp_path / "out.jsonl")
    assert _run(target, prompts_file, out, "--limit", "1") == 0
    assert _run(target, prompts_file, out, "--max-new-tokens", "7") == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "max_new_tokens: 6 -> 7" in err
    with pytest.raises(ValueError, match="temperature"):
        regenerate_chats(target, prompts_file, out, max_new_tokens=6, temperature=0.5, show_progress=False)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(p) + "\n" for p in ["a different first prompt", *PROMPTS[1:]]))
    with pytest.raises(ValueError, match="prompt file changed"):
        regenerate_chats(target, str(edited), out, max_new_tokens=6, show_progress=False)
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text('{"messages": []}\n')
    with pytest.raises(ValueError, match="has no stranger.jsonl.settings.json"):
        regenerate_chats(target, prompts_file, str(stranger), max_new_tokens=6, show_progress=False)


@pytest.fixture
def unloadable_target(tmp_path):
    """A directory that passes the path check but fails if anything tries to load it as a model."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.json").write_text("{}")
    return str(tmp_path / "fake")


@pytest.mark.parametrize("extra, match", [
    (["--max-new-tokens", "0"], "--max-new-tokens: expected an integer >= 1, got 0"),
    (["--batch-size", "-2"], "--batch-size: expected an integer >= 1, got -2"),
    (["--temperature", "-1"], "--temperature: expected a finite number >= 0"),
    (["--temperature", "nan"], "--temperature: expected a finite number >= 0"),
    (["--limit", "0"], "--limit: expected an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed: expected an integer >= 0"),
])
def test_bad_arguments_fail_before_loading(unloadable_target, prompts_file, tmp_path, capsys, extra, match):
    assert _run(unloadable_target, prompts_file, str(tmp_path / "o.jsonl"), *extra) == 2
    assert match in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.jsonl")


@pytest.mark.parametrize("content, match", [
    ('"hi"\n{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
     r"prompts.jsonl:2: the last turn must be a user turn"),
    ('{"messages": [{"role": "user", "content": "x"}\n', r"prompts.jsonl:1: not valid JSON"),
    ('{"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}]}\n', r"role 'tool'"),
    ('{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": null}, '
     '{"role": "user", "content": "y"}]}\n', r"assistant slot 1 must follow a user turn"),
    ('{"messages": [{"role": "user", "content": null}]}\n', r"only assistant turns may be left for the target"),
    ('{"messages": [{"role": "user", "content": "  "}]}\n', r"user message 0 is empty"),
    ('{"prompt": "x"}\n', r"a prompt object needs a 'messages' list"),
    ('42\n', r"expected a JSON string or an object with 'messages', got int"),
    ("\n\n", r"holds no prompts"),
])
def test_bad_prompts_fail_before_loading(unloadable_target, tmp_path, content, match):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        regenerate_chats(unloadable_target, str(path), str(tmp_path / "o.jsonl"), show_progress=False)


def test_bad_paths_fail_before_loading(unloadable_target, prompts_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="--target: .* is not a model directory"):
        regenerate_chats(str(tmp_path / "missing"), prompts_file, str(tmp_path / "o.jsonl"))
    with pytest.raises(FileNotFoundError, match="--prompts: .* is not a file"):
        regenerate_chats(unloadable_target, str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl"))
    with pytest.raises(ValueError, match="--out: .* is a directory"):
        regenerate_chats(unloadable_target, prompts_file, str(tmp_path))


def test_plain_text_prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\nsecond prompt\n")
    prompts = read_prompts(str(path))
    assert [p.messages for p in prompts] == [[{"role": "user", "content": "first prompt"}],
                                             [{"role": "user", "content": "second prompt"}]]
    assert prompts[0].slots == [1] and prompts[0].key != prompts[1].key


# --------------------------------------------------------------------------------------------------------
# The demo's prompt sets (written by tools/make_demo_prompts.py from tools/demo_prompts.yaml)
# --------------------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS_DIR = os.path.join(REPO, "eagle_ext", "demo", "assets")
TRAIN_FILE, HELDOUT_FILE = "prompts_train.jsonl", "prompts_heldout.jsonl"


def _prompt_generator():
    """tools/make_demo_prompts.py, a script outside the package, loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_prompts", os.path.join(REPO, "tools", "make_demo_prompts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_user_turn(prompt) -> str:
    text = next(m["content"] for m in prompt.messages if m["role"] == "user")
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_committed_prompt_sets_schema_sizes_and_disjointness():
    train_path, heldout_path = os.path.join(ASSETS_DIR, TRAIN_FILE), os.path.join(ASSETS_DIR, HELDOUT_FILE)
    train, heldout = read_prompts(train_path), read_prompts(heldout_path)  # every row is a valid prompt
    assert len(train) >= 2000 and len(heldout) == 100
    assert os.path.getsize(train_path) < 600_000 and os.path.getsize(heldout_path) < 60_000
    train_turns = [_first_user_turn(p) for p in train]
    heldout_turns = [_first_user_turn(p) for p in heldout]
    assert len(set(train_turns)) == len(train) and len(set(heldout_turns)) == len(heldout)
    assert not set(train_turns) & set(heldout_turns)
    multi = [p for p in train if len(p.slots) > 1]
    assert 0.1 * len(train) < len(multi) < 0.3 * len(train)
    rows = [json.loads(line) for line in open(train_path)]
    categories = {r["category"] for r in rows}
    assert len(categories) >= 20
    lengths = sorted(len(next(m["content"] for m in p.messages if m["role"] == "user")) for p in train)
    assert lengths[len(lengths) // 10] < 40 and lengths[-len(lengths) // 20] > 120 and lengths[-1] > 300


def test_committed_prompt_sets_are_what_the_seeded_generator_writes(tmp_path):
    generator = _prompt_generator()
    assert (generator.ASSETS_DIR, generator.TRAIN_FILE, generator.HELDOUT_FILE) == (ASSETS_DIR, TRAIN_FILE, HELDOUT_FILE)
    written = generator.write_prompt_sets(tmp_path)
    for path, name in zip(written, (TRAIN_FILE, HELDOUT_FILE)):
        with open(path, "rb") as new, open(os.path.join(ASSETS_DIR, name), "rb") as committed:
            assert new.read() == committed.read(), name  # byte for byte
    train, _ = generator.build_prompt_sets(2000, 100, seed=0)
    other_train, _ = generator.build_prompt_sets(2000, 100, seed=1)
    assert other_train != train


def test_settings_check_compares_the_engine_both_ways(tmp_path):
    """An output made by vLLM (engine and dtype recorded) is not resumed by the hf engine, whose settings have
    no engine key; an hf output with dtype auto keeps its original keys and stays resumable."""
    from eagle_ext.data.regenerate import _check_settings

    out = tmp_path / "out.jsonl"
    out.write_text("")
    base = {"format": 1, "target": "/t", "max_new_tokens": 8, "temperature": 0.0, "seed": 0}
    (tmp_path / "out.jsonl.settings.json").write_text(json.dumps({**base, "engine": "vllm", "dtype": "auto"}))
    with pytest.raises(ValueError, match=r"engine: 'vllm' -> None"):
        _check_settings(str(out), base, also=("engine", "dtype"))
    assert _check_settings(str(out), {**base, "engine": "vllm", "dtype": "auto"}, also=("engine", "dtype"))
    (tmp_path / "out.jsonl.settings.json").write_text(json.dumps({**base, "progress": {"rows": 3}}))
    assert _check_settings(str(out), base, also=("engine", "dtype"))  # other stored keys are not settings
