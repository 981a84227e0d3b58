"""Training the default classifier from labelled texts: from scratch (bootstrap) or warm-started.

Plain data in, a trained model out: the orchestrator hands (text, intent) pairs, nothing here reads
Kafka or the tiers. The learning-loop issue adds the fine-tune schedule, AMP and the child process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .classifier import BagOfNgramsClassifier, ClassifierConfig
from .featurize import HashingFeaturizer

__all__ = ["TrainResult", "TrainSettings", "train_classifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    seed: int = 0
    patience: int = 2  # epochs without validation gain before stopping (when a validation set is given)


@dataclass
class TrainResult:
    model: BagOfNgramsClassifier
    labels: list[str]
    featurizer: HashingFeaturizer
    epochs_run: int
    seconds: float
    val_accuracy: float | None


def train_classifier(
    texts: Sequence[str],
    intents: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    featurizer: HashingFeaturizer | None = None,
    config: ClassifierConfig | None = None,
    settings: TrainSettings = TrainSettings(),
    init: BagOfNgramsClassifier | None = None,
    val: tuple[Sequence[str], Sequence[str]] | None = None,
) -> TrainResult:
    """Fit on (texts, intents). ``labels`` fixes the label order (new intents are appended to it);
    ``init`` warm-starts from an existing model, grown to the new label set."""
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    label_list = list(labels or [])
    label_list += sorted(set(intents) - set(label_list))
    index = {label: i for i, label in enumerate(label_list)}
    featurizer = featurizer or HashingFeaturizer(buckets=(config or ClassifierConfig()).buckets)
    if init is not None:
        model = init
        model.grow(len(label_list))
    else:
        model = BagOfNgramsClassifier(config or ClassifierConfig(buckets=featurizer.buckets), len(label_list))
    if model.config.buckets != featurizer.buckets:
        raise ValueError(f"featurizer has {featurizer.buckets} buckets, the model {model.config.buckets}")

    features = [featurizer.features(t) for t in texts]
    targets = torch.tensor([index[i] for i in intents], dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best_state, best_acc, stale, epochs_run = None, -1.0, 0, 0
    for epoch in range(settings.epochs):
        model.train()
        order = rng.permutation(len(features))
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            ids = torch.from_numpy(HashingFeaturizer.pad([features[i] for i in batch]))
            loss = nn.functional.cross_entropy(model(ids), targets[batch], label_smoothing=settings.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs_run = epoch + 1
        if val is not None:
            acc = accuracy(model, featurizer, label_list, *val)
            log.info("epoch %d: validation accuracy %.4f", epoch + 1, acc)
            if acc > best_acc:
                best_acc, stale = acc, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= settings.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, label_list, featurizer, epochs_run, time.perf_counter() - started, best_acc if val is not None else None)


@torch.no_grad()
def predict_indices(model: BagOfNgramsClassifier, featurizer: HashingFeaturizer, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(featurizer.batch(texts[i : i + batch_size]))).argmax(1).numpy() for i in range(0, len(texts), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: BagOfNgramsClassifier, featurizer: HashingFeaturizer, labels: Sequence[str], texts: Sequence[str], intents: Sequence[str]) -> float:
    if not texts:
        return float("nan")
    predicted = predict_indices(model, featurizer, texts)
    return float(np.mean([labels[p] == truth for p, truth in zip(predicted, intents)]))
