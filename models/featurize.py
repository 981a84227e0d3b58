"""Text -> hashed n-gram ids: the featuriser shared by training (torch) and serving (ONNX Runtime).

Word unigrams and bigrams plus character 3-5-grams of each word (with boundary marks) are hashed
with CRC32 into ``buckets - 1`` slots; id 0 is padding. Hashing lives outside the model graph, so the
ONNX graph is only Gather + mean + MLP, and a new word never needs a vocabulary change.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

__all__ = ["HashingFeaturizer"]

_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class HashingFeaturizer:
    buckets: int = 1 << 16
    char_ngrams: tuple[int, ...] = (3, 4, 5)
    word_bigrams: bool = True
    max_features: int = 256

    def __post_init__(self) -> None:
        # A word's ids never change and word frequencies are skewed, so most words of a text are
        # already cached: this is most of the featuriser's cost on the stream-prediction path.
        object.__setattr__(self, "_word_ids", lru_cache(maxsize=1 << 16)(self._word_ids_uncached))

    def __reduce__(self) -> tuple:
        return (type(self), (self.buckets, self.char_ngrams, self.word_bigrams, self.max_features))  # the cache stays behind

    def _hash(self, gram: str) -> int:
        return zlib.crc32(gram.encode()) % (self.buckets - 1) + 1

    def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
        marked = f"<{word}>"
        grams = [f"w:{word}"]
        for n in self.char_ngrams:
            grams += [f"c:{marked[i:i + n]}" for i in range(max(1, len(marked) - n + 1))]
        return tuple(self._hash(g) for g in grams)

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
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HashingFeaturizer:
        fields = json.loads(text)
        fields["char_ngrams"] = tuple(fields["char_ngrams"])
        return cls(**fields)
