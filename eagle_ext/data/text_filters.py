"""Text filters for synthetic prompts: normalisation, length / garbage / degenerate-repetition checks, exact and
near-duplicate detection (MinHash over normalised word n-grams with LSH banding).

Everything here is a pure function of its inputs (no global state, no Python ``hash()``, fixed seeds), so two
runs, two processes or two machines decide the same way; :mod:`eagle_ext.data.synthesize` relies on that for
its resume.

Normalisation (:func:`normalize_text`): Unicode NFKC, case folding, typographic apostrophes to ``'``, every run
of characters that are not letters or digits (any script) to one space, stripped. Exact duplicates share
:func:`text_hash` (sha256 of the normalised text).

Near duplicates (:class:`MinHasher`, :class:`MinHashIndex`): a text's shingles are its normalised word
``ngram``-grams (the whole normalised text when it has fewer words), each hashed to 32 bits with blake2b. The
signature holds, for each of ``num_perm`` hash functions ``h(x) = (a x + b) mod (2^61 - 1)`` (``a < 2^31``,
``b < 2^32``, drawn once from ``numpy.random.RandomState(seed)``, whose stream numpy keeps fixed), the minimum
over the shingles; all products fit in uint64, so nothing wraps. The share of equal signature entries is an
unbiased estimate of the Jaccard similarity of the two shingle sets (standard error ``sqrt(J(1-J)/num_perm)``,
about 0.04 at J = 0.5 with 128 functions). The index splits signatures into ``bands`` bands of
``num_perm / bands`` rows; texts sharing a whole band are candidates, and a candidate is a near duplicate when
its estimated Jaccard is at least the threshold. With the default 32 bands of 4 rows, a pair at J = 0.5 becomes
a candidate with probability 1 - (1 - 0.5^4)^32 = 0.87, at J = 0.6 with 0.99, at J >= 0.7 with > 0.9999.

Garbage (:func:`garbage_reason`) and degenerate text (:func:`degenerate_reason`) are heuristics with the
thresholds of :class:`TextFilters`; each returns the first reason that applies, a short key that is counted.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "MinHashIndex", "MinHasher", "TextFilters", "degenerate_reason", "garbage_reason", "jaccard", "length_reason",
    "normalize_text", "refusal_count", "script_of", "shingles", "text_hash",
]

_MERSENNE_61 = (1 << 61) - 1
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'"})
# An assistant-style refusal or apology. Matched on text lower-cased with typographic apostrophes unified.
_REFUSAL = re.compile(
    r"\b(?:i'?m (?:so |very |really )?sorry|i am (?:so |very |really )?sorry|i apologi[sz]e|"
    r"(?:i|we) (?:can'?t|cannot|can not|am unable to|won'?t be able to|am not able to) "
    r"(?:help|assist|provide|do that|do this|comply|fulfil|answer|create|write|generate)|"
    r"as an ai(?: language model| assistant)?\b)"
)
_LONG_LETTER_RUN = re.compile(r"[^\W\d_]+", re.UNICODE)
# Scripts whose letters are written together in one language; keys are the first word of the Unicode name.
_SCRIPT_ALIASES = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "FULLWIDTH": "LATIN", "HALFWIDTH": "CJK"}
_KNOWN_SCRIPTS = {
    "LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "BENGALI", "GURMUKHI", "GUJARATI", "TAMIL",
    "TELUGU", "KANNADA", "MALAYALAM", "SINHALA", "THAI", "LAO", "TIBETAN", "MYANMAR", "GEORGIAN", "HANGUL",
    "ETHIOPIC", "ARMENIAN", "KHMER", "MONGOLIAN", "ORIYA", "SYRIAC", "THAANA", "CJK",
}
_VOWELS = set("aeiouy")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, apostrophes unified, every non-alphanumeric run (any script) to one space, stripped."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_QUOTES).replace("'", "")
    return _NON_WORD.sub(" ", text).strip()


def text_hash(text: str) -> str:
    """Hex sha256 of :func:`normalize_text` (the exact-duplicate key)."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def script_of(ch: str) -> str:
    """The script of a letter: ``"LATIN"``, ``"CYRILLIC"``, ``"CJK"`` (Han, kana), ``"HANGUL"``, ..., else
    ``"OTHER"`` (letters whose Unicode name does not start with a known script, e.g. ``ª``)."""
    try:
        first = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return "OTHER"
    first = _SCRIPT_ALIASES.get(first, first)
    return first if first in _KNOWN_SCRIPTS else "OTHER"


