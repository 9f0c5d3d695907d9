"""``eagle-ext synthesize`` (Magpie prompts from the target itself): the text filters and MinHash dedup, the
template's user-turn opening, the leak check, and the command end to end on a tiny target (rows, determinism,
resume after an interruption, refusal of changed settings, bad arguments before any model loads), the vLLM
path with a fake engine, and (slow) SmolLM2."""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import types

import numpy as np
import pytest
import torch

from eagle_ext.cli import main as cli_main
from eagle_ext.data.regenerate import read_prompts, settings_path
from eagle_ext.data.synthesize import (
    SENTINEL,
    HfEngine,
    LeakChecker,
    read_exclude_texts,
    resolve_engine,
    row_seed,
    synthesize_prompts,
    user_turn_prefix,
)
from eagle_ext.data.text_filters import (
    MinHasher,
    MinHashIndex,
    TextFilters,
    degenerate_reason,
    garbage_reason,
    jaccard,
    length_reason,
    normalize_text,
    refusal_count,
    text_hash,
)
from eagle_ext.testing.corpus import corpus_words
from eagle_ext.testing.target import tiny_target_config
from eagle_ext.testing.tokenizer import build_word_tokenizer

# A SmolLM2-style template: a default system turn when the conversation has none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nyou are a helpful assistant<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
HELDOUT = os.path.join(os.path.dirname(__file__), "..", "eagle_ext", "demo", "assets", "regenerated",
                       "smollm2_heldout.jsonl.gz")


# --------------------------------------------------------------------------------------------------------
# Text filters
# --------------------------------------------------------------------------------------------------------

GOOD_PROMPTS = [
    "Can you explain how photosynthesis turns light into chemical energy?",
    "I'm planning a small bakery. What breads should I start with?",
    "Why does my Python loop print None? for x in range(3): print(print(x))",
    "Solve: 3x^2 - 5x + 2 = 0",
    "What is 17 * 23?",
    "Translate 'привет' into English, please.",
    "Объясни, пожалуйста, как работает фотосинтез.",
    "光合作用是如何工作的？请简单解释。",
    "Write a haiku about autumn leaves falling on a quiet pond.",
]


@pytest.mark.parametrize("text", GOOD_PROMPTS)
def test_ordinary_prompts_pass_every_filter(text):
    assert garbage_reason(text) is None
    assert degenerate_reason(text) is None
    assert length_reason(text, 12, TextFilters()) is None


@pytest.mark.parametrize("text, reason", [
    ("ñ¤¥§¶•ªº–≠‘“π∆˚¬…æ«»¿¡", "few_letters"),
    ("@#$%^&*()_+{}|:<>?~`;;;[]", "few_letters"),
    ("1234 5678 9012 3456 !!", "few_letters"),
    ("What is this\x00\x07 about?", "unprintable"),
    ("Some text with a replacement \ufffd char", "unprintable"),
    ("Please tell me more about this!!!!!!!!!!!!!!!", "char_run"),
    ("hello мир κόσμε שלום عالم नमस्ते", "mixed_script"),
    ("ªºªºªºªºªº", "mixed_script"),
    ("xkcd qwrtz plmnb vbnm sdfgh jklm", "few_vowels"),
    ("please answer abcdefghijklmnopqrstuvwxyzabcdefghijkl now", "letter_run"),
])
def test_garbage_lines_are_caught(text, reason):
    assert garbage_reason(text) == reason


def test_text_without_letters_passes_when_letters_are_not_required():
    assert garbage_reason("37 + 5", TextFilters(min_letter_fraction=0.0)) is None
    assert garbage_reason("37 + 5") == "few_letters"


def test_script_restriction():
    latin_only = TextFilters(scripts=("latin",))
    assert latin_only.scripts == ("LATIN",)
    assert garbage_reason("What is the capital of France?", latin_only) is None
    assert garbage_reason("Объясни, пожалуйста, как работает фотосинтез.", latin_only) == "script_not_allowed"


@pytest.mark.parametrize("text, reason", [
    ("I'm sorry, but I can't help with that.", "refusal"),
    ("As an AI language model, what is your favourite colour?", "refusal"),
    ("I\u2019m sorry, but I can\u2019t assist. I'm sorry, but I can't assist with that request.", "refusal_loop"),
    ("tell me tell me tell me tell me tell me tell me tell me tell me about cats", "repeated_ngrams"),
    ("ok\nok\nok\nwhat now", "repeated_lines"),
    ("hahahahahahahahahahahahahahahahahaha" * 3, "compressible"),
])
def test_degenerate_text_is_caught(text, reason):
    assert degenerate_reason(text) == reason


