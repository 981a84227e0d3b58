"""Decay detectors on Bernoulli error streams (real river), and the label-free signals."""

from __future__ import annotations

import math
import random

import pytest

from streams.monitor import (
    DETECTORS,
    ErrorDetector,
    EwmaDecayDetector,
    LabelFreeSignals,
    RiverDetector,
    make_detector,
)

SEEDS = range(5)


def feed(detector: ErrorDetector, segments: list[tuple[float, int]], seed: int) -> list[int]:
    """Feed Bernoulli errors, segment by segment (error
    probability, length); returns the indices that fired."""
    rng = random.Random(seed)
    fired, i = [], 0
    for p, n in segments:
        for _ in range(n):
            if detector.update(rng.random() < p):
                fired.append(i)
            i += 1
    return fired


# -- the contract every registered detector meets
# ------------------------------------------------------


@pytest.fixture(params=sorted(DETECTORS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("seed", SEEDS)
def test_stable_stream_never_fires(name: str, seed: int) -> None:
    detector = make_detector(name)
    assert feed(detector, [(0.05, 5000)], seed) == []
    assert detector.n_seen == 5000


@pytest.mark.parametrize("seed", SEEDS)
def test_abrupt_decay_fires_within_300_samples(name: str, seed: int) -> None:
    fired = feed(make_detector(name), [(0.05, 1000), (0.5, 1000)], seed)
    assert fired, "no detection"
    assert fired[0] >= 1000, f"false alarm before the onset at {fired[0]}"
    assert fired[0] - 1000 < 300


@pytest.mark.parametrize("seed", SEEDS)
def test_improvement_never_fires(name: str, seed: int) -> None:
    assert feed(make_detector(name), [(0.5, 500), (0.05, 4500)], seed) == []


def test_reset_behaves_like_new(name: str) -> None:
    used = make_detector(name)
    first = feed(used, [(0.05, 1000), (0.5, 1000)], seed=11)
    assert first
    used.reset()
    assert used.n_seen == 0
    # Same input as a fresh detector: same fires at the same samples, same state after.
    fresh = make_detector(name)
    assert feed(used, [(0.05, 1000), (0.5, 1000)], seed=12) == feed(
        fresh, [(0.05, 1000), (0.5, 1000)], seed=12
    )
    assert used.evidence() == fresh.evidence()


def test_evidence_is_finite_floats(name: str) -> None:
    detector = make_detector(name)
    feed(detector, [(0.1, 700)], seed=3)
    evidence = detector.evidence()
    assert evidence and evidence["n"] == 700.0
    for key, value in evidence.items():
        assert isinstance(value, float) and math.isfinite(value), (key, value)


def test_names_and_factory() -> None:
    for key in DETECTORS:
        assert make_detector(key).name == key
    with pytest.raises(ValueError, match="known: ewma, adwin, page_hinkley"):
        make_detector("cusum")


# -- EWMA
# ----------------------------------------------------------------------------------------------


def feed_pattern(detector: EwmaDecayDetector, errors: list[bool]) -> list[int]:
    return [i for i, e in enumerate(errors) if detector.update(e)]


def test_ewma_reference_is_the_warmup_mean() -> None:
    detector = EwmaDecayDetector(alpha=0.05, warmup=100, min_samples=100)
    pattern = [i % 10 == 0 for i in range(100)]  # 90% accuracy, exactly
    feed_pattern(detector, pattern[:99])
    assert detector.reference is None and detector.evidence()["warmed_up"] == 0.0
    feed_pattern(detector, pattern[99:])
    assert detector.reference == pytest.approx(0.9)
    feed_pattern(detector, [True] * 50)  # later samples do not move the reference
    assert detector.reference == pytest.approx(0.9)


def test_ewma_fires_when_crossing_the_line() -> None:
    detector = EwmaDecayDetector(alpha=0.05, relative_drop=0.2, warmup=100, min_samples=100)
    feed_pattern(detector, [i % 10 == 0 for i in range(100)])
    before = None
    for _i in range(200):
        ewma_before = detector.ewma
        if detector.update(True):
            before = ewma_before
            break
    assert before is not None, "never fired"
    line = 0.9 * 0.8
    assert before >= line > detector.ewma
    assert detector.evidence()["armed"] == 0.0


def test_ewma_hysteresis() -> None:
    detector = EwmaDecayDetector(
        alpha=0.05, relative_drop=0.2, warmup=100, min_samples=100, hysteresis=0.5
    )
    feed_pattern(detector, [False] * 100)  # reference 1.0: fire below 0.8, re-arm above 0.9
    assert len(feed_pattern(detector, [True] * 30)) == 1
    # Back between the lines (0.8 < ewma < 0.9) and down again: not re-armed, no second fire.
    while detector.ewma <= 0.85:
        assert not detector.update(False)
    assert detector.ewma < 0.9 and not detector.armed
    assert feed_pattern(detector, [True] * 30) == []
    # A real recovery re-arms; the next decay fires again.
    while detector.ewma <= 0.9:
        assert not detector.update(False)
    assert detector.armed
    assert len(feed_pattern(detector, [True] * 30)) == 1


def test_ewma_min_samples_holds_the_fire() -> None:
    detector = EwmaDecayDetector(alpha=0.1, warmup=50, min_samples=300)
    fired = feed_pattern(detector, [False] * 50 + [True] * 400)
    # below the line since ~sample 52, but not allowed to decide before 300 samples
    assert fired == [299]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be in"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"relative_drop": 1.0}, "relative_drop must be in"),
        ({"min_samples": -1}, "min_samples must be an int"),
        ({"warmup": 0}, "warmup must be an int"),
        ({"warmup": 10.5}, "warmup must be an int"),
        ({"hysteresis": 2.0}, "hysteresis must be in"),
    ],
)
def test_ewma_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EwmaDecayDetector(**kwargs)


