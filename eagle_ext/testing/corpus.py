"""Synthetic data for the tests, the benchmarks and the toy demo, generated in code (nothing downloaded).

- :func:`chat_conversations`: multi-turn chats in OpenAI ``messages`` form whose assistant replies follow
  learnable patterns (counting, repetition, the alphabet, templated facts, small sums), so a tiny target
  can learn peaked next-token distributions and a draft can learn to predict them;
- :func:`write_jsonl`: those rows as a JSONL file, read back by the data pipeline like user data;
- :func:`lognormal_lengths`, :func:`assistant_mask`: realistic chat-length mixes for the packing / COD
  benchmarks.
"""

from __future__ import annotations

import json
import os
import random

import torch

from eagle_ext._checks import check_int
from eagle_ext._io import atomic_path

__all__ = ["assistant_mask", "chat_conversations", "corpus_words", "lognormal_lengths", "write_jsonl"]

NUMBER_WORDS = [str(i) for i in range(61)]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
CAPITALS = {
    "france": "paris", "spain": "madrid", "italy": "rome", "germany": "berlin", "japan": "tokyo",
    "egypt": "cairo", "peru": "lima", "kenya": "nairobi", "canada": "ottawa", "norway": "oslo",
    "chile": "santiago", "india": "delhi",
}
ANIMALS = {  # animal: (size, home, food)
    "cat": ("small", "house", "fish"), "dog": ("loyal", "house", "meat"), "cow": ("large", "farm", "grass"),
    "owl": ("wise", "forest", "mice"), "bee": ("busy", "hive", "nectar"), "fox": ("clever", "forest", "berries"),
    "horse": ("strong", "farm", "hay"), "frog": ("green", "pond", "flies"), "whale": ("huge", "ocean", "krill"),
    "camel": ("patient", "desert", "leaves"),
}
REPEAT_WORDS = ["hello", "yes", "blue", "tick", "go", "la", "ha", "ping", "moo", "red"]
SYSTEM_PROMPTS = ["you are a helpful assistant .", "you are a patient teacher . answer briefly ."]
FOLLOW_UPS = [
    ("thank you !", "you are welcome ! ask me anything ."),
    ("great , thanks .", "glad to help ."),
]
ROLE_WORDS = ["system", "user", "assistant"]


def _count(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(0, 40)
    stop = start + rng.randint(4, 20)
    return f"count from {start} to {stop}", " ".join(map(str, range(start, stop + 1))) + " ."


def _repeat(rng: random.Random) -> tuple[str, str]:
    word, n = rng.choice(REPEAT_WORDS), rng.randint(3, 9)
    return f"say {word} {n} times", " ".join([word] * n) + " ."


def _alphabet(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(0, 15)
    n = rng.randint(5, 10)
    return f"recite the alphabet from {LETTERS[start]}", " ".join(LETTERS[start:start + n]) + " ."


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    return f"what is the capital of {country} ?", f"the capital of {country} is {CAPITALS[country]} ."


def _animal(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(sorted(ANIMALS))
    size, home, food = ANIMALS[animal]
    return (f"tell me about the {animal}",
            f"the {animal} is a {size} animal . it lives in the {home} and it eats {food} .")


def _days(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(7)
    nxt = [DAYS[(i + k) % 7] for k in range(1, 4)]
    return f"what comes after {DAYS[i]} ?", f"after {DAYS[i]} comes {nxt[0]} , then {nxt[1]} and {nxt[2]} ."


def _sum(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    return f"what is {a} plus {b} ?", f"{a} plus {b} is {a + b} ."


TASKS = (_count, _repeat, _alphabet, _capital, _animal, _days, _sum)


def chat_conversations(num_conversations: int, seed: int = 0, max_exchanges: int = 3) -> list[dict]:
    """``num_conversations`` chats ``{"messages": [{"role", "content"}, ...]}``, seeded and deterministic.

    Each chat has an optional system prompt and 1..``max_exchanges`` user/assistant exchanges drawn from the
    pattern tasks, sometimes closed by a polite follow-up. Text is lower-case words and punctuation separated
    by spaces, so a word-level tokenizer covers it (see :func:`corpus_words`).

    Raises:
        ValueError: ``num_conversations`` < 1 or ``max_exchanges`` < 1.
    """
    check_int("num_conversations", num_conversations, 1)
    check_int("max_exchanges", max_exchanges, 1)
    rng = random.Random(seed)
    rows = []
    for _ in range(num_conversations):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.randint(1, max_exchanges)):
            question, answer = rng.choice(TASKS)(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.2:
            question, answer = rng.choice(FOLLOW_UPS)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def corpus_words() -> list[str]:
    """Every word :func:`chat_conversations` can emit (plus the ChatML role names), sorted: the word
    tokenizer's vocabulary is built from this list, not from a sample, so it never meets an unknown word."""
    words = set(NUMBER_WORDS) | set(LETTERS) | set(DAYS) | set(REPEAT_WORDS) | set(ROLE_WORDS)
    words |= set(CAPITALS) | set(CAPITALS.values())
    for animal, facts in ANIMALS.items():
        words |= {animal, *facts}
    texts = list(SYSTEM_PROMPTS) + [t for pair in FOLLOW_UPS for t in pair]
    texts += [t for task in TASKS for t in task(random.Random(0))]  # one instance has every template word
    for text in texts:
        words |= set(text.split())
    return sorted(words)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines to ``path`` atomically (temp file in the same directory, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def lognormal_lengths(num_docs: int, median: float = 600.0, sigma: float = 0.9, max_len: int = 8192,
                      seed: int = 0) -> torch.Tensor:
    """int64 ``[num_docs]`` document lengths from a log-normal mix (median ``median``), clipped to [1, max_len]."""
    g = torch.Generator().manual_seed(seed)
    logs = torch.randn(num_docs, generator=g, dtype=torch.float64) * sigma + torch.log(torch.tensor(median)).item()
    return logs.exp().round().clamp(1, max_len).to(torch.int64)


def assistant_mask(lengths: torch.Tensor, prompt_fraction: float = 0.4, seed: int = 0) -> list[torch.Tensor]:
    """Per document, an int64 loss mask that supervises everything after a prompt of ~``prompt_fraction``."""
    g = torch.Generator().manual_seed(seed + 1)
    masks = []
    for n in lengths.tolist():
        cut = int(n * prompt_fraction * float(torch.rand((), generator=g) * 2))
        m = torch.zeros(n, dtype=torch.int64)
        m[min(cut, n):] = 1
        masks.append(m)
    return masks
