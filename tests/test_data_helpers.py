"""Shared helpers for the data tests: real chat-template strings and a small BPE tokenizer trained here.

The templates are the ones the model families ship (Llama-3-Instruct, Qwen2.5, Qwen3 with ``<think>``,
Mistral-Instruct ``[INST]``), plus a Qwen3 variant with ``{% generation %}`` tags (the form TRL-style
training templates use). The tests at the bottom only check that the helpers themselves work.
"""

from __future__ import annotations

import functools

import pytest

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

_QWEN3_HEAD = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
"""

_QWEN3_BODY = """        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- content }}
            {%- endif %}
        {%- else %}
            {{- content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
"""

_QWEN3_TAIL = """    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

QWEN3 = (
    _QWEN3_HEAD
    + "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    + _QWEN3_BODY
    + "        {{- '<|im_end|>\\n' }}\n"
    + _QWEN3_TAIL
)

#: Qwen3 with the assistant output (reasoning, content, tool calls, ``<|im_end|>``) in a generation block.
QWEN3_GENERATION = (
    _QWEN3_HEAD
    + "        {{- '<|im_start|>' + message.role + '\\n' }}\n        {%- generation %}\n"
    + _QWEN3_BODY
    + "        {{- '<|im_end|>' }}\n        {%- endgeneration %}\n        {{- '\\n' }}\n"
    + _QWEN3_TAIL
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

TEMPLATES = {
    "llama3": LLAMA3,
    "qwen25": QWEN25,
    "qwen3": QWEN3,
    "qwen3_generation": QWEN3_GENERATION,
    "mistral": MISTRAL,
}

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
