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

import numpy as np

__all__ = ["HashingFeaturizer"]

_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class HashingFeaturizer:
    buckets: int = 1 << 16
    char_ngrams: tuple[int, ...] = (3, 4, 5)
    word_bigrams: bool = True
    max_features: int = 256

    def features(self, text: str) -> list[int]:
        words = _WORD.findall(text.lower())
        grams = [f"w:{w}" for w in words]
        if self.word_bigrams:
            grams += [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        for word in words:
            marked = f"<{word}>"
            for n in self.char_ngrams:
                grams += [f"c:{marked[i:i + n]}" for i in range(max(1, len(marked) - n + 1))]
        slots = self.buckets - 1
        return [zlib.crc32(g.encode()) % slots + 1 for g in grams[: self.max_features]]

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
