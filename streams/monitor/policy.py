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
from dataclasses import dataclass, field, fields
from typing import Any

from ..jsonsafe import json_safe
from .detectors import DETECTORS, ErrorDetector, EwmaDecayDetector, RiverDetector
from .metrics import MonitorMetrics
from .outcomes import AccuracyWindow, Outcome
from .signals import LABEL_FREE_SIGNALS, LabelFreeSignals
from .triggers import POOR_QUALITY_TRIGGERS, AccuracyFloor, UnknownIntentTrigger

__all__ = ["ALL_SIGNALS", "SIGNALS", "DecayMonitor", "Decision", "MonitorConfig"]

log = logging.getLogger("driftd.monitor")

SIGNALS = (*DETECTORS, *LABEL_FREE_SIGNALS)  # the ones `signals` may list
ALL_SIGNALS = (*SIGNALS, *POOR_QUALITY_TRIGGERS)  # and the always-on poor-quality triggers
MODES = ("any", "all")


@dataclass(frozen=True)
class MonitorConfig:
    """Every field of the decay policy. The EWMA defaults are
    measured with ``bench/loop.py --sections detection``.

    At ~0.88 accuracy an EWMA with alpha 0.02 (an effective window of ~100 outcomes)
    wanders below a 10% drop line by noise alone (hundreds of false alarms over 20 seeds
    x 9,000 drift-free events); alpha 0.003 with a 500-outcome reference peaked at 0.60
    of the way to the line there and still detected the CLINC150/BANKING77 abrupt drifts
    within 127 labelled events. The label-free defaults trade speed for quiet the same
    way: with alpha 0.01 and a 300-prediction reference the low-confidence share (~25% of
    traffic for these models) crossed its line on drift-free traffic in 1 of 20 seeds.
    """

    signals: tuple[str, ...] = ("ewma",)
    # "any": one listed signal suffices; "all": each must have fired since the last reset/decision
    mode: str = "any"
    # Samples since reset before any decision: labelled outcomes,
    # or predictions when only label-free signals are listed.
    min_samples: int = 200
    cooldown_s: float = 300.0  # no decision within this long of the previous one
    ewma_alpha: float = 0.003  # EWMA weight of the newest outcome (~1/alpha outcomes of memory)
    ewma_relative_drop: float = 0.10  # fire below reference * (1 - this)
    ewma_warmup: int = 500  # outcomes after a reset whose mean accuracy is the reference
    ewma_hysteresis: float = 0.5  # re-arm above reference * (1 - relative_drop * this)
    adwin_delta: float = 0.002
    page_hinkley_threshold: float = 50.0
    page_hinkley_min_instances: int = 30
    label_free_alpha: float = 0.005
    low_confidence: float = 0.5
    oos_intents: tuple[str, ...] = ("oos",)
    label_free_warmup: int = 500
    label_free_relative_change: float = 0.15
    window_size: int = 500  # outcomes in the live accuracy window
    # Poor-quality triggers (streams/monitor/triggers.py),
    # decided whatever `signals` and `mode` say; 0 turns one off.
    min_accuracy: float = 0.5  # window accuracy below this (after min_samples outcomes) is poor
    unknown_intent_min: int = 30  # labelled outcomes of intents the model has no output for

    def __post_init__(self) -> None:
        # Config files give lists; the dataclass is frozen and hashable, so store tuples.
        for name in ("signals", "oos_intents"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.signals:
            raise ValueError(f"signals must name at least one of {', '.join(SIGNALS)}")
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown or len(set(self.signals)) != len(self.signals):
            raise ValueError(
                f"signals must be distinct names among {', '.join(SIGNALS)}, got "
                f"{list(self.signals)!r}"
            )
        checks: list[tuple[str, bool, str]] = [
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("min_samples", _is_int(self.min_samples) and self.min_samples >= 0, "an int >= 0"),
            (
                "cooldown_s",
                _is_num(self.cooldown_s) and 0 <= self.cooldown_s < math.inf,
                "a finite number >= 0",
            ),
            ("ewma_alpha", _is_num(self.ewma_alpha) and 0 < self.ewma_alpha <= 1, "in (0, 1]"),
            (
                "ewma_relative_drop",
                _is_num(self.ewma_relative_drop) and 0 < self.ewma_relative_drop < 1,
                "in (0, 1)",
            ),
            ("ewma_warmup", _is_int(self.ewma_warmup) and self.ewma_warmup >= 1, "an int >= 1"),
            (
                "ewma_hysteresis",
                _is_num(self.ewma_hysteresis) and 0 <= self.ewma_hysteresis <= 1,
                "in [0, 1]",
            ),
            ("adwin_delta", _is_num(self.adwin_delta) and 0 < self.adwin_delta < 1, "in (0, 1)"),
            (
                "page_hinkley_threshold",
                _is_num(self.page_hinkley_threshold) and 0 < self.page_hinkley_threshold < math.inf,
                "a finite number > 0",
            ),
            (
                "page_hinkley_min_instances",
                _is_int(self.page_hinkley_min_instances) and self.page_hinkley_min_instances >= 1,
                "an int >= 1",
            ),
            (
                "label_free_alpha",
                _is_num(self.label_free_alpha) and 0 < self.label_free_alpha <= 1,
                "in (0, 1]",
            ),
            (
                "low_confidence",
                _is_num(self.low_confidence) and 0 <= self.low_confidence <= 1,
                "in [0, 1]",
            ),
            (
                "label_free_warmup",
                _is_int(self.label_free_warmup) and self.label_free_warmup >= 1,
                "an int >= 1",
            ),
            (
                "label_free_relative_change",
                _is_num(self.label_free_relative_change)
                and 0 < self.label_free_relative_change < 1,
                "in (0, 1)",
            ),
            ("window_size", _is_int(self.window_size) and self.window_size >= 1, "an int >= 1"),
            (
                "min_accuracy",
                _is_num(self.min_accuracy) and 0 <= self.min_accuracy <= 1,
                "in [0, 1]",
            ),
            (
                "unknown_intent_min",
                _is_int(self.unknown_intent_min) and self.unknown_intent_min >= 0,
                "an int >= 0",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def needs_labels(self) -> bool:
        return any(s in DETECTORS for s in self.signals)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


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
        self.reset()

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
                self.metrics.label_free.labels(name).set(value)
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
            self.metrics.outcomes.labels("true" if outcome.correct else "false").inc()
            self.metrics.live_accuracy.labels("ewma").set(ewma.ewma)
            self.metrics.live_accuracy.labels("window").set(self.window.accuracy)
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
        now = self._clock()
        if self.last_decision is not None and now - self.last_decision.at < self.config.cooldown_s:
            return None
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
        return json_safe(self._snapshot(worst_intents))

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
