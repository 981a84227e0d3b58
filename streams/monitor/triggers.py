"""Absolute quality triggers: the labels show that the
serving model is poor, whether or not it got worse.

The error-stream detectors compare a model with its own first outcomes, so a model
that was wrong from the start (a taxonomy it never learned, a language it cannot
read) never "drops" and never fires them. These two judge the outcomes alone:

- ``UnknownIntentTrigger``: labelled outcomes whose
  true intent the model has no output for. No model
  can predict an intent it has no output for, so these
  need a fine-tune, however accurate it is otherwise.
- ``AccuracyFloor``: accuracy over the last-N window below an absolute floor.

Both are always on (a threshold of 0 turns one off) and are decided
on their own, whatever the policy's ``signals`` and ``mode`` say:
they answer "is it poor?", the listed signals "did it get worse?".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

from .outcomes import AccuracyWindow, Outcome

__all__ = ["POOR_QUALITY_TRIGGERS", "AccuracyFloor", "UnknownIntentTrigger"]

POOR_QUALITY_TRIGGERS = ("unknown_intent", "accuracy_floor")


class UnknownIntentTrigger:
    """Fires from the ``min_outcomes``-th labelled outcome (since the model started
    serving) whose true intent is not among the model's outputs; 0 turns it off.
    Feedback that only says "wrong" has no true intent and does not count."""

    name = "unknown_intent"

    def __init__(self, min_outcomes: int = 30) -> None:
        if not isinstance(min_outcomes, int) or isinstance(min_outcomes, bool) or min_outcomes < 0:
            raise ValueError(f"min_outcomes must be an int >= 0, got {min_outcomes!r}")
        self.min_outcomes = min_outcomes
        self.known: frozenset[str] | None = None
        self.reset()

    def reset(self, labels: Collection[str] | None = None) -> None:
        """A new model serves; ``labels`` are its outputs (None: unknown, so nothing counts)."""
        self.known = None if labels is None else frozenset(labels)
        self.count = 0
        self.fires = 0
        self.per_intent: Counter[str] = Counter()

    def update(self, outcome: Outcome) -> bool:
        """True while at least ``min_outcomes`` unknown-intent outcomes have been seen."""
        intent = outcome.true_intent
        if self.min_outcomes == 0 or self.known is None or intent is None or intent in self.known:
            return False
        self.count += 1
        self.per_intent[intent] += 1
        if self.count < self.min_outcomes:
            return False
        self.fires += self.count == self.min_outcomes
        return True

    def evidence(self) -> dict[str, Any]:
        return {
            "unknown_outcomes": self.count,
            "min_outcomes": self.min_outcomes,
            "unknown_intents": len(self.per_intent),
            "top_unknown": dict(self.per_intent.most_common(5)),
            "known_intents": None if self.known is None else len(self.known),
            "fires": self.fires,
        }


class AccuracyFloor:
    """Fires while the accuracy of the last ``window`` outcomes is below ``min_accuracy``,
    once the window holds ``min_samples`` of them; a floor of 0 turns it off."""

    name = "accuracy_floor"

    def __init__(self, min_accuracy: float = 0.5, min_samples: int = 200) -> None:
        if (
            not isinstance(min_accuracy, (int, float))
            or isinstance(min_accuracy, bool)
            or not 0 <= min_accuracy <= 1
        ):
            raise ValueError(f"min_accuracy must be in [0, 1], got {min_accuracy!r}")
        self.min_accuracy = float(min_accuracy)
        self.min_samples = min_samples
        self.fires = 0
        self._below = False

    def reset(self) -> None:
        self.fires = 0
        self._below = False

    def update(self, window: AccuracyWindow) -> bool:
        below = (
            self.min_accuracy > 0
            and window.count >= max(1, self.min_samples)
            and window.accuracy < self.min_accuracy
        )
        self.fires += below and not self._below
        self._below = below
        return below

    def evidence(self, window: AccuracyWindow) -> dict[str, Any]:
        return {
            "window_accuracy": window.accuracy,
            "window_count": window.count,
            "min_accuracy": self.min_accuracy,
            "below": self._below,
            "fires": self.fires,
        }
