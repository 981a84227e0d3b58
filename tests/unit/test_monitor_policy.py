"""DecayMonitor: the any/all policy, min_samples, cooldown, reset, evidence, logging and metrics."""

from __future__ import annotations

import json
import logging
import random

import pytest
from prometheus_client import CollectorRegistry

from streams.monitor import (
    ALL_SIGNALS,
    DETECTORS,
    SIGNALS,
    DecayMonitor,
    Decision,
    MonitorConfig,
    MonitorMetrics,
    Outcome,
    OutcomeJoiner,
)

# Short memories and warm-ups so the tests run in milliseconds; the shapes are the defaults'.
# The accuracy floor is off: these tests are about the
# listed signals (test_monitor_triggers.py covers it).
FAST = {
    "ewma_alpha": 0.05,
    "ewma_warmup": 50,
    "min_samples": 50,
    "label_free_alpha": 0.05,
    "label_free_warmup": 50,
    "cooldown_s": 300.0,
    "min_accuracy": 0.0,
}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Traffic:
    """Feeds a monitor one prediction and its outcome per event, one second apart."""

    def __init__(self, monitor: DecayMonitor, clock: Clock, seed: int = 0) -> None:
        self.monitor, self.clock, self.rng, self.n = monitor, clock, random.Random(seed), 0

    def run(
        self, events: int, error: float, confidence: float = 0.85, version: str = "v1"
    ) -> list[tuple[int, Decision]]:
        decisions = []
        for _ in range(events):
            self.n += 1
            self.clock.now += 1.0
            wrong = self.rng.random() < error
            conf = min(1.0, max(0.0, self.rng.gauss(confidence, 0.05)))
            for decision in (
                self.monitor.observe_prediction(conf, "a"),
                self.monitor.observe_outcome(
                    Outcome(
                        str(self.n),
                        "a",
                        conf,
                        "b" if wrong else "a",
                        not wrong,
                        version,
                        self.clock.now,
                        self.clock.now,
                    )
                ),
            ):
                if decision is not None:
                    decisions.append((self.n, decision))
        return decisions


def setup(
    registry: CollectorRegistry | None = None, **config: object
) -> tuple[DecayMonitor, Traffic, Clock]:
    clock = Clock()
    monitor = DecayMonitor(
        MonitorConfig(**{**FAST, **config}),
        MonitorMetrics(registry) if registry else None,
        clock=clock,
    )
    return monitor, Traffic(monitor, clock), clock


def test_any_decides_on_the_first_signal() -> None:
    _monitor, traffic, _ = setup(signals=("ewma", "confidence"), mode="any")
    assert traffic.run(300, error=0.05) == []
    decisions = traffic.run(200, error=0.6)  # accuracy collapses, confidence stays put
    assert len(decisions) == 1
    at, decision = decisions[0]
    assert decision.signals == ("ewma",) and 300 < at < 350
    assert decision.labelled_samples == at


def test_all_waits_for_every_signal() -> None:
    monitor, traffic, _ = setup(signals=("ewma", "confidence"), mode="all")
    traffic.run(300, error=0.05)
    assert traffic.run(200, error=0.6) == []
    assert monitor.snapshot()["fired"]["ewma"] and not monitor.snapshot()["fired"]["confidence"]
    decisions = traffic.run(200, error=0.6, confidence=0.5)  # now the confidence drops too
    assert len(decisions) == 1
    assert decisions[0][1].signals == ("ewma", "confidence")
    assert not any(monitor.snapshot()["fired"].values())  # a decision clears the latches


def test_only_listed_signals_count() -> None:
    monitor, traffic, _ = setup(signals=("confidence",))
    traffic.run(300, error=0.05)
    assert traffic.run(300, error=0.6) == []  # every error detector fires, none is listed
    assert monitor.snapshot()["fired"]["ewma"]
    assert len(traffic.run(200, error=0.6, confidence=0.5)) == 1


