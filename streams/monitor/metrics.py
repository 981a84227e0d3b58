"""Prometheus metrics of online evaluation and decay detection, on the registry they are given.

Labels are bounded: outcome correctness, join results, signal names. Per-intent accuracy is left to
``DecayMonitor.snapshot()``: an intent label would grow with every new intent the stream brings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from .detectors import DETECTORS
from .signals import LABEL_FREE_SIGNALS
from .triggers import POOR_QUALITY_TRIGGERS

__all__ = ["JOIN_RESULTS", "MonitorMetrics"]

JOIN_RESULTS = ("joined", "duplicate", "expired_prediction", "expired_label")

# OutcomeJoiner.counts keys -> join results, for sync_joiner.
_JOINER_COUNTS = {
    "joined": "joined",
    "duplicates": "duplicate",
    "expired_predictions": "expired_prediction",
    "expired_labels": "expired_label",
}


class MonitorMetrics:
    """Online-evaluation and decay metrics, declared by concern; known series exist from start."""

    def __init__(
        self,
        registry: CollectorRegistry,
        signals: Iterable[str] = (*DETECTORS, *LABEL_FREE_SIGNALS, *POOR_QUALITY_TRIGGERS),
    ) -> None:
        self._declare_outcomes(registry)
        self._declare_accuracy(registry)
        self._declare_decay(registry)
        self._create_known_series(tuple(signals))
        self._synced: dict[str, int] = {}

    def _declare_outcomes(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "driftd_outcomes_total",
            "Labelled outcomes evaluated (a prediction joined with its label or "
            "feedback), by correctness.",
            ["correct"],
            registry=registry,
        )
        self.joins = Counter(
            "driftd_outcome_joins_total",
            "Prediction/label joins, by result (a label for no known prediction "
            "expires as expired_label).",
            ["result"],
            registry=registry,
        )
        self.pending = Gauge(
            "driftd_outcomes_pending",
            "Predictions waiting for a label, and labels waiting for their prediction.",
            ["side"],
            registry=registry,
        )

    def _declare_accuracy(self, registry: CollectorRegistry) -> None:
        self.live_accuracy = Gauge(
            "driftd_live_accuracy",
            "Live accuracy of the serving model: EWMA and last-N window.",
            ["window"],
            registry=registry,
        )
        self.reference_accuracy = Gauge(
            "driftd_reference_accuracy",
            "Accuracy of the serving model over its first labelled outcomes (the "
            "decay reference; 0 until known).",
            registry=registry,
        )

    def _declare_decay(self, registry: CollectorRegistry) -> None:
        self.signal = Gauge(
            "driftd_decay_signal",
            "1 while a decay signal has fired and counts towards the next decision, else 0.",
            ["signal"],
            registry=registry,
        )
        self.decisions = Counter(
            "driftd_decay_decisions_total",
            "Decay decisions taken (the policy was satisfied outside the cooldown).",
            registry=registry,
        )
        self.decision_signals = Counter(
            "driftd_decay_decision_signals_total",
            "Signals behind the decay decisions, one count per fired signal "
            "per decision (unknown_intent and accuracy_floor: the model is "
            "poor, not only worse).",
            ["signal"],
            registry=registry,
        )
        self.label_free = Gauge(
            "driftd_label_free",
            "Label-free signals: EWMA of confidence, low-confidence share and out-of-scope share.",
            ["signal"],
            registry=registry,
        )

    def _create_known_series(self, signals: tuple[str, ...]) -> None:
        # Every known series exists from the start, so rates and alerts see 0 rather than nothing.
        for correct in ("true", "false"):
            self.outcomes.labels(correct)
        for result in JOIN_RESULTS:
            self.joins.labels(result)
        for side in ("predictions", "labels"):
            self.pending.labels(side)
        for window in ("ewma", "window"):
            self.live_accuracy.labels(window)
        for name in signals:
            self.signal.labels(name)
            self.decision_signals.labels(name)
        for name in LABEL_FREE_SIGNALS:
            self.label_free.labels(name)

    def join(self, result: str, n: int = 1) -> None:
        if result not in JOIN_RESULTS:
            raise ValueError(f"unknown join result {result!r}; known: {', '.join(JOIN_RESULTS)}")
        if n:
            self.joins.labels(result).inc(n)

    def sync_joiner(self, counts: Mapping[str, int]) -> None:
        """Bring the join counters and pending gauges up to an ``OutcomeJoiner.counts`` snapshot."""
        for key, result in _JOINER_COUNTS.items():
            total = int(counts.get(key, 0))
            self.join(result, max(0, total - self._synced.get(key, 0)))
            self._synced[key] = total
        self.pending.labels("predictions").set(counts.get("pending_predictions", 0))
        self.pending.labels("labels").set(counts.get("pending_labels", 0))
