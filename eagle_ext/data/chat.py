"""Chat rows to supervised tokens: row normalisation, rendering with the tokenizer's own chat template, and
the assistant ``loss_mask``.

How the assistant tokens are found, for any template:

1. Render the conversation to text and locate each assistant turn as a *character span*:

   - if the template marks generated text with ``{% generation %}...{% endgeneration %}``, the spans are
     exactly those blocks (the same spans ``apply_chat_template(return_assistant_tokens_mask=True)`` uses;
     found here by rendering a copy of the template in which the tags emit marker characters);
   - otherwise by growing prefixes: the turn of message ``j`` is the text that rendering ``messages[:j+1]``
     adds to rendering ``messages[:j]`` (role header, content, end-of-turn tokens). This needs the template
     to be *prefix-stable* (every prefix renders to a prefix of the whole conversation); a template that
     rewrites earlier turns (Qwen3 drops the ``<think>`` block of turns before the last user message) raises
     :class:`ChatTemplateError`.

2. Tokenise the whole text once, with character offsets, and supervise every token that overlaps an
   assistant span.

3. Options remove tokens that lie *entirely* inside text that the option names (so a token that merges a
   template character with a generated one stays supervised):

   - ``mask_generation_prompt``: the leading part of each assistant turn that the template writes whatever
     the message says (role header, an empty ``<think></think>`` block). Found by rendering the
     conversation with that message's generated fields replaced by two different sentinels: the turn's
     text before the first character where the renders differ is template-supplied.
   - ``mask_reasoning_content``: the rendered reasoning (``reasoning_content`` / ``reasoning`` / ``thinking``
     fields, or a leading ``<think>...</think>`` block inside ``content``), found as the characters that
     change when that reasoning is emptied.

Everything is computed on text and character offsets, so it holds for any tokenizer that reports offsets
(all ``tokenizers``-backed "fast" tokenizers).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Role names in the wild, mapped to the four roles chat templates understand.
ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
    "observation": "tool",
    "function_response": "tool",
}

#: Message fields that hold an assistant's reasoning (templates read different ones).
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")

_INLINE_THINK = re.compile(r"^(\s*<think>)(.*?)(</think>)", re.DOTALL)
_GENERATION_TAG = re.compile(r"\{%([-+]?)\s*(generation|endgeneration)\s*([-+]?)%\}")
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: markers for generation blocks
_SENTINELS = ("A", "B")


class SkippedRow(ValueError):
    """A row that cannot become a training sample; ``reason`` is a short key used to count skips."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ChatTemplateError(ValueError):
    """The chat template cannot provide assistant masks (for example it is not prefix-stable)."""


# --------------------------------------------------------------------------------------------------------
# Row normalisation
# --------------------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text" and "text" in part:
                texts.append(part["text"] or "")
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise SkippedRow("non_text_content", f"content part of type {kind!r}")
        return "".join(texts)
    raise SkippedRow("invalid_message", f"content of type {type(content).__name__}")


