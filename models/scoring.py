"""Scoring a model on texts: logits in batches, predictions, accuracy, a validation split's
loss and accuracy, and the easy-to-hard order a warm start's curriculum trains in.

All of it runs in eval mode without gradients; ``models/train.py`` uses it between epochs and
re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .base import IntentClassifier
from .featurize import Featurizer

__all__ = [
    "accuracy",
    "batched_logits",
    "curriculum_order",
    "easy_to_hard",
    "head_logits",
    "predict_indices",
    "validation_scores",
]


def batched_logits(
    model: IntentClassifier, featurizer: Featurizer, texts: Sequence[str], batch_size: int = 512
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start index, float32 logits) of ``texts`` in batches, in
    eval mode and without gradients, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        with torch.no_grad():  # closed before the yield, so the caller's grad mode is never changed
            logits = model(
                torch.from_numpy(featurizer.batch(texts[start : start + batch_size])).to(device)
            ).float()
        yield start, logits


def predict_indices(
    model: IntentClassifier, featurizer: Featurizer, texts: Sequence[str], batch_size: int = 512
) -> np.ndarray:
    out = [
        logits.argmax(1).cpu().numpy()
        for _, logits in batched_logits(model, featurizer, texts, batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def curriculum_order(
    model: IntentClassifier,
    featurizer: Featurizer,
    features: Sequence[Sequence[int]],
    targets: torch.Tensor,
    batch_size: int = 512,
) -> np.ndarray:
    """Example indices from the lowest loss under ``model`` to the highest
    (easy to hard); ties keep their order. An intent the model has just
    grown an output for scores with that output's fresh weights: hard."""
    model.eval()
    device = next(model.parameters()).device

    def logits() -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(features), batch_size):
            yield (
                start,
                model(
                    torch.from_numpy(featurizer.pad(list(features[start : start + batch_size]))).to(
                        device
                    )
                ).float(),
            )

    return easy_to_hard(logits(), targets)


@torch.no_grad()
def easy_to_hard(logits: Iterable[tuple[int, torch.Tensor]], targets: torch.Tensor) -> np.ndarray:
    losses = [
        nn.functional.cross_entropy(
            batch, targets[start : start + len(batch)].to(batch.device), reduction="none"
        ).cpu()
        for start, batch in logits
    ]
    return (
        np.argsort(torch.cat(losses).numpy(), kind="stable")
        if losses
        else np.zeros(0, dtype=np.int64)
    )


def head_logits(
    head: nn.Module, embeddings: torch.Tensor, batch_size: int = 4096
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, float32 logits) of a head on precomputed
    sentence embeddings, in eval mode, without gradients."""
    head.eval()
    for start in range(0, len(embeddings), batch_size):
        with torch.no_grad():
            logits = head(embeddings[start : start + batch_size]).float()
        yield start, logits


def validation_scores(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    texts: Sequence[str],
    intents: Sequence[str],
    batch_size: int = 512,
    logits: Iterable[tuple[int, torch.Tensor]] | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a validation split. An intent the model has no
    output for counts as wrong in the accuracy and is left out of the loss (it has
    no logit to score); with none known the loss is infinite, so such a split never
    looks like progress. ``logits``: (start, logits) batches of the texts already
    computed (a head on cached embeddings); by default the model runs on them."""
    index = {label: i for i, label in enumerate(labels)}
    loss_sum, scored, correct = 0.0, 0, 0
    for start, batch_logits in (
        logits if logits is not None else batched_logits(model, featurizer, texts, batch_size)
    ):
        truth = [index.get(intent, -1) for intent in intents[start : start + len(batch_logits)]]
        target = torch.tensor(truth, dtype=torch.long, device=batch_logits.device)
        correct += int((batch_logits.argmax(1) == target).sum())
        known = target >= 0
        if bool(known.any()):
            loss_sum += float(
                nn.functional.cross_entropy(batch_logits[known], target[known], reduction="sum")
            )
            scored += int(known.sum())
    return (loss_sum / scored if scored else math.inf), correct / max(1, len(texts))


def accuracy(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    texts: Sequence[str],
    intents: Sequence[str],
) -> float:
    if not texts:
        return float("nan")
    predicted = predict_indices(model, featurizer, texts)
    return float(np.mean([labels[p] == truth for p, truth in zip(predicted, intents, strict=True)]))
