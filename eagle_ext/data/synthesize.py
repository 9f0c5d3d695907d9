"""Synthesise user prompts (and multi-turn chats) with the target itself: the Magpie method (Xu et al., 2024).

An aligned chat model, given only its chat template's opening of a user turn, writes a plausible user request.
:func:`synthesize_prompts` renders the target's *own* template (``tokenizer.apply_chat_template``, nothing
hard-coded) up to that opening, samples a continuation at temperature ~1 until the end of the turn, filters
it, and writes chat rows. The rows feed ``eagle-ext regenerate`` (``--no-answers``: one user turn each) or
training directly (``--answers``, the default: the target's greedy answers, as the draft will be served).

The opening of a user turn (:func:`user_turn_prefix`): the conversation so far (nothing, or the ``--system``
turn, for the first prompt; for a follow-up, everything through the last assistant answer) plus a user turn
whose content is a sentinel string is rendered, and the text is cut where the sentinel starts. So the
prefix holds whatever the template writes there: its default system prompt when no system turn is given
(SmolLM2 inserts one), the system turn, the user header. The cut must be a token boundary: the tokens of the
prefix must be the first tokens of the whole rendered text (otherwise the model would be asked to continue
a tokenisation it never saw), and the template must write the sentinel; both are checked, with clear errors.
The template's text after the sentinel names the end-of-turn token (``<|im_end|>`` in ChatML, ``<|eot_id|>``
in Llama 3), which stops sampling together with the target's end (eos) tokens.

Per candidate (numbered 0, 1, 2, ... in the order they are drawn), for each of ``turns`` turns:

1. a user turn is sampled (``temperature``, ``top_p``) with a budget of ``max_tokens`` tokens plus the end
   token; a turn that does not end within it is dropped as ``truncated`` (the length bound in tokens);
2. local checks, in order: ``truncated``, ``empty``, ``special_token`` (the text holds a special token such as
   the template's markup), length (:func:`eagle_ext.data.text_filters.length_reason`), garbage
   (:func:`~eagle_ext.data.text_filters.garbage_reason`), degenerate repetition and refusals
   (:func:`~eagle_ext.data.text_filters.degenerate_reason`), leaks (``leak_exact`` / ``leak_near``: an exact or
   near duplicate, estimated Jaccard >= ``exclude_threshold``, of a user turn of an ``exclude`` file);
3. with answers, the target answers greedily (``max_new_tokens``; a cut answer is kept with finish reason
   ``length``, as in regenerate, and ends the conversation).

A first turn that fails a check drops the candidate (counted under its reason in ``dropped``); a follow-up that
fails ends the conversation after the previous answer (counted in ``followups_dropped`` and ``turns_cut``).
Then, in candidate order, the first user turn is checked against the rows kept so far: ``exact_duplicate``
(same normalised-text hash) and ``near_duplicate`` (estimated Jaccard >= ``near_dup_threshold``; MinHash with
LSH, :mod:`eagle_ext.data.text_filters`). Follow-ups are not deduplicated (short thanks recur legitimately).

Rows: ``{"messages": [...], "synth_index": i}`` plus ``"finish_reasons"`` (one per answer) with answers. The
``--system`` turn, when given, is the first message; a template's default system prompt is not written (the
template inserts it again). Without answers the row has the first user turn only (regenerate's prompt format).

Output (``out`` is a directory): ``shard-00000.jsonl`` (or ``.jsonl.gz``), ``shard-00001.jsonl``, ... of
``shard_size`` rows each (the last one shorter), and ``<out>.settings.json`` beside the directory, so that the
directory holds only data files and the training loader reads it as a data path. The current shard is
rewritten atomically after every batch, then the settings file (with the progress: shards, their row counts and
content hashes, the next candidate index, cumulative counts), also atomically; a crash loses at most one batch.

Resume: a rerun with the same settings (those that decide the rows: target fingerprint, engine, template
inputs, sampling, filters, thresholds, exclude files, shard layout; for the hf engine also ``batch_size``)
continues where the last one stopped; different settings are refused, naming the differences. ``num_prompts``
and ``max_candidates`` may change (raise ``num_prompts`` to grow a finished set).

Determinism: every sampled turn has a seed derived from ``seed``, the candidate index and the turn
(:func:`row_seed`). The vLLM engine takes per-request seeds. The hf engine samples a batch with
``transformers`` ``generate`` under a forked torch RNG seeded with the batch's first row seed; candidates are
batched at fixed boundaries (multiples of ``batch_size``), and a resume restarts the interrupted batch from its
first candidate and skips the ones already decided, so a resumed run writes the rows an uninterrupted one
writes (on the same device and software).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from eagle_ext._checks import is_int
from eagle_ext._io import atomic_path, write_json
from eagle_ext.data.chat import SkippedRow, normalize_messages
from eagle_ext.data.fingerprint import path_fingerprint
from eagle_ext.data.regenerate import (
    _check_settings,
    _check_target,
    _end_token_ids,
    check_regenerate_args,
    settings_path,
)
from eagle_ext.data.text_filters import (
    MinHasher,
    MinHashIndex,
    TextFilters,
    degenerate_reason,
    garbage_reason,
    length_reason,
    text_hash,
)

__all__ = [
    "ENGINES", "Generated", "HfEngine", "LeakChecker", "SENTINEL", "UserTurnPrefix", "check_synthesize_args",
    "read_exclude_texts", "resolve_engine", "row_seed", "shard_name", "synthesize_prompts", "user_turn_prefix",
]

#: Version of the output format and of what decides a row; stored in the settings file.
SYNTHESIZE_FORMAT = 1
#: Content of the placeholder user turn whose start marks the end of the template's user-turn opening.
SENTINEL = "XyzzyMagpieSentinel"
ENGINES = ("auto", "hf", "vllm")
#: Near-duplicate machinery (recorded in the settings): 128 hash functions over word 3-grams, 32 LSH bands.
MINHASH = {"num_perm": 128, "ngram": 3, "seed": 1, "bands": 32}


# --------------------------------------------------------------------------------------------------------
# The template's opening of a user turn
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTurnPrefix:
    """``text``: the rendered conversation through the opening of a new user turn; ``ids``: its tokens;
    ``end_ids``: the special token(s) the template writes right after a user turn's content (may be empty)."""

    text: str
    ids: list[int]
    end_ids: list[int]


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def user_turn_prefix(tokenizer, messages: Sequence[dict] = (), *, sentinel: str = SENTINEL) -> UserTurnPrefix:
    """The template's rendering of ``messages`` followed by the opening of a user turn (see the module doc).

    Raises:
        ValueError: the template fails on the conversation, does not write the sentinel user content, or the
            cut is not a token boundary.
    """
    conversation = [dict(m) for m in messages] + [{"role": "user", "content": sentinel}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
    except Exception as exc:  # jinja raises its own errors (templates may raise_exception on role order)
        raise ValueError(f"--target: the chat template cannot render a user turn after "
                         f"{[m['role'] for m in messages]} ({type(exc).__name__}: {exc})") from None
    pos = text.rfind(sentinel)
    if pos < 0:
        raise ValueError(
            "--target: the chat template does not write a user message's content (rendering a user turn "
            f"{sentinel!r} gave {text[-200:]!r}); it cannot open a user turn for the target to write"
        )
    prefix, suffix = text[:pos], text[pos + len(sentinel):]
    ids_full = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    if ids_full[:len(ids)] != ids:
        raise ValueError(
            f"--target: the chat template's opening of a user turn ({prefix[-60:]!r}) does not end at a token "
            "boundary: its tokens are not the first tokens of a rendered user turn, so the target would continue "
            "a tokenisation it never saw"
        )
    after = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    end_ids = [after[0]] if after and after[0] in _special_ids(tokenizer) else []
    return UserTurnPrefix(prefix, list(ids), end_ids)


# --------------------------------------------------------------------------------------------------------
# Leak check against excluded prompts
# --------------------------------------------------------------------------------------------------------


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.lower().endswith(".gz") else open(path, encoding="utf-8")


def read_exclude_texts(path: str | os.PathLike) -> list[str]:
    """The user turns of a prompt / chat file (``.jsonl`` or ``.jsonl.gz``: JSON strings or objects with
    ``messages`` / ``conversations``; ``.txt`` / ``.txt.gz``: one prompt a line).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a prompt (naming the file and line), or a file without user turns.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--exclude: {path!r} is not a file")
    plain = path.lower().removesuffix(".gz").endswith(".txt")
    texts = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"--exclude {path}:{line_no}"
            if plain:
                texts.append(line.rstrip("\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            if isinstance(row, str):
                texts.append(row)
                continue
            raw = next((row[k] for k in ("messages", "conversations") if isinstance(row, dict) and k in row), None)
            if raw is None:
                raise ValueError(f"{where}: expected a JSON string or an object with 'messages', got {line[:80]!r}")
            try:
                messages = normalize_messages(raw)
            except SkippedRow as exc:
                raise ValueError(f"{where}: {exc}") from None
            texts += [m["content"] for m in messages if m["role"] == "user" and m["content"].strip()]
    if not texts:
        raise ValueError(f"--exclude: {path!r} holds no user turns")
    return texts


class LeakChecker:
    """Exact (normalised-text hash) and near (MinHash, estimated Jaccard >= ``threshold``) matches of texts
    against a fixed set of excluded texts."""

    def __init__(self, texts: Sequence[str], hasher: MinHasher, threshold: float, bands: int):
        self.hashes = {text_hash(t) for t in texts}
        self.index = MinHashIndex(hasher, threshold, bands)
        self.index.add_texts(texts)

    def __len__(self) -> int:
        return len(self.index)

    def check(self, text: str) -> str | None:
        """``"leak_exact"``, ``"leak_near"`` or None."""
        if text_hash(text) in self.hashes:
            return "leak_exact"
        if self.index.query(self.index.hasher.signature(text)) is not None:
            return "leak_near"
        return None


# --------------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """One generation (the hf engine's twin of the vLLM engine's ``GenerationOutput``)."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length"


class HfEngine:
    """``transformers`` generation with the interface of :class:`eagle_ext.engines.vllm.VllmEngine`: token-id
    prompts in, left-padded batches with a KV cache; bf16 on a GPU, fp32 on CPU. Sampling (temperature, top-p,
    no top-k) runs under a forked torch RNG seeded with ``seeds[0]`` (one generator per batch)."""

    name = "hf"

    def __init__(self, model: str, tokenizer, *, pad_id: int, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        # cast after loading: the dtype argument's name differs between transformers 4 and 5 (as in regenerate)
        self.model = AutoModelForCausalLM.from_pretrained(model).to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer, self.pad_id = tokenizer, pad_id

    def __enter__(self) -> HfEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.model = None

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: list[int] | None = None, stop_token_ids: list[int] | None = None,
                 ignore_eos: bool = False) -> list[Generated]:
        import torch

        if not prompts:
            return []
        stops = sorted(set(stop_token_ids or []))
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, ids in enumerate(prompts):  # left padding: every row's next token is generated at the same column
            input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, width - len(ids):] = 1
        sampling = (dict(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
                    if temperature > 0 else dict(do_sample=False))
        devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seeds[0] if seeds else 0)
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                max_new_tokens=max_new_tokens, eos_token_id=[] if ignore_eos else stops,
                pad_token_id=self.pad_id, use_cache=True, **sampling,
            )
        results = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), None) if not ignore_eos else None
            ids = row if end is None else row[:end + 1]
            text = self.tokenizer.decode(ids if end is None else ids[:-1], skip_special_tokens=False)
            results.append(Generated(ids, text, "length" if end is None else "stop"))
        return results


