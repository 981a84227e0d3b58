"""Early stopping judges the validation split's loss: it keeps the
checkpoint with the lowest loss and stops after ``patience`` epochs
without a lower one. ``validation_scores`` is the number it judges by."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from models.train import TrainSettings, train_classifier, validation_scores
from tests.toy_intents import examples

INTENTS = ["greet", "bye", "refund", "track"]


@pytest.fixture(scope="module")
def trained():
    texts, intents = examples(INTENTS, 200, seed=1)
    return train_classifier(texts, intents, settings=TrainSettings(epochs=3, batch_size=32, seed=0))


def test_validation_scores_are_the_mean_cross_entropy_and_the_accuracy(trained) -> None:
    texts, intents = examples(INTENTS, 60, seed=2)
    # a few wrong ones, so the loss is not ~0
    intents[:5] = ["bye" if i != "bye" else "greet" for i in intents[:5]]
    loss, acc = validation_scores(
        trained.model, trained.featurizer, trained.labels, texts, intents, batch_size=7
    )
    with torch.no_grad():
        logits = trained.model(torch.from_numpy(trained.featurizer.batch(texts))).float()
    target = torch.tensor([trained.labels.index(i) for i in intents])
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, target)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == target).float().mean()))


def test_an_intent_the_model_lacks_is_wrong_in_the_accuracy_and_left_out_of_the_loss(
    trained,
) -> None:
    texts, intents = examples(INTENTS, 40, seed=3)
    known_loss, known_acc = validation_scores(
        trained.model, trained.featurizer, trained.labels, texts, intents
    )
    loss, acc = validation_scores(
        trained.model,
        trained.featurizer,
        trained.labels,
        texts + ["cancel my phone order"] * 10,
        intents + ["cancel"] * 10,
    )
    assert loss == pytest.approx(known_loss, rel=1e-5)
    assert acc == pytest.approx(known_acc * 40 / 50)
    assert validation_scores(
        trained.model, trained.featurizer, trained.labels, ["cancel my order"], ["cancel"]
    ) == (math.inf, 0.0)


def test_it_keeps_the_lowest_loss_checkpoint_and_stops_after_patience_epochs_without_one() -> None:
    texts, intents = examples(INTENTS, 300, seed=4)
    # A validation split labelled at random: as the model grows confident on the real
    # task, its loss here must rise after some epoch, so early stopping has to act.
    val_texts, _ = examples(INTENTS, 80, seed=5)
    rng = random.Random(6)
    val = (val_texts, [rng.choice(INTENTS) for _ in val_texts])
    reports: list[dict] = []
    result = train_classifier(
        texts,
        intents,
        settings=TrainSettings(epochs=40, batch_size=32, patience=3, seed=0),
        val=val,
        progress=reports.append,
    )
    losses = [r["val_loss"] for r in reports]
    # the lowest; on a tie, the later epoch
    best = min(range(len(losses)), key=lambda e: (losses[e], -e))
    assert result.epochs_run < 40, "a rising validation loss must stop training"
    assert result.epochs_run == best + 1 + 3, (
        f"stopped at epoch {result.epochs_run}, the best was {best + 1}: {losses}"
    )
    assert result.val_loss == losses[best] and result.val_accuracy == reports[best]["val_accuracy"]
    kept_loss, _ = validation_scores(result.model, result.featurizer, result.labels, *val)
    assert kept_loss == pytest.approx(losses[best], rel=1e-5), (
        "the model returned is not the checkpoint with the lowest loss"
    )


def test_without_a_validation_split_every_epoch_runs_and_no_score_is_reported() -> None:
    texts, intents = examples(INTENTS, 100, seed=7)
    result = train_classifier(
        texts, intents, settings=TrainSettings(epochs=4, batch_size=32, patience=1, seed=0)
    )
    assert result.epochs_run == 4 and result.val_loss is None and result.val_accuracy is None
