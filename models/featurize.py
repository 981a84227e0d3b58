"""Text -> hashed ids: the featurisers shared by training (torch) and serving (ONNX Runtime).

``HashingFeaturizer`` (the default model's) gives an unordered bag of n-gram ids; ``HashingTokenizer``
(the transformer's) gives the ordered word tokens. Both are saved as JSON with a ``kind`` that
``featurizer_from_json`` dispatches on.

Word unigrams and bigrams plus character 3-5-grams of each word (with boundary marks) are hashed
with CRC32 into ``buckets - 1`` slots; id 0 is padding. Hashing lives outside the model graph, so the
ONNX graph is only Gather + mean + MLP, and a new word never needs a vocabulary change.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Featurizer", "HashingFeaturizer", "HashingTokenizer", "featurizer_from_json"]

_WORD = re.compile(r"[a-z0-9']+")


def _hash(gram: str, buckets: int) -> int:
    return zlib.crc32(gram.encode()) % (buckets - 1) + 1


@lru_cache(maxsize=8)
def _word_id_cache(buckets: int, char_ngrams: tuple[int, ...]) -> Callable[[str], tuple[int, ...]]:
    """The memo of a word's ids, one per hashing configuration and shared by every featuriser that has it.

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
            grams += [f"c:{marked[i:i + n]}" for i in range(max(1, len(marked) - n + 1))]
        return tuple(_hash(g, buckets) for g in grams)

    return word_ids


@dataclass(frozen=True)
class HashingFeaturizer:
    buckets: int = 1 << 16
    char_ngrams: tuple[int, ...] = (3, 4, 5)
    word_bigrams: bool = True
    max_features: int = 256
    kind = "hashing_ngrams"  # a class attribute, not a field: the JSON tag featurizer_from_json reads

    def __post_init__(self) -> None:
        object.__setattr__(self, "_word_ids", _word_id_cache(self.buckets, self.char_ngrams))

    def __reduce__(self) -> tuple:
        return (type(self), (self.buckets, self.char_ngrams, self.word_bigrams, self.max_features))  # the cache stays behind

    def _hash(self, gram: str) -> int:
        return _hash(gram, self.buckets)

    def features(self, text: str) -> list[int]:
        """Per word: its unigram and char n-grams; then the word bigrams. At most max_features ids."""
        words = _WORD.findall(text.lower())
        ids: list[int] = []
        word_ids = self._word_ids  # type: ignore[attr-defined]
        for word in words:
            ids.extend(word_ids(word))
        if self.word_bigrams:
            ids.extend(self._hash(f"b:{a} {b}") for a, b in zip(words, words[1:]))
        return ids[: self.max_features]

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        """int64 ids [batch, length], zero-padded; an empty text becomes one padding id."""
        rows = [self.features(t) for t in texts]
        return self.pad(rows)

    @staticmethod
    def pad(rows: Sequence[Sequence[int]]) -> np.ndarray:
        width = max(1, max((len(r) for r in rows), default=1))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HashingFeaturizer:
        fields = json.loads(text)
        fields.pop("kind", None)
        fields["char_ngrams"] = tuple(fields["char_ngrams"])
        return cls(**fields)


@dataclass(frozen=True)
class HashingTokenizer:
    """Ordered word tokens hashed into ``buckets - 1`` ids (0 = padding): the transformer's input.

    Nothing to fit and no vocabulary file: a word's id is its CRC32, so a new word never needs a
    vocabulary change, and collisions are rare at 32k buckets for intent-sized vocabularies. A word
    longer than 12 characters adds its 6-character prefix as a second token, which gives inflections
    ("transferring", "transferred") a shared token.
    """

    buckets: int = 1 << 15
    max_features: int = 64  # most tokens per text (the transformer's position table size)
    kind = "hashing_tokens"

    def _hash(self, token: str) -> int:
        return zlib.crc32(token.encode()) % (self.buckets - 1) + 1

    def features(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in _WORD.findall(text.lower()):
            ids.append(self._hash(f"w:{word}"))
            if len(word) > 12:
                ids.append(self._hash(f"p:{word[:6]}"))
        return ids[: self.max_features]

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        return HashingFeaturizer.pad([self.features(t) for t in texts])

    pad = staticmethod(HashingFeaturizer.pad)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HashingTokenizer:
        fields = json.loads(text)
        fields.pop("kind", None)
        return cls(**fields)


Featurizer = HashingFeaturizer | HashingTokenizer
_KINDS: dict[str, type] = {HashingFeaturizer.kind: HashingFeaturizer, HashingTokenizer.kind: HashingTokenizer}


def featurizer_from_json(text: str) -> Featurizer:
    """The featuriser a registry version was trained with; files without a ``kind`` predate it (n-grams)."""
    fields = json.loads(text)
    kind = fields.get("kind", HashingFeaturizer.kind) if isinstance(fields, dict) else None
    if kind not in _KINDS:
        raise ValueError(f"unknown featurizer kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].from_json(text)
