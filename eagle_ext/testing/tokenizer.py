"""The test tokenizer: word level, built in code from the corpus vocabulary, with a ChatML chat template.

Ids: the special tokens first (``<|pad|>`` 0, ``<|unk|>`` 1, ``<|im_start|>`` 2, ``<|im_end|>`` 3 = eos,
``<|mask|>`` 4 = the P-EAGLE mask token, never in the text), then the words in sorted order. Words are split
on whitespace and punctuation; the special tokens are matched before that split, so a rendered chat
``<|im_start|>user\\ncount from 3 to 7<|im_end|>\\n...`` becomes
``<|im_start|> user count from 3 to 7 <|im_end|> ...``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CHATML_TEMPLATE", "MASK_TOKEN", "SPECIAL_TOKENS", "build_word_tokenizer"]

PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, MASK_TOKEN)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_word_tokenizer(words: Sequence[str]):
    """A ``transformers.PreTrainedTokenizerFast`` over ``SPECIAL_TOKENS + sorted(set(words))``.

    Args:
        words: the vocabulary (e.g. :func:`eagle_ext.testing.corpus.corpus_words`); duplicates are ignored,
            the order is not (ids follow the sorted words, so equal word sets give equal tokenizers).

    Returns:
        a fast tokenizer with ``pad``/``unk``/``eos``/``additional_special_tokens`` (``<|mask|>``) set and
        ``chat_template`` = :data:`CHATML_TEMPLATE`; ``len(tokenizer) == 5 + len(set(words))``.

    Raises:
        ValueError: ``words`` is empty, or contains an empty string, whitespace or a special token.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = sorted(set(words))
    if not vocab_words:
        raise ValueError("words must hold at least one word, got an empty sequence")
    bad = [w for w in vocab_words if not isinstance(w, str) or not w or w.split() != [w] or w in SPECIAL_TOKENS]
    if bad:
        raise ValueError(
            f"words must be non-empty strings without whitespace and not special tokens, got {bad[:5]}"
        )
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *vocab_words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, eos_token=EOS_TOKEN,
        additional_special_tokens=[BOS_TOKEN, MASK_TOKEN],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
