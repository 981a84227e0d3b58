"""Label-free decay signals: what every prediction says about traffic, before any label arrives.

Three EWMAs, each against the mean of its first ``warmup`` predictions after a reset:

- ``confidence``: mean top-1 confidence; fires when
  it falls by ``relative_change`` of its reference.
- ``low_confidence_share``: share of predictions below ``low_confidence``; fires when it rises by
  ``relative_change`` in absolute share points (0.15: from 8% to 23% of traffic).
- ``oos_share``: share of predictions in ``oos_intents``; same rule as the low-confidence share.

The shares use an absolute rise because they usually start small: a relative rise of a 5% share is
mostly noise (+15% of 5% is under one standard deviation of an EWMA with alpha 0.005), while 15 more
points of uncertain or out-of-scope traffic is a change worth acting on. Like the EWMA detector, a
signal fires once, then re-arms only after it has
come back half way (``hysteresis``) to its reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["LABEL_FREE_SIGNALS", "LabelFreeSignals"]

LABEL_FREE_SIGNALS = ("confidence", "low_confidence_share", "oos_share")


class LabelFreeSignals:
    def __init__(
        self,
        alpha: float = 0.005,
        low_confidence: float = 0.5,
        oos_intents: Iterable[str] = ("oos",),
        warmup: int = 500,
        relative_change: float = 0.15,
        hysteresis: float = 0.5,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not 0 <= low_confidence <= 1:
            raise ValueError(f"low_confidence must be in [0, 1], got {low_confidence!r}")
        if not (isinstance(warmup, int) and warmup >= 1):
            raise ValueError(f"warmup must be an int >= 1, got {warmup!r}")
        if not 0 < relative_change < 1:
            raise ValueError(f"relative_change must be in (0, 1), got {relative_change!r}")
        if not 0 <= hysteresis <= 1:
            raise ValueError(f"hysteresis must be in [0, 1], got {hysteresis!r}")
        self.alpha = float(alpha)
        self.low_confidence = float(low_confidence)
        self.oos_intents = frozenset(oos_intents)
        self.warmup = warmup
        self.relative_change = float(relative_change)
        self.hysteresis = float(hysteresis)
        self.reset()

    def reset(self) -> None:
        self.n_seen = 0
        self._ewma = dict.fromkeys(LABEL_FREE_SIGNALS, math.nan)
        self._sums = dict.fromkeys(LABEL_FREE_SIGNALS, 0.0)
        self._reference: dict[str, float] | None = None
        self.armed = dict.fromkeys(LABEL_FREE_SIGNALS, True)

    def update(self, confidence: float, predicted: str) -> list[str]:
        """Feed one prediction; returns the signals that fired on it."""
        sample = {
            "confidence": float(confidence),
            "low_confidence_share": 1.0 if confidence < self.low_confidence else 0.0,
            "oos_share": 1.0 if predicted in self.oos_intents else 0.0,
        }
        self.n_seen += 1
        # exact mean first, EWMA after: no start-up bias
        weight = max(self.alpha, 1.0 / self.n_seen)
        for name, x in sample.items():
            self._ewma[name] = (
                x if self.n_seen == 1 else self._ewma[name] + weight * (x - self._ewma[name])
            )
        if self._reference is None:
            for name, x in sample.items():
                self._sums[name] += x
            if self.n_seen >= self.warmup:
                self._reference = {name: total / self.warmup for name, total in self._sums.items()}
            return []
        fired = []
        for name in LABEL_FREE_SIGNALS:
            worse = self._worsening(name)
            if self.armed[name]:
                if worse >= 1.0:
                    self.armed[name] = False
                    fired.append(name)
            elif worse < self.hysteresis:
                self.armed[name] = True
        return fired

    def _worsening(self, name: str) -> float:
        """How far the signal went towards its firing line: 0 at the reference, 1 on the line."""
        assert self._reference is not None
        ref, value = self._reference[name], self._ewma[name]
        if name == "confidence":
            return (ref - value) / (ref * self.relative_change) if ref > 0 else 0.0
        return (value - ref) / self.relative_change

    def values(self) -> dict[str, float]:
        return dict(self._ewma)

    def references(self) -> dict[str, float]:
        """Warm-up means; the provisional means while warming up (nan before any prediction)."""
        if self._reference is not None:
            return dict(self._reference)
        return {
            name: (total / self.n_seen if self.n_seen else math.nan)
            for name, total in self._sums.items()
        }

    @property
    def warmed_up(self) -> bool:
        return self._reference is not None