def test_a_single_refusal_is_fine_in_an_answer_but_not_in_a_prompt():
    answer = "I'm sorry, but I can't help with that. Is there anything else you would like to know?"
    assert refusal_count(answer) == 2  # "I'm sorry" and "I can't help", each once: not a loop
    assert degenerate_reason(answer, user_turn=False) is None
    assert degenerate_reason(answer, user_turn=True) == "refusal"


def test_length_bounds():
    f = TextFilters(min_chars=5, max_chars=20, min_tokens=2)
    assert length_reason("abc", 3, f) == "too_few_chars"
    assert length_reason("a" * 21, 3, f) == "too_many_chars"
    assert length_reason("hello there", 1, f) == "too_few_tokens"
    assert length_reason("hello there", 2, f) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"min_chars": -1}, "--min-chars: expected an integer >= 0"),
    ({"min_chars": 10, "max_chars": 5}, "--max-chars: expected >= --min-chars"),
    ({"min_letter_fraction": 1.5}, "--min-letter-fraction: expected a number in"),
    ({"scripts": ("klingon",)}, "--scripts: expected names among"),
])
def test_bad_filter_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextFilters(**kwargs)


def test_normalisation_and_exact_hash():
    assert normalize_text("  What’s   the CAPITAL of France?!  ") == "whats the capital of france"
    assert text_hash("What's the capital of France?") == text_hash("what’s THE capital, of france")
    assert text_hash("What is the capital of France?") != text_hash("What is the capital of Spain?")


# --------------------------------------------------------------------------------------------------------
# MinHash near-duplicates
# --------------------------------------------------------------------------------------------------------

BASE = ("Could you help me plan a three day trip to the mountains with my two kids, including easy hikes, "
        "a budget for food and a list of things to pack for cold nights?")
NEAR = BASE.replace("three day", "four day")  # one word changed
OTHERS = [
    "How do I fix a TypeError that says unsupported operand types for plus between int and str in Python?",
    "What are some good vegetarian dinner ideas that take less than thirty minutes to cook?",
    "Explain the difference between a virus and a bacterium in simple words for a ten year old.",
    "Write a short cover letter for a junior data analyst position at a logistics company.",
    "Could you help me plan a birthday party for my grandmother who loves gardening and old films?",
]


def test_minhash_estimates_jaccard_and_catches_near_duplicates():
    hasher = MinHasher()
    exact = jaccard(BASE, NEAR)
    assert 0.7 < exact < 0.95
    assert abs(MinHasher.similarity(hasher.signature(BASE), hasher.signature(NEAR)) - exact) < 0.15
    index = MinHashIndex(hasher, 0.7)
    index.add_texts([BASE, *OTHERS])
    assert index.query(hasher.signature(NEAR))[0] == BASE
    for i, text in enumerate(OTHERS):  # different texts are kept apart; each finds itself
        assert index.query(hasher.signature(text)) == (text, 1.0)
        others = MinHashIndex(hasher, 0.7)
        others.add_texts([BASE] + OTHERS[:i] + OTHERS[i + 1:])
        assert others.query(hasher.signature(text)) is None
    assert index.query(hasher.signature("Tell me a joke about penguins and ice cream trucks.")) is None


GOLDEN_SIGNATURE = [130590564811083707, 598938428518330722, 15174274543149588]


def test_minhash_is_deterministic_across_instances_and_processes():
    a, b = MinHasher(), MinHasher()
    assert np.array_equal(a.signature(BASE), b.signature(BASE))
    # fixed values: numpy's RandomState stream and blake2b are stable, so signatures stay comparable
    assert a.signature("the quick brown fox")[:3].tolist() == GOLDEN_SIGNATURE
    assert not np.array_equal(MinHasher(seed=2).signature(BASE), a.signature(BASE))
    assert a.signature("!!!").tolist() == [(1 << 61) - 1] * 128  # no shingles: similar to nothing


def test_lsh_query_matches_brute_force():
    rng = random.Random(0)
    words = "cat dog fish bird tree river house road car train plane ship sun moon star cloud rain snow".split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(60)]
    texts += [t.replace(t.split()[3], "zebra", 1) for t in texts[:20]]  # near copies
    hasher = MinHasher()
    sigs = [hasher.signature(t) for t in texts]
    index = MinHashIndex(hasher, 0.6)
    for i, sig in enumerate(sigs):
        brute = [(MinHasher.similarity(s, sig), -j) for j, s in enumerate(sigs[:i])]
        best = max(brute, default=None)
        expected = None if best is None or best[0] < 0.6 else (-best[1], best[0])
        assert index.query(sig) == expected
        index.add(sig, i)


