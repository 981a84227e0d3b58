"""The decay policy: which signals must fire, and when a decision to retrain may be taken.

``DecayMonitor`` runs every detector on every outcome (so their evidence and metrics always exist)
and the label-free signals on every prediction. A signal that fires is latched until the next
decision or reset; the policy ("any" or "all" of ``config.signals``) is checked against the latches,
after ``min_samples`` and outside the cooldown. A latch outlives the
cooldown on purpose: the EWMA and label-free signals fire once per
episode, so clearing them would hide a decay that is still there.

Pure logic on the caller's thread: no I/O but logging and metrics, not thread-safe.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..jsonsafe import json_safe
from .config import MonitorConfig
from .detectors import DETECTORS, ErrorDetector, EwmaDecayDetector, RiverDetector
from .metrics import MonitorMetrics
from .outcomes import AccuracyWindow, Outcome
from .signals import LABEL_FREE_SIGNALS, LabelFreeSignals
from .triggers import POOR_QUALITY_TRIGGERS, AccuracyFloor, UnknownIntentTrigger

__all__ = ["ALL_SIGNALS", "SIGNALS", "DecayMonitor", "Decision", "MonitorConfig"]

log = logging.getLogger("driftd.monitor")

SIGNALS = (*DETECTORS, *LABEL_FREE_SIGNALS)  # the ones `signals` may list
ALL_SIGNALS = (*SIGNALS, *POOR_QUALITY_TRIGGERS)  # and the always-on poor-quality triggers


@dataclass(frozen=True)
class Decision:
    at: float
    signals: tuple[str, ...]  # the listed signals that had fired
    evidence: dict[str, Any] = field(repr=False)
    labelled_samples: int

    @property
    def poor_quality(self) -> bool:
        """Taken on an absolute trigger (the model is poor), not only on a relative drop."""
        return any(s in POOR_QUALITY_TRIGGERS for s in self.signals)

    def describe(self) -> str:
        ewma = self.evidence.get("ewma", {})
        window = self.evidence.get("window_accuracy", math.nan)
        text = (
            f"{'poor quality' if self.poor_quality else 'decay'}: "
            f"{', '.join(self.signals)} fired after {self.labelled_samples} "
            "labelled outcomes; "
            f"accuracy ewma {ewma.get('ewma', math.nan):.3f} vs reference "
            f"{(ewma.get('reference') or math.nan):.3f}, "
            f"last {self.evidence.get('window_count', 0)} outcomes {window:.3f}"
        )
        unknown = self.evidence.get("unknown_intent", {})
        if "unknown_intent" in self.signals:
            text += (
                f"; {unknown.get('unknown_outcomes', 0)} outcomes of "
                f"{unknown.get('unknown_intents', 0)} intents the model has no "
                "output for"
            )
        if "accuracy_floor" in self.signals:
            text += (
                "; below the accuracy floor "
                f"{self.evidence.get('accuracy_floor', {}).get('min_accuracy', math.nan)}"
            )
        return text


class DecayMonitor:
    def __init__(
        self,
        config: MonitorConfig | None = None,
        metrics: MonitorMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or MonitorConfig()
        self.metrics = metrics
        self._clock = clock
        self.detectors, self.label_free, self.window, self.unknown_intents, self.floor = (
            _build_parts(self.config)
        )
        self.decisions = 0
        self.last_decision: Decision | None = None
        # labelled gauge children, looked up once: observe_* run once per streamed event
        self._children: dict[tuple[str, str], Any] = {}
        self.reset()

    def _child(self, family: str, label: str) -> Any:
        child = self._children.get((family, label))
        if child is None:
            child = self._children[(family, label)] = getattr(self.metrics, family).labels(label)
        return child

    def reconfigure(self, config: MonitorConfig) -> list[str]:
        """Apply new thresholds at run time (SIGHUP) without forgetting what was learned.

        Each part is rebuilt from ``config`` (so the constructors validate it) and then
        takes over its predecessor's state: the EWMA keeps its value and reference, the
        window its outcomes. A river detector whose own parameters changed starts afresh
        instead, as its internal statistics depend on them. Latches, the cooldown clock
        and the decision count are kept. Returns the names of the parts that restarted.
        """
        detectors, label_free, window, unknown_intents, floor = _build_parts(config)
        restarted = []
        for name, detector in detectors.items():
            old = self.detectors[name]
            if (
                isinstance(detector, RiverDetector)
                and isinstance(old, RiverDetector)
                and detector.params != old.params
            ):
                restarted.append(name)
                continue
            _carry_state(old, detector)
        _carry_state(self.label_free, label_free)
        _carry_state(self.window, window)
        window.trim()
        _carry_state(self.unknown_intents, unknown_intents)
        _carry_state(self.floor, floor)
        self.config, self.detectors, self.label_free, self.window = (
            config,
            detectors,
            label_free,
            window,
        )
        self.unknown_intents, self.floor = unknown_intents, floor
        return restarted

    def reset(
        self,
        now: float | None = None,
        model_version: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        """A new model serves: forget every reference. The cooldown clock is kept.

        With ``model_version``, late outcomes of any other version are ignored
        (counted as ``stale``), so the old model's errors do not become the new
        model's reference. ``labels`` are the new model's outputs: a labelled
        outcome of any other intent counts toward the unknown-intent trigger.
        """
        for detector in self.detectors.values():
            detector.reset()
        self.label_free.reset()
        self.window.clear()
        self.unknown_intents.reset(labels)
        self.floor.reset()
        self.labelled = 0
        self.predictions = 0
        self.stale = 0
        self.model_version = model_version
        self.reset_at = self._clock() if now is None else now
        self._fired: dict[str, float] = {}  # signal -> when it fired, since the last reset/decision
        if self.metrics is not None:
            for name in ALL_SIGNALS:
                self.metrics.signal.labels(name).set(0)
            self.metrics.reference_accuracy.set(0)

    @property
    def window_accuracy(self) -> float:
        return self.window.accuracy

    def observe_prediction(self, confidence: float, predicted: str) -> Decision | None:
        self.predictions += 1
        for name in self.label_free.update(confidence, predicted):
            self._latch(name)
        if self.metrics is not None:
            for name, value in self.label_free.values().items():
                self._child("label_free", name).set(value)
        return self._decide()

    def observe_outcome(self, outcome: Outcome) -> Decision | None:
        if self.model_version is not None and outcome.model_version != self.model_version:
            self.stale += 1
            return None
        self.labelled += 1
        self.window.add(outcome)
        error = not outcome.correct
        for name, detector in self.detectors.items():
            if detector.update(error):
                self._latch(name)
        if self.unknown_intents.update(outcome):
            self._latch(self.unknown_intents.name)
        if self.floor.update(self.window):
            self._latch(self.floor.name)
        if self.metrics is not None:
            ewma = self.detectors["ewma"]
            assert isinstance(ewma, EwmaDecayDetector)
            self._child("outcomes", "true" if outcome.correct else "false").inc()
            self._child("live_accuracy", "ewma").set(ewma.ewma)
            self._child("live_accuracy", "window").set(self.window.accuracy)
            if ewma.reference is not None:
                self.metrics.reference_accuracy.set(ewma.reference)
        return self._decide()

    def _latch(self, name: str) -> None:
        if name not in self._fired:
            self._fired[name] = self._clock()
            if self.metrics is not None:
                self.metrics.signal.labels(name).set(1)

    def _samples(self) -> int:
        return self.labelled if self.config.needs_labels else self.predictions

    def _decide(self) -> Decision | None:
        if not self._fired:
            return None  # the common case, per event: nothing latched, nothing to decide
        now = self._clock()
        if self.last_decision is not None and now - self.last_decision.at < self.config.cooldown_s:
            return None  # latched signals wait for the cooldown's end
        listed = tuple(s for s in self.config.signals if s in self._fired)
        decayed = bool(listed) and (
            self.config.mode == "any" or len(listed) == len(self.config.signals)
        )
        if decayed and self._samples() < self.config.min_samples:
            decayed = False
        poor = (
            tuple(s for s in POOR_QUALITY_TRIGGERS if s in self._fired)
            if self.labelled >= self.config.min_samples
            else ()
        )
        if not decayed and not poor:
            return None
        fired = (listed if decayed else ()) + poor
        decision = Decision(now, fired, self._evidence(), self.labelled)
        self.last_decision = decision
        self.decisions += 1
        self._fired.clear()
        if self.metrics is not None:
            self.metrics.decisions.inc()
            for name in fired:
                self.metrics.decision_signals.labels(name).inc()
            for name in ALL_SIGNALS:
                self.metrics.signal.labels(name).set(0)
        log.warning("%s; evidence: %s", decision.describe(), decision.evidence)
        return decision

    def _evidence(self) -> dict[str, Any]:
        references = self.label_free.references()
        return {
            **{name: detector.evidence() for name, detector in self.detectors.items()},
            "unknown_intent": self.unknown_intents.evidence(),
            "accuracy_floor": self.floor.evidence(self.window),
            "label_free": {
                name: {"value": value, "reference": references[name]}
                for name, value in self.label_free.values().items()
            },
            "fired_at": dict(self._fired),
            "samples": {
                "labelled": self.labelled,
                "predictions": self.predictions,
                "stale": self.stale,
            },
            "window_accuracy": self.window.accuracy,
            "window_count": self.window.count,
        }

    def snapshot(self, worst_intents: int = 10) -> dict[str, Any]:
        """Current state for a status endpoint, JSON-safe (unknown numbers are None, not NaN).
        Per-intent accuracy: the ``worst_intents``
        weakest intents with 5+ outcomes in the window."""
        snapshot: dict[str, Any] = json_safe(self._snapshot(worst_intents))  # a dict stays one
        return snapshot

    def _snapshot(self, worst_intents: int) -> dict[str, Any]:
        ewma = self.detectors["ewma"]
        assert isinstance(ewma, EwmaDecayDetector)
        per_intent = sorted(
            ((acc, n, intent) for intent, (acc, n) in self.window.per_intent().items() if n >= 5)
        )
        now = self._clock()
        return {
            "model_version": self.model_version,
            "reset_at": self.reset_at,
            "signals": list(self.config.signals),
            "mode": self.config.mode,
            "samples": {
                "labelled": self.labelled,
                "predictions": self.predictions,
                "stale": self.stale,
            },
            "ewma_accuracy": ewma.ewma,
            "reference_accuracy": ewma.reference,
            "window_accuracy": self.window.accuracy,
            "window_count": self.window.count,
            "fired": {name: name in self._fired for name in ALL_SIGNALS},
            "detectors": {name: detector.evidence() for name, detector in self.detectors.items()},
            "triggers": {
                "unknown_intent": self.unknown_intents.evidence(),
                "accuracy_floor": self.floor.evidence(self.window),
            },
            "label_free": {
                "values": self.label_free.values(),
                "references": self.label_free.references(),
            },
            "worst_intents": [
                {"intent": intent, "accuracy": acc, "n": n}
                for acc, n, intent in per_intent[:worst_intents]
            ],
            "decisions": self.decisions,
            "last_decision": None
            if self.last_decision is None
            else {
                "at": self.last_decision.at,
                "signals": list(self.last_decision.signals),
                "summary": self.last_decision.describe(),
            },
            "cooldown_remaining_s": 0.0
            if self.last_decision is None
            else max(0.0, self.config.cooldown_s - (now - self.last_decision.at)),
        }


def _build_parts(
    c: MonitorConfig,
) -> tuple[
    dict[str, ErrorDetector], LabelFreeSignals, AccuracyWindow, UnknownIntentTrigger, AccuracyFloor
]:
    detectors: dict[str, ErrorDetector] = {
        "ewma": EwmaDecayDetector(
            alpha=c.ewma_alpha,
            relative_drop=c.ewma_relative_drop,
            min_samples=c.min_samples,
            warmup=c.ewma_warmup,
            hysteresis=c.ewma_hysteresis,
        ),
        "adwin": RiverDetector("adwin", min_samples=c.min_samples, delta=c.adwin_delta),
        "page_hinkley": RiverDetector(
            "page_hinkley",
            min_samples=c.min_samples,
            threshold=c.page_hinkley_threshold,
            min_instances=c.page_hinkley_min_instances,
        ),
    }
    label_free = LabelFreeSignals(
        alpha=c.label_free_alpha,
        low_confidence=c.low_confidence,
        oos_intents=c.oos_intents,
        warmup=c.label_free_warmup,
        relative_change=c.label_free_relative_change,
    )
    floor = AccuracyFloor(c.min_accuracy, c.min_samples)
    return (
        detectors,
        label_free,
        AccuracyWindow(c.window_size),
        UnknownIntentTrigger(c.unknown_intent_min),
        floor,
    )


def _carry_state(old: object, new: object) -> None:
    """Copy every attribute of ``old`` that ``new`` did
    not get from its (new) constructor arguments."""
    parameters = set(inspect.signature(type(new)).parameters) | {
        "name",
        "params",
        "_factory",
        "_one_sided",
    }
    for key, value in vars(old).items():
        if key not in parameters:
            setattr(new, key, value)
