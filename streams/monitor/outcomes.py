"""Joining predictions with the labels and feedback
that arrive later, and live accuracy over a window.

A label can reach us before the prediction it refers to (different partitions, a prediction batch
still in flight), so both sides wait for each other, bounded in time (``horizon_s``) and in memory
(``max_pending`` per side). Waiting entries age by arrival time on the injected clock, not by the
event's own timestamp: a backlog replayed after downtime carries old timestamps but is still live.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["AccuracyWindow", "Outcome", "OutcomeJoiner"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One prediction with its ground truth. ``true_intent``
    is None when only ``correct=False`` is known."""

    event_id: str
    predicted: str
    confidence: float
    true_intent: str | None
    correct: bool
    model_version: str
    predicted_at: float
    labelled_at: float


@dataclass(slots=True)
class _Prediction:
    predicted: str
    confidence: float
    model_version: str
    ts: float
    arrived: float


@dataclass(slots=True)
class _Label:
    intent: str | None
    correct: bool | None
    ts: float
    arrived: float


# what waits for its other half: a prediction for its label, a label for its prediction
_Waiting = TypeVar("_Waiting", _Prediction, _Label)


class OutcomeJoiner:
    def __init__(
        self,
        horizon_s: float = 3600.0,
        max_pending: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        self.horizon_s = float(horizon_s)
        self.max_pending = int(max_pending)
        self._clock = clock
        # Insertion order is arrival order, so the oldest
        # entry is always first: expiry pops from the front.
        self._predictions: OrderedDict[str, _Prediction] = OrderedDict()
        self._labels: OrderedDict[str, _Label] = OrderedDict()
        # Joined ids, remembered for the horizon so a second
        # label (or a redelivered prediction) joins nothing.
        self._joined: OrderedDict[str, float] = OrderedDict()
        self._counts = {
            "joined": 0,
            "expired_predictions": 0,
            "expired_labels": 0,
            "duplicates": 0,
            "ignored": 0,
        }

    @property
    def counts(self) -> dict[str, int]:
        """Totals since creation, plus what is waiting now."""
        return {
            **self._counts,
            "pending_predictions": len(self._predictions),
            "pending_labels": len(self._labels),
        }

    def record_prediction(
        self,
        event_id: str,
        predicted: str,
        confidence: float,
        model_version: str,
        ts: float | None = None,
    ) -> Outcome | None:
        """Remember a prediction; returns the Outcome at once when its label is already here."""
        now = self._clock()
        self.expire(now)
        if event_id in self._predictions or event_id in self._joined:
            self._counts["duplicates"] += 1
            return None
        prediction = _Prediction(
            predicted, float(confidence), model_version, now if ts is None else float(ts), now
        )
        label = self._labels.pop(event_id, None)
        if label is not None:
            return self._join(event_id, prediction, label, now)
        self._predictions[event_id] = prediction
        self._bound(self._predictions, "expired_predictions")
        return None

    def record_label(
        self,
        ref_event_id: str,
        intent: str | None = None,
        correct: bool | None = None,
        ts: float | None = None,
    ) -> Outcome | None:
        """A label (``intent``) or feedback (``correct`` and/or ``intent``) for a prediction.

        Returns the Outcome when the prediction is known; otherwise the
        label waits for it. A label that says nothing (neither field)
        is ignored; a second label for the same event is a duplicate.
        """
        now = self._clock()
        self.expire(now)
        if intent is None and correct is None:
            self._counts["ignored"] += 1
            return None
        if ref_event_id in self._joined or ref_event_id in self._labels:
            self._counts["duplicates"] += 1  # the first word on an event wins
            return None
        label = _Label(
            intent,
            None if correct is None else bool(correct),
            now if ts is None else float(ts),
            now,
        )
        prediction = self._predictions.pop(ref_event_id, None)
        if prediction is not None:
            return self._join(ref_event_id, prediction, label, now)
        self._labels[ref_event_id] = label
        self._bound(self._labels, "expired_labels")
        return None

    def expire(self, now: float | None = None) -> int:
        """Drop what waited longer than the horizon; returns
        how many predictions and labels were dropped."""
        cutoff = (self._clock() if now is None else now) - self.horizon_s
        dropped = self._expire_waiting(self._predictions, "expired_predictions", cutoff)
        dropped += self._expire_waiting(self._labels, "expired_labels", cutoff)
        while self._joined and next(iter(self._joined.values())) <= cutoff:
            self._joined.popitem(last=False)
        return dropped

    def _expire_waiting(self, pending: OrderedDict[str, _Waiting], key: str, cutoff: float) -> int:
        """Drop the entries of ``pending`` (oldest first) that arrived by ``cutoff``; count them."""
        dropped = 0
        while pending and next(iter(pending.values())).arrived <= cutoff:
            pending.popitem(last=False)
            self._counts[key] += 1
            dropped += 1
        return dropped

    def _bound(self, pending: OrderedDict[str, _Waiting], key: str) -> None:
        while len(pending) > self.max_pending:
            pending.popitem(last=False)
            self._counts[key] += 1

    def _join(self, event_id: str, prediction: _Prediction, label: _Label, now: float) -> Outcome:
        if label.intent is not None:
            correct = label.intent == prediction.predicted
            true_intent: str | None = label.intent
        else:
            correct = bool(label.correct)
            # "wrong" alone does not say what was right
            true_intent = prediction.predicted if correct else None
        self._joined[event_id] = now
        while len(self._joined) > self.max_pending:
            self._joined.popitem(last=False)
        self._counts["joined"] += 1
        return Outcome(
            event_id,
            prediction.predicted,
            prediction.confidence,
            true_intent,
            correct,
            prediction.model_version,
            prediction.ts,
            label.ts,
        )


class AccuracyWindow:
    """Accuracy over the last ``size`` outcomes, overall and per true intent (O(1) per add)."""

    def __init__(self, size: int = 500) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = int(size)
        self._items: deque[tuple[str | None, bool]] = deque()
        self._correct = 0
        self._per_intent: dict[str, list[int]] = {}  # intent -> [correct, n]

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def accuracy(self) -> float:
        return self._correct / len(self._items) if self._items else math.nan

    def add(self, outcome: Outcome) -> None:
        self._push(outcome.true_intent, outcome.correct)
        self.trim()

    def trim(self) -> None:
        """Drop the oldest outcomes beyond ``size`` (after an add, or after ``size`` shrank)."""
        while len(self._items) > self.size:
            self._pop()

    def per_intent(self) -> dict[str, tuple[float, int]]:
        """true intent -> (accuracy, n) over the window;
        outcomes with an unknown true intent are left out."""
        return {intent: (c / n, n) for intent, (c, n) in self._per_intent.items()}

    def clear(self) -> None:
        self._items.clear()
        self._correct = 0
        self._per_intent.clear()

    def _push(self, intent: str | None, correct: bool) -> None:
        self._items.append((intent, correct))
        self._correct += correct
        if intent is not None:
            stats = self._per_intent.setdefault(intent, [0, 0])
            stats[0] += correct
            stats[1] += 1

    def _pop(self) -> None:
        intent, correct = self._items.popleft()
        self._correct -= correct
        if intent is not None:
            stats = self._per_intent[intent]
            stats[0] -= correct
            stats[1] -= 1
            if stats[1] == 0:
                # only intents present in the window, so the dict stays bounded
                del self._per_intent[intent]
