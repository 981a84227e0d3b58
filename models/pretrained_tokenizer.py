"""A pretrained encoder's own tokenizer as a featuriser: the encoder architecture's input.

The ``tokenizers`` library (the Rust implementation behind Hugging Face's fast
tokenizers) turns text into the checkpoint's vocabulary ids, with its special tokens,
truncated to ``max_features``. Every id is shifted up by one so that 0 stays padding,
as the other featurisers and the ONNX graphs expect; the model shifts back. Batches
are encoded in one call and padded to their longest text, not to a fixed length.

The whole tokenizer (its ``tokenizer.json``) is saved inside ``featurizer.json``, so a registry
version carries it, checksummed by the manifest, and serves without the checkpoint's directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .padding import pad_ids

__all__ = ["PretrainedTokenizer"]


class PretrainedTokenizer:
    kind = "pretrained_tokenizer"

    def __init__(self, tokenizer_json: str, max_features: int = 64) -> None:
        if max_features < 2:
            raise ValueError(
                f"max_features must be at least 2 (the special tokens), got {max_features}"
            )
        # one spelling per tokenizer
        self.tokenizer_json = json.dumps(json.loads(tokenizer_json), sort_keys=True)
        self.max_features = max_features

    @classmethod
    def from_checkpoint(
        cls, tokenizer_file: Path, *, lowercase: bool = True, max_features: int = 64
    ) -> PretrainedTokenizer:
        """From a checkpoint's ``tokenizer.json``, or a
        WordPiece ``vocab.txt`` (BERT's tokenizer around it)."""
        if tokenizer_file.name == "vocab.txt":
            from tokenizers.implementations import BertWordPieceTokenizer

            return cls(
                BertWordPieceTokenizer.from_file(str(tokenizer_file), lowercase=lowercase).to_str(),
                max_features,
            )
        return cls(tokenizer_file.read_text(encoding="utf-8"), max_features)

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        tokenizer.no_padding()  # padding is ours (0), to each batch's longest text
        tokenizer.enable_truncation(self.max_features)
        return tokenizer

    @property
    def buckets(self) -> int:
        """Ids the model's input can hold: the vocabulary, shifted past the padding id 0."""
        vocabulary: int = self._tokenizer.get_vocab_size(with_added_tokens=True)
        return vocabulary + 1

    def features(self, text: str) -> list[int]:
        return [i + 1 for i in self._tokenizer.encode(text).ids]

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        """int64 ids [batch, longest text in it], zero-padded."""
        return self.pad([[i + 1 for i in e.ids] for e in self._tokenizer.encode_batch(list(texts))])

    pad = staticmethod(pad_ids)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "max_features": self.max_features,
                "tokenizer": json.loads(self.tokenizer_json),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PretrainedTokenizer:
        fields = json.loads(text)
        return cls(json.dumps(fields["tokenizer"]), int(fields["max_features"]))

    # pickled into the fine-tune child without the compiled tokenizer
    def __reduce__(self) -> tuple[type[PretrainedTokenizer], tuple[str, int]]:
        return (PretrainedTokenizer, (self.tokenizer_json, self.max_features))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedTokenizer) and (
            self.tokenizer_json,
            self.max_features,
        ) == (other.tokenizer_json, other.max_features)

    def __hash__(self) -> int:
        return hash((self.tokenizer_json, self.max_features))
