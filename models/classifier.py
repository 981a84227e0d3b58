"""The default intent classifier: a bag of hashed n-grams (EmbeddingBag-style mean) and a small MLP.

It trains from scratch in seconds on a CPU, exports to a plain ONNX graph (Gather,
mean, MLP), and its label set can grow without losing what was learned (``grow``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .base import IntentClassifier

__all__ = ["BagOfNgramsClassifier", "ClassifierConfig"]


@dataclass(frozen=True)
class ClassifierConfig:
    buckets: int = 1 << 16
    dim: int = 64
    # models saved before the multilingual featuriser: 256 (each model.pt carries its own)
    hidden: int = 512
    dropout: float = 0.2
    # Share of a text's n-gram ids left out of its mean while training (word dropout, as in
    # Iyyer et al.'s deep averaging networks): no single n-gram can carry an intent alone.
    # At 10 epochs +0.3 points on CLINC150 and +0.7 on massive_ru (bench/multilingual.py).
    # A model.pt saved before it gets this default when fine-tuned.
    token_dropout: float = 0.35

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BagOfNgramsClassifier(IntentClassifier):
    architecture = "bag_of_ngrams"

    def __init__(self, config: ClassifierConfig, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.buckets, config.dim, padding_idx=0)
        self.hidden = nn.Linear(config.dim, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden, num_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int64 [batch, length], 0 = padding -> logits [batch, labels]."""
        mask = (ids != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        if self.training and self.config.token_dropout > 0:
            kept = torch.rand(mask.shape, device=mask.device) >= self.config.token_dropout
            mask = mask * kept.to(mask.dtype)
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.output(
            self.dropout(torch.relu(self.hidden(self.dropout(pooled))))
        )
        return logits