def test_minhash_index_arguments():
    with pytest.raises(ValueError, match="bands: expected a divisor of num_perm=128"):
        MinHashIndex(MinHasher(), 0.5, bands=30)
    with pytest.raises(ValueError, match="threshold: expected a number in"):
        MinHashIndex(MinHasher(), 0.0)


# --------------------------------------------------------------------------------------------------------
# The template's opening of a user turn
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(corpus_words())


def test_user_turn_prefix_of_the_toy_template(tokenizer):
    p = user_turn_prefix(tokenizer)
    assert p.text == "<|im_start|>user\n"
    assert p.ids == tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"]
    assert p.end_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    system = user_turn_prefix(tokenizer, [{"role": "system", "content": "answer in one word ."}])
    assert system.text == "<|im_start|>system\nanswer in one word .<|im_end|>\n<|im_start|>user\n"
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello you"}]
    follow = user_turn_prefix(tokenizer, chat)
    assert follow.text == tokenizer.apply_chat_template(chat, tokenize=False) + "<|im_start|>user\n"


def test_user_turn_prefix_with_a_default_system_prompt(tokenizer):
    tok = build_word_tokenizer(corpus_words())
    tok.chat_template = DEFAULT_SYSTEM_TEMPLATE
    assert user_turn_prefix(tok).text == ("<|im_start|>system\nyou are a helpful assistant<|im_end|>\n"
                                         "<|im_start|>user\n")
    own = user_turn_prefix(tok, [{"role": "system", "content": "be brief"}])
    assert own.text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n"


def test_user_turn_prefix_errors():
    tok = build_word_tokenizer(corpus_words())
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\nhello<|im_end|>\n{% endfor %}"
    with pytest.raises(ValueError, match="does not write a user message's content"):
        user_turn_prefix(tok)
    tok.chat_template = "{% for m in messages %}<|im_start|>user{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(ValueError, match="does not end at a token boundary"):
        user_turn_prefix(tok)  # "user" + content is one word: the cut splits a token
    tok.chat_template = "{{ raise_exception('no') }}"
    with pytest.raises(ValueError, match="cannot render a user turn"):
        user_turn_prefix(tok)


# --------------------------------------------------------------------------------------------------------
# Exclude files
# --------------------------------------------------------------------------------------------------------


def test_read_exclude_texts_formats(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "first question here"},
                          {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "and a follow up"}]},
            "a plain string prompt", {"conversations": [{"from": "human", "value": "sharegpt question"}]}]
    gz = tmp_path / "x.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    assert read_exclude_texts(gz) == ["first question here", "and a follow up", "a plain string prompt",
                                      "sharegpt question"]
    txt = tmp_path / "x.txt"
    txt.write_text("one prompt\n\ntwo prompt\n")
    assert read_exclude_texts(txt) == ["one prompt", "two prompt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"prompt": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON string or an object with 'messages'"):
        read_exclude_texts(bad)
    with pytest.raises(FileNotFoundError, match="--exclude: .* is not a file"):
        read_exclude_texts(tmp_path / "missing.jsonl")


def test_the_projects_heldout_set_is_read_and_its_prompts_are_leaks():
    texts = read_exclude_texts(HELDOUT)
    assert len(texts) >= 100
    checker = LeakChecker(texts, MinHasher(), 0.5, 32)
    assert checker.check(texts[0]) == "leak_exact"
    words = texts[0].split()
    if len(words) >= 12:
        words[len(words) // 2] = "banana"
        assert checker.check(" ".join(words)) == "leak_near"
    assert checker.check("Describe the migration routes of arctic terns across the Atlantic.") is None


# --------------------------------------------------------------------------------------------------------
# End to end on a tiny target
# --------------------------------------------------------------------------------------------------------


def _save_target(directory, *, template: str | None = None) -> str:
    """A tiny Llama whose next token depends on the current one only (layers add nothing): after about a third
    of the words the end token is likely (so sampled turns end), after the others it never comes."""
    from transformers import LlamaForCausalLM

    tok = build_word_tokenizer(corpus_words())
    if template is not None:
        tok.chat_template = template
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_target_config(len(tok), hidden_size=32, num_hidden_layers=2)).eval()
    eos = tok.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        ending = torch.tensor([(i % 3 == 0) for i in range(emb.shape[0])])
        emb[:, 0] = torch.where(ending, 8.0, -8.0)
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[eos, 0] = 0.8
        model.lm_head.weight[:, 1:] *= 40  # a peaked, token-dependent choice of the next word
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return _save_target(tmp_path_factory.mktemp("tiny_target"))


