"""Small, seeded stand-ins for a real target and its chat data, built in code (nothing downloaded): what the tests,
the benchmarks and the toy demo (``eagle-ext demo --target tiny``) train and evaluate drafts on.

- :mod:`~eagle_ext.testing.corpus`: pattern-following chats (``messages`` rows) and their JSONL file, the
  vocabulary they use, and synthetic length / loss-mask mixes for the packing benchmarks;
- :mod:`~eagle_ext.testing.tokenizer`: a word-level tokenizer over that vocabulary with a ChatML template and a
  P-EAGLE mask token;
- :mod:`~eagle_ext.testing.target`: a tiny Llama from a config (random and saved, or pre-trained briefly on the
  chats), its language-model loss and held-out metrics.
"""

from eagle_ext.testing.corpus import (
    assistant_mask,
    chat_conversations,
    corpus_words,
    lognormal_lengths,
    write_jsonl,
)
from eagle_ext.testing.target import (
    evaluate_target,
    forever,
    pretrain_target,
    save_tiny_target,
    target_lm_loss,
    tiny_target_config,
)
from eagle_ext.testing.tokenizer import CHATML_TEMPLATE, MASK_TOKEN, SPECIAL_TOKENS, build_word_tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "MASK_TOKEN",
    "SPECIAL_TOKENS",
    "assistant_mask",
    "build_word_tokenizer",
    "chat_conversations",
    "corpus_words",
    "evaluate_target",
    "forever",
    "lognormal_lengths",
    "pretrain_target",
    "save_tiny_target",
    "target_lm_loss",
    "tiny_target_config",
    "write_jsonl",
]