@dataclass(frozen=True)
class TextFilters:
    """Thresholds of the prompt filters (all recorded in a synthesis run's settings).

    Length: ``min_chars`` / ``max_chars`` (of the stripped text), ``min_tokens`` (generated tokens before the
    end of the turn; the upper bound is the generation budget: a turn that does not end within it is
    truncated).

    Garbage: ``min_letter_fraction`` (letters among non-space characters); no unprintable character (control
    characters other than tab / newline, private-use, unassigned, surrogates, U+FFFD); no run of one
    non-space character longer than ``max_char_run``; the dominant script holds at least
    ``min_script_purity`` of the letters, and is one of ``scripts`` when that is set; Latin text has at
    least ``min_vowel_fraction`` vowels (``aeiouy``, accents stripped) among its Latin letters; no run of
    letters longer than ``max_letter_run``.

    Degenerate repetition: at most ``max_repeated_ngram_fraction`` of the word ``repeat_ngram``-grams are
    repeats (checked when there are at least 6); no normalised line more than ``max_line_repeats`` times;
    text of 64 characters or more compresses (zlib) to at least ``min_compression_ratio`` of its UTF-8
    size; and refusals: a user turn must contain no refusal / apology phrase at all (the model wrote an
    assistant's reply), and no text may repeat one ("I'm sorry, but I can't ... I'm sorry, but I can't" is a
    refusal loop).
    """

    min_chars: int = 8
    max_chars: int = 4000
    min_tokens: int = 3
    min_letter_fraction: float = 0.35
    max_char_run: int = 12
    min_script_purity: float = 0.6
    scripts: tuple[str, ...] | None = None
    min_vowel_fraction: float = 0.15
    max_letter_run: int = 30
    repeat_ngram: int = 3
    max_repeated_ngram_fraction: float = 0.3
    max_line_repeats: int = 2
    min_compression_ratio: float = 0.3

    def __post_init__(self):
        checks = [
            ("min_chars", self.min_chars, 0, None, int), ("max_chars", self.max_chars, 1, None, int),
            ("min_tokens", self.min_tokens, 0, None, int), ("max_char_run", self.max_char_run, 1, None, int),
            ("max_letter_run", self.max_letter_run, 1, None, int), ("repeat_ngram", self.repeat_ngram, 1, None, int),
            ("max_line_repeats", self.max_line_repeats, 1, None, int),
            ("min_letter_fraction", self.min_letter_fraction, 0.0, 1.0, float),
            ("min_script_purity", self.min_script_purity, 0.0, 1.0, float),
            ("min_vowel_fraction", self.min_vowel_fraction, 0.0, 1.0, float),
            ("max_repeated_ngram_fraction", self.max_repeated_ngram_fraction, 0.0, 1.0, float),
            ("min_compression_ratio", self.min_compression_ratio, 0.0, 1.0, float),
        ]
        for name, value, low, high, kind in checks:
            ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
            ok = ok and value == value and value >= low and (high is None or value <= high)
            if not ok:
                bound = f"an integer >= {low}" if kind is int else f"a number in [{low}, {high}]"
                raise ValueError(f"--{name.replace('_', '-')}: expected {bound}, got {value!r}")
        if self.max_chars < self.min_chars:
            raise ValueError(f"--max-chars: expected >= --min-chars ({self.min_chars}), got {self.max_chars}")
        if self.scripts is not None:
            scripts = tuple(str(s).upper() for s in self.scripts)
            unknown = sorted(set(scripts) - _KNOWN_SCRIPTS)
            if not scripts or unknown:
                raise ValueError(f"--scripts: expected names among {sorted(_KNOWN_SCRIPTS)}, got {list(self.scripts)!r}")
            object.__setattr__(self, "scripts", scripts)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["scripts"] = list(self.scripts) if self.scripts is not None else None
        return d