LOOSE = TextFilters(min_chars=1, min_tokens=1, min_letter_fraction=0.0, min_vowel_fraction=0.0,
                    min_script_purity=0.0)


def _rows(out) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(out)):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(os.path.join(out, name), "rt") as f:
            rows += [json.loads(line) for line in f]
    return rows


def _synth(target, out, **kw):
    kw = {"num_prompts": 6, "engine": "hf", "max_tokens": 12, "max_new_tokens": 6, "batch_size": 4,
          "shard_size": 4, "filters": LOOSE, "show_progress": False, **kw}
    return synthesize_prompts(target, out, **kw)


def test_synthesize_end_to_end_rows_settings_and_loaders(target, tmp_path):
    out = tmp_path / "synth"
    stats = _synth(target, out, turns=2)
    rows = _rows(out)
    assert sorted(os.listdir(out)) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert len(rows) == 6 == stats["rows"] == stats["kept"] and stats["stopped"] == "done"
    assert [r["synth_index"] for r in rows] == sorted(r["synth_index"] for r in rows)
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles in (["user", "assistant"], ["user", "assistant", "user", "assistant"])
        assert len(r["finish_reasons"]) == roles.count("assistant")
        assert all(m["content"].strip() for m in r["messages"] if m["role"] == "user")
        assert not any("<|im_end|>" in m["content"] for m in r["messages"])
    assert stats["candidates"] == 6 + sum(stats["dropped"].values())
    assert stats["prompt_tokens"] > 0 and stats["answer_tokens"] > 0
    saved = json.load(open(settings_path(out)))
    assert saved["engine"] == "hf" and saved["turns"] == 2 and saved["temperature"] == 1.0
    assert saved["batch_size"] == 4 and saved["filters"]["min_chars"] == 1
    assert saved["run"]["user_turn_opening"] == "<|im_start|>user\n" and saved["progress"]["complete"]
    assert {"eagle_ext", "torch", "transformers"} <= set(saved["versions"])
    # the rows are training chats, and the directory is a data path the loader reads
    from eagle_ext.data.chat import normalize_chat_row
    from eagle_ext.data.sources import load_chat_source, source_rows_from_batch

    assert all(normalize_chat_row(r)[0][-1]["role"] == "assistant" for r in rows)
    source = load_chat_source(str(out), cache_dir=str(tmp_path / "hf_cache"))
    assert len(source.dataset) == 6
    assert source_rows_from_batch(source.dataset[:6])[0]["messages"] == rows[0]["messages"]


def test_no_answers_rows_are_regenerate_prompts(target, tmp_path):
    out = tmp_path / "synth"
    _synth(target, out, answers=False, compress=True)
    assert all(n.endswith(".jsonl.gz") for n in os.listdir(out))
    rows = _rows(out)
    assert all(list(r) == ["messages", "synth_index"] and len(r["messages"]) == 1 for r in rows)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.messages for p in read_prompts(prompts)] == [r["messages"] for r in rows]


def test_a_system_turn_is_written_and_the_default_one_is_not(tmp_path):
    target = _save_target(tmp_path / "t", template=DEFAULT_SYSTEM_TEMPLATE)
    _synth(target, tmp_path / "a", num_prompts=2)
    assert all(r["messages"][0]["role"] == "user" for r in _rows(tmp_path / "a"))
    saved = json.load(open(settings_path(tmp_path / "a")))
    assert saved["run"]["user_turn_opening"].startswith("<|im_start|>system\nyou are a helpful assistant")
    _synth(target, tmp_path / "b", num_prompts=2, system="be brief")
    assert all(r["messages"][0] == {"role": "system", "content": "be brief"} for r in _rows(tmp_path / "b"))


def test_deterministic_for_a_seed(target, tmp_path):
    _synth(target, tmp_path / "a", seed=3)
    _synth(target, tmp_path / "b", seed=3)
    _synth(target, tmp_path / "c", seed=4)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b") != _rows(tmp_path / "c")


