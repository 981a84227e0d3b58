"""The outcome feed on the real joiner and decay monitor: what reaches the detectors, and
in which order the loop hears of labels, decisions and the serving version's outcomes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import load_settings
from daemon.outcome_feed import OutcomeFeed
from streams.monitor import Decision, MonitorMetrics, Outcome
from tests.stored_events import stored_event as event


class Heard:
    """What the feed tells the loop, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def decision(self, decision: Decision) -> None:
        self.calls.append(("decision", decision))

    def labelled(self) -> None:
        self.calls.append(("labelled", None))

    def serving(self, outcome: Outcome) -> None:
        self.calls.append(("serving", outcome))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def feed(**monitor: object) -> tuple[OutcomeFeed, Heard, CollectorRegistry]:
    settings = load_settings(
        monitor={"min_samples": 20, "min_accuracy": 0.5, "cooldown_s": 0, **monitor}
    )
    heard, registry = Heard(), CollectorRegistry()
    outcomes = OutcomeFeed(
        settings.monitor,
        MonitorMetrics(registry),
        lambda: 1000.0,
        heard.decision,
        heard.labelled,
        heard.serving,
    )
    return outcomes, heard, registry


def predictions_and_labels(
    feed: OutcomeFeed, start: int, n: int, version: str, correct: bool
) -> None:
    utterances = [event(start + i, "utterance", text="where is my parcel") for i in range(n)]
    prediction = {"intent": "track", "confidence": 0.9, "model_version": version}
    feed.observe(utterances, [(u, prediction) for u in utterances])
    truth = "track" if correct else "refund"
    labels = [
        event(start + i, "label", ref_event_id=u.event_id, intent=truth)
        for i, u in enumerate(utterances)
    ]
    feed.observe(labels, [])


def test_only_the_serving_versions_outcomes_reach_the_detectors_but_all_count_as_labels() -> None:
    outcomes, heard, registry = feed()
    outcomes.follow("v2", ["track", "refund"])
    # a replaced version's: no decision however bad
    predictions_and_labels(outcomes, 0, 30, "v1", correct=False)
    assert heard.kinds() == ["labelled"] * 30 and outcomes.labels_since_swap == 0
    assert outcomes.outcomes == 30 and outcomes.monitor.snapshot()["samples"]["labelled"] == 0
    predictions_and_labels(outcomes, 100, 5, "v2", correct=True)
    assert heard.kinds()[30:] == ["labelled", "serving"] * 5 and outcomes.labels_since_swap == 5
    assert all(o.model_version == "v2" for kind, o in heard.calls if kind == "serving")
    assert registry.get_sample_value("driftd_outcome_joins_total", {"result": "joined"}) == 35.0
    outcomes.swapped()
    assert outcomes.labels_since_swap == 0


def test_a_decision_comes_between_the_label_count_and_the_serving_outcome_that_confirmed_it() -> (
    None
):
    outcomes, heard, _ = feed()
    outcomes.follow("v1", ["track", "refund"])
    # under the 0.5 floor at min_samples
    predictions_and_labels(outcomes, 0, 20, "v1", correct=False)
    decided = [i for i, (kind, _) in enumerate(heard.calls) if kind == "decision"]
    assert len(decided) == 1 and heard.kinds()[decided[0] - 1 : decided[0] + 2] == [
        "labelled",
        "decision",
        "serving",
    ]
    assert heard.calls[decided[0]][1].signals and heard.calls[decided[0]][1].poor_quality


def test_following_another_version_restarts_the_detectors_and_marks_go_at_the_current_outcome() -> (
    None
):
    outcomes, _heard, _ = feed()
    outcomes.follow("v1", ["track", "refund"])
    predictions_and_labels(outcomes, 0, 10, "v1", correct=True)
    assert outcomes.monitor.snapshot()["samples"]["labelled"] == 10
    outcomes.mark("swap", 1234.0, "v2")
    outcomes.follow("v2", ["track", "refund"])
    assert outcomes.version == "v2" and outcomes.monitor.snapshot()["samples"]["labelled"] == 0
    predictions_and_labels(outcomes, 100, 3, "v2", correct=True)
    assert [(m.kind, m.at_event, m.ts, m.label) for m in outcomes.timeline.marks] == [
        ("swap", 10, 1234.0, "v2")
    ]
    assert outcomes.timeline.n_outcomes == 13


def test_new_monitor_settings_change_the_label_horizon_and_bad_ones_change_nothing() -> None:
    outcomes, _, _ = feed()
    restarted = outcomes.reconfigure(
        load_settings(monitor={"label_horizon_s": 60, "min_samples": 20}).monitor
    )
    assert outcomes.joiner.horizon_s == 60 and isinstance(restarted, list)
    # what validation would refuse
    bad = load_settings().monitor.model_copy(update={"ewma_alpha": 7.0})
    with pytest.raises(ValueError):
        outcomes.reconfigure(bad)
    assert outcomes.joiner.horizon_s == 60