def length_reason(text: str, num_tokens: int, filters: TextFilters) -> str | None:
    """``"too_few_chars"``, ``"too_many_chars"``, ``"too_few_tokens"`` or None (``text`` already stripped)."""
    if len(text) < filters.min_chars:
        return "too_few_chars"
    if len(text) > filters.max_chars:
        return "too_many_chars"
    if num_tokens < filters.min_tokens:
        return "too_few_tokens"
    return None


def _unprintable(ch: str) -> bool:
    if ch in "\t\n\r" or ch == " ":
        return False
    return ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Co", "Cn", "Cs")


def _longest_char_run(text: str) -> int:
    best, run, prev = 0, 0, None
    for ch in text:
        run = run + 1 if ch == prev and not ch.isspace() else 1
        prev = ch
        best = max(best, run)
    return best


def garbage_reason(text: str, filters: TextFilters = TextFilters()) -> str | None:
    """Why ``text`` looks like garbage rather than language, or None.

    Reasons, in the order checked: ``"unprintable"``, ``"few_letters"``, ``"char_run"``, ``"mixed_script"``,
    ``"script_not_allowed"``, ``"few_vowels"``, ``"letter_run"`` (see :class:`TextFilters`).
    """
    if any(_unprintable(ch) for ch in text):
        return "unprintable"
    visible = [ch for ch in text if not ch.isspace()]
    letters = [ch for ch in visible if ch.isalpha()]
    if not visible or len(letters) < filters.min_letter_fraction * len(visible):
        return "few_letters"
    if _longest_char_run(text) > filters.max_char_run:
        return "char_run"
    if not letters:  # only with min_letter_fraction 0: nothing to say about scripts
        return None
    scripts = Counter(script_of(ch) for ch in letters)
    dominant, count = max(scripts.items(), key=lambda kv: (kv[1], kv[0]))
    if dominant == "OTHER" or count < filters.min_script_purity * len(letters):
        return "mixed_script"
    if filters.scripts is not None and dominant not in filters.scripts:
        return "script_not_allowed"
    if dominant == "LATIN":
        base = [unicodedata.normalize("NFKD", ch)[0].lower() for ch in letters if script_of(ch) == "LATIN"]
        if sum(ch in _VOWELS for ch in base) < filters.min_vowel_fraction * len(base):
            return "few_vowels"
    if any(len(m.group()) > filters.max_letter_run for m in _LONG_LETTER_RUN.finditer(text)):
        return "letter_run"
    return None


def _refusal_phrases(text: str) -> Counter:
    found = _REFUSAL.findall(unicodedata.normalize("NFKC", text).lower().translate(_QUOTES))
    return Counter(" ".join(p.replace("'", "").split()) for p in found)


def refusal_count(text: str) -> int:
    """Number of refusal / apology phrases ("I'm sorry", "I can't help", "As an AI", ...) in ``text``."""
    return sum(_refusal_phrases(text).values())


def degenerate_reason(text: str, filters: TextFilters = TextFilters(), *, user_turn: bool = True) -> str | None:
    """Why ``text`` is degenerate (a loop, a refusal), or None.

    Reasons: ``"refusal"`` (a user turn with a refusal phrase: the model answered instead of asking),
    ``"refusal_loop"`` (one refusal phrase twice or more, e.g. "I'm sorry ... I'm sorry"), ``"repeated_ngrams"``, ``"repeated_lines"``,
    ``"compressible"`` (see :class:`TextFilters`).
    """
    refusals = _refusal_phrases(text)
    if refusals and max(refusals.values()) >= 2:
        return "refusal_loop"
    if user_turn and refusals:
        return "refusal"
    words = normalize_text(text).split()
    n = filters.repeat_ngram
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) >= 6 and 1 - len(set(grams)) / len(grams) > filters.max_repeated_ngram_fraction:
        return "repeated_ngrams"
    lines = Counter(normalize_text(line) for line in text.splitlines())
    lines.pop("", None)
    if lines and max(lines.values()) > filters.max_line_repeats:
        return "repeated_lines"
    raw = text.encode("utf-8")
    if len(text) >= 64 and len(zlib.compress(raw, 9)) < filters.min_compression_ratio * len(raw):
        return "compressible"
    return None