def test_filters_and_dedup_are_counted(target, tmp_path):
    stats = _synth(target, tmp_path / "s", num_prompts=10, filters=TextFilters(), max_tokens=6, turns=2)
    dropped = stats["dropped"]
    assert dropped.get("truncated", 0) > 0  # no end token within 6 + 1 tokens
    assert sum(dropped.values()) + stats["kept"] == stats["candidates"]
    texts = [r["messages"][0]["content"] for r in _rows(tmp_path / "s")]
    assert len({text_hash(t) for t in texts}) == len(texts)
    assert all(garbage_reason(t) is None and degenerate_reason(t) is None for t in texts)


def test_resume_after_an_interruption_gives_the_uninterrupted_rows(target, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    _synth(target, whole, num_prompts=9, shard_size=4, batch_size=3, turns=2)
    expected = _rows(whole)

    calls = {"n": 0}
    real = HfEngine.generate

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # the third batch, after the first shard is complete
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    part = tmp_path / "part"
    monkeypatch.setattr(HfEngine, "generate", failing)
    with pytest.raises(KeyboardInterrupt):
        _synth(target, part, num_prompts=9, shard_size=4, batch_size=3, turns=2)
    monkeypatch.setattr(HfEngine, "generate", real)
    first = _rows(part)
    assert 0 < len(first) < 9 and first == expected[:len(first)]
    stats = _synth(target, part, num_prompts=9, shard_size=4, batch_size=3, turns=2)
    assert _rows(part) == expected and stats["rows"] == 9 and stats["new_rows"] == 9 - len(first)
    assert sorted(os.listdir(part)) == sorted(os.listdir(whole))
    # growing a finished set continues it as an uninterrupted run would, also from the middle of a batch
    assert json.load(open(settings_path(part)))["progress"]["next_index"] % 3 != 0
    _synth(target, part, num_prompts=13, shard_size=4, batch_size=3, turns=2)
    _synth(target, tmp_path / "straight", num_prompts=13, shard_size=4, batch_size=3, turns=2)
    assert _rows(part) == _rows(tmp_path / "straight") and len(_rows(part)) == 13
    counts = [{k: json.load(open(settings_path(d)))["progress"]["stats"][k] for k in ("candidates", "kept", "dropped")}
              for d in (part, tmp_path / "straight")]
    assert counts[0] == counts[1]  # candidates decided before the interruption are not counted twice
    again = _synth(target, part, num_prompts=13, shard_size=4, batch_size=3, turns=2)
    assert again["new_rows"] == 0


def test_resume_cuts_rows_written_after_the_last_record(target, tmp_path):
    out = tmp_path / "s"
    _synth(target, out, num_prompts=6)
    expected = _rows(out)
    with open(out / "shard-00001.jsonl", "a") as f:  # a crash between a shard write and its record
        f.write('{"messages": [{"role": "user", "content": "stray"}], "synth_index": 99}\n')
    (out / "shard-00002.jsonl").write_text('{"messages": []}\n')
    (out / ".shard-00002.jsonl.abc.tmp").write_text("half")
    stats = _synth(target, out, num_prompts=6)
    assert stats["new_rows"] == 0 and _rows(out) == expected
    assert sorted(os.listdir(out)) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    (out / "shard-00000.jsonl").write_text("")
    with pytest.raises(ValueError, match="does not hold the 4 rows its settings file records"):
        _synth(target, out, num_prompts=8)


def _cli(target, out, *extra) -> int:
    return cli_main(["synthesize", "--target", target, "--out", str(out), "-n", "3", "--engine", "hf",
                     "--max-tokens", "12", "--max-new-tokens", "4", "--min-chars", "1", "--min-tokens", "1",
                     "--no-progress", *extra])


def test_resume_refuses_changed_settings(target, tmp_path, capsys):
    out = tmp_path / "s"
    assert _cli(target, out, "--temperature", "1.0", "--max-candidates", "200") == 0
    assert f"synthesize (hf): 3 rows in {out} (3 new) from " in capsys.readouterr().out
    assert _cli(target, out, "-n", "50", "--max-candidates", "12") == 1  # the budget ends first: a warning
    assert "stopped at --max-candidates with" in capsys.readouterr().err
    assert _cli(target, out, "--temperature", "0.8") == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "temperature: 1.0 -> 0.8" in err
    assert _cli(target, out, "--batch-size", "5") == 2 and "batch_size: 16 -> 5" in capsys.readouterr().err
    saved = json.load(open(settings_path(out)))
    assert saved["commands"][0].startswith("eagle-ext synthesize --target ")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "data.jsonl").write_text("{}\n")
    assert _cli(target, stranger) == 2
    assert "has no stranger.settings.json; it was not written by eagle-ext synthesize" in capsys.readouterr().err


