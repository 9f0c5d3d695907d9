"""Shared helpers for the data tests: real chat templates and a small BPE tokenizer trained here.

The templates (``tests/fixtures/chat_templates/<family>.jinja``) are the ones the model families ship
(Llama-3-Instruct, Qwen2.5, Qwen3 with ``<think>``, Mistral-Instruct ``[INST]``), plus a Qwen3 variant with
``{% generation %}`` tags (the form TRL-style training templates use). The tests at the bottom only check that
the helpers themselves work.
"""

from __future__ import annotations

import functools
import os

import pytest

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "chat_templates")
#: Qwen3 and Qwen3 with the assistant output (reasoning, content, tool calls, ``<|im_end|>``) in a generation block.
FAMILIES = ("llama3", "qwen25", "qwen3", "qwen3_generation", "mistral")


def _read_template(family: str) -> str:
    """``tests/fixtures/chat_templates/<family>.jinja`` exactly as stored (newline="": no newline translation)."""
    with open(os.path.join(TEMPLATE_DIR, f"{family}.jinja"), encoding="utf-8", newline="") as f:
        return f.read()


TEMPLATES = {family: _read_template(family) for family in FAMILIES}

#: (bos, eos, pad) per family, as the real tokenizers define them.
SPECIAL_TOKENS = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", None),
    "qwen25": (None, "<|im_end|>", "<|endoftext|>"),
    "qwen3": (None, "<|im_end|>", "<|endoftext|>"),
    "qwen3_generation": (None, "<|im_end|>", "<|endoftext|>"),
    "mistral": ("<s>", "</s>", None),
}

CONTROL_TOKENS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
    "<unk>",
]

CORPUS = [
    "Hello there, how are you today? I am fine, thank you for asking.",
    "The weather is nice and the sun is shining over the quiet little town.",
    "Please explain how photosynthesis works in simple words.",
    "Plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Let me think about this step by step before answering the question.",
    "You are a helpful assistant. Answer briefly and precisely.",
    "What is the capital of France? The capital of France is Paris.",
    "def add(a, b):\n    return a + b\n",
    "system user assistant tool response call arguments name get_weather city",
]


@functools.cache
def build_tokenizer(family: str = "qwen25", vocab_size: int = 600):
    """A byte-level BPE tokenizer trained in-process on :data:`CORPUS`, with ``family``'s chat template and
    special tokens (every control token of every family is an added special token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos, eos, pad = SPECIAL_TOKENS[family]
    kwargs = {"unk_token": "<unk>", "eos_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    if pad:
        kwargs["pad_token"] = pad
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    hf.chat_template = TEMPLATES[family]
    return hf


def expected_tokens(tokenizer, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """Oracle: ids and mask from text pieces tokenised one by one, each piece's tokens taking its flag.

    Valid when the pieces meet at token boundaries, which the caller checks by comparing the ids with the
    tokenisation of the whole text.
    """
    ids, mask = [], []
    for text, flag in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [flag] * len(piece_ids)
    return ids, mask


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_every_template_renders_a_conversation(family):
    tok = build_tokenizer(family)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert "Hi" in text and "Hello" in text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_control_tokens_are_single_tokens():
    tok = build_tokenizer("llama3")
    for t in CONTROL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
