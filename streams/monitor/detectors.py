"""Decay detectors on the error stream of labelled
outcomes (1 = the prediction was wrong, 0 = right).

Every detector answers one question per sample: has quality just become worse? Only a rise of the
error rate counts; an improvement is no reason to retrain. ``reset()`` is called when a new model
starts serving, because the old model's error rate is no reference for the new one.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable
from typing import Any

from river import drift

__all__ = ["DETECTORS", "ErrorDetector", "EwmaDecayDetector", "RiverDetector", "make_detector"]


class ErrorDetector(abc.ABC):
    name: str
    n_seen: int

    @abc.abstractmethod
    def update(self, error: bool) -> bool:
        """Feed one outcome; True exactly on the sample where decay is confirmed."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything, the reference included."""

    @abc.abstractmethod
    def evidence(self) -> dict[str, float]:
        """Numbers explaining the current state (finite once a sample was seen)."""


def _check(name: str, value: float, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


class EwmaDecayDetector(ErrorDetector):
    """EWMA of accuracy against the mean accuracy of the first ``warmup`` samples after a reset.

    Fires once when the EWMA falls below ``reference * (1 - relative_drop)``, then
    stays quiet until it has climbed back above ``reference * (1 - relative_drop *
    hysteresis)``: a model hovering around the line would otherwise fire on every
    crossing. The defaults (MonitorConfig's, measured in bench/loop.py) favour a
    long memory: at 90% accuracy a short EWMA crosses a 10% drop line by noise.
    """

    name = "ewma"

    def __init__(
        self,
        alpha: float = 0.003,
        relative_drop: float = 0.10,
        min_samples: int = 200,
        warmup: int = 500,
        hysteresis: float = 0.5,
    ) -> None:
        _check("alpha", alpha, 0 < alpha <= 1, "in (0, 1]")
        _check("relative_drop", relative_drop, 0 < relative_drop < 1, "in (0, 1)")
        _check(
            "min_samples",
            min_samples,
            isinstance(min_samples, int) and min_samples >= 0,
            "an int >= 0",
        )
        _check("warmup", warmup, isinstance(warmup, int) and warmup >= 1, "an int >= 1")
        _check("hysteresis", hysteresis, 0 <= hysteresis <= 1, "in [0, 1]")
        self.alpha = float(alpha)
        self.relative_drop = float(relative_drop)
        self.min_samples = min_samples
        self.warmup = warmup
        self.hysteresis = float(hysteresis)
        self.reset()

    def reset(self) -> None:
        self.n_seen = 0
        self.fires = 0
        self.armed = True
        self._ewma = math.nan
        self._warmup_sum = 0.0
        self._reference: float | None = None

    @property
    def ewma(self) -> float:
        return self._ewma

    @property
    def reference(self) -> float | None:
        """Mean accuracy of the warm-up samples; None until the warm-up is complete."""
        return self._reference

    def update(self, error: bool) -> bool:
        accuracy = 0.0 if error else 1.0
        self.n_seen += 1
        # The exact running mean until 1/alpha samples,
        # the EWMA after: no bias towards a start value.
        weight = max(self.alpha, 1.0 / self.n_seen)
        self._ewma = accuracy if self.n_seen == 1 else self._ewma + weight * (accuracy - self._ewma)
        if self._reference is None:
            self._warmup_sum += accuracy
            if self.n_seen >= self.warmup:
                self._reference = self._warmup_sum / self.warmup
            return False
        if not self.armed:
            self.armed = self._ewma > self._reference * (1 - self.relative_drop * self.hysteresis)
            return False
        if self.n_seen >= self.min_samples and self._ewma < self._reference * (
            1 - self.relative_drop
        ):
            self.armed = False
            self.fires += 1
            return True
        return False

    def evidence(self) -> dict[str, float]:
        # Until the warm-up is over, the reference shown is the provisional warm-up mean.
        reference = (
            self._reference
            if self._reference is not None
            else (self._warmup_sum / self.n_seen if self.n_seen else math.nan)
        )
        return {
            "ewma": self._ewma,
            "reference": reference,
            "threshold": reference * (1 - self.relative_drop),
            "drop": (reference - self._ewma) / reference if reference else 0.0,
            "n": float(self.n_seen),
            "warmed_up": float(self._reference is not None),
            "armed": float(self.armed),
            "fires": float(self.fires),
        }


_RIVER_KINDS = ("adwin", "page_hinkley")


class RiverDetector(ErrorDetector):
    """river's ADWIN or Page-Hinkley on the error stream, reporting only rises of the error rate.

    ADWIN flags changes both ways: when it does, it has just dropped the older part of its window,
    so its estimate rising across the update means the recent errors are the higher ones.
    Page-Hinkley runs one-sided (``mode="up"``) where river supports it, else the same before/after
    comparison on our own means. Both river detectors restart themselves after a detection.
    """

    def __init__(self, kind: str, min_samples: int = 100, **params: Any) -> None:
        if kind not in _RIVER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(_RIVER_KINDS)}, got {kind!r}")
        _check(
            "min_samples",
            min_samples,
            isinstance(min_samples, int) and min_samples >= 0,
            "an int >= 0",
        )
        self.name = kind
        self.min_samples = min_samples
        self._one_sided = False
        if kind == "adwin":
            cls: type = drift.ADWIN
        else:
            cls = drift.PageHinkley
            if "mode" in inspect.signature(cls).parameters:
                params.setdefault("mode", "up")
                self._one_sided = params["mode"] == "up"
        try:
            self._factory: Callable[[], Any] = lambda: cls(**params)
            self._factory()
        except TypeError as exc:
            raise ValueError(f"invalid parameters for river {cls.__name__}: {exc}") from None
        self.params = dict(params)
        self.reset()

    def reset(self) -> None:
        self._detector = self._factory()
        self.n_seen = 0
        self.fires = 0
        self._errors = 0  # since reset
        self._segment_n = 0  # since the river detector last restarted itself
        self._segment_errors = 0
        self._recent = math.nan  # EWMA of the error rate, for the direction check and the evidence

    def update(self, error: bool) -> bool:
        x = 1.0 if error else 0.0
        before = self._estimate()
        self.n_seen += 1
        self._errors += int(error)
        self._recent = (
            x
            if self.n_seen == 1
            else self._recent + max(0.02, 1.0 / self.n_seen) * (x - self._recent)
        )
        self._detector.update(x)
        self._segment_n += 1
        self._segment_errors += int(error)
        if not self._detector.drift_detected:
            return False
        rose = self._rose(before)
        self._segment_n = self._segment_errors = 0
        if not rose or self.n_seen < self.min_samples:
            return False
        self.fires += 1
        return True

    def _estimate(self) -> float:
        if self.name == "adwin":
            return float(self._detector.estimation)
        return self._segment_errors / self._segment_n if self._segment_n else 0.0

    def _rose(self, before: float) -> bool:
        if self._one_sided:
            return True
        if self.name == "adwin":
            # the window now holds only the recent part
            return float(self._detector.estimation) > before
        # recent error rate above the mean of the segment that just ended
        return self._recent > before

    def evidence(self) -> dict[str, float]:
        out = {
            "error_rate": self._errors / self.n_seen if self.n_seen else math.nan,
            "recent_error_rate": self._recent,
            "n": float(self.n_seen),
            "fires": float(self.fires),
        }
        if self.name == "adwin":
            out["window"] = float(self._detector.width)
            out["window_error_rate"] = float(self._detector.estimation)
        else:
            # The one-sided statistic (cumulative deviation
            # above its minimum) against its threshold.
            detector = self._detector
            statistic = float(
                getattr(detector, "_sum_increase", 0.0) - getattr(detector, "_min_increase", 0.0)
            )
            out["statistic"] = statistic if math.isfinite(statistic) else 0.0
            out["threshold"] = float(getattr(detector, "threshold", math.nan))
        return out


def _adwin(**params: Any) -> RiverDetector:
    return RiverDetector("adwin", **params)


def _page_hinkley(**params: Any) -> RiverDetector:
    return RiverDetector("page_hinkley", **params)


DETECTORS: dict[str, Callable[..., ErrorDetector]] = {
    "ewma": EwmaDecayDetector,
    "adwin": _adwin,
    "page_hinkley": _page_hinkley,
}


def make_detector(name: str, **params: Any) -> ErrorDetector:
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}") from None
    return factory(**params)
