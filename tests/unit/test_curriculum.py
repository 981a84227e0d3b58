"""Curriculum ordering (issue 8, optional): a warm start's first epoch goes from the
examples the incumbent finds easiest (lowest loss) to the hardest, new intents last."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from models.train import TrainSettings, accuracy, curriculum_order, train_classifier
from tests.toy_intents import examples


def test_the_order_runs_from_the_lowest_incumbent_loss_to_the_highest_with_new_intents_last() -> (
    None
):
    old_texts, old_intents = examples(["greet", "bye", "refund"], 300, seed=1)
    incumbent = train_classifier(
        old_texts, old_intents, settings=TrainSettings(epochs=4, batch_size=32, seed=0)
    )
    # "track" is new to it
    texts, intents = examples(["greet", "bye", "refund", "track"], 200, seed=2)
    model = copy.deepcopy(incumbent.model)
    labels = [*incumbent.labels, "track"]
    model.grow(len(labels))
    features = [incumbent.featurizer.features(t) for t in texts]
    targets = torch.tensor([labels.index(i) for i in intents])
    order = curriculum_order(model, incumbent.featurizer, features, targets, batch_size=7)
    assert sorted(order.tolist()) == list(range(len(texts)))
    with torch.no_grad():
        model.eval()
        losses = nn.functional.cross_entropy(
            model(torch.from_numpy(incumbent.featurizer.batch(texts))).float(),
            targets,
            reduction="none",
        ).numpy()
    assert np.all(np.diff(losses[order]) >= -1e-6), "not easy to hard"
    new = {i for i, intent in enumerate(intents) if intent == "track"}
    assert set(order[-len(new) :].tolist()) == new, (
        "the intent the incumbent never learned is not the hardest"
    )


def test_a_curriculum_warm_start_is_deterministic_differs_from_a_shuffled_one_and_learns() -> None:
    old_texts, old_intents = examples(["greet", "bye", "refund"], 300, seed=1)
    incumbent = train_classifier(
        old_texts, old_intents, settings=TrainSettings(epochs=4, batch_size=32, seed=0)
    )
    texts, intents = examples(["greet", "bye", "refund", "track"], 300, seed=3)

    def fine_tune(curriculum: bool):
        return train_classifier(
            texts,
            intents,
            labels=incumbent.labels,
            featurizer=incumbent.featurizer,
            init=copy.deepcopy(incumbent.model),
            settings=TrainSettings(epochs=3, batch_size=32, seed=5, curriculum=curriculum),
        )

    first, again, shuffled = fine_tune(True), fine_tune(True), fine_tune(False)
    weights = lambda result: list(result.model.state_dict().values())  # noqa: E731 - a one-line helper
    assert all(torch.equal(a, b) for a, b in zip(weights(first), weights(again), strict=False))
    assert not all(
        torch.equal(a, b) for a, b in zip(weights(first), weights(shuffled), strict=False)
    )
    held_texts, held_intents = examples(["greet", "bye", "refund", "track"], 100, seed=4)
    assert accuracy(first.model, first.featurizer, first.labels, held_texts, held_intents) >= 0.95
