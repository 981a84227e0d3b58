"""The promotion gate's rules, on predictions made up to sit on each side of every bound."""

from __future__ import annotations

import math

import pytest

from models.gate import GateSettings, decide, p99_latency_ms

TRUTH = ["a"] * 100 + ["b"] * 100


def predictions(correct: int) -> list[str]:
    """The first ``correct`` of TRUTH right, the rest wrong."""
    return [t if i < correct else ("b" if t == "a" else "a") for i, t in enumerate(TRUTH)]


def verdict(
    settings: GateSettings,
    candidate: int,
    incumbent: int | None,
    *,
    replay: tuple[int, int] | None = None,
    p99: tuple[float, float | None] = (1.0, 1.0),
):
    replay_truth, cand_r, inc_r = (
        ([], [], None)
        if replay is None
        else (TRUTH, predictions(replay[0]), predictions(replay[1]))
    )
    return decide(
        settings,
        TRUTH,
        predictions(candidate),
        None if incumbent is None else predictions(incumbent),
        replay_truth,
        cand_r,
        inc_r,
        *p99,
    )


@pytest.mark.parametrize(
    ("candidate", "incumbent", "passed"), [(181, 180, True), (180, 180, False), (182, 180, True)]
)
def test_a_positive_margin_requires_a_gain(candidate: int, incumbent: int, passed: bool) -> None:
    result = verdict(GateSettings(margin=0.005), candidate, incumbent)
    assert result.passed is passed
    assert (
        result.candidate_holdout == candidate / 200 and result.incumbent_holdout == incumbent / 200
    )
    if not passed:
        assert result.reasons == [
            f"holdout accuracy {candidate / 200:.4f} does not beat the incumbent's "
            f"{incumbent / 200:.4f} by 0.005"
        ]


@pytest.mark.parametrize(
    ("candidate", "incumbent", "passed"), [(180, 180, True), (178, 180, True), (177, 180, False)]
)
def test_a_negative_margin_is_a_non_inferiority_bound(
    candidate: int, incumbent: int, passed: bool
) -> None:
    result = verdict(GateSettings(margin=-0.01), candidate, incumbent)
    assert result.passed is passed
    if not passed:
        assert result.reasons == [
            f"holdout accuracy {candidate / 200:.4f} trails the incumbent's "
            f"{incumbent / 200:.4f} by more than 0.01"
        ]


def test_without_an_incumbent_only_the_holdout_size_and_latency_count() -> None:
    assert verdict(GateSettings(), 10, None).passed
    small = decide(
        GateSettings(min_holdout=50), TRUTH[:49], TRUTH[:49], None, [], [], None, 1.0, None
    )
    assert not small.passed and "fewer than min_holdout 50" in small.reasons[0]


def test_forgetting_beyond_epsilon_fails_even_with_a_holdout_gain() -> None:
    assert verdict(GateSettings(forgetting_epsilon=0.02), 200, 100, replay=(196, 200)).passed
    forgot = verdict(GateSettings(forgetting_epsilon=0.02), 200, 100, replay=(195, 200))
    assert not forgot.passed and "(forgetting)" in forgot.reasons[0]
    assert forgot.candidate_replay == 0.975 and forgot.incumbent_replay == 1.0


@pytest.mark.parametrize(
    ("p99", "passed"),
    [
        ((7.4, 5.0), True),
        ((7.6, 5.0), False),
        ((4.9, 0.1), True),
        ((5.1, None), False),
        ((float("nan"), 1.0), False),
    ],
)
def test_latency_is_bounded_by_the_ratio_or_the_budget(
    p99: tuple[float, float | None], passed: bool
) -> None:
    result = verdict(
        GateSettings(latency_ratio=1.5, latency_budget_ms=5.0),
        200,
        None if p99[1] is None else 100,
        p99=p99,
    )
    assert result.passed is passed
    if not passed:
        assert result.reasons[0].startswith("p99 latency")


def test_every_failed_check_is_reported_and_the_settings_are_recorded() -> None:
    result = verdict(
        GateSettings(margin=0.005, forgetting_epsilon=0.0),
        100,
        150,
        replay=(100, 150),
        p99=(50.0, 1.0),
    )
    assert not result.passed and len(result.reasons) == 3
    assert result.to_dict()["settings"]["margin"] == 0.005
    assert result.describe().startswith(
        "FAIL: holdout 0.5000 vs incumbent 0.7500 (n=200), replay 0.5000 vs 0.7500 (n=200)"
    )


class SharedMachine:
    """A clock the calls advance: each text costs its own
    time, and a busy spell stalls whichever call runs."""

    def __init__(self, stalls: set[int]) -> None:
        self.now, self.calls, self.stalls = 0.0, 0, stalls

    def clock(self) -> float:
        return self.now

    def model(self, ms_per_char: float):
        def call(text: str) -> None:
            self.calls += 1
            self.now += len(text) * ms_per_char / 1000 + (
                0.050 if self.calls in self.stalls else 0.0
            )

        return call


def test_latency_is_timed_side_by_side_and_a_passing_stall_is_not_a_text_s_cost() -> None:
    texts = ["x" * 10] * 97 + ["x" * 100] * 3  # three long texts: the p99 must see them
    warm_up = 2 * 20
    # Busy spells hit the candidate on 15 texts of the first
    # timed pass and the incumbent on 10 of the second.
    stalls = {warm_up + 2 * t + 1 for t in range(15)} | {
        warm_up + 200 + 2 * t + 2 for t in range(10)
    }
    machine = SharedMachine(stalls)
    candidate, incumbent = p99_latency_ms(
        [machine.model(0.02), machine.model(0.01)], texts, repeats=3, clock=machine.clock
    )
    assert machine.calls == warm_up + 3 * 2 * len(texts)
    # the long texts' cost, no stall
    assert candidate == pytest.approx(2.0) and incumbent == pytest.approx(1.0)
    assert verdict(
        GateSettings(latency_ratio=1.5, latency_budget_ms=1.5), 200, 100, p99=(candidate, incumbent)
    ).reasons == ["p99 latency 2.000 ms exceeds 1.500 ms"]
    (no_texts,) = p99_latency_ms([SharedMachine(set()).model(0.01)], [], clock=machine.clock)
    # no figure: rejected
    assert (
        math.isnan(no_texts) and not verdict(GateSettings(), 200, None, p99=(no_texts, None)).passed
    )
