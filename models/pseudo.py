"""Pseudo-labels: confident predictions of recent unlabelled
utterances, added to a fine-tune's training data at a lower weight.

How confident is confident enough is measured, not assumed: ``calibrate_threshold`` takes
the model's predictions on labelled examples it did not train on and returns the lowest
confidence at which they were right at least ``precision`` of the time. Pseudo-labels
exist only inside a fine-tune's training set: they are never events, so they never reach
the online evaluation, the gate's holdout, the validation split or decay detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import IntentClassifier
from .featurize import Featurizer
from .scoring import batched_logits

__all__ = [
    "PseudoLabelSettings",
    "PseudoLabels",
    "calibrate_threshold",
    "confident_predictions",
    "pseudo_label",
]


@dataclass(frozen=True)
class PseudoLabelSettings:
    weight: float = 0.3  # loss weight of a pseudo-labelled example (a human label weighs 1)
    precision: float = 0.95  # the threshold's precision on labelled data the model did not train on
    max_ratio: float = 1.0  # most pseudo-labels per human-labelled training example
    # fewest labelled predictions at or above the threshold that may vouch for it
    min_support: int = 30

    def __post_init__(self) -> None:
        if (
            not 0 < self.weight <= 1
            or not 0 < self.precision <= 1
            or self.max_ratio < 0
            or self.min_support < 1
        ):
            raise ValueError(f"pseudo-label settings out of range: {self}")


@dataclass
class PseudoLabels:
    texts: list[str]
    intents: list[str]
    report: dict[str, Any]


def confident_predictions(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    texts: Sequence[str],
    batch_size: int = 512,
) -> tuple[list[str], np.ndarray]:
    """(top-1 intent, its softmax probability) of each text."""
    intents: list[str] = []
    confidences: list[np.ndarray] = []
    for _, logits in batched_logits(model, featurizer, texts, batch_size):
        top, index = torch.softmax(logits, dim=1).max(1)
        intents += [labels[i] for i in index.tolist()]
        confidences.append(top.cpu().numpy())
    return intents, (np.concatenate(confidences) if confidences else np.zeros(0))


def calibrate_threshold(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[bool],
    precision: float,
    min_support: int,
) -> float | None:
    """The lowest confidence ``t`` such that the predictions with confidence >= ``t`` (at least
    ``min_support`` of them) were right at least
    ``precision`` of the time; None when no ``t`` qualifies."""
    conf = np.asarray(confidences, dtype=float)
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=float)[order])
    counts = np.arange(1, len(order) + 1)
    # A threshold can only sit at a confidence value: a prefix
    # may end inside a run of equal ones only where the run ends.
    ends = np.append(conf[order][1:] != conf[order][:-1], True)
    good = np.flatnonzero(ends & (counts >= min_support) & (hits >= precision * counts))
    return None if len(good) == 0 else float(conf[order][good[-1]])


def pseudo_label(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    calibration: tuple[Sequence[str], Sequence[str]],
    unlabelled: Sequence[str],
    settings: PseudoLabelSettings,
    limit: int,
) -> PseudoLabels:
    """Label the most confident of ``unlabelled`` (at most ``limit``) with ``model``, at the
    threshold that ``calibration`` (labelled texts ``model`` did not train on) supports."""
    predicted, conf = confident_predictions(model, featurizer, labels, calibration[0])
    threshold = calibrate_threshold(
        conf,
        [p == truth for p, truth in zip(predicted, calibration[1], strict=True)],
        settings.precision,
        settings.min_support,
    )
    report: dict[str, Any] = {
        "calibration_examples": len(calibration[0]),
        "precision_wanted": settings.precision,
        "threshold": threshold,
        "unlabelled": len(unlabelled),
        "used": 0,
    }
    if threshold is None or not unlabelled or limit <= 0:
        return PseudoLabels([], [], report)
    above = conf >= threshold
    report["calibration_support"] = int(above.sum())
    report["calibration_precision"] = round(
        float(
            np.mean([p == t for p, t, a in zip(predicted, calibration[1], above, strict=True) if a])
        ),
        4,
    )
    intents, confidences = confident_predictions(model, featurizer, labels, unlabelled)
    chosen = [
        i for i in np.argsort(-confidences, kind="stable")[:limit] if confidences[i] >= threshold
    ]
    report["used"] = len(chosen)
    return PseudoLabels([unlabelled[i] for i in chosen], [intents[i] for i in chosen], report)
