"""Answer a prompt set with the target itself: the training data drafts learn best from.

A draft is scored on how often it predicts what the *target* would say, so the best training chats are
the target's own responses to a diverse prompt set. :func:`regenerate_chats` reads prompts, renders each
with the target's chat template (``add_generation_prompt=True``), generates the answers in left-padded
batches with a KV cache (greedy, or pure temperature sampling: no top-k / top-p), and appends OpenAI
``messages`` rows to a JSONL file, one batch at a time.

Prompt file (JSONL, one row a line; or ``.txt``, one plain prompt a line):

- a JSON string: a single user turn;
- an object with ``messages`` (OpenAI ``role``/``content``; ShareGPT ``from``/``value`` and role aliases are
  accepted, see :func:`eagle_ext.data.chat.normalize_messages`), roles ``system``/``user``/``assistant``,
  the last turn a ``user`` turn. An ``assistant`` turn whose ``content`` is ``null`` (or missing) is a slot
  the target fills: answers are generated turn by turn, so a multi-turn prompt
  ``[user, assistant: null, user]`` becomes a conversation whose every assistant turn is the target's.
  Assistant turns with text are kept as given.

Output row: ``{"messages": [... prompt turns, slots filled ..., {"role": "assistant", "content": answer}],
"prompt_index": i, "prompt_hash": h, "finish_reasons": ["stop" | "length", ...]}`` (one reason per generated
turn: the end token was produced, or ``max_new_tokens`` was reached). The answer is the decoded text before
the first end token (the tokenizer's ``eos_token`` and the model's ``generation_config.eos_token_id``), the
end token itself left out, since the chat template writes it back.

Resuming: a restart skips prompts already answered, keyed by prompt index *and* a hash of the prompt (so an
edited prompt file cannot be silently mixed with old answers: a row whose prompt changed is an error), and
cuts off a last line left half-written by a crash. The settings that decide an answer (the target's
fingerprint, ``max_new_tokens``, ``temperature``, ``seed``) are stored beside the output in
``<out>.settings.json``; resuming with different ones is refused. ``batch_size`` and ``limit`` may change
between runs. Prompts are batched by how many turns the target writes (single-turn ones first), so rows are
written in that order, each with its ``prompt_index``. Sampling seeds each batch from ``seed`` and the batch's first prompt index, so a resumed run
draws what an uninterrupted one with the same batch boundaries would.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eagle_ext._checks import is_int
from eagle_ext._io import write_json
from eagle_ext.data.chat import SkippedRow, normalize_messages
from eagle_ext.data.fingerprint import digest, path_fingerprint

__all__ = ["ChatPrompt", "check_regenerate_args", "read_prompts", "regenerate_chats", "settings_path"]

#: Version of the output format and of what decides an answer; stored in the settings file.
REGENERATE_FORMAT = 1
#: --dtype choice -> torch / vLLM dtype name ("auto": see :func:`regenerate_chats`)
DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatPrompt:
    """One prompt: ``messages`` normalised, with ``None`` as the ``content`` of each assistant slot the
    target fills; ``key`` is a hash of ``messages`` that identifies the prompt in the output file."""

    index: int
    messages: list[dict]
    key: str

    @property
    def slots(self) -> list[int]:
        """Message indices the target writes, in order: the ``None`` slots, then ``len(messages)`` (the final
        answer, appended)."""
        return [j for j, m in enumerate(self.messages) if m["content"] is None] + [len(self.messages)]


def settings_path(out_path: str | os.PathLike) -> str:
    """The settings file stored beside an output file: ``<out>.settings.json``."""
    return os.fspath(out_path) + ".settings.json"


def _parse_prompt(raw: Any, where: str) -> list[dict]:
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    elif isinstance(raw, dict):
        raw = next((raw[k] for k in ("messages", "conversations") if k in raw), None)
        if raw is None:
            raise ValueError(f"{where}: a prompt object needs a 'messages' list")
    else:
        raise ValueError(f"{where}: expected a JSON string or an object with 'messages', got {type(raw).__name__}")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: 'messages' must be a non-empty list, got {raw!r:.80}")
    # A slot is an assistant message without text; remember them before normalising turns None into "".
    slots = {j for j, m in enumerate(raw) if isinstance(m, dict) and m.get("content", m.get("value")) is None}
    try:
        messages = normalize_messages(raw)
    except SkippedRow as exc:
        raise ValueError(f"{where}: {exc}") from None
    for j, m in enumerate(messages):
        if m["role"] not in _ROLES:
            raise ValueError(f"{where}: message {j} has role {m['role']!r}; expected one of {list(_ROLES)}")
        if j in slots:
            if m["role"] != "assistant":
                raise ValueError(f"{where}: message {j} ({m['role']}) has no content; only assistant turns may be left for the target")
            if j == 0 or messages[j - 1]["role"] != "user":
                raise ValueError(f"{where}: assistant slot {j} must follow a user turn")
            m["content"] = None
        elif m["role"] == "user" and not m["content"].strip():
            raise ValueError(f"{where}: user message {j} is empty")
    if messages[-1]["role"] != "user":
        raise ValueError(f"{where}: the last turn must be a user turn, got {messages[-1]['role']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_prompts(path: str | os.PathLike) -> list[ChatPrompt]:
    """Read and validate every prompt of ``path`` (JSONL rows, or one plain prompt per line of a ``.txt``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line that is not JSON or not a valid prompt (the message names the file and line), or
            a file without prompts.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts: {path!r} is not a file")
    plain = path.lower().endswith(".txt")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            if plain:
                raw: Any = line.rstrip("\n")
            else:
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not valid JSON ({exc})") from None
            messages = _parse_prompt(raw, where)
            prompts.append(ChatPrompt(len(prompts), messages, digest(messages)[:16]))
    if not prompts:
        raise ValueError(f"--prompts: {path!r} holds no prompts")
    return prompts


def check_regenerate_args(*, max_new_tokens: int, batch_size: int, temperature: float, seed: int,
                          limit: int | None) -> None:
    """Validate the numeric settings.

    Raises:
        ValueError: naming the argument, its value and what is expected.
    """
    for name, value, minimum in (("max_new_tokens", max_new_tokens, 1), ("batch_size", batch_size, 1),
                                 ("seed", seed, 0)):
        if not is_int(value, minimum):
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {minimum}, got {value!r}")
    if limit is not None and not is_int(limit, 1):
        raise ValueError(f"--limit: expected an integer >= 1, got {limit!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"--temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")


def _check_target(target: str) -> str:
    target = os.path.abspath(os.fspath(target))
    if not os.path.isfile(os.path.join(target, "config.json")):
        raise FileNotFoundError(
            f"--target: {target!r} is not a model directory (expected config.json, weights and a tokenizer in it)"
        )
    return target


def _answered(out_path: str, prompts: Sequence[ChatPrompt]) -> set[int]:
    """Indices already answered in ``out_path``; a half-written last line (a crash during a write) is cut off.

    Raises:
        ValueError: a damaged line before the last, or a row whose prompt index / hash does not match
            ``prompts``.
    """
    if not os.path.exists(out_path):
        return set()
    with open(out_path, "rb") as f:
        data = f.read()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(out_path, "r+b") as f:
            f.truncate(complete)
    done = set()
    for line_no, line in enumerate(data[:complete].splitlines(), 1):
        where = f"--out {out_path!r} line {line_no}"
        try:
            row = json.loads(line)
            index, key = int(row["prompt_index"]), row["prompt_hash"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: not a row written by eagle-ext regenerate") from None
        if not 0 <= index < len(prompts) or prompts[index].key != key:
            raise ValueError(
                f"{where}: answers prompt {index} with hash {key}, which is not prompt {index} of --prompts "
                "(the prompt file changed); write to a new --out"
            )
        done.add(index)
    return done


def _check_settings(out_path: str, settings: dict, *, command: str = "regenerate", also: Sequence[str] = ()) -> bool:
    """True when ``out_path`` exists and its settings file matches ``settings`` (the keys of ``settings`` are
    compared, plus the optional keys ``also``, which must be absent from both or equal: a stored
    ``engine: vllm`` differs from a run that has no ``engine``; ``command`` names the eagle-ext command in the
    messages).

    Raises:
        ValueError: the output exists without a settings file, or with different settings.
    """
    path = settings_path(out_path)
    if not os.path.exists(out_path):
        return False
    if not os.path.isfile(path):
        raise ValueError(f"--out: {out_path!r} exists but has no {os.path.basename(path)}; it was not written by "
                         f"eagle-ext {command}, choose a new --out")
    with open(path) as f:
        stored = json.load(f)
    changed = [f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}" for k in dict.fromkeys([*settings, *also])
               if stored.get(k) != settings.get(k)]
    if changed:
        hint = " (the target's files changed)" if any(c.startswith("target_fingerprint") for c in changed) else ""
        raise ValueError(f"--out: {out_path!r} was made with different settings{hint}: {'; '.join(changed)}; "
                         "resume with the same settings or choose a new --out")
    return True


def _end_token_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("--target: neither the tokenizer nor generation_config names an end (eos) token")
    return sorted(set(ids))


def _encode(tokenizer, contexts: list[list[dict]]) -> list[list[int]]:
    return [tokenizer(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for c in contexts]


def _decode_answers(tokenizer, rows: list[list[int]], end_ids: list[int]) -> tuple[list[str], list[str], int]:
    """Cut each generated row at its first end token: ``(texts, finish_reasons, tokens generated)``."""
    texts, reasons, tokens = [], [], 0
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in end_ids), None)
        reasons.append("length" if end is None else "stop")
        kept = row if end is None else row[:end]
        tokens += len(kept) + (end is not None)
        texts.append(tokenizer.decode(kept, skip_special_tokens=False))
    return texts, reasons, tokens


def _generate(model, tokenizer, contexts: list[list[dict]], *, max_new_tokens: int, temperature: float,
              end_ids: list[int], pad_id: int) -> tuple[list[str], list[str], int]:
    """Answer each context (messages ending with a user turn) with transformers; returns
    ``(texts, finish_reasons, tokens)``."""
    import torch

    encoded = _encode(tokenizer, contexts)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, ids in enumerate(encoded):  # left padding: every row's next token is generated at the same column
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, width - len(ids):] = 1
    sampling = dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens, eos_token_id=end_ids, pad_token_id=pad_id, use_cache=True, **sampling,
        )
    return _decode_answers(tokenizer, out[:, width:].tolist(), end_ids)