# --------------------------------------------------------------------------------------------------------
# MinHash near-duplicate detection
# --------------------------------------------------------------------------------------------------------


def shingles(text: str, ngram: int = 3) -> set[str]:
    """The normalised word ``ngram``-grams of ``text`` (joined by spaces); the whole normalised text when it
    has fewer than ``ngram`` words; empty for a text without letters or digits."""
    words = normalize_text(text).split()
    if not words:
        return set()
    n = min(ngram, len(words))
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, ngram: int = 3) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts (the quantity MinHash estimates)."""
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


class MinHasher:
    """MinHash signatures of texts (see the module docstring).

    Args:
        num_perm: hash functions per signature.
        ngram: words per shingle.
        seed: seed of the hash functions (fixed: signatures are comparable across runs).
    """

    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1):
        if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 1:
            raise ValueError(f"num_perm: expected an integer >= 1, got {num_perm!r}")
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise ValueError(f"ngram: expected an integer >= 1, got {ngram!r}")
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        rs = np.random.RandomState(seed)
        self._a = rs.randint(1, 2**31, size=num_perm, dtype=np.int64).astype(np.uint64)
        self._b = rs.randint(0, 2**32, size=num_perm, dtype=np.int64).astype(np.uint64)

    def settings(self) -> dict:
        return {"num_perm": self.num_perm, "ngram": self.ngram, "seed": self.seed}

    def signature(self, text: str) -> np.ndarray:
        """uint64 ``[num_perm]``; a text without shingles gets all ``2^61 - 1`` (similar to nothing else)."""
        grams = shingles(text, self.ngram)
        if not grams:
            return np.full(self.num_perm, _MERSENNE_61, dtype=np.uint64)
        x = np.fromiter(
            (int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=4).digest(), "little") for g in grams),
            dtype=np.uint64, count=len(grams),
        )
        return ((x[:, None] * self._a[None, :] + self._b[None, :]) % np.uint64(_MERSENNE_61)).min(axis=0)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Estimated Jaccard: the share of equal entries of two signatures."""
        return float(np.mean(a == b))


class MinHashIndex:
    """Signatures with LSH banding: :meth:`query` finds the most similar stored entry at or above
    ``threshold`` (estimated Jaccard), ties to the earliest added.

    Args:
        hasher: the :class:`MinHasher` whose signatures are stored.
        threshold: in (0, 1].
        bands: LSH bands; must divide ``hasher.num_perm``.
    """

    def __init__(self, hasher: MinHasher, threshold: float, bands: int = 32):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold: expected a number in (0, 1], got {threshold!r}")
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1 or hasher.num_perm % bands:
            raise ValueError(f"bands: expected a divisor of num_perm={hasher.num_perm}, got {bands!r}")
        self.hasher, self.threshold, self.bands = hasher, float(threshold), bands
        self._rows = hasher.num_perm // bands
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self._signatures: list[np.ndarray] = []
        self.keys: list = []

    def __len__(self) -> int:
        return len(self._signatures)

    def _band_keys(self, sig: np.ndarray) -> Iterable[tuple[int, bytes]]:
        for band in range(self.bands):
            yield band, sig[band * self._rows:(band + 1) * self._rows].tobytes()

    def query(self, sig: np.ndarray) -> tuple[object, float] | None:
        """``(key, estimated Jaccard)`` of the best stored entry at or above the threshold, or None."""
        candidates: set[int] = set()
        for band, key in self._band_keys(sig):
            candidates.update(self._buckets[band].get(key, ()))
        best = None
        for i in sorted(candidates):
            sim = MinHasher.similarity(self._signatures[i], sig)
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (i, sim)
        return None if best is None else (self.keys[best[0]], best[1])

    def add(self, sig: np.ndarray, key: object = None) -> None:
        i = len(self._signatures)
        self._signatures.append(np.asarray(sig, dtype=np.uint64))
        self.keys.append(i if key is None else key)
        for band, k in self._band_keys(sig):
            self._buckets[band].setdefault(k, []).append(i)

    def add_texts(self, texts: Sequence[str]) -> None:
        for text in texts:
            self.add(self.hasher.signature(text), text)