def normalize_messages(messages: Any) -> list[dict]:
    """Normalise one conversation to OpenAI-style messages.

    Accepts OpenAI ``{"role", "content"}`` and ShareGPT ``{"from", "value"}`` messages; maps role aliases
    (``human`` -> ``user``, ``gpt`` -> ``assistant``, ...; see :data:`ROLE_ALIASES`); turns ``content``
    given as a list of text parts into a string and ``None`` into ``""``; drops fields whose value is
    ``None``; copies ``reasoning`` / ``thinking`` into ``reasoning_content`` (the field templates read) when that
    is absent; keeps every other field (``tool_calls``, ``tool_call_id``, ``name``, ...).

    Raises:
        SkippedRow: not a list of dicts, an unknown role, or non-text content.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise SkippedRow("invalid_message", f"messages must be a list, got {type(messages).__name__}")
    out = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise SkippedRow("invalid_message", f"message of type {type(message).__name__}")
        msg = {k: v for k, v in message.items() if v is not None and k not in ("from", "value")}
        raw_role = message.get("role", message.get("from"))
        role = ROLE_ALIASES.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            raise SkippedRow("unknown_role", f"role {raw_role!r}")
        msg["role"] = role
        msg["content"] = _content_text(message.get("content", message.get("value")))
        if "reasoning_content" not in msg:  # the field chat templates read (Qwen3, DeepSeek-R1, ...)
            alias = next((msg[k] for k in REASONING_KEYS[1:] if isinstance(msg.get(k), str)), None)
            if alias is not None:
                msg["reasoning_content"] = alias
        out.append(msg)
    return out


def normalize_chat_row(row: Mapping[str, Any]) -> tuple[list[dict], list | None]:
    """Return ``(messages, tools)`` for one data row.

    The conversation is read from ``messages`` (OpenAI) or ``conversations`` / ``conversation`` (ShareGPT).
    A row-level ``system`` string becomes a leading system message when the conversation has none; a
    ``tools`` field (list, or JSON text) is passed to the template.

    Raises:
        SkippedRow: ``no_messages`` (no conversation field), ``no_assistant`` (no assistant turn), or the
            reasons of :func:`normalize_messages`.
    """
    for key in ("messages", "conversations", "conversation"):
        if row.get(key) is not None:
            raw = row[key]
            break
    else:
        raise SkippedRow("no_messages", f"row has no messages/conversations field (fields: {sorted(row)})")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SkippedRow("invalid_message", f"messages given as text that is not JSON: {exc}") from None
    messages = normalize_messages(raw)
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" for m in messages):
        raise SkippedRow("no_assistant", f"roles {[m['role'] for m in messages]}")
    tools = row.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    return messages, tools or None


# --------------------------------------------------------------------------------------------------------
# Character spans -> token mask
# --------------------------------------------------------------------------------------------------------


def _prefix_coverage(spans: Sequence[tuple[int, int]], length: int) -> np.ndarray:
    """int64 ``[length + 1]``: number of characters before each index that lie in some span."""
    delta = np.zeros(length + 1, dtype=np.int64)
    for a, b in spans:
        a, b = max(0, min(a, length)), max(0, min(b, length))
        if b > a:
            delta[a] += 1
            delta[b] -= 1
    covered = np.cumsum(delta[:length]) > 0
    return np.concatenate(([0], np.cumsum(covered)))


def token_mask_from_spans(
    offsets: np.ndarray,
    text_length: int,
    spans: Sequence[tuple[int, int]],
    removed: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Token mask from character spans.

    Args:
        offsets: int ``[T, 2]`` character ``(start, end)`` of each token; a zero-width token counts as its
            first character.
        text_length: length of the rendered text.
        spans: supervised character spans ``[start, end)``; a token overlapping any of them is supervised.
        removed: character spans taken out again; a token lying entirely inside them is not supervised.

    Returns:
        int8 ``[T]`` of 0/1.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts = np.clip(offsets[:, 0], 0, text_length)
    ends = np.clip(np.maximum(offsets[:, 1], starts + 1), 0, text_length)
    cover = _prefix_coverage(spans, text_length)
    mask = (cover[ends] - cover[starts]) > 0
    if removed:
        gone = _prefix_coverage(removed, text_length)
        mask &= (gone[ends] - gone[starts]) < (ends - starts)
    return mask.astype(np.int8)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _common_suffix(a: str, b: str) -> int:
    return _common_prefix(a[::-1], b[::-1])


def _changed_span(text: str, other: str) -> tuple[int, int]:
    """Characters of ``text`` that are not part of the longest common prefix and suffix with ``other``."""
    start = _common_prefix(text, other)
    end = len(text) - min(_common_suffix(text, other), min(len(text), len(other)) - start)
    return start, end


def _mark_generation_tags(template: str) -> str:
    """Rewrite ``{% generation %}`` / ``{% endgeneration %}`` into blocks that emit marker characters.

    ``{%<l> generation <r>%}`` becomes ``{%<l> if true %}MARK{% endif <r>%}``: the block tags keep the
    original whitespace control (``-`` / ``+``, trim_blocks, lstrip_blocks), so the rendered text equals
    the normal render with the markers inserted.
    """

    def repl(m: re.Match) -> str:
        mark = _OPEN if m.group(2) == "generation" else _CLOSE
        return "{%" + m.group(1) + " if true %}" + mark + "{% endif " + m.group(3) + "%}"

    return _GENERATION_TAG.sub(repl, template)


def _split_markers(marked: str) -> tuple[str, list[tuple[int, int]]]:
    pieces = re.split(f"([{_OPEN}{_CLOSE}])", marked)
    text, spans, pos, open_at = [], [], 0, None
    for piece in pieces:
        if piece == _OPEN:
            if open_at is not None:
                raise ChatTemplateError("nested {% generation %} blocks in the chat template")
            open_at = pos
        elif piece == _CLOSE:
            if open_at is None:
                raise ChatTemplateError("{% endgeneration %} without {% generation %} in the chat template")
            spans.append((open_at, pos))
            open_at = None
        else:
            text.append(piece)
            pos += len(piece)
    if open_at is not None:
        raise ChatTemplateError("{% generation %} without {% endgeneration %} in the chat template")
    return "".join(text), spans


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


def _without_reasoning(message: dict, key: str) -> dict:
    out = dict(message)
    if key == "content":
        out["content"] = _INLINE_THINK.sub(lambda m: m.group(1) + m.group(3), message["content"], count=1)
    else:
        out[key] = ""
    return out


def _reasoning_fields(message: dict) -> list[str]:
    keys = [k for k in REASONING_KEYS if isinstance(message.get(k), str) and message[k].strip()]
    inline = _INLINE_THINK.match(message.get("content") or "")
    if inline and inline.group(2).strip():
        keys.append("content")
    return keys


def _with_sentinel(message: dict, sentinel: str) -> dict:
    out = dict(message)
    out["content"] = sentinel
    for key in REASONING_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = sentinel
    return out


class ChatTokenizer:
    """Render conversations with a tokenizer's chat template into ``input_ids`` and an assistant ``loss_mask``.

    Args:
        tokenizer: a Hugging Face tokenizer that reports character offsets (any "fast" tokenizer).
        chat_template: Jinja template to use instead of ``tokenizer.chat_template``.
        mask_reasoning_content: do not supervise the rendered reasoning of assistant turns.
        mask_generation_prompt: do not supervise the template-supplied start of assistant turns (role
            header, empty ``<think></think>`` block).
        template_kwargs: extra variables for the template (``enable_thinking=False``, ...).

    Calling it with ``(messages, tools=None)`` (normalised messages, see :func:`normalize_messages`) returns
    ``(input_ids, loss_mask)``: int64 and int8 numpy arrays ``[T]`` over the whole rendered conversation.

    Raises:
        ValueError: the tokenizer has no chat template and none is given.
        TypeError: the tokenizer cannot report character offsets.
        ChatTemplateError (a ValueError), on call: the template has no generation tags and is not
            prefix-stable for this conversation, or its generation tags are unbalanced.
        SkippedRow, on call: the template failed to render this conversation (``template_error``).
    """

    def __init__(
        self,
        tokenizer,
        *,
        chat_template: str | None = None,
        mask_reasoning_content: bool = False,
        mask_generation_prompt: bool = False,
        template_kwargs: Mapping[str, Any] | None = None,
    ):
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) has no chat "
                "template; load a chat/instruct tokenizer, set tokenizer.chat_template, or pass chat_template="
            )
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"tokenizer {type(tokenizer).__name__} cannot report character offsets "
                "(return_offsets_mapping), which the assistant mask needs; load it with use_fast=True"
            )
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.mask_reasoning_content = bool(mask_reasoning_content)
        self.mask_generation_prompt = bool(mask_generation_prompt)
        self.template_kwargs = dict(template_kwargs or {})
        self._marked: dict[str, str] = {}

    # -- rendering ------------------------------------------------------------------------------------
    def _template(self, tools) -> str:
        return self.tokenizer.get_chat_template(self.chat_template, tools)

    def _render(self, messages, tools, template: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=template, tokenize=False, **self.template_kwargs
            )
        except Exception as exc:  # jinja2 TemplateError, raise_exception(), KeyError on a missing field ...
            raise SkippedRow("template_error", f"{type(exc).__name__}: {exc}") from None

    def _generation_spans(self, messages, tools, template) -> tuple[str, list[tuple[int, int]]]:
        marked = self._marked.get(template)
        if marked is None:
            marked = self._marked[template] = _mark_generation_tags(template)
        return _split_markers(self._render(messages, tools, marked))

    def _prefix_spans(self, messages, tools, template) -> tuple[str, list[tuple[int, int]]]:
        text = self._render(messages, tools, template)
        ends = {len(messages): len(text)}

        def end_of(k: int) -> int:
            if k not in ends:
                prefix = self._render(messages[:k], tools, template)
                if not text.startswith(prefix):
                    at = _common_prefix(prefix, text)
                    raise ChatTemplateError(
                        "the chat template is not prefix-stable: the first "
                        f"{k} of {len(messages)} messages render to text that is not a prefix of the whole "
                        f"conversation (they differ at character {at}: {prefix[max(0, at - 40) : at + 40]!r} vs "
                        f"{text[max(0, at - 40) : at + 40]!r}), so assistant tokens cannot be located by "
                        "rendering growing prefixes. Use a template that wraps assistant output in "
                        "{% generation %}...{% endgeneration %} (pass chat_template=...), or give each "
                        "assistant turn its own row."
                    )
                ends[k] = len(prefix)
            return ends[k]

        spans = []
        for j, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            # Nothing renders before an opening assistant message but the template's preamble (BOS, a
            # default system prompt), which is not part of the turn: the turn starts at its content.
            start = end_of(j) if j > 0 else self._content_start(messages, tools, template, j, text)
            spans.append((start, end_of(j + 1)))
        return text, spans

    def _content_start(self, messages, tools, template, j, text) -> int:
        """First character of the render that depends on message ``j``'s generated fields."""
        starts = []
        for sentinel in _SENTINELS:
            variant = list(messages)
            variant[j] = _with_sentinel(messages[j], sentinel)
            starts.append(_common_prefix(text, self._render(variant, tools, template)))
        return min(starts)

    # -- masks ----------------------------------------------------------------------------------------
    def _generation_prompt_spans(self, messages, tools, template, text, spans) -> list[tuple[int, int]]:
        removed = []
        for j, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            p = self._content_start(messages, tools, template, j, text)
            inside = [(a, b) for a, b in spans if a <= p < b] or [(a, b) for a, b in spans if a < p == b]
            if inside:
                removed.append((inside[0][0], p))
        return removed

    def _reasoning_spans(self, messages, tools, template, text) -> list[tuple[int, int]]:
        removed = []
        for j, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            for key in _reasoning_fields(message):
                variant = list(messages)
                variant[j] = _without_reasoning(message, key)
                start, end = _changed_span(text, self._render(variant, tools, template))
                if end > start:
                    removed.append((start, end))
        return removed

    def render(
        self, messages: list[dict], tools: list | None = None
    ) -> tuple[str, list[tuple[int, int]], list]:
        """Return ``(text, supervised character spans, removed character spans)`` for one conversation."""
        template = self._template(tools)
        if _GENERATION_TAG.search(template):
            text, spans = self._generation_spans(messages, tools, template)
        else:
            text, spans = self._prefix_spans(messages, tools, template)
        removed = []
        if self.mask_generation_prompt:
            removed += self._generation_prompt_spans(messages, tools, template, text, spans)
        if self.mask_reasoning_content:
            removed += self._reasoning_spans(messages, tools, template, text)
        return text, spans, removed

    def encode(self, rendered: Sequence[tuple[str, list, list]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Tokenise outputs of :meth:`render` in one batch call (the Rust tokenizer spreads a batch over
        all cores) and return ``(input_ids int64 [T], loss_mask int8 [T])`` for each."""
        if not rendered:
            return []
        enc = self.tokenizer(
            [text for text, _, _ in rendered],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        out = []
        for (text, spans, removed), ids, offsets in zip(
            rendered, enc["input_ids"], enc["offset_mapping"], strict=True
        ):
            # fromiter over the flattened pairs is several times faster than asarray on a list of tuples
            flat = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets))
            mask = token_mask_from_spans(flat.reshape(-1, 2), len(text), spans, removed)
            out.append((np.fromiter(ids, dtype=np.int64, count=len(ids)), mask))
        return out

    def __call__(self, messages: list[dict], tools: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.encode([self.render(messages, tools)])[0]

    def __getstate__(self):  # the marked-template cache is cheap to rebuild in worker processes
        state = dict(self.__dict__)
        state["_marked"] = {}
        return state


def tokenize_conversation(
    messages: Sequence[Mapping[str, Any]],
    tokenizer,
    *,
    tools: list | None = None,
    seq_length: int | None = None,
    chat_template: str | None = None,
    mask_reasoning_content: bool = False,
    mask_generation_prompt: bool = False,
    template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Render one conversation and return ``{"input_ids": [...], "loss_mask": [...]}`` (python int lists).

    ``messages`` may be OpenAI or ShareGPT style (normalised with :func:`normalize_messages`); the result
    is truncated to ``seq_length`` tokens when given. See :class:`ChatTokenizer` for the mask rules and errors.

    Raises:
        ValueError: ``seq_length`` < 2, or the conversation has no assistant turn.
    """
    if seq_length is not None and (
        isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 2
    ):
        raise ValueError(f"seq_length must be None or an int >= 2, got {seq_length!r}")
    messages = normalize_messages(copy.deepcopy(list(messages)))
    if not any(m["role"] == "assistant" for m in messages):
        raise SkippedRow("no_assistant", f"roles {[m['role'] for m in messages]}")
    ids, mask = ChatTokenizer(
        tokenizer,
        chat_template=chat_template,
        mask_reasoning_content=mask_reasoning_content,
        mask_generation_prompt=mask_generation_prompt,
        template_kwargs=template_kwargs,
    )(messages, tools)
    if seq_length is not None:
        ids, mask = ids[:seq_length], mask[:seq_length]
    return {"input_ids": ids.tolist(), "loss_mask": mask.tolist()}