def test_exclude_drops_leaked_prompts_and_counts_them(target, tmp_path):
    base = tmp_path / "base"
    _synth(target, base, num_prompts=6, turns=1)
    prompts = [r["messages"][0]["content"] for r in _rows(base)]
    long = max(prompts, key=lambda p: len(p.split()))
    words = long.split()
    words[-1] = "zebra" if words[-1] != "zebra" else "yak"
    exclude = tmp_path / "heldout.jsonl.gz"
    with gzip.open(exclude, "wt") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": prompts[0]},
                                         {"role": "assistant", "content": "x"}]}) + "\n")
        f.write(json.dumps(" ".join(words)) + "\n")
    stats = _synth(target, tmp_path / "ex", num_prompts=6, turns=1, exclude=[exclude], exclude_threshold=0.5)
    kept = [r["messages"][0]["content"] for r in _rows(tmp_path / "ex")]
    assert prompts[0] not in kept and stats["dropped"]["leak_exact"] >= 1
    if jaccard(long, " ".join(words)) >= 0.6 and long != prompts[0]:
        assert long not in kept and stats["dropped"].get("leak_near", 0) >= 1
    checker = LeakChecker(read_exclude_texts(exclude), MinHasher(), 0.5, 32)
    assert all(checker.check(t) is None for t in kept)
    assert json.load(open(settings_path(tmp_path / "ex")))["exclude"][0]["path"] == str(exclude)