def _vllm_generate(engine, tokenizer, contexts: list[list[dict]], seeds: list[int], *, max_new_tokens: int,
                   temperature: float, end_ids: list[int]) -> tuple[list[str], list[str], int]:
    """:func:`_generate` in vLLM (all contexts submitted at once; per-context sampling seeds)."""
    outs = engine.generate(_encode(tokenizer, contexts), max_new_tokens=max_new_tokens, temperature=temperature,
                           seeds=seeds, stop_token_ids=end_ids)
    return _decode_answers(tokenizer, [o.token_ids for o in outs], end_ids)


def _hf_end_token_ids(target: str, tokenizer) -> list[int]:
    """:func:`_end_token_ids` from the target's saved generation config, without loading the weights."""
    from types import SimpleNamespace

    from eagle_ext._hf import saved_generation_config

    return _end_token_ids(SimpleNamespace(generation_config=saved_generation_config(target)), tokenizer)


def regenerate_chats(
    target: str | os.PathLike, prompts_path: str | os.PathLike, out_path: str | os.PathLike, *,
    max_new_tokens: int = 256, batch_size: int = 8, temperature: float = 0.0, seed: int = 0,
    limit: int | None = None, show_progress: bool = True, engine: str = "hf", dtype: str = "auto",
    vllm_python: str | None = None,
) -> dict[str, Any]:
    """Answer the prompts of ``prompts_path`` with the model in ``target`` and append chats to ``out_path``.

    Args:
        target: a local Hugging Face model directory with a tokenizer that has a chat template.
        prompts_path: prompts (see the module docstring).
        out_path: output JSONL (created, or resumed; see the module docstring).
        max_new_tokens: per generated turn.
        batch_size: prompts per batch (rows of one ``generate`` call).
        temperature: 0 for greedy decoding, else pure temperature sampling.
        seed: sampling seed (with the batch's first prompt index).
        limit: answer only the first ``limit`` prompts.
        show_progress: a tqdm bar over prompts.
        engine: ``"hf"`` (transformers ``generate``) or ``"vllm"`` (:class:`eagle_ext.engines.vllm.VllmEngine`,
            a batch of ``batch_size`` prompts submitted at once; sampling seeds per prompt and turn, so a resumed
            run draws what an uninterrupted one would whatever the batches). The vLLM engine and its dtype are
            part of the settings: an output is never resumed with the other engine.
        dtype: ``"auto"`` (hf: bf16 on a GPU, fp32 on CPU; vLLM: the checkpoint's), ``"fp32"``, ``"bf16"`` or
            ``"fp16"``.
        vllm_python: the interpreter with vLLM (default :func:`eagle_ext.engines.vllm.find_vllm_python`).

    Returns:
        ``{"prompts", "already_answered", "answered", "generated_tokens", "truncated_turns", "seconds",
        "out"}``.

    Raises:
        ValueError / FileNotFoundError: bad settings, prompts, target directory or output file, before the
            model is loaded.
    """
    check_regenerate_args(max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature,
                          seed=seed, limit=limit)
    if engine not in ("hf", "vllm"):
        raise ValueError(f"--engine: expected 'hf' or 'vllm', got {engine!r}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
    target = _check_target(target)
    out_path = os.path.abspath(os.fspath(out_path))
    if os.path.isdir(out_path):
        raise ValueError(f"--out: {out_path!r} is a directory; expected a JSONL file path")
    prompts = read_prompts(prompts_path)
    settings = _regenerate_settings(target, engine=engine, dtype=dtype, max_new_tokens=max_new_tokens,
                                    temperature=temperature, seed=seed)
    resuming = _check_settings(out_path, settings, also=("engine", "dtype"))
    done = _answered(out_path, prompts) if resuming else set()
    selected = prompts[:limit] if limit is not None else prompts
    # Batch prompts with equally many turns to generate together (stable: index order within a group), so the
    # later rounds of a multi-turn batch stay full instead of running a few rows through a whole generate call.
    pending = sorted((p for p in selected if p.index not in done), key=lambda p: len(p.slots))
    stats = {"prompts": len(selected), "already_answered": len(selected) - len(pending), "answered": 0,
             "generated_tokens": 0, "truncated_turns": 0, "seconds": 0.0, "out": out_path}
    if not pending:
        return stats
    generator = _load_generator(target, engine=engine, dtype=dtype, seed=seed, batch_size=batch_size,
                                vllm_python=vllm_python)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    if not resuming:
        with open(out_path, "w"):
            pass
    write_json(settings_path(out_path), settings, indent=2)
    _answer_pending(pending, stats, out_path, generator, engine=engine, batch_size=batch_size, seed=seed,
                    max_new_tokens=max_new_tokens, temperature=temperature, show_progress=show_progress)
    return stats


def _regenerate_settings(target: str, *, engine: str, dtype: str, max_new_tokens: int, temperature: float,
                         seed: int) -> dict[str, Any]:
    """What an output was made with (stored beside it; a resumed run must match)."""
    settings = {"format": REGENERATE_FORMAT, "target": target, "target_fingerprint": path_fingerprint(target),
                "max_new_tokens": max_new_tokens, "temperature": float(temperature), "seed": seed}
    if engine == "vllm":  # hf settings keep their original keys, so earlier outputs stay resumable
        settings.update({"engine": "vllm", "dtype": dtype})
    elif dtype != "auto":
        settings["dtype"] = dtype
    return settings


def _load_generator(target: str, *, engine: str, dtype: str, seed: int, batch_size: int,
                    vllm_python: str | None) -> dict[str, Any]:
    """The tokenizer and the engine that answers: an HF model on the best device (``model``, ``device``) or a
    :class:`~eagle_ext.engines.vllm.VllmEngine` not yet started (``vllm_engine``); with the ``end_ids`` that
    close a turn and the ``pad_id``.

    Raises:
        ValueError: the tokenizer has no chat template; VllmUnavailable: no interpreter with vLLM.
    """
    import torch
    from transformers import AutoTokenizer

    if engine == "vllm":
        from eagle_ext.engines.vllm import find_vllm_python

        vllm_python = find_vllm_python(vllm_python)  # before anything loads
    tokenizer = AutoTokenizer.from_pretrained(target)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--target: the tokenizer in {target!r} has no chat template")
    vllm_engine, model = None, None
    if engine == "vllm":
        from eagle_ext.engines.vllm import VllmEngine

        end_ids = _hf_end_token_ids(target, tokenizer)
        vllm_engine = VllmEngine(target, dtype=DTYPES[dtype] or "auto", seed=seed, python=vllm_python,
                                 max_num_seqs=batch_size)
        device = None
    else:
        from transformers import AutoModelForCausalLM

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 on a GPU, fp32 on CPU (where bf16 matmuls are slow), whatever dtype the checkpoint was saved in;
        # cast after loading because the dtype argument's name differs between transformers 4 and 5.
        cast = getattr(torch, DTYPES[dtype]) if DTYPES[dtype] else (
            torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(target).to(device=device, dtype=cast).eval()
        end_ids = _end_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    return {"tokenizer": tokenizer, "model": model, "vllm_engine": vllm_engine, "device": device,
            "end_ids": end_ids, "pad_id": pad_id}


def _answer_pending(pending: list[ChatPrompt], stats: dict, out_path: str, generator: dict[str, Any], *,
                    engine: str, batch_size: int, seed: int, max_new_tokens: int, temperature: float,
                    show_progress: bool) -> None:
    """Answer ``pending`` batch by batch (appending to ``out_path``, counting into ``stats``), under a progress bar;
    the vLLM engine is started here and always closed."""
    from tqdm.auto import tqdm

    vllm_engine = generator["vllm_engine"]
    bar = tqdm(total=len(pending), desc=f"regenerate ({engine})", unit="prompt", disable=not show_progress)
    try:
        if vllm_engine is not None:
            vllm_engine.start()  # inside the try: an engine that started is always closed
        t0 = time.perf_counter()  # generation time: the engine's start-up is not counted
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            _answer_batch(batch, stats, out_path, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                          **generator)
            elapsed = time.perf_counter() - t0
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{stats['generated_tokens'] / max(elapsed, 1e-9):.0f}")
    finally:
        bar.close()
        if vllm_engine is not None:
            vllm_engine.close()
    stats["seconds"] = time.perf_counter() - t0


def _answer_batch(batch: list[ChatPrompt], stats: dict, out_path: str, *, tokenizer, model, vllm_engine, device,
                  seed: int, max_new_tokens: int, temperature: float, end_ids: list[int], pad_id: int) -> None:
    """Generate every turn of one batch of prompts and append its rows to ``out_path`` (one synced write)."""
    import torch

    chats = [[dict(m) for m in p.messages] for p in batch]
    reasons: list[list[str]] = [[] for _ in batch]
    cuda = device is not None and device.type == "cuda"
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.manual_seed(seed * 1_000_003 + batch[0].index)
        for turn in range(max(len(p.slots) for p in batch)):  # one generated turn per round, per chat
            active = [r for r, p in enumerate(batch) if turn < len(p.slots)]
            contexts = [chats[r][:batch[r].slots[turn]] for r in active]
            if vllm_engine is not None:
                seeds = [(seed * 1_000_003 + batch[r].index) * 64 + turn for r in active]
                texts, finish, tokens = _vllm_generate(vllm_engine, tokenizer, contexts, seeds,
                                                       max_new_tokens=max_new_tokens, temperature=temperature,
                                                       end_ids=end_ids)
            else:
                texts, finish, tokens = _generate(model, tokenizer, contexts, max_new_tokens=max_new_tokens,
                                                  temperature=temperature, end_ids=end_ids, pad_id=pad_id)
            stats["generated_tokens"] += tokens
            for r, text, reason in zip(active, texts, finish):
                slot = batch[r].slots[turn]
                if slot == len(chats[r]):
                    chats[r].append({"role": "assistant", "content": text})
                else:
                    chats[r][slot]["content"] = text
                reasons[r].append(reason)
    lines = "".join(
        json.dumps({"messages": chat, "prompt_index": p.index, "prompt_hash": p.key, "finish_reasons": rs},
                   ensure_ascii=False) + "\n"
        for p, chat, rs in zip(batch, chats, reasons)
    )
    with open(out_path, "a", encoding="utf-8") as f:  # one write per batch, synced: a crash loses one batch
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    stats["answered"] += len(batch)
    stats["truncated_turns"] += sum(rs.count("length") for rs in reasons)
