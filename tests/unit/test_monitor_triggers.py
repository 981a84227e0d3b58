"""The poor-quality triggers: a model that was poor from its first
outcome (a taxonomy or language it never learned) starts learning,
not only one that got worse; stable good streams stay quiet."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from streams.monitor import (
    DecayMonitor,
    MonitorConfig,
    MonitorMetrics,
    Outcome,
    UnknownIntentTrigger,
)

KNOWN = ["balance", "transfer", "freeze_account"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(
    registry: CollectorRegistry | None = None, **config: object
) -> tuple[DecayMonitor, Clock]:
    clock = Clock()
    m = DecayMonitor(
        MonitorConfig(**{"cooldown_s": 300.0, **config}),
        MonitorMetrics(registry) if registry else None,
        clock=clock,
    )
    m.reset(model_version="v1", labels=KNOWN)
    return m, clock


def outcomes(
    m: DecayMonitor,
    clock: Clock,
    n: int,
    truth: list[str],
    accuracy: float,
    seed: int = 0,
    start: int = 0,
) -> list[int]:
    """n outcomes of v1 whose true intent is drawn from
    ``truth``; returns the indices where a decision came."""
    rng = random.Random(seed)
    decided = []
    for i in range(start, start + n):
        clock.now += 0.1
        intent = rng.choice(truth)
        right = intent in KNOWN and rng.random() < accuracy
        predicted = (
            intent
            if right
            else KNOWN[(KNOWN.index(intent) + 1) % 3]
            if intent in KNOWN
            else KNOWN[0]
        )
        if (
            m.observe_outcome(
                Outcome(str(i), predicted, 0.9, intent, right, "v1", clock.now, clock.now)
            )
            is not None
        ):
            decided.append(i)
    return decided


def test_a_new_taxonomy_decides_on_unknown_intents_although_accuracy_never_dropped() -> None:
    registry = CollectorRegistry()
    m, clock = monitor(registry, min_accuracy=0.0)  # the floor off: the unknown intents alone
    new_taxonomy = [f"ru_intent_{k}" for k in range(40)]
    decided = outcomes(m, clock, 400, new_taxonomy, accuracy=0.9)
    assert decided == [199], "at min_samples (200 outcomes), with 30+ unknown-intent outcomes"
    decision = m.last_decision
    assert (
        decision is not None and decision.signals == ("unknown_intent",) and decision.poor_quality
    )
    assert decision.evidence["unknown_intent"]["unknown_outcomes"] == 200
    assert decision.evidence["unknown_intent"]["known_intents"] == 3
    assert "no output for" in decision.describe() and decision.describe().startswith("poor quality")
    assert not m.detectors["ewma"].fires, (
        "the EWMA's reference is the same zero accuracy: it never fires here"
    )
    sample = registry.get_sample_value
    assert sample("driftd_decay_decision_signals_total", {"signal": "unknown_intent"}) == 1.0
    assert sample("driftd_decay_decision_signals_total", {"signal": "ewma"}) == 0.0
    assert m.snapshot()["triggers"]["unknown_intent"]["unknown_outcomes"] == 400


def test_a_few_outcomes_of_one_new_intent_are_enough() -> None:
    m, clock = monitor(min_accuracy=0.0, unknown_intent_min=30)
    assert outcomes(m, clock, 600, KNOWN, accuracy=0.95) == []
    decided = []
    # one new intent among known traffic: 29 of it say nothing, the 30th decides
    for i in range(60):
        clock.now += 0.1
        truth = "card_arrival" if i % 2 == 0 else "balance"
        if (
            m.observe_outcome(
                Outcome(
                    f"n{i}", "balance", 0.8, truth, truth == "balance", "v1", clock.now, clock.now
                )
            )
            is not None
        ):
            decided.append(i)
    assert decided == [58], "the 30th outcome of the new intent"
    assert m.last_decision is not None and m.last_decision.evidence["unknown_intent"][
        "top_unknown"
    ] == {"card_arrival": 30}


def test_the_accuracy_floor_decides_on_a_model_that_was_poor_from_the_start() -> None:
    m, clock = monitor(min_accuracy=0.5, unknown_intent_min=0)
    decided = outcomes(m, clock, 300, KNOWN, accuracy=0.3)
    assert decided == [199]
    assert m.last_decision is not None and m.last_decision.signals == ("accuracy_floor",)
    floor = m.last_decision.evidence["accuracy_floor"]
    assert (
        floor["window_accuracy"] < 0.5
        and floor["min_accuracy"] == 0.5
        and floor["window_count"] == 200
    )


def test_triggers_count_whatever_the_listed_signals_and_mode_say() -> None:
    m, clock = monitor(signals=("ewma", "confidence"), mode="all", min_accuracy=0.5)
    assert outcomes(m, clock, 300, KNOWN, accuracy=0.2) == [199]
    assert m.last_decision is not None and set(m.last_decision.signals) == {"accuracy_floor"}


def test_triggers_respect_the_cooldown_and_decide_again_after_it_while_the_model_stays_poor() -> (
    None
):
    m, clock = monitor(min_accuracy=0.5, cooldown_s=300.0)
    # 100 s of outcomes
    first = outcomes(m, clock, 1000, [f"x{k}" for k in range(10)], accuracy=0.0)
    assert first == [199]
    clock.now += 300
    again = outcomes(m, clock, 10, [f"x{k}" for k in range(10)], accuracy=0.0, start=1000)
    assert again == [1000], "still poor after the cooldown: the next outcome decides again"
    assert m.decisions == 2


def test_a_new_model_that_knows_the_intents_stops_the_unknown_count() -> None:
    m, clock = monitor(min_accuracy=0.0)
    outcomes(m, clock, 100, ["new_a", "new_b"], accuracy=0.0)
    assert m.unknown_intents.count == 100
    m.reset(model_version="v2", labels=[*KNOWN, "new_a", "new_b"])
    assert (
        m.unknown_intents.count == 0
        and m.unknown_intents.known is not None
        and "new_a" in m.unknown_intents.known
    )
    clock.now += 1
    assert (
        m.observe_outcome(Outcome("z", "new_a", 0.9, "new_a", True, "v2", clock.now, clock.now))
        is None
    )
    assert m.unknown_intents.count == 0


def test_no_labels_known_means_no_unknown_intents_and_feedback_without_intent_does_not_count() -> (
    None
):
    trigger = UnknownIntentTrigger(min_outcomes=1)
    assert not trigger.update(Outcome("a", "x", 0.9, "y", False, "v1", 0.0, 0.0)), (
        "model labels unknown: nothing counts"
    )
    trigger.reset(["x"])
    assert not trigger.update(Outcome("b", "x", 0.9, None, False, "v1", 0.0, 0.0)), (
        "feedback 'wrong' has no true intent"
    )
    assert trigger.update(Outcome("c", "x", 0.9, "y", False, "v1", 0.0, 0.0))


def test_reconfigure_keeps_the_trigger_state() -> None:
    m, clock = monitor(min_accuracy=0.0, unknown_intent_min=500, min_samples=50)
    outcomes(m, clock, 100, ["new_a"], accuracy=0.0)
    m.reconfigure(
        MonitorConfig(cooldown_s=300.0, min_accuracy=0.0, unknown_intent_min=150, min_samples=50)
    )
    assert m.unknown_intents.count == 100 and m.unknown_intents.min_outcomes == 150
    assert outcomes(m, clock, 100, ["new_a"], accuracy=0.0, start=100) == [149]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_accuracy", 1.5),
        ("min_accuracy", -0.1),
        ("unknown_intent_min", -1),
        ("unknown_intent_min", 2.5),
    ],
)
def test_invalid_trigger_settings_are_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MonitorConfig(**{field: value})


@pytest.mark.parametrize("accuracy", [0.9, 0.75])
def test_stable_streams_of_a_known_taxonomy_raise_no_alarm_over_10000_outcomes(
    accuracy: float,
) -> None:
    """The default policy with both triggers on: a model as
    good as CLINC150's (0.9) or a weaker one, steady."""
    m, clock = monitor()
    for seed in range(3):
        assert (
            outcomes(m, clock, 10_000, KNOWN, accuracy=accuracy, seed=seed, start=seed * 10_000)
            == []
        )
    assert m.decisions == 0