def _vllm_module():
    try:
        from eagle_ext.engines import vllm as module
    except ImportError as exc:
        return None, f"the vLLM engine module cannot be imported ({exc})"
    return module, None


def resolve_engine(engine: str, vllm_python: str | None = None) -> tuple[str, str | None]:
    """``(engine name, vLLM python)``: ``auto`` picks vLLM when :func:`find_vllm_python` finds it, else hf.

    Raises:
        ValueError: an unknown engine, or ``vllm`` asked for and not available (the message says how to
            install it).
    """
    if engine not in ENGINES:
        raise ValueError(f"--engine: expected one of {list(ENGINES)}, got {engine!r}")
    if engine == "hf":
        if vllm_python is not None:
            raise ValueError("--vllm-python: only used with --engine vllm (or auto), got --engine hf")
        return "hf", None
    module, problem = _vllm_module()
    if module is not None:
        try:
            return "vllm", module.find_vllm_python(vllm_python)
        except module.VllmUnavailable as exc:
            problem = str(exc)
    if engine == "vllm" or vllm_python is not None:
        raise ValueError(f"--engine vllm: vLLM is not available: {problem}")
    return "hf", None


def _open_engine(name: str, target: str, tokenizer, *, pad_id: int, seed: int, vllm_python: str | None):
    if name == "hf":
        return HfEngine(target, tokenizer, pad_id=pad_id)
    from eagle_ext.engines.vllm import VllmEngine

    return VllmEngine(target, seed=seed, python=vllm_python)


# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------


def row_seed(seed: int, index: int, turn: int) -> int:
    """The sampling seed of candidate ``index``'s user turn ``turn`` (31-bit, stable across runs)."""
    h = hashlib.sha256(f"eagle_ext.synthesize:{seed}:{index}:{turn}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def check_synthesize_args(*, num_prompts: int, turns: int, answers: bool, temperature: float, top_p: float,
                          seed: int, max_tokens: int, max_new_tokens: int, batch_size: int, shard_size: int,
                          near_dup_threshold: float, exclude_threshold: float, max_candidates: int | None,
                          system: str | None) -> None:
    """Validate the settings of :func:`synthesize_prompts`.

    Raises:
        ValueError: naming the argument, its value and what is expected.
    """
    for name, value, minimum in (("num_prompts", num_prompts, 1), ("turns", turns, 1), ("max_tokens", max_tokens, 1),
                                 ("shard_size", shard_size, 1)):
        if not is_int(value, minimum):
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {minimum}, got {value!r}")
    if max_candidates is not None and not is_int(max_candidates, 1):
        raise ValueError(f"--max-candidates: expected an integer >= 1, got {max_candidates!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"--temperature: expected a finite number > 0 (prompts are sampled; ~1 gives diverse "
                         f"prompts), got {temperature!r}")
    check_regenerate_args(max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature, seed=seed,
                          limit=None)
    for name, value in (("top_p", top_p), ("near_dup_threshold", near_dup_threshold),
                        ("exclude_threshold", exclude_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a number in (0, 1], got {value!r}")
    if not isinstance(answers, bool):
        raise ValueError(f"--answers: expected True or False, got {answers!r}")
    if turns > 1 and not answers:
        raise ValueError(f"--turns {turns}: follow-up user turns are written after the target's answers; they need "
                         "--answers (with --no-answers only the first user turn is kept)")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise ValueError(f"--system: expected a non-empty text, got {system!r}")
    if system is not None and SENTINEL in system:
        raise ValueError(f"--system: must not contain {SENTINEL!r} (the marker of the user turn's start)")


def _versions() -> dict:
    import numpy
    import torch
    import transformers

    import eagle_ext

    return {"eagle_ext": eagle_ext.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------------


def shard_name(k: int, compress: bool) -> str:
    return f"shard-{k:05d}.jsonl" + (".gz" if compress else "")


def _rows_text(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _write_shard(path: str, text: str, compress: bool) -> None:
    data = text.encode("utf-8")
    if compress:  # mtime 0 and no name: equal rows give equal bytes
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as g:
            g.write(data)
        data = buf.getvalue()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_shard_lines(path: str) -> list[str]:
    with _open_text(path) as f:
        return f.read().splitlines(keepends=True)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _first_user(messages: Sequence[dict]) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def _load_progress(out_dir: str, progress: dict, compress: bool) -> list[list[dict]]:
    """Check the shards the progress lists and return their rows; shards written after the last progress
    record (a crash between the two writes) are cut back or removed, as are temp files of a killed write.

    Raises:
        ValueError: a listed shard is missing, shorter than recorded or with other content.
    """
    shards = []
    listed = progress.get("shards", [])
    for k, entry in enumerate(listed):
        name = shard_name(k, compress)
        path = os.path.join(out_dir, name)
        if entry.get("file") != name or not os.path.isfile(path):
            raise ValueError(f"--out: {out_dir!r} lacks {name}, which its settings file lists; choose a new --out")
        lines = _read_shard_lines(path)
        rows = int(entry["rows"])
        if len(lines) < rows or _sha("".join(lines[:rows])) != entry["sha256"]:
            raise ValueError(f"--out: {path!r} does not hold the {rows} rows its settings file records (damaged or "
                             "edited); choose a new --out")
        if len(lines) > rows:  # rows written after the last progress record: they are made again
            _write_shard(path, "".join(lines[:rows]), compress)
        shards.append([json.loads(line) for line in lines[:rows]])
    for name in sorted(os.listdir(out_dir)):
        stray = name.startswith(".shard-") or (
            name.startswith("shard-") and name not in {shard_name(k, compress) for k in range(len(listed))}
        )
        if stray:
            os.remove(os.path.join(out_dir, name))
    return shards


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    index: int
    messages: list[dict]
    reasons: list[str] = field(default_factory=list)  # finish reasons of the answers
    dropped: str | None = None  # the first turn's failed check
    followup_dropped: str | None = None
    user_turns: int = 0


def _empty_stats() -> dict:
    return {"candidates": 0, "kept": 0, "dropped": {}, "followups_dropped": {}, "turns_cut": 0,
            "answers_truncated": 0, "prompt_tokens": 0, "answer_tokens": 0, "prompt_seconds": 0.0,
            "answer_seconds": 0.0}


class _Synthesizer:
    """One run's fixed inputs: engine, tokenizer, stop tokens, filters, leak check."""

    def __init__(self, engine, tokenizer, *, stop_ids, special_ids, first_prefix, system, turns, answers,
                 temperature, top_p, seed, max_tokens, max_new_tokens, filters, leaks):
        self.engine, self.tokenizer = engine, tokenizer
        self.stop_ids, self.special_ids, self.first_prefix = stop_ids, special_ids, first_prefix
        self.system, self.turns, self.answers = system, turns, answers
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.max_tokens, self.max_new_tokens = max_tokens, max_new_tokens
        self.filters, self.leaks = filters, leaks

    def _cut(self, out) -> tuple[list[int], bool]:
        ids = list(out.token_ids)
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        if end is not None:
            return ids[:end], True
        return ids, out.finish_reason == "stop"

    def user_turn_reason(self, ids: list[int], stopped: bool, text: str) -> str | None:
        if not stopped:
            return "truncated"
        if not text:
            return "empty"
        if any(t in self.special_ids for t in ids):
            return "special_token"
        reason = (length_reason(text, len(ids), self.filters) or garbage_reason(text, self.filters)
                  or degenerate_reason(text, self.filters, user_turn=True))
        if reason is None and self.leaks is not None:
            reason = self.leaks.check(text)
        return reason

    def run_batch(self, indices: Sequence[int], stats: dict) -> list[_Candidate]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        cands = [_Candidate(i, [dict(m) for m in system]) for i in indices]
        alive = list(range(len(cands)))
        for turn in range(self.turns):
            if not alive:
                break
            prompts = [self.first_prefix.ids if turn == 0 else user_turn_prefix(self.tokenizer, cands[r].messages).ids
                       for r in alive]
            t0 = time.perf_counter()
            outs = self.engine.generate(
                prompts, max_new_tokens=self.max_tokens + 1, temperature=self.temperature, top_p=self.top_p,
                seeds=[row_seed(self.seed, cands[r].index, turn) for r in alive], stop_token_ids=self.stop_ids,
            )
            stats["prompt_seconds"] += time.perf_counter() - t0
            survivors = []
            for r, out in zip(alive, outs):
                ids, stopped = self._cut(out)
                stats["prompt_tokens"] += len(out.token_ids)
                text = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
                reason = self.user_turn_reason(ids, stopped, text)
                if reason is None:
                    cands[r].messages.append({"role": "user", "content": text})
                    cands[r].user_turns += 1
                    survivors.append(r)
                elif turn == 0:
                    cands[r].dropped = reason
                else:
                    cands[r].followup_dropped = reason
            alive = survivors
            if not self.answers or not alive:
                break
            contexts = [self.tokenizer(self.tokenizer.apply_chat_template(cands[r].messages, tokenize=False,
                                                                          add_generation_prompt=True),
                                       add_special_tokens=False)["input_ids"] for r in alive]
            t0 = time.perf_counter()
            outs = self.engine.generate(contexts, max_new_tokens=self.max_new_tokens, temperature=0.0,
                                        stop_token_ids=self.stop_ids)
            stats["answer_seconds"] += time.perf_counter() - t0
            survivors = []
            for r, out in zip(alive, outs):
                ids, stopped = self._cut(out)
                stats["answer_tokens"] += len(out.token_ids)
                cands[r].messages.append({"role": "assistant",
                                          "content": self.tokenizer.decode(ids, skip_special_tokens=False)})
                cands[r].reasons.append("stop" if stopped else "length")
                if stopped:
                    survivors.append(r)
            alive = survivors
        return cands


def synthesize_prompts(
    target: str | os.PathLike, out_dir: str | os.PathLike, *, num_prompts: int, engine: str = "auto",
    vllm_python: str | None = None, system: str | None = None, turns: int = 1, answers: bool = True,
    temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, max_tokens: int = 256,
    max_new_tokens: int = 256, batch_size: int = 16, shard_size: int = 1000, compress: bool = False,
    exclude: Sequence[str | os.PathLike] = (), near_dup_threshold: float = 0.7, exclude_threshold: float = 0.5,
    filters: TextFilters | None = None, max_candidates: int | None = None, show_progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Synthesise ``num_prompts`` rows with the target in ``target`` into the directory ``out_dir``.

    Args:
        target: a local Hugging Face model directory whose tokenizer has a chat template.
        out_dir: output directory (created, or resumed; see the module docstring).
        num_prompts: rows to have in ``out_dir`` when done.
        engine: ``"auto"`` (vLLM when :func:`resolve_engine` finds it, else hf), ``"hf"`` or ``"vllm"``.
        vllm_python: the Python interpreter that has vLLM (default: found by the vLLM engine).
        system: a system turn before the user turn; None: whatever the template writes by default.
        turns: user turns per conversation (follow-ups need ``answers``).
        answers: write the target's greedy answers (else only the first user turn).
        temperature, top_p: sampling of user turns (no top-k).
        seed: base of the per-turn seeds (:func:`row_seed`).
        max_tokens: budget of a user turn in tokens (longer turns are dropped as truncated).
        max_new_tokens: budget of an answer.
        batch_size: candidates per generate call.
        shard_size: rows per output shard.
        compress: gzip the shards (``.jsonl.gz``).
        exclude: prompt / chat files whose user turns must not appear (exactly or nearly) in the output.
        near_dup_threshold: estimated Jaccard at or above which a first user turn duplicates a kept one.
        exclude_threshold: estimated Jaccard at or above which a user turn leaks an excluded one.
        filters: thresholds of the text filters (default :class:`TextFilters`).
        max_candidates: stop after this many candidates in total (default ``20 * num_prompts``).
        show_progress: a tqdm bar over kept rows.
        command: the command line, recorded in the settings file.

    Returns:
        the cumulative counts (see the module docstring) plus ``"rows"`` (kept in ``out_dir``), ``"new_rows"``
        (this run), ``"stopped"`` (``"done"`` or ``"max_candidates"``), ``"seconds"`` (this run), ``"out"``,
        ``"engine"``.

    Raises:
        ValueError / FileNotFoundError: bad settings, target, exclude files or output directory, before the
            model is loaded.
    """
    filters = TextFilters() if filters is None else filters
    if not isinstance(filters, TextFilters):
        raise ValueError(f"filters: expected a TextFilters, got {type(filters).__name__}")
    options = {"system": system, "turns": turns, "answers": answers, "temperature": temperature, "top_p": top_p,
               "seed": seed, "max_tokens": max_tokens, "max_new_tokens": max_new_tokens}
    check_synthesize_args(num_prompts=num_prompts, batch_size=batch_size, shard_size=shard_size,
                          near_dup_threshold=near_dup_threshold, exclude_threshold=exclude_threshold,
                          max_candidates=max_candidates, **options)
    target, out_dir = _check_target(target), _check_out_dir(out_dir)
    exclude = [os.path.abspath(os.fspath(p)) for p in exclude]
    exclude_texts = [t for p in exclude for t in read_exclude_texts(p)]
    engine_name, python = resolve_engine(engine, vllm_python)
    max_candidates = 20 * num_prompts if max_candidates is None else max_candidates
    settings = _synthesize_settings(target, engine_name, exclude, filters=filters, near_dup_threshold=near_dup_threshold,
                                    exclude_threshold=exclude_threshold, shard_size=shard_size, compress=compress,
                                    batch_size=batch_size, **options)
    state = _resume(out_dir, settings, compress)
    stats, cursor, kept = state.stats, state.cursor, sum(len(s) for s in state.shards)
    result = {"rows": kept, "new_rows": 0, "stopped": "done", "seconds": 0.0, "out": out_dir, "engine": engine_name}
    if kept >= num_prompts or cursor >= max_candidates:
        return {**stats, **result, "stopped": "done" if kept >= num_prompts else "max_candidates"}
    dedup = _Dedup(near_dup_threshold, [r for s in state.shards for r in s])
    leaks = LeakChecker(exclude_texts, dedup.hasher, exclude_threshold, MINHASH["bands"]) if exclude_texts else None
    tokenizer, first_prefix, stop_ids, pad_id = _load_tokenizer(target, system)
    run_info = {"num_prompts": num_prompts, "max_candidates": max_candidates, "batch_size": batch_size,
                "end_of_turn_ids": first_prefix.end_ids, "stop_token_ids": stop_ids, "user_turn_opening": first_prefix.text}
    writer = _ShardWriter(out_dir, state, settings, run_info, command=command, vllm_python=python,
                          shard_size=shard_size, compress=compress)
    t_start = time.perf_counter()
    with _open_engine(engine_name, target, tokenizer, pad_id=pad_id, seed=seed, vllm_python=python) as eng:
        synth = _Synthesizer(eng, tokenizer, stop_ids=set(stop_ids), special_ids=_special_ids(tokenizer),
                             first_prefix=first_prefix, filters=filters, leaks=leaks, **options)
        _synthesize_rows(synth, writer, dedup, stats, result, cursor=cursor, kept=kept, num_prompts=num_prompts, turns=turns,
                         max_candidates=max_candidates, batch_size=batch_size, answers=answers, show_progress=show_progress)
    result["seconds"] = time.perf_counter() - t_start
    return {**stats, **result, "shards": writer.num_shards}


def _check_out_dir(out_dir: str | os.PathLike) -> str:
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out: {out_dir!r} is a file; expected a directory (created if missing)")
    return out_dir


def _synthesize_settings(target: str, engine_name: str, exclude: list[str], *, system: str | None, turns: int,
                         answers: bool, temperature: float, top_p: float, seed: int, max_tokens: int,
                         max_new_tokens: int, filters: TextFilters, near_dup_threshold: float,
                         exclude_threshold: float, shard_size: int, compress: bool, batch_size: int) -> dict:
    """What decides the rows (stored in the settings file; a resumed run must match)."""
    settings = {
        "format": SYNTHESIZE_FORMAT, "target": target, "target_fingerprint": path_fingerprint(target),
        "engine": engine_name, "system": system, "turns": turns, "answers": answers,
        "temperature": float(temperature), "top_p": float(top_p), "seed": seed, "max_tokens": max_tokens,
        "max_new_tokens": max_new_tokens, "filters": filters.as_dict(), "minhash": dict(MINHASH),
        "near_dup_threshold": float(near_dup_threshold),
        "exclude": [{"path": p, "fingerprint": path_fingerprint(p)} for p in exclude],
        "exclude_threshold": float(exclude_threshold), "shard_size": shard_size, "compress": compress,
    }
    if engine_name == "hf":  # hf batches share one RNG stream: the batch boundaries decide the rows
        settings["batch_size"] = batch_size
    return settings


def _resume(out_dir: str, settings: dict, compress: bool) -> SimpleNamespace:
    """What an earlier run left in ``out_dir`` (after checking that ``settings`` match those it was made with):
    ``stored`` (its settings file; empty for a new output), the rows of its ``shards``, the ``stats`` counted so
    far and the ``cursor`` (next candidate index)."""
    stored, shards = {}, []
    if os.path.isdir(out_dir) and (os.path.exists(settings_path(out_dir)) or bool(os.listdir(out_dir))):
        _check_settings(out_dir, settings, command="synthesize")
        with open(settings_path(out_dir)) as f:
            stored = json.load(f)
        shards = _load_progress(out_dir, stored.get("progress", {}), compress)
    progress = stored.get("progress", {})
    return SimpleNamespace(stored=stored, shards=shards, stats={**_empty_stats(), **progress.get("stats", {})},
                           cursor=int(progress.get("next_index", 0)))


def _load_tokenizer(target: str, system: str | None) -> tuple[Any, Any, list[int], int]:
    """The target's tokenizer, how its template opens a first user turn (after ``system``), the ids that stop a
    generated user turn, and the pad id.

    Raises:
        ValueError: the tokenizer has no chat template.
    """
    from transformers import AutoTokenizer

    from eagle_ext._hf import saved_generation_config

    tokenizer = AutoTokenizer.from_pretrained(target)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--target: the tokenizer in {target!r} has no chat template")
    first_prefix = user_turn_prefix(tokenizer, [{"role": "system", "content": system}] if system is not None else [])
    end_ids = _end_token_ids(SimpleNamespace(generation_config=saved_generation_config(target)), tokenizer)
    stop_ids = sorted(set(end_ids) | set(first_prefix.end_ids))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    return tokenizer, first_prefix, stop_ids, pad_id


class _Dedup:
    """Exact and near-duplicate detection over the first user turns of the rows kept so far."""

    def __init__(self, threshold: float, rows: list[dict]):
        self.hasher = hasher = MinHasher(MINHASH["num_perm"], MINHASH["ngram"], MINHASH["seed"])
        self.seen = {text_hash(_first_user(r["messages"])) for r in rows}
        self.near = MinHashIndex(hasher, threshold, MINHASH["bands"])
        self.near.add_texts([_first_user(r["messages"]) for r in rows])

    def check_and_add(self, messages: Sequence[dict]) -> str | None:
        """``"exact_duplicate"`` / ``"near_duplicate"`` when the first user turn repeats a kept one; else ``None``,
        and the turn counts as kept from now on."""
        first = _first_user(messages)
        h = text_hash(first)
        sig = self.hasher.signature(first)
        if h in self.seen:
            return "exact_duplicate"
        if self.near.query(sig) is not None:
            return "near_duplicate"
        self.seen.add(h)
        self.near.add(sig, first)
        return None


class _ShardWriter:
    """The output's shards and settings file as rows are kept: a full shard is written once, the last (partial)
    one at every :meth:`save`, which also records the progress (next candidate, shards, counts) for a resume."""

    def __init__(self, out_dir: str, state: SimpleNamespace, settings: dict, run_info: dict, *, command: str | None,
                 vllm_python: str | None, shard_size: int, compress: bool):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.shard_size, self.compress = out_dir, shard_size, compress
        commands = state.stored.get("commands", []) + ([command] if command else [])
        self.record = {**settings, "command": command, "commands": commands, "versions": _versions(), "run": run_info,
                       "vllm_python": vllm_python}  # the settings file, less the progress
        shards = state.shards
        self.buffer = shards[-1] if shards and len(shards[-1]) < shard_size else []
        self.shard_k = len(shards) - 1 if self.buffer else len(shards)
        self.listed = state.stored.get("progress", {}).get("shards", [])[:self.shard_k]

    @property
    def num_shards(self) -> int:
        return len(self.listed) + bool(self.buffer)

    def _write_buffer(self) -> dict:
        text = _rows_text(self.buffer)
        _write_shard(os.path.join(self.out_dir, shard_name(self.shard_k, self.compress)), text, self.compress)
        return {"file": shard_name(self.shard_k, self.compress), "rows": len(self.buffer), "sha256": _sha(text)}

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) == self.shard_size:
            self.listed.append(self._write_buffer())
            self.buffer, self.shard_k = [], self.shard_k + 1

    def save(self, cursor: int, stats: dict, complete: bool) -> None:
        entries = list(self.listed) + ([self._write_buffer()] if self.buffer else [])
        progress = {"next_index": cursor, "shards": entries, "stats": stats, "complete": complete}
        write_json(settings_path(self.out_dir), {**self.record, "progress": progress}, indent=2)


def _take(cand: Any, stats: dict, dedup: _Dedup, *, answers: bool, turns: int) -> dict | None:
    """The output row of candidate ``cand``, or ``None`` when it is dropped (the reason counted in ``stats``)."""
    stats["candidates"] += 1
    reason = cand.dropped if cand.dropped is not None else dedup.check_and_add(cand.messages)
    if reason is not None:
        stats["dropped"][reason] = stats["dropped"].get(reason, 0) + 1
        return None
    if cand.followup_dropped is not None:
        fd = stats["followups_dropped"]
        fd[cand.followup_dropped] = fd.get(cand.followup_dropped, 0) + 1
    if answers and cand.user_turns < turns:
        stats["turns_cut"] += 1
    stats["answers_truncated"] += cand.reasons.count("length")
    row = {"messages": cand.messages, "synth_index": cand.index}
    if answers:
        row["finish_reasons"] = cand.reasons
    stats["kept"] += 1
    return row


def _synthesize_rows(synth: Any, writer: _ShardWriter, dedup: _Dedup, stats: dict, result: dict, *, cursor: int,
                     kept: int, num_prompts: int, max_candidates: int, batch_size: int, answers: bool, turns: int,
                     show_progress: bool) -> None:
    """Generate candidates batch by batch from ``cursor`` until ``num_prompts`` rows are kept or ``max_candidates``
    are spent, saving the progress after every batch; ``result`` gets the rows kept and why the run stopped."""
    from tqdm.auto import tqdm

    bar = tqdm(total=num_prompts, initial=kept, desc="synthesize", unit="prompt", disable=not show_progress)
    writer.save(cursor, stats, False)
    start = cursor - cursor % batch_size  # a resumed batch restarts at its boundary (same RNG stream)
    while kept < num_prompts and cursor < max_candidates:
        for cand in synth.run_batch(range(start, min(start + batch_size, max_candidates)), stats):
            if cand.index < cursor:  # decided before the interruption
                continue
            cursor = cand.index + 1
            row = _take(cand, stats, dedup, answers=answers, turns=turns)
            if row is None:
                continue
            writer.add(row)
            kept += 1
            result["new_rows"] += 1
            bar.update(1)
            if kept >= num_prompts:
                break
        start += batch_size
        writer.save(cursor, stats, False)
        tokens = stats["prompt_tokens"] + stats["answer_tokens"]
        spent = stats["prompt_seconds"] + stats["answer_seconds"]
        bar.set_postfix(candidates=stats["candidates"], kept=f"{stats['kept'] / max(stats['candidates'], 1):.0%}",
                        tok_s=f"{tokens / max(spent, 1e-9):.0f}")
    writer.save(cursor, stats, kept >= num_prompts)
    bar.close()
    result.update(rows=kept, stopped="done" if kept >= num_prompts else "max_candidates")
