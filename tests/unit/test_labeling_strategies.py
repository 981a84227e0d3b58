"""Every labelling strategy in the registry (``streams.labeling.SCORERS``) through
the same checks: a score in [0, 1], deterministic, defined on a single-entry and
a flat top-k, accepted by the sampler. Uncertainty strategies also rank a sure
prediction below an unsure one and refuse a bad top-k; a baseline ignores the
prediction. A strategy added to the registry is checked here without a line more.
"""

from __future__ import annotations

import math
import typing

import pytest

from daemon.config import LabelingSettings
from streams.labeling import (
    SCORERS,
    STRATEGIES,
    UNCERTAINTY_STRATEGIES,
    LabelingSampler,
    Scorer,
    get_scorer,
    score,
)
from tests.unit.test_labeling import Clock, sampler, uncertain

BASELINES = tuple(name for name in STRATEGIES if name not in UNCERTAINTY_STRATEGIES)
SURE = [("a", 0.95), ("b", 0.03), ("c", 0.02)]
UNSURE = [("a", 0.4), ("b", 0.35), ("c", 0.25)]
TOPKS = {
    "sure": SURE,
    "unsure": UNSURE,
    "single": [("a", 0.7)],
    "single_certain": [("a", 1.0)],
    "flat": [("a", 1 / 3), ("b", 1 / 3), ("c", 1 / 3)],
    "flat_zero": [("a", 0.0), ("b", 0.0)],
    "one_hot": [("a", 1.0), ("b", 0.0), ("c", 0.0)],
    "unsorted": list(reversed(UNSURE)),
}


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> Scorer:
    return get_scorer(request.param)


@pytest.fixture(params=UNCERTAINTY_STRATEGIES)
def uncertainty(request: pytest.FixtureRequest) -> Scorer:
    return get_scorer(request.param)


def test_the_registry_lists_every_strategy_once_by_its_own_name() -> None:
    assert tuple(SCORERS) == STRATEGIES and len(set(STRATEGIES)) == len(STRATEGIES)
    assert all(scorer.name == name for name, scorer in SCORERS.items())
    assert set(UNCERTAINTY_STRATEGIES) == {n for n, s in SCORERS.items() if s.uncertainty}
    assert {"least_confidence", "margin", "entropy"} <= set(UNCERTAINTY_STRATEGIES)
    assert BASELINES == ("random",)


def test_the_config_offers_exactly_the_registered_strategies() -> None:
    # LabelingSettings.strategy lists the names by hand: a strategy registered without
    # it could not be configured, and one listed without a scorer would fail at start.
    annotation = LabelingSettings.model_fields["strategy"].annotation
    assert set(typing.get_args(annotation)) == set(STRATEGIES)


@pytest.mark.parametrize("topk", TOPKS.values(), ids=TOPKS.keys())
def test_a_score_is_a_number_in_0_1(strategy: Scorer, topk: list[tuple[str, float]]) -> None:
    value = strategy.score(topk, "e1")
    assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_a_score_is_deterministic(strategy: Scorer) -> None:
    for name, topk in TOPKS.items():
        assert strategy.score(topk, "e1") == strategy.score(list(topk), "e1"), name
    assert strategy.score(TOPKS["unsorted"], "e1") == strategy.score(UNSURE, "e1")
    # A second sampler (another replica, a restart) scores a prediction as the first did.
    first, again = (sampler(Clock(), strategy=strategy.name) for _ in range(2))
    assert first.offer("e1", "c", "text", "v1", UNSURE) == again.offer(
        "e1", "c", "text", "v1", UNSURE
    )


def test_an_unsure_prediction_scores_above_a_sure_one(uncertainty: Scorer) -> None:
    assert uncertainty.score(SURE, "e1") < uncertainty.score(UNSURE, "e1")
    assert score(SURE, uncertainty.name) < score(UNSURE, uncertainty.name)
    assert uncertainty.score(TOPKS["one_hot"], "e1") == 0.0  # certain: nothing to learn
    assert uncertainty.score(TOPKS["flat"], "e1") >= uncertainty.score(UNSURE, "e1")
    assert uncertainty.score(TOPKS["single_certain"], "e1") == 0.0


