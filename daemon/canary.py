"""The canary: a promoted version's first ``learning.canary_labels``
outcomes against its predecessor's last ones.

It keeps the serving version's most recent outcomes (the baseline a promotion takes before
its swap) and, once a promotion starts a watch, counts the new version's outcomes. When
the watch is full and the new version's accuracy is more than ``learning.canary_margin``
below the baseline, the watch comes back: the caller rolls back.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Any

import numpy as np

from streams.monitor import Outcome

from .config import LearningSettings

__all__ = ["Canary", "CanaryWatch"]

log = logging.getLogger("driftd.learning")


@dataclasses.dataclass
class CanaryWatch:
    version: str  # the promoted version on watch
    previous: str  # what a rollback restores
    baseline: float  # the previous version's accuracy over its last outcomes
    correct: int = 0
    n: int = 0


class Canary:
    def __init__(self, settings: LearningSettings) -> None:
        self.settings = settings
        self.recent_correct: deque[bool] = deque(maxlen=max(1, settings.canary_labels))
        self.watch: CanaryWatch | None = None

    def reconfigure(self, settings: LearningSettings) -> None:
        self.settings = settings
        if self.recent_correct.maxlen != max(1, settings.canary_labels):
            self.recent_correct = deque(self.recent_correct, maxlen=max(1, settings.canary_labels))

    def baseline(self) -> float | None:
        """The serving version's accuracy over its last outcomes; None before any."""
        return float(np.mean(self.recent_correct)) if self.recent_correct else None

    def version_changed(self) -> None:
        """Another version serves: the outcomes seen so far judged the one before."""
        self.recent_correct.clear()

    def start(self, version: str, previous: str | None, baseline: float | None) -> None:
        """Watch ``version``, just promoted over ``previous``
        (which had ``baseline``), if there is one to beat."""
        if self.settings.canary_labels > 0 and previous is not None and baseline is not None:
            self.watch = CanaryWatch(version, previous, baseline)

    def observe(self, outcome: Outcome) -> CanaryWatch | None:
        """One outcome of the serving version; returns the
        watch when it ended in failure (roll back)."""
        self.recent_correct.append(outcome.correct)
        watch = self.watch
        if watch is None or outcome.model_version != watch.version:
            return None
        watch.n += 1
        watch.correct += int(outcome.correct)
        if watch.n < self.settings.canary_labels:
            return None
        self.watch = None
        accuracy = watch.correct / watch.n
        if accuracy >= watch.baseline - self.settings.canary_margin:
            log.info(
                "canary passed: %s at %.4f over %d outcomes (previous model %.4f)",
                watch.version,
                accuracy,
                watch.n,
                watch.baseline,
            )
            return None
        log.error(
            "canary failed: %s at %.4f over %d outcomes, previous %s had %.4f: rolling back",
            watch.version,
            accuracy,
            watch.n,
            watch.previous,
            watch.baseline,
        )
        return watch

    def snapshot(self) -> dict[str, Any] | None:
        return None if self.watch is None else dataclasses.asdict(self.watch)