@pytest.fixture
def unloadable_target(tmp_path):
    """Passes the path check; anything that tries to load it as a model or tokenizer fails."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.json").write_text("{}")
    return str(tmp_path / "fake")


@pytest.mark.parametrize("extra, match", [
    (["-n", "0"], "--num-prompts: expected an integer >= 1, got 0"),
    (["--turns", "0"], "--turns: expected an integer >= 1, got 0"),
    (["--turns", "2", "--no-answers"], "--turns 2: follow-up user turns are written after the target's answers"),
    (["--temperature", "0"], "--temperature: expected a finite number > 0"),
    (["--top-p", "0"], "--top-p: expected a number in (0, 1], got 0.0"),
    (["--top-p", "1.5"], "--top-p: expected a number in (0, 1], got 1.5"),
    (["--near-dup-threshold", "0"], "--near-dup-threshold: expected a number in (0, 1]"),
    (["--exclude-threshold", "2"], "--exclude-threshold: expected a number in (0, 1]"),
    (["--shard-size", "0"], "--shard-size: expected an integer >= 1, got 0"),
    (["--max-tokens", "0"], "--max-tokens: expected an integer >= 1, got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed: expected an integer >= 0"),
    (["--max-candidates", "0"], "--max-candidates: expected an integer >= 1"),
    (["--engine", "tgi"], "--engine: expected one of ['auto', 'hf', 'vllm'], got 'tgi'"),
    (["--min-chars", "-1"], "--min-chars: expected an integer >= 0"),
    (["--scripts", "klingon"], "--scripts: expected names among"),
    (["--system", " "], "--system: expected a non-empty text"),
    (["--system", f"say {SENTINEL}"], "--system: must not contain"),
    (["--exclude", "/nonexistent/heldout.jsonl"], "--exclude: '/nonexistent/heldout.jsonl' is not a file"),
    (["--vllm-python", "/usr/bin/python3"], "--vllm-python: only used with --engine vllm"),
])
def test_bad_arguments_fail_before_loading(unloadable_target, tmp_path, capsys, extra, match):
    args = ["synthesize", "--target", unloadable_target, "--out", str(tmp_path / "o"), "-n", "3", "--engine", "hf",
            "--no-progress", *extra]
    assert cli_main(args) == 2
    assert match in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_bad_paths_fail_before_loading(unloadable_target, tmp_path):
    with pytest.raises(FileNotFoundError, match="--target: .* is not a model directory"):
        synthesize_prompts(tmp_path / "missing", tmp_path / "o", num_prompts=1, engine="hf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out: .* is a file; expected a directory"):
        synthesize_prompts(unloadable_target, tmp_path / "file", num_prompts=1, engine="hf")


# --------------------------------------------------------------------------------------------------------
# The vLLM path, with a fake engine of the same interface
# --------------------------------------------------------------------------------------------------------


class _FakeOutput:
    def __init__(self, token_ids, finish_reason):
        self.token_ids, self.text, self.finish_reason = token_ids, "", finish_reason


def _fake_vllm_module(tokenizer, *, available=True, log=None, texts=None):
    module = types.ModuleType("eagle_ext.engines.vllm")

    class VllmUnavailable(RuntimeError):
        pass

    def find_vllm_python(explicit=None):
        if not available:
            raise VllmUnavailable("vLLM was not found; install it with `make vllm`")
        return explicit or "/opt/vllm/bin/python"

    words = [tokenizer.convert_tokens_to_ids(w) for w in "what is the capital of france tell me about a blue whale".split()]
    eos = tokenizer.eos_token_id

    class VllmEngine:
        def __init__(self, model, *, dtype="bfloat16", seed=0, max_model_len=None, python=None,
                     speculative_config=None):
            log.append(("init", model, python, seed))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            log.append(("close",))

        def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, seeds=None, stop_token_ids=None,
                     ignore_eos=False):
            log.append(("generate", [list(p) for p in prompts], max_new_tokens, temperature, top_p, seeds,
                        stop_token_ids))
            outs = []
            for i, _ in enumerate(prompts):
                if temperature > 0 and texts is not None:  # one of a few given texts
                    text = texts[random.Random(seeds[i]).randrange(len(texts))]
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                elif temperature > 0:  # a per-request seeded draw, independent of the batch
                    rng = random.Random(seeds[i])
                    n = rng.randint(2, 9)
                    ids = [rng.choice(words) for _ in range(n)]
                else:
                    ids = words[:3]
                ids = ids[:max_new_tokens]
                outs.append(_FakeOutput(ids + [eos] if len(ids) < max_new_tokens else ids,
                                        "stop" if len(ids) < max_new_tokens else "length"))
            return outs

    module.VllmEngine, module.VllmUnavailable, module.find_vllm_python = VllmEngine, VllmUnavailable, find_vllm_python
    return module


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    log: list = []
    module = _fake_vllm_module(tokenizer, log=log)
    package = types.ModuleType("eagle_ext.engines")
    package.vllm = module
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "eagle_ext.engines", package)
    monkeypatch.setitem(sys.modules, "eagle_ext.engines.vllm", module)
    return module, log


def test_vllm_path_seeds_stop_tokens_and_multi_turn(target, tmp_path, fake_vllm, tokenizer):
    module, log = fake_vllm
    out = tmp_path / "v"
    stats = _synth(target, out, engine="vllm", vllm_python="/my/python", turns=2, seed=7, num_prompts=5,
                   filters=TextFilters(min_chars=1, min_tokens=1))
    assert stats["engine"] == "vllm" and log[0] == ("init", target, "/my/python", 7) and log[-1] == ("close",)
    gens = [e for e in log if e[0] == "generate"]
    eos = tokenizer.eos_token_id
    prompt_calls = [g for g in gens if g[3] > 0]
    answer_calls = [g for g in gens if g[3] == 0]
    assert prompt_calls and answer_calls
    for _, prompts, max_new, temperature, top_p, seeds, stops in prompt_calls:
        assert max_new == 12 + 1 and temperature == 1.0 and top_p == 1.0 and eos in stops
        assert len(seeds) == len(prompts)
    first = prompt_calls[0]
    assert first[1][0] == user_turn_prefix(tokenizer).ids
    assert first[5] == [row_seed(7, i, 0) for i in range(4)]  # per-row seeds: seed, candidate index, turn
    rows = _rows(out)
    assert len(rows) == 5 and all(r["finish_reasons"] for r in rows)
    two = [r for r in rows if len(r["messages"]) == 4]
    assert two  # follow-ups are prompted with the conversation so far, then the user header
    r = two[0]
    follow_ids = user_turn_prefix(tokenizer, r["messages"][:2]).ids
    assert any(follow_ids in g[1] for g in prompt_calls[1:])
    saved = json.load(open(settings_path(out)))
    assert saved["engine"] == "vllm" and "batch_size" not in saved and saved["vllm_python"] == "/my/python"


def test_vllm_rows_do_not_depend_on_batch_size(target, tmp_path, fake_vllm):
    _synth(target, tmp_path / "a", engine="vllm", batch_size=2, turns=2)
    _synth(target, tmp_path / "b", engine="vllm", batch_size=5, turns=2)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_exact_and_near_duplicates_are_dropped_and_counted(target, tmp_path, monkeypatch, tokenizer):
    a = "what is the capital of france tell me about a blue whale and the red fox"
    near = a.replace("fox", "owl")  # 13 of 15 word 3-grams shared
    b = "say hello to the busy bee in the green forest then go to the farm"
    c = "count from 3 to 7 then tell me what comes after monday"
    assert jaccard(a, near) > 0.8 and jaccard(a, b) < 0.2
    module = _fake_vllm_module(tokenizer, log=[], texts=[a, a, near, b, c])
    package = types.ModuleType("eagle_ext.engines")
    package.vllm, package.__path__ = module, []
    monkeypatch.setitem(sys.modules, "eagle_ext.engines", package)
    monkeypatch.setitem(sys.modules, "eagle_ext.engines.vllm", module)
    stats = _synth(target, tmp_path / "d", engine="vllm", num_prompts=4, max_candidates=40, max_tokens=20)
    kept = [r["messages"][0]["content"] for r in _rows(tmp_path / "d")]
    assert sorted(kept) == sorted([a, b, c]) or sorted(kept) == sorted([near, b, c])
    assert stats["rows"] == 3 and stats["stopped"] == "max_candidates" and stats["candidates"] == 40
    assert stats["dropped"]["exact_duplicate"] > 0 and stats["dropped"]["near_duplicate"] > 0
    assert sum(stats["dropped"].values()) == 37


def test_engine_resolution(monkeypatch, tokenizer, fake_vllm):
    module, _ = fake_vllm
    assert resolve_engine("auto") == ("vllm", "/opt/vllm/bin/python")
    assert resolve_engine("hf") == ("hf", None)
    unavailable = _fake_vllm_module(tokenizer, available=False, log=[])
    monkeypatch.setitem(sys.modules, "eagle_ext.engines.vllm", unavailable)
    monkeypatch.setattr(sys.modules["eagle_ext.engines"], "vllm", unavailable)
    assert resolve_engine("auto") == ("hf", None)  # the default falls back to hf
    with pytest.raises(ValueError, match="--engine vllm: vLLM is not available: .*make vllm"):
        resolve_engine("vllm")


def test_engine_resolution_without_the_vllm_engine_module(monkeypatch):
    package = types.ModuleType("eagle_ext.engines")  # without a vllm attribute, whatever was imported before
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "eagle_ext.engines", package)
    monkeypatch.setitem(sys.modules, "eagle_ext.engines.vllm", None)  # importing it raises ImportError
    assert resolve_engine("auto") == ("hf", None)
    with pytest.raises(ValueError, match="--engine vllm: vLLM is not available: the vLLM engine module cannot be"):
        resolve_engine("vllm")


def test_engine_vllm_unavailable_fails_before_loading(unloadable_target, tmp_path, monkeypatch, tokenizer, capsys):
    module = _fake_vllm_module(tokenizer, available=False, log=[])
    package = types.ModuleType("eagle_ext.engines")
    package.vllm, package.__path__ = module, []
    monkeypatch.setitem(sys.modules, "eagle_ext.engines", package)
    monkeypatch.setitem(sys.modules, "eagle_ext.engines.vllm", module)
    args = ["synthesize", "--target", unloadable_target, "--out", str(tmp_path / "o"), "-n", "2", "--engine", "vllm"]
    assert cli_main(args) == 2
    assert "--engine vllm: vLLM is not available" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


# --------------------------------------------------------------------------------------------------------
# SmolLM2 (slow)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # loads SmolLM2 (135M, fp32) and generates a few hundred tokens on CPU: ~1 min
def test_smollm2_prompts_and_answers(tmp_path):
    from eagle_ext.demo.smollm2 import default_cache_dir

    directory = default_cache_dir()
    if not os.path.isfile(os.path.join(directory, "config.json")):
        pytest.skip(f"SmolLM2 not converted at {directory} (run the demo once, or eagle_ext.demo.smollm2.smollm2_path())")
    out = tmp_path / "s"
    stats = synthesize_prompts(directory, out, num_prompts=3, engine="hf", max_tokens=96, max_new_tokens=32,
                               batch_size=6, show_progress=False, exclude=[HELDOUT])
    rows = _rows(out)
    assert len(rows) == 3 and stats["rows"] == 3
    saved = json.load(open(settings_path(out)))
    assert "You are a helpful AI assistant named SmolLM" in saved["run"]["user_turn_opening"]
    assert saved["run"]["user_turn_opening"].endswith("<|im_start|>user\n")
    for r in rows:
        user = r["messages"][0]["content"]
        assert r["messages"][0]["role"] == "user" and garbage_reason(user) is None and len(user) >= 8
        assert r["messages"][1]["role"] == "assistant"