def test_an_uncertainty_score_depends_on_the_prediction_not_the_event(
    uncertainty: Scorer,
) -> None:
    assert uncertainty.score(UNSURE, "e1") == uncertainty.score(UNSURE, "e2")
    assert uncertainty.score(UNSURE, "e1") == score(UNSURE, uncertainty.name)


@pytest.mark.parametrize(
    "topk",
    [[], [("a", float("nan"))], [("a", 1.5)], [("a", -0.1)], [("a", 0.5), ("b", float("inf"))]],
    ids=["empty", "nan", "above_1", "negative", "inf"],
)
def test_an_uncertainty_strategy_refuses_a_bad_top_k(
    uncertainty: Scorer, topk: list[tuple[str, float]]
) -> None:
    with pytest.raises(ValueError, match=r"prediction_topk is empty|finite and in"):
        uncertainty.score(topk, "e1")
    with pytest.raises(ValueError):
        score(topk, uncertainty.name)
    with pytest.raises(ValueError):
        sampler(Clock(), strategy=uncertainty.name).offer("e1", "c", "text", "v1", topk)


@pytest.mark.parametrize("name", BASELINES)
def test_a_baseline_ignores_the_prediction_and_spreads_events_uniformly(name: str) -> None:
    baseline = get_scorer(name)
    assert {baseline.score(topk, "e7") for topk in [*TOPKS.values(), []]} == {
        baseline.score(SURE, "e7")
    }
    values = [baseline.score(SURE, f"e{i}") for i in range(2000)]
    assert len(set(values)) == len(values)  # the event decides
    for low in (0.0, 0.25, 0.5, 0.75):
        assert 0.2 < sum(low <= v < low + 0.25 for v in values) / len(values) < 0.3
    with pytest.raises(ValueError, match="unknown strategy"):
        score(SURE, name)  # no uncertainty score of a prediction


def test_the_sampler_accepts_every_strategy_and_reports_its_score(strategy: Scorer) -> None:
    s = sampler(Clock(), strategy=strategy.name, budget_per_hour=10**6, diversity_threshold=0.0)
    request = s.offer("e1", "c1", "text", "v1", UNSURE, turn=2)
    assert request is not None and request["strategy"] == strategy.name
    assert request["score"] == strategy.score(UNSURE, "e1")
    assert request["reason"].startswith(f"{strategy.name} {request['score']:.2f} >= min_score")
    for i in range(200):  # past the warm-up, through the percentile gate
        s.offer(f"x{i}", "c1", f"text {i}", "v1", uncertain((i % 100) / 100))
    counts = s.counts
    assert counts["offered"] == 201 and 0 < counts["picked"] < 201
    assert counts["below_percentile"] > 0 and s.percentile() is not None


def test_the_sampler_picks_unsure_predictions_over_sure_ones(uncertainty: Scorer) -> None:
    s = sampler(Clock(), strategy=uncertainty.name, budget_per_hour=10**9, diversity_threshold=0.0)
    picked = [
        s.offer(f"e{i}", "c", f"text {i}", "v1", SURE if i % 2 else UNSURE) is not None
        for i in range(400)
    ]
    assert sum(picked[1::2]) < sum(picked[0::2])


@pytest.mark.parametrize(
    "name",
    ["smallest_margin", "", "Margin", "random "],
    ids=["other", "empty", "case", "trailing_space"],
)
def test_an_unknown_strategy_is_refused_naming_the_known_ones(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown strategy {name!r}; expected one of .*margin"):
        get_scorer(name)
    with pytest.raises(ValueError, match="unknown strategy"):
        LabelingSampler(name, 100, 0.0, 0.8, 500)
    with pytest.raises(ValueError, match="unknown strategy"):
        score(SURE, name)
