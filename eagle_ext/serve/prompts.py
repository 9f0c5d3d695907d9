"""Prompts for speculative-decoding evaluation: read a prompt file into conversations, render them with the
target's chat template, and the token ids that end a reply.

Library code shared by ``eagle-ext eval`` (:mod:`eagle_ext.serve.eval_cli`), the demo, the benchmarks and the tests.
Error messages name ``--prompts``, the option that usually supplies the file.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["load_prompts", "render_prompts", "stop_token_ids", "target_stop_token_ids"]


def load_prompts(path: str, max_prompts: int | None = None) -> list[list[dict]]:
    """Read a prompt file into conversations (lists of OpenAI messages ending in a non-assistant turn).

    In a ``.txt`` file each non-blank line is a user message. Otherwise (JSON Lines) each non-blank line is a
    JSON string (a user message), ``{"prompt": str}`` (a user message, with an optional ``system`` string) or a
    chat row (``messages`` / ``conversations``, normalised by
    :func:`eagle_ext.data.chat.normalize_messages`; trailing assistant turns are dropped).

    Raises:
        ValueError: a line that is not one of these (the message names the file and line), or no prompt.
    """
    from eagle_ext.data.chat import SkippedRow, normalize_messages

    conversations: list[list[dict]] = []
    plain_text = path.lower().endswith(".txt")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"--prompts {path!r} line {lineno}"
            if plain_text:  # one prompt per line
                row = line.rstrip("\r\n")
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{where}: invalid JSON ({exc}); expected JSON Lines, each line a JSON string, "
                        '{"prompt": "..."} or a chat row {"messages": [...]}; for plain text, one prompt per line, '
                        "name the file *.txt") from None
            if isinstance(row, str):
                row = {"prompt": row}
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON string or object, got {type(row).__name__}")
            if isinstance(row.get("prompt"), str):
                messages = [{"role": "user", "content": row["prompt"]}]
                if isinstance(row.get("system"), str) and row["system"].strip():
                    messages.insert(0, {"role": "system", "content": row["system"]})
            else:
                raw = next((row[k] for k in ("messages", "conversations", "conversation") if row.get(k) is not None),
                           None)
                if raw is None:
                    raise ValueError(f"{where}: expected a \"prompt\" string or a \"messages\" list, got fields "
                                     f"{sorted(row)}")
                try:
                    messages = normalize_messages(raw)
                except SkippedRow as exc:
                    raise ValueError(f"{where}: {exc}") from None
                while messages and messages[-1]["role"] == "assistant":
                    messages.pop()
                if not messages:
                    raise ValueError(f"{where}: the conversation holds only assistant turns; nothing to answer")
            conversations.append(messages)
            if max_prompts is not None and len(conversations) >= max_prompts:
                break
    if not conversations:
        raise ValueError(f"--prompts {path!r} holds no prompt")
    return conversations


def render_prompts(tokenizer: Any, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation rendered with the tokenizer's chat template and the generation prompt.

    Raises:
        ValueError: the tokenizer has no chat template, or a conversation renders to no token.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the target tokenizer ({getattr(tokenizer, 'name_or_path', '')!r}) has no chat template")
    prompts = []
    for i, messages in enumerate(conversations):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template writes any BOS itself; the tokenizer must not add a second one.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {i} renders to no token")
        prompts.append(list(ids))
    return prompts


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """The ids that end a reply: the tokenizer's EOS and the model's ``generation_config.eos_token_id`` (int or
    list), sorted and deduplicated."""
    ids = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return sorted(ids)


def target_stop_token_ids(tokenizer: Any, target: str) -> list[int]:
    """:func:`stop_token_ids` of the target in directory ``target`` without loading its weights (its saved
    generation config)."""
    from types import SimpleNamespace

    from eagle_ext._hf import saved_generation_config

    return stop_token_ids(tokenizer, SimpleNamespace(generation_config=saved_generation_config(target)))
