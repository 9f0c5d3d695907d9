"""Data pipeline benchmark: chat tokenisation throughput and greedy vs best-fit packing.

A realistic synthetic chat corpus is generated here (Zipf-distributed pseudo-words, log-normal message
lengths, 1-6 turns, optional system prompts and reasoning, OpenAI and ShareGPT rows) and a byte-level BPE
tokenizer is trained on it, so nothing is downloaded.

Tokenisation, samples/s (single process unless noted):

- ``ours (growing prefix)``: :class:`eagle_ext.data.chat.ChatTokenizer` on a ChatML template without
  generation tags: prefixes are rendered as *text*, the conversation is tokenised once with offsets.
- ``reference (token prefixes)``: the reference recipe's method: every prefix is rendered *and tokenised*,
  turn boundaries are prefix token counts (same masks, checked).
- ``ours (generation tags)``: the same template with ``{% generation %}`` blocks.
- ``tokenize_chat_dataset num_proc=N``: the whole pipeline (row parsing, ``datasets.map``, Arrow output).

Packing: rows and padding fraction of greedy (reference layout) vs best-fit decreasing at several widths.

Usage: ``python -m benchmarks.bench_data [--quick] [--rows N]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import numpy as np
import torch

from benchmarks._common import print_table, write_results
from eagle_ext.data.chat import ChatTokenizer, normalize_chat_row
from eagle_ext.data.tokenization import tokenize_chat_dataset
from eagle_ext.ops.packing import pack_documents

CHATML = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHATML_GENERATION = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a careful senior engineer. Explain your reasoning and show code when useful.",
    "Answer in a friendly tone and keep answers short unless the user asks for detail.",
    "You are a math tutor. Work through problems step by step.",
]


def synthetic_chats(num_rows: int, seed: int = 0) -> list[dict]:
    """Multi-turn chats whose token lengths resemble ShareGPT / UltraChat (median ~600 tokens, long tail)."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "ing", "er"]
    lexicon = sorted({"".join(rng.choices(syllables, k=rng.choice((1, 1, 2, 2, 3, 4)))) for _ in range(8000)})
    rng.shuffle(lexicon)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(lexicon))]
    cum = list(np.cumsum(weights))

    def text(median_words: float, sigma: float, cap: int) -> str:
        n = max(2, min(cap, int(math.exp(rng.gauss(math.log(median_words), sigma)))))
        words = rng.choices(lexicon, cum_weights=cum, k=n)
        out = []
        for i, w in enumerate(words):
            out.append(w.capitalize() if i == 0 or out[-1].endswith((".", "\n")) else w)
            r = rng.random()
            if r < 0.06:
                out[-1] += "."
            elif r < 0.08:
                out[-1] += ","
            elif r < 0.085:
                out[-1] += ".\n\n"
        return " ".join(out).replace("\n\n ", "\n\n")

    rows = []
    for i in range(num_rows):
        turns = 1 + min(5, int(rng.expovariate(0.7)))
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 else []
        for _ in range(turns):
            messages.append({"role": "user", "content": text(30, 1.0, 1200)})
            answer = {"role": "assistant", "content": text(120, 0.9, 2500)}
            if rng.random() < 0.2:
                answer["reasoning_content"] = text(150, 0.8, 2000)
            messages.append(answer)
        if i % 4 == 0:  # ShareGPT rows
            names = {"system": "system", "user": "human", "assistant": "gpt"}
            rows.append(
                {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
            )
        else:
            rows.append({"messages": messages})
    return rows


def train_tokenizer(rows: list[dict], vocab_size: int = 8000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (
        m.get("content", m.get("value", ""))
        for r in rows[:2000]
        for m in r.get("messages", r.get("conversations"))
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = CHATML
    return hf


def reference_token_prefix_mask(tokenizer, messages, template):
    """The reference recipe's fallback: tokenise every prefix; a turn spans the token counts around it."""

    def n_tokens(k):
        return len(
            tokenizer.apply_chat_template(
                messages[:k], chat_template=template, tokenize=True, return_dict=False
            )
        )

    ids = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=False)
    mask = np.zeros(len(ids), dtype=np.int8)
    for j, m in enumerate(messages):
        if m["role"] == "assistant":
            mask[n_tokens(j) : n_tokens(j + 1)] = 1
    return np.asarray(ids), mask


def _throughput(name, fn, items) -> dict:
    t0 = time.perf_counter()
    tokens = 0
    out = []
    for item in items:
        ids, mask = fn(item)
        tokens += ids.size
        out.append(mask)
    seconds = time.perf_counter() - t0
    return {
        "case": name,
        "samples": len(items),
        "seconds": seconds,
        "samples_per_s": len(items) / seconds,
        "tokens_per_s": tokens / seconds,
        "_masks": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rows", type=int, default=None, help="number of synthetic conversations")
    parser.add_argument("--reference-rows", type=int, default=None, help="rows for the slow reference method")
    args = parser.parse_args()
    num_rows = args.rows or (600 if args.quick else 5_000)
    ref_rows = args.reference_rows or min(num_rows, 200 if args.quick else 1_000)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))

    t0 = time.perf_counter()
    rows = synthetic_chats(num_rows)
    tok = train_tokenizer(rows)
    print(
        f"generated {num_rows} conversations and trained a {len(tok)}-token BPE in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    convs = [normalize_chat_row(r)[0] for r in rows]

    ours_prefix = ChatTokenizer(tok)
    ours_tags = ChatTokenizer(tok, chat_template=CHATML_GENERATION)
    cases = [
        _throughput("ours (growing prefix)", ours_prefix, convs),
        _throughput("ours (generation tags)", ours_tags, convs),
        _throughput(
            "reference (token prefixes)",
            lambda m: reference_token_prefix_mask(tok, m, CHATML),
            convs[:ref_rows],
        ),
    ]
    ours, tags, ref = (c["_masks"] for c in cases)
    same = all(np.array_equal(a, b) for a, b in zip(ours[:ref_rows], ref, strict=True))
    tags_same = all(int(a.sum()) <= int(b.sum()) for a, b in zip(tags, ours, strict=True))
    ref_rate = cases[2]["samples_per_s"]
    for num_proc in sorted({1, min(2, os.cpu_count() or 1)}):
        t1 = time.perf_counter()
        result = tokenize_chat_dataset(rows, tok, num_proc=num_proc, show_progress=False)
        seconds = time.perf_counter() - t1
        cases.append(
            {
                "case": f"tokenize_chat_dataset num_proc={num_proc}",
                "samples": num_rows,
                "seconds": seconds,
                "samples_per_s": num_rows / seconds,
                "tokens_per_s": int(np.sum(result.dataset.with_format("arrow")["num_tokens"].to_numpy()))
                / seconds,
            }
        )
    for c in cases:
        c.pop("_masks", None)
        c["vs_reference"] = c["samples_per_s"] / ref_rate
    print_table(
        cases,
        ["case", "samples", "seconds", "samples_per_s", "tokens_per_s", "vs_reference"],
        title=f"chat tokenisation ({num_rows} conversations; masks identical to reference: {same})",
    )

    lengths = torch.from_numpy(
        np.asarray(result.dataset.with_format("arrow")["num_tokens"].to_numpy(), dtype=np.int64)
    )
    stats = {
        "docs": int(lengths.numel()),
        "median_tokens": int(lengths.median()),
        "mean_tokens": float(lengths.float().mean()),
        "p95_tokens": int(lengths.float().quantile(0.95)),
        "max_tokens": int(lengths.max()),
    }
    print(f"token lengths: {stats}", flush=True)
    packing = []
    for width in (2048, 4096, 8192):
        clipped = lengths.clamp(max=width)
        real = int(clipped.sum())
        entry = {"width": width}
        for strategy in ("greedy", "best_fit"):
            t1 = time.perf_counter()
            _, num_rows_packed = pack_documents(lengths, width, strategy)
            entry[f"{strategy}_ms"] = 1e3 * (time.perf_counter() - t1)
            entry[f"{strategy}_rows"] = num_rows_packed
            entry[f"{strategy}_padding"] = 1.0 - real / (num_rows_packed * width)
        entry["padding_reduction"] = 1.0 - entry["best_fit_padding"] / entry["greedy_padding"]
        packing.append(entry)
    print_table(
        packing,
        [
            "width",
            "greedy_rows",
            "best_fit_rows",
            "greedy_padding",
            "best_fit_padding",
            "padding_reduction",
            "greedy_ms",
            "best_fit_ms",
        ],
        title="packing the tokenised corpus: greedy (reference layout) vs best-fit decreasing",
    )
    write_results(
        "bench_data",
        {
            "quick": args.quick,
            "rows": num_rows,
            "reference_rows": ref_rows,
            "masks_identical_to_reference": same,
            "generation_tag_masks_subset": tags_same,
            "tokenisation": cases,
            "lengths": stats,
            "packing": packing,
        },
    )


if __name__ == "__main__":
    main()