# -- river wrappers
# --------------------------------------------------------------------------------------


def test_river_detector_validates() -> None:
    with pytest.raises(ValueError, match="kind must be one of adwin, page_hinkley"):
        RiverDetector("ddm")
    with pytest.raises(ValueError, match="invalid parameters"):
        RiverDetector("adwin", threshold=3)


def test_page_hinkley_runs_one_sided() -> None:
    assert RiverDetector("page_hinkley").params["mode"] == "up"


def test_river_min_samples() -> None:
    # Errors from the very first sample: ADWIN sees a change
    # early, but may not report it before min_samples.
    fired = feed(RiverDetector("adwin", min_samples=500), [(0.0, 150), (1.0, 1000)], seed=0)
    assert all(i >= 499 for i in fired)


# -- label-free signals
# ----------------------------------------------------------------------------------


def feed_signals(
    signals: LabelFreeSignals, n: int, rng: random.Random, mean: float, sd: float, oos: float = 0.0
) -> list[tuple[int, str]]:
    fired = []
    for i in range(n):
        confidence = min(1.0, max(0.0, rng.gauss(mean, sd)))
        predicted = "oos" if rng.random() < oos else f"intent_{rng.randrange(20)}"
        fired += [(i, name) for name in signals.update(confidence, predicted)]
    return fired


@pytest.mark.parametrize("seed", SEEDS)
def test_label_free_stable_stream_is_quiet(seed: int) -> None:
    signals = LabelFreeSignals()
    assert feed_signals(signals, 5000, random.Random(seed), 0.8, 0.15, oos=0.05) == []
    assert signals.references()["confidence"] == pytest.approx(0.8, abs=0.03)


def test_confidence_drop_fires_confidence_and_low_confidence_share() -> None:
    rng = random.Random(1)
    signals = LabelFreeSignals()
    assert feed_signals(signals, 1000, rng, 0.8, 0.15) == []
    fired = feed_signals(signals, 1000, rng, 0.5, 0.2)
    names = [name for _, name in fired]
    # each once: not re-armed while still low
    assert sorted(names) == ["confidence", "low_confidence_share"]
    assert all(i < 300 for i, _ in fired)
    assert signals.values()["confidence"] < 0.8 * 0.85


def test_oos_share_rise_fires_and_rearms() -> None:
    rng = random.Random(2)
    signals = LabelFreeSignals(alpha=0.02)
    assert feed_signals(signals, 500, rng, 0.8, 0.1, oos=0.02) == []
    assert [name for _, name in feed_signals(signals, 500, rng, 0.8, 0.1, oos=0.4)] == ["oos_share"]
    # recovery re-arms, fires nothing
    assert feed_signals(signals, 500, rng, 0.8, 0.1, oos=0.02) == []
    assert signals.armed["oos_share"]
    assert [name for _, name in feed_signals(signals, 500, rng, 0.8, 0.1, oos=0.4)] == ["oos_share"]


def test_label_free_reset_forgets_references() -> None:
    rng = random.Random(3)
    signals = LabelFreeSignals(warmup=100)
    feed_signals(signals, 200, rng, 0.9, 0.05)
    assert signals.warmed_up
    signals.reset()
    assert signals.n_seen == 0 and not signals.warmed_up
    assert all(math.isnan(v) for v in signals.values().values())
    # A new, lower reference: the same low confidence that would have fired before is now normal.
    assert feed_signals(signals, 2000, rng, 0.5, 0.05) == []
    assert signals.references()["confidence"] == pytest.approx(0.5, abs=0.02)


def test_label_free_validates() -> None:
    with pytest.raises(ValueError, match="relative_change must be in"):
        LabelFreeSignals(relative_change=0)
    with pytest.raises(ValueError, match="warmup must be an int"):
        LabelFreeSignals(warmup=0)
