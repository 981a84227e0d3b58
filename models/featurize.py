"""Text -> hashed ids: the featurisers shared by training (torch) and serving (ONNX Runtime).

``HashingFeaturizer`` (the default model's) gives an unordered bag of n-gram ids;
``HashingTokenizer`` (the transformer's) gives the ordered word tokens,
``PretrainedTokenizer`` (models/pretrained_tokenizer.py) a pretrained encoder's vocabulary
ids. Both are saved as JSON with a ``kind`` that ``featurizer_from_json`` dispatches on.

Word unigrams and bigrams plus character n-grams of each word (with boundary marks) are hashed
with CRC32 into ``buckets - 1`` slots; id 0 is padding. Hashing lives outside the model graph,
so the ONNX graph is only Gather + mean + MLP, and a new word never needs a vocabulary change.

How text becomes tokens is versioned (``version`` in the JSON; a file without it is version 1):

1. lowercase, then ASCII words ``[a-z0-9']+``: any
   other script gives no features. Kept as it was, so
   registry versions trained with it predict exactly as before.
2. (new featurisers) NFKC + casefold (fullwidth "ＡＢＣ"
   is "abc", "Straße" is "strasse"), then every script:
   words of scripts written with spaces (letters, digits and combining marks, so
   Devanagari vowel signs stay in their word; an inner apostrophe too), character
   n-grams over runs of scripts written without them (Chinese, Japanese, Thai,
   Lao, Khmer, Myanmar, Tibetan), and each emoji or other symbol as a token.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from .padding import pad_ids
from .pretrained_tokenizer import PretrainedTokenizer

__all__ = [
    "FEATURIZER_VERSION",
    "Featurizer",
    "HashingFeaturizer",
    "HashingTokenizer",
    "featurizer_from_json",
    "tokenize",
]

FEATURIZER_VERSION = 2  # what a new featuriser tokenises with; JSON without a "version" is 1
_WORD = re.compile(r"[a-z0-9']+")  # version 1


def _mark_ranges() -> str:
    """A regex class body of the combining marks (Unicode M*) below U+20000,
    which Python's ``\\w`` leaves out: without them a Hindi word breaks at
    every vowel sign. Variation selectors stay out (they dress an emoji)."""
    ranges: list[list[int]] = []
    for code in range(0x20000):
        if unicodedata.category(chr(code))[0] == "M" and not (0xFE00 <= code <= 0xFE0F):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(
        f"\\u{a:04x}-\\u{b:04x}" if a != b else f"\\u{a:04x}" for a, b in ranges if b < 0x10000
    ) + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges if b >= 0x10000)


# Scripts written without spaces between words: Thai, Lao, Tibetan, Myanmar, Khmer, CJK radicals and
# ideographs (with 々 〇 and the Hangzhou numerals), kana, and the supplementary ideograph planes.
_UNSPACED = (
    "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029"
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
)
_LETTER = f"(?:(?![{_UNSPACED}])[^\\W_]|[{_mark_ranges()}])"
# Version 2 tokens, in text order: a run of an unspaced script | a word (inner apostrophes kept)
# | anything else that is not a space (punctuation is dropped below, symbols and emoji kept).
_TOKEN = re.compile(f"([{_UNSPACED}]+)|({_LETTER}+(?:['\u2019]{_LETTER}+)*)|(\\S)")
# The same on ASCII text (NFKC leaves it as it is, casefold is lower), without the
# per-character look-ahead: half the time on the English texts most traffic is.
_ASCII_TOKEN = re.compile(r"(\b\B)|([a-z0-9]+(?:'[a-z0-9]+)*)|(\S)")


def tokenize(text: str) -> list[tuple[str, str]]:
    """Version 2 tokens of ``text`` as (kind, token): "w" a
    word, "u" a run of an unspaced script, "s" a symbol."""
    tokens: list[tuple[str, str]] = []
    found = (
        _ASCII_TOKEN.findall(text.lower())
        if text.isascii()
        else _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())
    )
    for run, word, other in found:
        if run:
            tokens.append(("u", run))
        elif word:
            tokens.append(("w", word.replace("\u2019", "'")))
        elif _is_symbol(other):
            tokens.append(("s", other))
    return tokens


@lru_cache(maxsize=4096)
def _is_symbol(char: str) -> bool:
    # currency, maths, emoji, other symbols; not punctuation or controls
    return unicodedata.category(char)[0] == "S"


def _hash(gram: str, buckets: int) -> int:
    return zlib.crc32(gram.encode()) % (buckets - 1) + 1


@lru_cache(maxsize=8)
def _word_id_cache(buckets: int, char_ngrams: tuple[int, ...]) -> Callable[[str], tuple[int, ...]]:
    """The memo of a word's ids (version 1), one per hashing
    configuration and shared by every featuriser that has it.

    A word's ids never change and word frequencies are skewed, so most words of a text are already
    cached: this is most of the featuriser's cost on the stream-prediction path. Sharing it across
    model versions matters at a hot swap: a fine-tuned version keeps its parent's featuriser, so it
    starts warm instead of re-hashing every word it meets and filling a fresh cache with tens of
    thousands of tuples, which the cyclic GC then scans while requests wait.
    """

    @lru_cache(maxsize=1 << 16)
    def word_ids(word: str) -> tuple[int, ...]:
        marked = f"<{word}>"
        grams = [f"w:{word}"]
        for n in char_ngrams:
            grams += [f"c:{marked[i : i + n]}" for i in range(max(1, len(marked) - n + 1))]
        return tuple(_hash(g, buckets) for g in grams)

    return word_ids


@lru_cache(maxsize=8)
def _token_id_cache(
    buckets: int, char_ngrams: tuple[int, ...], run_ngrams: tuple[int, ...]
) -> Callable[[str, str], tuple[int, ...]]:
    """Version 2's memo of a token's ids, shared like ``_word_id_cache``'s."""

    @lru_cache(maxsize=1 << 16)
    def token_ids(kind: str, token: str) -> tuple[int, ...]:
        if kind == "s":
            return (_hash(f"s:{token}", buckets),)
        marked = f"<{token}>"
        if kind == "w":
            grams = [f"w:{token}"] + [
                f"c:{marked[i : i + n]}"
                for n in char_ngrams
                for i in range(max(1, len(marked) - n + 1))
            ]
        # a run of an unspaced script: its characters and the n-grams across them, edges marked
        else:
            grams = [f"u:{token}"] + [f"u:{ch}" for ch in token] * (1 in run_ngrams)
            grams += [
                f"u:{marked[i : i + n]}"
                for n in run_ngrams
                if n > 1
                for i in range(max(1, len(marked) - n + 1))
            ]
        return tuple(_hash(g, buckets) for g in grams)

    return token_ids