def test_min_samples() -> None:
    _monitor, traffic, _ = setup(min_samples=400)
    decisions = traffic.run(60, error=0.0) + traffic.run(500, error=0.7)
    assert len(decisions) == 1
    # below the line long before, decided at the first allowed sample
    assert decisions[0][1].labelled_samples == 400


def test_label_free_only_counts_predictions() -> None:
    # No labels at all: a label-free policy still decides once min_samples predictions were seen.
    clock = Clock()
    monitor = DecayMonitor(
        MonitorConfig(**{**FAST, "signals": ("confidence",), "min_samples": 100}), clock=clock
    )
    decisions = [monitor.observe_prediction(0.9, "a") for _ in range(100)] + [
        monitor.observe_prediction(0.4, "a") for _ in range(100)
    ]
    fired = [d for d in decisions if d is not None]
    assert len(fired) == 1 and fired[0].labelled_samples == 0


def test_cooldown_and_reset() -> None:
    monitor, traffic, clock = setup(cooldown_s=300.0)
    traffic.run(100, error=0.05)
    (first_at, first), *rest = traffic.run(100, error=0.6)
    assert rest == [] and first.at == clock.now - (traffic.n - first_at)
    # A new model serves: references are gone, the cooldown clock is kept.
    monitor.reset(model_version="v2")
    snap = monitor.snapshot()
    assert (
        snap["samples"]["labelled"] == 0
        and snap["reference_accuracy"] is None
        and snap["ewma_accuracy"] is None
    )
    json.dumps(snap, allow_nan=False)  # unknown numbers are None, so strict JSON holds
    assert snap["last_decision"]["signals"] == ["ewma"] and snap["cooldown_remaining_s"] > 0
    for detector in monitor.detectors.values():
        assert detector.n_seen == 0
    assert monitor.label_free.n_seen == 0
    # Late outcomes of the old model are not the new model's reference.
    assert traffic.run(20, error=1.0, version="v1") == []
    assert monitor.labelled == 0 and monitor.stale == 20
    # The new model decays too, within the cooldown: latched, not decided...
    traffic.run(60, error=0.05, version="v2")
    assert traffic.run(60, error=0.7, version="v2") == []
    assert monitor.snapshot()["fired"]["ewma"]
    assert clock.now - first.at < 300
    # ...until the cooldown is over: the latch survived it.
    clock.now = first.at + 299.0
    decisions = traffic.run(5, error=0.7, version="v2")
    assert len(decisions) == 1 and decisions[0][1].at >= first.at + 300


def test_evidence_and_describe(caplog: pytest.LogCaptureFixture) -> None:
    monitor, traffic, _ = setup(signals=("adwin",), mode="any")  # real river, through the policy
    traffic.run(500, error=0.05)
    with caplog.at_level(logging.WARNING, logger="driftd.monitor"):
        decisions = traffic.run(500, error=0.5)
    assert decisions, "ADWIN never fired"
    decision = decisions[0][1]
    assert decision.signals == ("adwin",)
    for name, detector in monitor.detectors.items():
        assert set(decision.evidence[name]) == set(detector.evidence()), name
    assert decision.evidence["adwin"]["n"] == float(decision.labelled_samples)
    assert set(decision.evidence["label_free"]) == {
        "confidence",
        "low_confidence_share",
        "oos_share",
    }
    assert decision.evidence["samples"]["labelled"] == decision.labelled_samples
    assert (
        "adwin" in decision.describe()
        and f"{decision.labelled_samples} labelled" in decision.describe()
    )
    records = [
        r for r in caplog.records if r.name == "driftd.monitor" and r.levelno == logging.WARNING
    ]
    assert len(records) == len(decisions) and "adwin" in records[0].getMessage()


