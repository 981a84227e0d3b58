"""Joining predictions with labels and feedback, and the live accuracy window."""

from __future__ import annotations

import math

import pytest

from streams.monitor import AccuracyWindow, Outcome, OutcomeJoiner


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_prediction_then_label() -> None:
    joiner = OutcomeJoiner(clock=Clock())
    assert joiner.record_prediction("e1", "book_flight", 0.9, "v1", ts=10.0) is None
    outcome = joiner.record_label("e1", intent="book_flight", ts=20.0)
    assert outcome == Outcome("e1", "book_flight", 0.9, "book_flight", True, "v1", 10.0, 20.0)
    wrong = (
        joiner.record_prediction("e2", "book_flight", 0.4, "v1"),
        joiner.record_label("e2", intent="book_hotel"),
    )[1]
    assert wrong is not None and not wrong.correct and wrong.true_intent == "book_hotel"
    assert joiner.counts["joined"] == 2 and joiner.counts["pending_predictions"] == 0


def test_label_before_prediction() -> None:
    clock = Clock()
    joiner = OutcomeJoiner(clock=clock)
    assert joiner.record_label("e1", intent="balance") is None
    assert joiner.counts["pending_labels"] == 1
    clock.now += 5
    outcome = joiner.record_prediction("e1", "transfer", 0.7, "v2")
    assert outcome is not None
    assert (outcome.predicted, outcome.true_intent, outcome.correct, outcome.model_version) == (
        "transfer",
        "balance",
        False,
        "v2",
    )
    # ts defaults to the clock
    assert outcome.labelled_at == 1000.0 and outcome.predicted_at == 1005.0
    assert joiner.counts["pending_labels"] == 0 and joiner.counts["joined"] == 1


def test_second_label_is_a_duplicate() -> None:
    joiner = OutcomeJoiner(clock=Clock())
    joiner.record_prediction("e1", "balance", 0.9, "v1")
    assert joiner.record_label("e1", intent="balance") is not None
    # joined at most once, first word wins
    assert joiner.record_label("e1", intent="transfer") is None
    assert joiner.record_label("e1", correct=False) is None
    # a redelivered prediction joins nothing either
    assert joiner.record_prediction("e1", "balance", 0.9, "v1") is None
    # Two labels that both arrive before the prediction: the second is the duplicate.
    joiner.record_label("e2", intent="a")
    joiner.record_label("e2", intent="b")
    outcome = joiner.record_prediction("e2", "a", 0.5, "v1")
    assert outcome is not None and outcome.correct
    counts = joiner.counts
    assert counts["joined"] == 2 and counts["duplicates"] == 4


def test_feedback_with_correct_only() -> None:
    joiner = OutcomeJoiner(clock=Clock())
    joiner.record_prediction("ok", "balance", 0.9, "v1")
    joiner.record_prediction("ko", "balance", 0.9, "v1")
    good = joiner.record_label("ok", correct=True)
    bad = joiner.record_label("ko", correct=False)
    # right, so the truth is the prediction
    assert good is not None and good.correct and good.true_intent == "balance"
    # wrong, but not what was right
    assert bad is not None and not bad.correct and bad.true_intent is None
    # An intent wins over the flag: it says what was right.
    joiner.record_prediction("both", "balance", 0.9, "v1")
    both = joiner.record_label("both", intent="transfer", correct=True)
    assert both is not None and not both.correct
    # Nothing to say: ignored, not stored.
    joiner.record_prediction("empty", "balance", 0.9, "v1")
    assert joiner.record_label("empty") is None
    assert joiner.counts["ignored"] == 1 and joiner.counts["pending_predictions"] == 1


def test_expiry_by_horizon() -> None:
    clock = Clock()
    joiner = OutcomeJoiner(horizon_s=60.0, clock=clock)
    joiner.record_prediction("old", "a", 0.9, "v1")
    joiner.record_label("orphan", intent="a")
    clock.now += 30
    joiner.record_prediction("young", "a", 0.9, "v1")
    clock.now += 31  # "old" and "orphan" are 61 s old, "young" 31 s
    assert joiner.expire() == 2
    counts = joiner.counts
    assert (
        counts["expired_predictions"],
        counts["expired_labels"],
        counts["pending_predictions"],
        counts["pending_labels"],
    ) == (1, 1, 1, 0)
    # The expired prediction is gone: its late label waits
    # instead of joining; the young one still joins.
    assert joiner.record_label("old", intent="a") is None
    assert joiner.record_label("young", intent="a") is not None
    # Expiry also runs on each record; an explicit now is honoured.
    assert joiner.expire(now=clock.now + 61) == 1
    assert joiner.counts["expired_labels"] == 2


def test_memory_bound_drops_oldest() -> None:
    joiner = OutcomeJoiner(max_pending=3, clock=Clock())
    for i in range(5):
        joiner.record_prediction(f"e{i}", "a", 0.9, "v1")
    for i in range(4):
        joiner.record_label(f"x{i}", intent="a")
    counts = joiner.counts
    assert (counts["pending_predictions"], counts["expired_predictions"]) == (3, 2)
    assert (counts["pending_labels"], counts["expired_labels"]) == (3, 1)
    assert joiner.record_label("e0", intent="a") is None  # dropped
    assert joiner.record_label("e4", intent="a") is not None


def test_joiner_validates() -> None:
    with pytest.raises(ValueError, match="horizon_s"):
        OutcomeJoiner(horizon_s=0)
    with pytest.raises(ValueError, match="max_pending"):
        OutcomeJoiner(max_pending=0)


def outcome(intent: str | None, correct: bool) -> Outcome:
    return Outcome("e", intent or "x", 0.5, intent, correct, "v1", 0.0, 0.0)


def test_accuracy_window() -> None:
    window = AccuracyWindow(size=4)
    assert window.count == 0 and math.isnan(window.accuracy) and window.per_intent() == {}
    for item in [
        outcome("a", False),
        outcome("a", True),
        outcome("b", True),
        outcome(None, False),
        outcome("b", False),
    ]:
        window.add(item)
    # The first ("a", wrong) left the window.
    assert window.count == 4
    assert window.accuracy == pytest.approx(2 / 4)
    assert window.per_intent() == {"a": (1.0, 1), "b": (0.5, 2)}
    window.add(outcome("c", True))  # ("a", right) leaves: "a" is gone from per_intent
    assert set(window.per_intent()) == {"b", "c"}
    window.clear()
    assert window.count == 0 and window.per_intent() == {}
