"""Feeds the decay monitor: each prediction, and each outcome (a label
or feedback joined to the prediction it judges, ``OutcomeJoiner``)
of the serving version; every outcome also goes on the timeline.

Outcomes of a replaced version still count as labels (training data)
but say nothing about the version that serves now, so the detectors see
only the serving version's, and restart when another version serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streams.monitor import DecayMonitor, Decision, MonitorMetrics, Outcome, OutcomeJoiner
from streams.tiers import StoredEvent

from .config import MonitorSettings
from .timeline import TimelineRecorder

__all__ = ["OutcomeFeed"]


class OutcomeFeed:
    def __init__(
        self,
        settings: MonitorSettings,
        metrics: MonitorMetrics,
        clock: Callable[[], float],
        on_decision: Callable[[Decision], None],
        on_labelled: Callable[[], None],
        on_serving_outcome: Callable[[Outcome], None],
    ) -> None:
        """``on_decision``: the monitor confirmed decay. ``on_labelled``: an
        outcome was joined, before the monitor sees it. ``on_serving_outcome``:
        an outcome of the serving version, after the monitor saw it."""
        self.metrics = metrics
        self.monitor = DecayMonitor(settings.to_config(), metrics, clock=clock)
        self.joiner = OutcomeJoiner(horizon_s=settings.label_horizon_s, clock=clock)
        self.timeline = TimelineRecorder(window=200)
        self._on_decision = on_decision
        self._on_labelled = on_labelled
        self._on_serving_outcome = on_serving_outcome
        self.version: str | None = None  # the version the detectors judge
        self.outcomes = 0  # joined outcomes so far: the timeline's x axis
        self.labels_since_swap = 0  # outcomes of the serving version since it started serving

    def reconfigure(self, settings: MonitorSettings) -> list[str]:
        """New [monitor] settings; the detectors that had
        to restart (raises before changing anything)."""
        restarted = self.monitor.reconfigure(settings.to_config())
        self.joiner.horizon_s = settings.label_horizon_s
        return restarted

    def follow(self, version: str | None, labels: Sequence[str] | None) -> None:
        """Another version serves: the detectors restart on it (whose model knows ``labels``)."""
        self.version = version
        self.monitor.reset(model_version=version, labels=labels)

    def swapped(self) -> None:
        self.labels_since_swap = 0

    def observe(
        self, events: Sequence[StoredEvent], predicted: Sequence[tuple[StoredEvent, dict[str, Any]]]
    ) -> None:
        """One stored batch and the predictions made for it."""
        for event, prediction in predicted:
            decision = self.monitor.observe_prediction(
                prediction["confidence"], prediction["intent"]
            )
            if decision is not None:
                self._on_decision(decision)
            outcome = self.joiner.record_prediction(
                event.event_id,
                prediction["intent"],
                prediction["confidence"],
                prediction["model_version"],
                event.ts,
            )
            if outcome is not None:
                self._outcome(outcome)
        for event in events:
            if event.type in ("label", "feedback") and event.ref_event_id:
                outcome = self.joiner.record_label(
                    event.ref_event_id,
                    intent=event.intent,
                    correct=event.correct,
                    ts=event.ts,
                )
                if outcome is not None:
                    self._outcome(outcome)
        self.metrics.sync_joiner(self.joiner.counts)

    def _outcome(self, outcome: Outcome) -> None:
        self.outcomes += 1
        self._on_labelled()
        self.timeline.add_outcome(
            outcome.correct, self.outcomes, outcome.labelled_at, outcome.model_version
        )
        if outcome.model_version != self.version:
            return  # a prediction of a replaced version says nothing about the one serving now
        self.labels_since_swap += 1
        decision = self.monitor.observe_outcome(outcome)
        if decision is not None:
            self._on_decision(decision)
        self._on_serving_outcome(outcome)

    def mark(self, kind: str, at: float, label: str) -> None:
        """A timeline mark (detection, training_started, swap,
        rollback, gate_rejected) at the current outcome."""
        self.timeline.mark(kind, self.outcomes, at, label)
