"""The canary on its own: the baseline it takes from the
serving version, and its verdict on a promoted one."""

from __future__ import annotations

import logging

import pytest

from daemon.canary import Canary, CanaryWatch
from daemon.config import load_settings
from streams.monitor import Outcome


def canary(labels: int = 10, margin: float = 0.1) -> Canary:
    return Canary(
        load_settings(learning={"canary_labels": labels, "canary_margin": margin}).learning
    )


def outcomes(canary: Canary, version: str, right: int, wrong: int) -> list[CanaryWatch]:
    """Feeds ``right`` correct then ``wrong`` incorrect outcomes
    of ``version``; the failed watches that came back."""
    verdicts = [
        canary.observe(Outcome(f"e{i}", "track", 0.9, None, i < right, version, float(i), float(i)))
        for i in range(right + wrong)
    ]
    return [v for v in verdicts if v is not None]


def test_the_baseline_is_the_serving_versions_accuracy_over_its_last_canary_labels_outcomes() -> (
    None
):
    watcher = canary(labels=10)
    assert watcher.baseline() is None
    outcomes(watcher, "v1", right=0, wrong=10)
    outcomes(watcher, "v1", right=8, wrong=2)  # the window holds the last 10 only
    assert watcher.baseline() == pytest.approx(0.8)
    watcher.version_changed()
    assert watcher.baseline() is None


def test_a_watch_starts_only_with_a_previous_version_a_baseline_and_the_canary_on() -> None:
    watcher = canary()
    watcher.start("v2", None, 0.9)
    watcher.start("v2", "v1", None)
    assert watcher.snapshot() is None
    off = canary(labels=0)
    off.start("v2", "v1", 0.9)
    assert off.snapshot() is None
    watcher.start("v2", "v1", 0.9)
    assert watcher.snapshot() == {
        "version": "v2",
        "previous": "v1",
        "baseline": 0.9,
        "correct": 0,
        "n": 0,
    }


def test_a_version_that_does_worse_than_the_margin_allows_fails_once_the_watch_is_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher = canary(labels=10, margin=0.1)
    watcher.start("v2", "v1", 0.9)
    assert outcomes(watcher, "v1", right=0, wrong=20) == [], (
        "outcomes of another version do not count"
    )
    caplog.set_level(logging.INFO, "driftd.learning")
    assert outcomes(watcher, "v2", right=7, wrong=2) == []
    assert watcher.snapshot() == {
        "version": "v2",
        "previous": "v1",
        "baseline": 0.9,
        "correct": 7,
        "n": 9,
    }
    failed = outcomes(watcher, "v2", right=0, wrong=1)  # 7/10 is below 0.9 - 0.1
    assert failed == [CanaryWatch("v2", "v1", 0.9, correct=7, n=10)] and watcher.snapshot() is None
    assert (
        "canary failed: v2 at 0.7000 over 10 outcomes, previous v1 had 0.9000: rolling back"
    ) in caplog.text
    assert outcomes(watcher, "v2", right=0, wrong=20) == [], "one verdict per watch"


def test_a_version_within_the_margin_passes(caplog: pytest.LogCaptureFixture) -> None:
    watcher = canary(labels=10, margin=0.1)
    watcher.start("v2", "v1", 0.9)
    caplog.set_level(logging.INFO, "driftd.learning")
    assert outcomes(watcher, "v2", right=8, wrong=2) == [] and watcher.snapshot() is None
    assert "canary passed: v2 at 0.8000 over 10 outcomes (previous model 0.9000)" in caplog.text


def test_new_settings_resize_the_window_keeping_the_newest_outcomes() -> None:
    watcher = canary(labels=10)
    outcomes(watcher, "v1", right=5, wrong=5)  # oldest first: 5 right, then 5 wrong
    watcher.reconfigure(load_settings(learning={"canary_labels": 4}).learning)
    assert watcher.baseline() == 0.0
    outcomes(watcher, "v1", right=4, wrong=0)
    assert watcher.baseline() == 1.0