@lru_cache(maxsize=8)
def _bigram_id_cache(buckets: int) -> Callable[[str, str], int]:
    """The memo of a token bigram's id: skewed like words, so most of a text's are cached."""

    @lru_cache(maxsize=1 << 16)
    def bigram_id(a: str, b: str) -> int:
        return _hash(f"b:{a} {b}", buckets)

    return bigram_id


@dataclass(frozen=True)
class HashingFeaturizer:
    """Defaults are version 2's, tuned with bench/multilingual.py;
    a version 1 file names every one of its settings."""

    buckets: int = 1 << 16
    # of each word, with boundary marks (2-grams: +0.4 on massive_ru)
    char_ngrams: tuple[int, ...] = (2, 3, 4, 5)
    word_bigrams: bool = True
    # version 1 models: 256, which cut 9% of Banking77's texts (and Chinese gets more ids)
    max_features: int = 512
    # the tokenisation (module docstring); from_json reads a file without it as 1
    version: int = FEATURIZER_VERSION
    # version 2: character n-grams over a run of an unspaced script
    run_ngrams: tuple[int, ...] = (1, 2, 3)
    # a class attribute, not a field: the JSON tag featurizer_from_json reads
    kind = "hashing_ngrams"

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"unknown featurizer version {self.version!r}; known: 1, 2")
        # hashable (the memo's key) and equal to the JSON round trip's
        for name in ("char_ngrams", "run_ngrams"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        memo = (
            _word_id_cache(self.buckets, self.char_ngrams)
            if self.version == 1
            else _token_id_cache(self.buckets, self.char_ngrams, self.run_ngrams)
        )
        object.__setattr__(self, "_word_ids", memo)
        object.__setattr__(self, "_bigram_id", _bigram_id_cache(self.buckets))

    def __reduce__(
        self,
    ) -> tuple[
        type[HashingFeaturizer], tuple[int, tuple[int, ...], bool, int, int, tuple[int, ...]]
    ]:
        fields = (
            self.buckets,
            self.char_ngrams,
            self.word_bigrams,
            self.max_features,
            self.version,
            self.run_ngrams,
        )
        return (type(self), fields)  # the cache stays behind

    def _hash(self, gram: str) -> int:
        return _hash(gram, self.buckets)

    def features(self, text: str) -> list[int]:
        """Per token: its own id and its char n-grams; then
        the token bigrams. At most max_features ids."""
        if self.version == 1:
            return self._features_v1(text)
        tokens = tokenize(text)
        ids: list[int] = []
        # the memo __post_init__ sets on this frozen dataclass (not a field: not compared or saved)
        token_ids = self._word_ids  # type: ignore[attr-defined]
        for kind, token in tokens:
            ids.extend(token_ids(kind, token))
        if self.word_bigrams:
            bigram_id = self._bigram_id  # type: ignore[attr-defined]  # set in __post_init__
            ids.extend(bigram_id(a, b) for (_, a), (_, b) in itertools.pairwise(tokens))
        return ids[: self.max_features]

    def _features_v1(self, text: str) -> list[int]:
        words = _WORD.findall(text.lower())
        ids: list[int] = []
        word_ids = self._word_ids  # type: ignore[attr-defined]  # the memo set in __post_init__
        for word in words:
            ids.extend(word_ids(word))
        if self.word_bigrams:
            bigram_id = self._bigram_id  # type: ignore[attr-defined]  # set in __post_init__
            ids.extend(bigram_id(a, b) for a, b in itertools.pairwise(words))
        return ids[: self.max_features]

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        """int64 ids [batch, length], zero-padded; an empty text becomes one padding id."""
        rows = [self.features(t) for t in texts]
        return self.pad(rows)

    pad = staticmethod(pad_ids)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HashingFeaturizer:
        fields = json.loads(text)
        fields.pop("kind", None)
        # written before tokenisation had versions: version 1, at its defaults of then
        if "version" not in fields:
            fields = {**_V1_DEFAULTS, **fields, "version": 1}
        return cls(**fields)


_V1_DEFAULTS = {
    "buckets": 1 << 16,
    "char_ngrams": (3, 4, 5),
    "word_bigrams": True,
    "max_features": 256,
}


@dataclass(frozen=True)
class HashingTokenizer:
    """Ordered word tokens hashed into ``buckets - 1`` ids (0 = padding): the transformer's input.

    Nothing to fit and no vocabulary file: a word's id is its CRC32, so a new word never needs a
    vocabulary change, and collisions are rare at 32k buckets for intent-sized vocabularies. A word
    longer than 12 characters adds its 6-character prefix as a second token, which gives inflections
    ("transferring", "transferred") a shared token. Version 2 (see the
    module docstring) tokenises every script: a run of an unspaced
    script gives one token per character, a symbol or emoji one token.
    """

    buckets: int = 1 << 15
    max_features: int = 64  # most tokens per text (the transformer's position table size)
    version: int = FEATURIZER_VERSION  # from_json reads a file without it as 1
    kind = "hashing_tokens"

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"unknown tokenizer version {self.version!r}; known: 1, 2")

    def _hash(self, token: str) -> int:
        return zlib.crc32(token.encode()) % (self.buckets - 1) + 1

    def features(self, text: str) -> list[int]:
        ids: list[int] = []
        if self.version == 1:
            tokens = [("w", word) for word in _WORD.findall(text.lower())]
        else:
            tokens = [
                (kind, ch)
                for kind, token in tokenize(text)
                for ch in (token if kind == "u" else (token,))
            ]
        for kind, token in tokens:
            ids.append(self._hash(f"{kind}:{token}"))
            if kind == "w" and len(token) > 12:
                ids.append(self._hash(f"p:{token[:6]}"))
        return ids[: self.max_features]

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        return pad_ids([self.features(t) for t in texts])

    pad = staticmethod(pad_ids)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HashingTokenizer:
        fields = json.loads(text)
        fields.pop("kind", None)
        fields.setdefault("version", 1)  # written before tokenisation had versions
        return cls(**fields)


Featurizer = HashingFeaturizer | HashingTokenizer | PretrainedTokenizer
# kind -> the featuriser's from_json
_KINDS: dict[str, Callable[[str], Featurizer]] = {
    HashingFeaturizer.kind: HashingFeaturizer.from_json,
    HashingTokenizer.kind: HashingTokenizer.from_json,
    PretrainedTokenizer.kind: PretrainedTokenizer.from_json,
}


def featurizer_from_json(text: str) -> Featurizer:
    """The featuriser a registry version was trained with;
    files without a ``kind`` predate it (n-grams)."""
    fields = json.loads(text)
    kind = fields.get("kind", HashingFeaturizer.kind) if isinstance(fields, dict) else None
    if kind not in _KINDS:
        raise ValueError(f"unknown featurizer kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](text)
