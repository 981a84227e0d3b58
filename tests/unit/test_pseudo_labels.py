"""Pseudo-labels (issue 8): a threshold measured on human labels, weighted
training, a CLINC150 fine-tune that is no worse on the holdout with
them than without, and no pseudo-label in any evaluation set."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from daemon.config import load_settings
from daemon.learning import LearningLoop
from models.export import build_version_files
from models.finetune import FineTuneJob, run_fine_tune
from models.gate import GateSettings
from models.hygiene import HygieneSettings
from models.pseudo import (
    PseudoLabelSettings,
    calibrate_threshold,
    confident_predictions,
    pseudo_label,
)
from models.registry import Registry
from models.serving import ModelServer
from models.train import TrainSettings, train_classifier
from streams.datasets import groups, load_examples
from tests.toy_intents import examples
from tests.unit.test_tiers import Clock, event, label, make_store, run


@pytest.mark.parametrize(
    ("confidences", "correct", "precision", "support", "expected"),
    [
        # 4 of the top 5 are right
        ([0.99, 0.98, 0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1, 0, 0], 0.75, 2, 0.7),
        ([0.99, 0.98, 0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1, 0, 0], 0.9, 2, 0.8),
        (
            [0.99, 0.98, 0.9, 0.8, 0.7, 0.6],
            [1, 1, 1, 1, 0, 0],
            0.9,
            5,
            None,
        ),  # too few vouch for 0.8
        ([0.6, 0.99, 0.7, 0.98], [0, 1, 0, 1], 1.0, 2, 0.98),  # the input order does not matter
        # a threshold cannot split equal confidences
        ([0.9, 0.9, 0.9, 0.5], [1, 1, 0, 1], 1.0, 1, None),
        ([], [], 0.9, 1, None),
    ],
)
def test_the_threshold_is_the_lowest_confidence_whose_predictions_were_right_often_enough(
    confidences, correct, precision, support, expected
) -> None:
    assert (
        calibrate_threshold(confidences, [bool(c) for c in correct], precision, support) == expected
    )


@pytest.fixture(scope="module")
def toy():
    texts, intents = examples(["greet", "bye", "refund", "track"], 300, seed=1)
    return train_classifier(texts, intents, settings=TrainSettings(epochs=4, batch_size=32, seed=0))


def test_only_predictions_at_or_above_the_calibrated_threshold_become_pseudo_labels(toy) -> None:
    calibration = examples(["greet", "bye", "refund", "track"], 80, seed=2)
    # with intents the model lacks
    unlabelled, _ = examples(["greet", "bye", "refund", "track", "cancel", "upgrade"], 200, seed=3)
    found = pseudo_label(
        toy.model,
        toy.featurizer,
        toy.labels,
        calibration,
        unlabelled,
        PseudoLabelSettings(precision=0.9, min_support=20),
        limit=50,
    )
    threshold = found.report["threshold"]
    assert (
        threshold is not None
        and found.report["calibration_precision"] >= 0.9
        and found.report["calibration_support"] >= 20
    )
    assert 0 < len(found.texts) <= 50 and found.report["used"] == len(found.texts)
    intents, confidences = confident_predictions(toy.model, toy.featurizer, toy.labels, found.texts)
    assert intents == found.intents and min(confidences) >= threshold
    _, all_confidences = confident_predictions(toy.model, toy.featurizer, toy.labels, unlabelled)
    # the most confident were taken
    assert min(confidences) >= sorted(all_confidences, reverse=True)[len(found.texts) - 1] - 1e-6

    never = pseudo_label(
        toy.model,
        toy.featurizer,
        toy.labels,
        calibration,
        unlabelled,
        PseudoLabelSettings(precision=1.0, min_support=10_000),
        limit=50,
    )
    # nothing vouches: nothing is pseudo-labelled
    assert never.texts == [] and never.report["threshold"] is None


def test_a_weight_scales_an_examples_loss() -> None:
    texts, intents = examples(["refund", "track"], 200, seed=4)
    flipped = ["track" if i == "refund" else "refund" for i in intents]
    plain = train_classifier(
        texts, intents, settings=TrainSettings(epochs=3, batch_size=32, seed=0)
    )
    ones = train_classifier(
        texts,
        intents,
        settings=TrainSettings(epochs=3, batch_size=32, seed=0),
        weights=[1.0] * len(texts),
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            plain.model.state_dict().values(), ones.model.state_dict().values(), strict=False
        )
    )
    # The same texts again, labelled wrong: at weight 0
    # they teach nothing, at weight 1 they undo the task.
    ignored = train_classifier(
        texts * 2,
        intents + flipped,
        settings=TrainSettings(epochs=3, batch_size=32, seed=0),
        weights=[1.0] * 200 + [0.0] * 200,
    )
    confused = train_classifier(
        texts * 2, intents + flipped, settings=TrainSettings(epochs=3, batch_size=32, seed=0)
    )

    def right(result):
        return sum(
            p == t
            for p, t in zip(
                confident_predictions(result.model, result.featurizer, result.labels, texts)[0],
                intents,
                strict=False,
            )
        ) / len(texts)

    assert right(ignored) >= 0.95 > 0.75 > right(confused)
    with pytest.raises(ValueError, match="3 weights for 200 examples"):
        train_classifier(texts, intents, settings=TrainSettings(epochs=1), weights=[1.0] * 3)


CLINC_SEED_DOMAINS = ("banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute")


def test_on_clinc150_pseudo_labels_leave_the_holdout_no_worse_and_evaluation_human(
    tmp_path: Path,
) -> None:
    """Few labels after a drift to 10 domains, many unlabelled
    utterances: the same job with and without pseudo-labels."""
    domains = groups("clinc150")
    seed_intents = {i for d in CLINC_SEED_DOMAINS for i in domains[d]}
    everything = {i for intents in domains.values() for i in intents}
    train = [e for e in load_examples("clinc150", "train") if e.intent in everything]
    rng = random.Random(8)
    rng.shuffle(train)
    seed = [e for e in train if e.intent in seed_intents]
    incumbent = train_classifier(
        [e.text for e in seed],
        [e.intent for e in seed],
        settings=TrainSettings(epochs=5, batch_size=256, seed=0),
    )
    files, _ = build_version_files(
        incumbent.model, incumbent.featurizer, incumbent.labels, [e.text for e in seed[:64]]
    )
    registry = Registry(tmp_path / "registry")
    version = registry.publish(files, parent=None, info={}).version
    labelled, unlabelled = train[:2400], [e.text for e in train[2400:8400]]
    # human labels, never trained on
    holdout = [e for e in load_examples("clinc150", "val") if e.intent in everything][::2]

    def job(pseudo: PseudoLabelSettings | None) -> FineTuneJob:
        return FineTuneJob(
            train=([e.text for e in labelled], [e.intent for e in labelled]),
            holdout=([e.text for e in holdout], [e.intent for e in holdout]),
            replay_eval=([], []),
            incumbent_dir=str(registry.root / version),
            settings=TrainSettings(epochs=10, batch_size=256, seed=3),
            gate=GateSettings(margin=0.005),
            val_fraction=0.1,
            seed=3,
            hygiene=HygieneSettings(),
            unlabelled=unlabelled + [e.text for e in holdout[:50]],
            pseudo=pseudo,
        )

    without = run_fine_tune(job(None))
    with_pseudo = run_fine_tune(job(PseudoLabelSettings(weight=0.3, precision=0.95)))
    report = with_pseudo.report["pseudo_labels"]
    print(
        "\n  holdout without pseudo-labels "
        f"{without.verdict.candidate_holdout:.4f}, with "
        f"{with_pseudo.verdict.candidate_holdout:.4f} "
        f"(incumbent {without.verdict.incumbent_holdout:.4f}, "
        f"n={len(holdout)}); pseudo-labels {report}"
    )
    assert without.report["pseudo_labels"] is None
    assert report["used"] > 500 and report["calibration_precision"] >= 0.95, report
    # The criterion: a gate-passing model is no worse
    # on the holdout with pseudo-labels than without.
    assert (
        with_pseudo.verdict.passed
        and with_pseudo.verdict.candidate_holdout >= without.verdict.candidate_holdout
    )
    # Evaluation stays human: the same validation split and holdout, and no
    # holdout text was pseudo-labelled even though it was offered as unlabelled.
    assert with_pseudo.report["validation_examples"] == without.report["validation_examples"]
    assert (
        with_pseudo.report["holdout_examples"] == without.report["holdout_examples"] == len(holdout)
    )
    assert report["hygiene"]["removed"]["holdout_leak"] >= 1


def test_the_daemon_offers_only_unlabelled_utterances_and_evaluates_on_human_labels_only(
    tmp_path: Path,
) -> None:
    """Pseudo-labels are never events, only part of one fine-tune's training
    data: the job's training set and holdout come from label events, and
    the pseudo-label candidates are the utterances nobody labelled."""
    store = make_store(tmp_path, Clock())
    texts, intents = examples(["refund", "track", "cancel"], 700, seed=9)
    events, offset = [], 0
    for i, (text, intent) in enumerate(zip(texts, intents, strict=False)):
        events.append(event(offset, event_id=f"u{i}", text=f"{text} #{i}", ts=1_000_000.0 + i))
        offset += 1
        if i % 7 < 4:  # 4 in 7 get a human label
            events.append(label(offset, f"u{i}", intent, ts=1_000_000.0 + i + 0.5))
            offset += 1
    run(store.write(events))
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)},
        learning={"pseudo_labels": True, "pseudo_label_ratio": 1.0, "replay_ratio": 0},
    )
    loop = LearningLoop(
        settings,
        store=store,
        server=ModelServer(),
        registry=Registry(tmp_path / "registry"),
        metrics_registry=CollectorRegistry(),
        announce=None,
        swap_lock=None,
        clock=lambda: 1_000_000.0 + 1000,
    )
    job, counts = asyncio.run(loop._build_job(None, "manual"))
    labelled_texts = {f"{t} #{i}" for i, t in enumerate(texts) if i % 7 < 4}
    unlabelled_texts = {f"{t} #{i}" for i, t in enumerate(texts) if i % 7 >= 4}
    assert job is not None and job.pseudo is not None
    assert (
        set(job.unlabelled) == unlabelled_texts
        and counts["unlabelled"] == len(unlabelled_texts) == 300
    )
    assert set(job.holdout[0]) <= labelled_texts and set(job.train[0]) <= labelled_texts
    assert len(job.holdout[0]) + len(job.train[0]) == len(
        labelled_texts
    ) == 400 and job.replay_eval == ([], [])
    store.close_now()