def test_metrics_are_set() -> None:
    registry = CollectorRegistry()
    monitor, traffic, _ = setup(registry)
    value = registry.get_sample_value
    # Pre-created series read 0 before anything happens.
    assert value("driftd_outcomes_total", {"correct": "false"}) == 0.0
    assert value("driftd_outcome_joins_total", {"result": "expired_label"}) == 0.0
    assert value("driftd_decay_decisions_total") == 0.0
    for name in SIGNALS:
        assert value("driftd_decay_signal", {"signal": name}) == 0.0

    traffic.run(100, error=0.0)
    assert value("driftd_outcomes_total", {"correct": "true"}) == 100.0
    assert value("driftd_live_accuracy", {"window": "ewma"}) == 1.0
    assert value("driftd_live_accuracy", {"window": "window"}) == 1.0
    assert value("driftd_reference_accuracy") == 1.0
    assert value("driftd_label_free", {"signal": "confidence"}) == pytest.approx(0.85, abs=0.02)
    assert value("driftd_label_free", {"signal": "oos_share"}) == 0.0

    monitor.config = MonitorConfig(**{**FAST, "signals": ("ewma", "confidence"), "mode": "all"})
    traffic.run(100, error=0.8)
    # fired, waiting for "confidence"
    assert value("driftd_decay_signal", {"signal": "ewma"}) == 1.0
    assert value("driftd_live_accuracy", {"window": "window"}) == pytest.approx(
        monitor.window_accuracy
    )
    traffic.run(100, error=0.8, confidence=0.3)
    assert value("driftd_decay_decisions_total") == 1.0
    assert value("driftd_decay_signal", {"signal": "ewma"}) == 0.0  # consumed by the decision
    assert value("driftd_outcomes_total", {"correct": "false"}) > 100

    # Join results, synced from a joiner's counts (deltas, so syncing twice counts once).
    joiner = OutcomeJoiner(clock=lambda: 0.0)
    joiner.record_prediction("e1", "a", 0.9, "v1")
    joiner.record_label("e1", intent="a")
    joiner.record_label("e1", intent="a")
    joiner.record_label("e2", intent="a")
    monitor.metrics.sync_joiner(joiner.counts)
    monitor.metrics.sync_joiner(joiner.counts)
    assert value("driftd_outcome_joins_total", {"result": "joined"}) == 1.0
    assert value("driftd_outcome_joins_total", {"result": "duplicate"}) == 1.0
    assert value("driftd_outcomes_pending", {"side": "labels"}) == 1.0


def test_snapshot_reports_state() -> None:
    monitor, traffic, _ = setup()
    traffic.run(200, error=0.1)
    snap = monitor.snapshot()
    assert snap["samples"] == {"labelled": 200, "predictions": 200, "stale": 0}
    assert 0.7 < snap["ewma_accuracy"] <= 1.0 and 0.7 < snap["reference_accuracy"] <= 1.0
    assert snap["window_accuracy"] == monitor.window_accuracy and snap["window_count"] == 200
    assert set(snap["fired"]) == set(ALL_SIGNALS) and set(snap["detectors"]) == set(DETECTORS)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("signals", ("ewma", "cusum"), "signals must be distinct names"),
        ("signals", ("ewma", "ewma"), "signals must be distinct names"),
        ("signals", (), "signals must name at least one"),
        ("signals", "ewma", "signals must be a list of strings"),
        ("mode", "most", "mode must be one of any, all"),
        ("min_samples", -1, "min_samples must be an int >= 0"),
        ("cooldown_s", -1.0, "cooldown_s must be a finite number"),
        ("ewma_alpha", 0.0, "ewma_alpha must be in"),
        ("ewma_relative_drop", 1.2, "ewma_relative_drop must be in"),
        ("ewma_warmup", 0, "ewma_warmup must be an int"),
        ("adwin_delta", 1.0, "adwin_delta must be in"),
        ("page_hinkley_threshold", 0, "page_hinkley_threshold must be"),
        ("low_confidence", 1.5, "low_confidence must be in"),
        ("label_free_relative_change", 0.0, "label_free_relative_change must be in"),
    ],
)
def test_config_validates(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MonitorConfig(**{field: value})


def test_config_accepts_lists() -> None:
    config = MonitorConfig(signals=["ewma", "oos_share"], oos_intents=["oos", "out_of_scope"])
    assert config.signals == ("ewma", "oos_share") and config.oos_intents == ("oos", "out_of_scope")
    hash(config)
