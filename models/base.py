"""What every intent model architecture shares: ids in, logits out, and a label set that can grow.

An architecture is a torch module taking int64 token ids ``[batch, length]`` (0 = padding) and
returning logits ``[batch, labels]``, with a frozen config dataclass and a final linear layer named
``output``. That contract is what export, serving and training rely on; nothing else is assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoints import Checkpoint

__all__ = ["IntentClassifier"]


class IntentClassifier(nn.Module):
    architecture: str  # the name it is registered under in models.architectures
    config: Any
    output: nn.Linear

    @classmethod
    def from_checkpoint(
        cls, config: Any, checkpoint: Checkpoint, num_labels: int
    ) -> IntentClassifier:
        """A new model of a pretrained architecture, with its checkpoint's weights."""
        raise NotImplementedError(f"{cls.architecture} does not start from a checkpoint")

    @property
    def num_labels(self) -> int:
        return self.output.out_features

    def pretrained_from(self) -> dict[str, str] | None:
        """The checkpoint it was fine-tuned from (name, weights
        sha256), for the manifest; None from scratch."""
        return None

    def freeze(self, trainable_layers: int) -> None:
        """Freeze all but the top ``trainable_layers`` of a pretrained part (negative: none
        frozen). An architecture trained from scratch has no such part: everything trains."""

    def encoder_frozen(self) -> bool:
        """Whether only the head trains, on inputs (sentence
        embeddings) that ``embed_texts`` computes once."""
        return False

    def head_module(self) -> nn.Module:
        raise NotImplementedError(f"{self.architecture} has no separately trainable head")

    def embed_texts(self, featurizer: Any, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.architecture} has no frozen encoder to embed with")

    def encoder_digest(self) -> str:
        raise NotImplementedError(f"{self.architecture} has no frozen encoder")

    @torch.no_grad()
    def grow(self, num_labels: int) -> None:
        """Add output rows for new labels; the existing
        rows, and so existing predictions, are kept."""
        if num_labels < self.num_labels:
            raise ValueError(f"cannot shrink the label set from {self.num_labels} to {num_labels}")
        if num_labels == self.num_labels:
            return
        old = self.output
        new = nn.Linear(old.in_features, num_labels).to(old.weight.device, old.weight.dtype)
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        # New labels start below every learned one, so
        # they only win once training gives them weight.
        new.bias[old.out_features :] = old.bias.min() - 1.0
        self.output = new
