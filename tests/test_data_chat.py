"""Row normalisation and the assistant loss mask, token by token, on real chat templates.

The oracle for each conversation is written by hand as text pieces with a flag; each piece is tokenised on
its own and its tokens take the flag. Flags: 0 / 1, ``H`` = template-supplied start of an assistant turn
(supervised unless ``mask_generation_prompt``), ``R`` = reasoning (supervised unless
``mask_reasoning_content``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from eagle_ext.data.chat import (
    ChatTemplateError,
    ChatTokenizer,
    SkippedRow,
    normalize_chat_row,
    normalize_messages,
    token_mask_from_spans,
    tokenize_conversation,
)
from tests.test_data_helpers import build_tokenizer, expected_tokens

OPTIONS = [
    {},
    {"mask_generation_prompt": True},
    {"mask_reasoning_content": True},
    {"mask_generation_prompt": True, "mask_reasoning_content": True},
]


def _flag(flag, options) -> int:
    if flag == "H":
        return 0 if options.get("mask_generation_prompt") else 1
    if flag == "R":
        return 0 if options.get("mask_reasoning_content") else 1
    return flag


def _check(family, messages, pieces, options, tools=None):
    tok = build_tokenizer(family)
    resolved = [(text, _flag(flag, options)) for text, flag in pieces]
    want_ids, want_mask = expected_tokens(tok, resolved)
    full_text = "".join(text for text, _ in pieces)
    assert tok.apply_chat_template(messages, tools=tools, tokenize=False) == full_text
    # the pieces meet at token boundaries, so the piecewise oracle is the real tokenisation
    assert tok(full_text, add_special_tokens=False)["input_ids"] == want_ids
    ids, mask = ChatTokenizer(tok, **options)(normalize_messages(messages), tools)
    assert ids.tolist() == want_ids
    toks = tok.convert_ids_to_tokens(want_ids)
    got = [(t, int(m)) for t, m in zip(toks, mask, strict=True)]
    want = [(t, m) for t, m in zip(toks, want_mask, strict=True)]
    assert got == want


TWO_TURNS = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]

with open(os.path.join(os.path.dirname(__file__), "fixtures", "chat_mask_oracles.json")) as _f:
    ORACLES = {name: case for name, case in json.load(_f).items() if not name.startswith("_")}
_RUNS = {"all": OPTIONS, "first2": OPTIONS[:2], "none": [{}]}


@pytest.mark.parametrize(
    "name, options",
    [(name, options) for name, case in ORACLES.items() for options in _RUNS[case["options"]]],
    ids=lambda v: "+".join(k.removeprefix("mask_") for k in v) or "default" if isinstance(v, dict) else v,
)
def test_assistant_mask_matches_the_oracle(name, options):
    """tests/fixtures/chat_mask_oracles.json: Llama 3, Qwen 2.5 (with a tool call and its response), Qwen 3
    (reasoning as a field or inline, the empty think block, generation tags), Mistral, an opening assistant turn."""
    case = ORACLES[name]
    pieces = [tuple(piece) for piece in case["pieces"]]
    if "system_piece_until" in case:  # the system prompt the template writes for the tools, rendered here
        system = build_tokenizer(case["family"]).apply_chat_template(case["messages"][:1], tools=case["tools"],
                                                                     tokenize=False)
        pieces[0] = (system[: system.index(case["system_piece_until"])], pieces[0][1])
    _check(case["family"], case["messages"], pieces, options, tools=case.get("tools"))


def test_qwen3_multi_turn_is_not_prefix_stable():
    tok = build_tokenizer("qwen3")
    with pytest.raises(ChatTemplateError, match="not prefix-stable") as err:
        ChatTokenizer(tok)(normalize_messages(TWO_TURNS))
    assert "{% generation %}" in str(err.value)  # the message says what to change


def test_generation_tags_agree_with_transformers_assistant_mask():
    tok = build_tokenizer("qwen3_generation")
    messages = normalize_messages(
        [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "I am fine, thank you.", "reasoning_content": "Be polite."},
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": "The weather is nice.", "reasoning_content": "Look outside."},
        ]
    )
    ref = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = ChatTokenizer(tok)(messages)
    assert ids.tolist() == ref["input_ids"]
    assert mask.tolist() == ref["assistant_masks"]
    assert 0 < mask.sum() < mask.size


def test_mistral_rejects_system_role_as_a_skipped_row():
    with pytest.raises(SkippedRow) as err:
        ChatTokenizer(build_tokenizer("mistral"))(normalize_messages(TWO_TURNS))
    assert err.value.reason == "template_error" and "alternate" in err.value.detail


def test_token_mask_from_spans_overlap_and_containment():
    # text "abcdefgh"; tokens: [ab][cd][e][][fgh]  (a zero-width token counts as its first character)
    offsets = np.array([[0, 2], [2, 4], [4, 5], [5, 5], [5, 8]])
    assert token_mask_from_spans(offsets, 8, [(3, 6)]).tolist() == [0, 1, 1, 1, 1]
    # removal takes only tokens entirely inside it
    assert token_mask_from_spans(offsets, 8, [(0, 8)], [(1, 5)]).tolist() == [1, 0, 0, 1, 1]
    assert token_mask_from_spans(offsets, 8, [], []).tolist() == [0, 0, 0, 0, 0]


def test_normalize_sharegpt_and_openai_rows():
    row = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "user", "value": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"from": "ChatGPT", "value": None},
        ],
        "system": "Be brief.",
        "tools": '[{"name": "f"}]',
    }
    messages, tools = normalize_chat_row(row)
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]
    assert tools == [{"name": "f"}]
    row = {
        "messages": [
            {"role": "developer", "content": "sys"},
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "a",
                "reasoning_content": "r",
                "tool_calls": None,
                "name": "bot",
            },
            {"role": "ipython", "content": "out", "tool_call_id": "1"},
        ]
    }
    messages, tools = normalize_chat_row(row)
    assert messages[0]["role"] == "system" and messages[3] == {
        "role": "tool",
        "content": "out",
        "tool_call_id": "1",
    }
    assert messages[2] == {"role": "assistant", "content": "a", "reasoning_content": "r", "name": "bot"}
    assert tools is None


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no_assistant"),
        ({"messages": []}, "no_assistant"),
        ({"text": "plain text"}, "no_messages"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "unknown_role"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "u"}]},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "non_text_content",
        ),
        ({"messages": "not json"}, "invalid_message"),
    ],
)
def test_unusable_rows_are_skipped_with_a_reason(row, reason):
    with pytest.raises(SkippedRow) as err:
        normalize_chat_row(row)
    assert err.value.reason == reason


def test_tokenize_conversation_truncates_and_validates():
    tok = build_tokenizer("llama3")
    messages = [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "I am fine, thank you."}]
    full = tokenize_conversation(messages, tok)
    short = tokenize_conversation(messages, tok, seq_length=10)
    assert short["input_ids"] == full["input_ids"][:10] and short["loss_mask"] == full["loss_mask"][:10]
    assert sum(full["loss_mask"]) > 0 and full["loss_mask"][0] == 0
    with pytest.raises(ValueError, match="seq_length must be None or an int >= 2, got 1"):
        tokenize_conversation(messages, tok, seq_length=1)


def test_tokenizer_without_chat_template_is_rejected():
    tok = build_tokenizer("qwen25")
    bare = type(tok)(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>")
    assert not bare.chat_template
    with pytest.raises(ValueError, match="has no chat template"):
        ChatTokenizer(bare)
    ids, mask = ChatTokenizer(bare, chat_template=tok.chat_template)(normalize_messages(TWO_TURNS))
    assert mask.sum() > 0
