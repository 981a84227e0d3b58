"""The promotion gate: a candidate replaces the incumbent only if it is better where it matters.

Three checks, all recorded (the verdict goes into the candidate's manifest):
  - improvement: accuracy on a recent holdout (labelled events not used for training) must beat the
    incumbent's by ``margin`` (a negative margin is a non-inferiority bound: the candidate
    may trail by at most that much, for a retrain on a superset of the incumbent's data);
  - forgetting: on the replay set (older labelled events
    from cold) it may lose at most ``forgetting_epsilon``;
  - latency: its served INT8 model's p99 at batch 1
    may be at most ``latency_ratio`` x the incumbent's
    (or under ``latency_budget_ms`` when there is no
    incumbent). FP32/torch parity is checked at export.
Pure functions over predictions and timings: the caller runs the models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_LATENCY_BUDGET_MS",
    "GateSettings",
    "GateVerdict",
    "accuracy_of",
    "decide",
    "p99_latency_ms",
]

# a model trained from scratch (models/architectures.py sets each architecture's)
DEFAULT_LATENCY_BUDGET_MS = 5.0


@dataclass(frozen=True)
class GateSettings:
    # holdout accuracy gain over the incumbent required (absolute; negative: largest loss allowed)
    margin: float = 0.005
    forgetting_epsilon: float = 0.02  # largest replay accuracy loss allowed (absolute)
    latency_ratio: float = 1.5  # candidate p99 / incumbent p99 at batch 1
    # absolute p99 ceiling, also used when there is no incumbent; None: the architecture's
    latency_budget_ms: float | None = None
    min_holdout: int = 50  # fewer holdout examples than this: the improvement check cannot pass


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]  # why it failed; empty when it passed
    holdout_n: int
    candidate_holdout: float
    incumbent_holdout: float | None
    replay_n: int
    candidate_replay: float | None
    incumbent_replay: float | None
    candidate_p99_ms: float
    incumbent_p99_ms: float | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        inc = "n/a" if self.incumbent_holdout is None else f"{self.incumbent_holdout:.4f}"
        head = f"holdout {self.candidate_holdout:.4f} vs incumbent {inc} (n={self.holdout_n})"
        if self.candidate_replay is not None:
            head += (
                f", replay {self.candidate_replay:.4f} vs "
                f"{self.incumbent_replay:.4f} (n={self.replay_n})"
            )
        head += f", p99 {self.candidate_p99_ms:.3f} ms" + (
            "" if self.incumbent_p99_ms is None else f" vs {self.incumbent_p99_ms:.3f} ms"
        )
        return (
            ("PASS: " if self.passed else "FAIL: ")
            + head
            + ("" if self.passed else " -- " + "; ".join(self.reasons))
        )


def accuracy_of(predicted: Sequence[str], truth: Sequence[str]) -> float:
    return (
        float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
        if truth
        else float("nan")
    )


def p99_latency_ms(
    calls: Sequence[Callable[[str], Any]],
    texts: Sequence[str],
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """p99 at batch 1 (what the endpoint serves) of each
    call, measured side by side, after a warm-up pass.

    The calls take turns on every text, so a busy spell on a shared machine slows them alike,
    and each text counts its fastest of ``repeats`` runs: preemption only ever adds time, so
    the minimum is the text's cost, and the p99 across texts still catches slow (long) texts.
    """
    for call in calls:
        for text in texts[:20]:
            call(text)
    fastest = np.full((len(calls), len(texts)), np.inf)
    for _ in range(repeats):
        for t, text in enumerate(texts):
            for c, call in enumerate(calls):
                started = clock()
                call(text)
                fastest[c, t] = min(fastest[c, t], clock() - started)
    return [float(np.percentile(row, 99) * 1000) if len(texts) else float("nan") for row in fastest]


def decide(
    settings: GateSettings,
    holdout_truth: Sequence[str],
    candidate_holdout: Sequence[str],
    incumbent_holdout: Sequence[str] | None,
    replay_truth: Sequence[str],
    candidate_replay: Sequence[str],
    incumbent_replay: Sequence[str] | None,
    candidate_p99_ms: float,
    incumbent_p99_ms: float | None,
) -> GateVerdict:
    cand_h = accuracy_of(candidate_holdout, holdout_truth)
    inc_h = None if incumbent_holdout is None else accuracy_of(incumbent_holdout, holdout_truth)
    cand_r = None if not replay_truth else accuracy_of(candidate_replay, replay_truth)
    inc_r = (
        None
        if not replay_truth or incumbent_replay is None
        else accuracy_of(incumbent_replay, replay_truth)
    )
    reasons = [
        reason
        for reason in (
            _holdout_failure(settings, len(holdout_truth), cand_h, inc_h),
            _forgetting_failure(settings, cand_r, inc_r),
            _latency_failure(settings, candidate_p99_ms, incumbent_p99_ms),
        )
        if reason is not None
    ]
    return GateVerdict(
        not reasons,
        reasons,
        len(holdout_truth),
        cand_h,
        inc_h,
        len(replay_truth),
        cand_r,
        inc_r,
        candidate_p99_ms,
        incumbent_p99_ms,
        asdict(settings),
    )


def _holdout_failure(
    settings: GateSettings, examples: int, candidate: float, incumbent: float | None
) -> str | None:
    """Why the holdout fails the candidate (too small, or no gain on the incumbent); None: it
    passes."""
    if examples < settings.min_holdout:
        return f"holdout has {examples} examples, fewer than min_holdout {settings.min_holdout}"
    if incumbent is None or candidate >= incumbent + settings.margin:
        return None
    if settings.margin >= 0:
        return (
            f"holdout accuracy {candidate:.4f} does not beat the incumbent's "
            f"{incumbent:.4f} by {settings.margin}"
        )
    return (
        f"holdout accuracy {candidate:.4f} trails the incumbent's {incumbent:.4f} "
        f"by more than {-settings.margin}"
    )


def _forgetting_failure(
    settings: GateSettings, candidate: float | None, incumbent: float | None
) -> str | None:
    """Why the replay accuracy fails the candidate (it forgot); None: it passes or there is
    nothing to compare."""
    if candidate is None or incumbent is None:
        return None
    if candidate >= incumbent - settings.forgetting_epsilon:
        return None
    return (
        f"replay accuracy {candidate:.4f} lost more than "
        f"{settings.forgetting_epsilon} against the incumbent's "
        f"{incumbent:.4f} (forgetting)"
    )


def _latency_failure(
    settings: GateSettings, candidate_p99_ms: float, incumbent_p99_ms: float | None
) -> str | None:
    """Why the candidate's p99 fails (over the budget, or over ``latency_ratio`` x the
    incumbent's where that is higher); None: it passes."""
    budget = (
        DEFAULT_LATENCY_BUDGET_MS
        if settings.latency_budget_ms is None
        else settings.latency_budget_ms
    )
    limit = (
        budget
        if incumbent_p99_ms is None
        else max(budget, incumbent_p99_ms * settings.latency_ratio)
    )
    if not math.isfinite(candidate_p99_ms) or candidate_p99_ms > limit:
        return f"p99 latency {candidate_p99_ms:.3f} ms exceeds {limit:.3f} ms"
    return None
