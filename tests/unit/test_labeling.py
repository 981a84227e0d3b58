"""Active labelling: each strategy's scores by hand, the sampler's gates (floor, percentile, budget,
diversity), and the Label Studio task format and export parsing. The checks every strategy passes
(range, order, bad input, the sampler) are in test_labeling_strategies.py."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

from streams.labeling import (
    SKIP_REASONS,
    LabelingSampler,
    label_events_from_label_studio,
    label_studio_config,
    score,
    to_label_studio_tasks,
)
from streams.schema import LabelEvent, decode_event


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


TEXTS = [
    "I lost my card can you block it",
    "what is the weather in paris tomorrow",
    "transfer fifty dollars to my savings account",
    "how do I reset my online banking password",
    "book a table for two at eight",
    "my card was declined at the shop today",
    "when is my next credit card payment due",
    "set an alarm for six in the morning",
    "how much gas does my car have left",
    "order more paper towels for the kitchen",
    "what is the exchange rate for yen",
    "tell me a joke about cats",
    "cancel my dinner reservation tonight please",
    "freeze my account right now",
    "what is my current balance",
]


def sampler(clock: Clock, **overrides: object) -> LabelingSampler:
    params: dict = dict(
        strategy="margin",
        budget_per_hour=3600,
        min_score=0.0,
        diversity_threshold=0.8,
        window=500,
        clock=clock,
    )
    params.update(overrides)
    return LabelingSampler(**params)


def uncertain(margin_score: float) -> list[tuple[str, float]]:
    """A top-2 whose margin score is ``margin_score`` (p1 - p2 = 1 - score, p1 + p2 <= 1)."""
    gap = 1.0 - margin_score
    p2 = (1.0 - gap) / 2
    return [("a", p2 + gap), ("b", p2)]


# --- scores ---------------------------------------------------------------------------------------


def test_least_confidence_and_margin_by_hand() -> None:
    topk = [("card_lost", 0.6), ("freeze_account", 0.3), ("balance", 0.1)]
    assert score(topk, "least_confidence") == pytest.approx(0.4)
    assert score(topk, "margin") == pytest.approx(1 - (0.6 - 0.3))
    assert score(list(reversed(topk)), "margin") == pytest.approx(
        0.7
    )  # order of the list does not matter
    assert score([("x", 0.9)], "margin") == pytest.approx(0.1)  # a single entry: p2 = 0
    assert score([("x", 1.0), ("y", 0.0)], "least_confidence") == 0.0


def test_entropy_is_normalised_over_the_renormalised_top_k() -> None:
    # 0.4, 0.2, 0.2 renormalise to 0.5, 0.25, 0.25: H = 1.5 ln 2, max ln 3.
    assert score([("a", 0.4), ("b", 0.2), ("c", 0.2)], "entropy") == pytest.approx(
        1.5 * math.log(2) / math.log(3)
    )
    assert score([("a", 0.3), ("b", 0.3)], "entropy") == pytest.approx(
        1.0
    )  # uniform after renormalising
    assert score([("a", 1.0), ("b", 0.0), ("c", 0.0)], "entropy") == pytest.approx(0.0)
    assert score([("a", 0.7)], "entropy") == 0.0


def test_the_random_baseline_ignores_the_prediction_and_picks_a_fifth_whatever_the_confidence() -> (
    None
):
    s = sampler(
        Clock(), strategy="random", budget_per_hour=10**9, diversity_threshold=0.0, window=200
    )
    sure = [("a", 0.99), ("b", 0.01)]
    picked = [
        s.offer(f"e{i}", "c", f"text {i}", "v1", sure if i % 2 else uncertain(0.99))
        for i in range(4000)
    ]
    share_sure = sum(p is not None for i, p in enumerate(picked) if i % 2) / 2000
    share_unsure = sum(p is not None for i, p in enumerate(picked) if not i % 2) / 2000
    assert (
        0.15 < share_sure < 0.25 and 0.15 < share_unsure < 0.25
    )  # above the running 80th percentile of uniform scores
    again = sampler(Clock(), strategy="random").offer("e7", "c", "text", "v1", sure)
    first = sampler(Clock(), strategy="random").offer("e7", "c", "text", "v2", uncertain(0.5))
    assert (
        again and first and again["score"] == first["score"] and again["strategy"] == "random"
    )  # the event decides, not the model
    with pytest.raises(ValueError, match="unknown strategy"):
        score(sure, "random")  # no uncertainty score of a prediction


# --- the sampler ----------------------------------------------------------------------------------


def test_min_score_gate_and_request_shape() -> None:
    clock = Clock()
    s = sampler(clock, min_score=0.5)
    assert (
        s.offer("e1", "c1", TEXTS[0], "v000001", [("card_lost", 0.9), ("freeze_account", 0.05)])
        is None
    )
    request = s.offer(
        "e2", "c1", TEXTS[1], "v000001", [("weather", 0.5), ("travel", 0.4), ("oos", 0.1)], turn=3
    )
    assert request is not None
    assert set(request) == {
        "request_id",
        "event_id",
        "conversation_id",
        "turn",
        "text",
        "model_version",
        "topk",
        "score",
        "strategy",
        "reason",
        "requested_at",
    }
    assert (
        request["event_id"],
        request["conversation_id"],
        request["turn"],
        request["text"],
        request["model_version"],
    ) == ("e2", "c1", 3, TEXTS[1], "v000001")
    assert request["topk"] == [
        {"intent": "weather", "score": 0.5},
        {"intent": "travel", "score": 0.4},
        {"intent": "oos", "score": 0.1},
    ]
    assert (
        request["score"] == pytest.approx(0.9)
        and request["strategy"] == "margin"
        and request["requested_at"] == clock.now
    )
    assert "margin 0.90" in request["reason"] and "min_score 0.50" in request["reason"]
    assert s.counts == {
        "offered": 2,
        "picked": 1,
        "below_min_score": 1,
        "below_percentile": 0,
        "budget": 0,
        "near_duplicate": 0,
    }


def test_request_id_is_stable_for_a_redelivered_prediction() -> None:
    a = sampler(Clock()).offer("e1", "c1", TEXTS[0], "v1", uncertain(0.9))
    b = sampler(Clock()).offer("e1", "c1", TEXTS[0], "v1", uncertain(0.9))
    c = sampler(Clock()).offer("e1", "c1", TEXTS[0], "v2", uncertain(0.9))
    assert a and b and c and a["request_id"] == b["request_id"] != c["request_id"]


def test_budget_caps_the_hour_without_bursting_it() -> None:
    clock = Clock()
    s = sampler(
        clock, budget_per_hour=60, diversity_threshold=0.0
    )  # capacity 10, one token a minute
    assert s.capacity == 10
    picked = [s.offer(f"e{i}", "c", f"text {i}", "v1", uncertain(0.9)) for i in range(40)]
    assert sum(p is not None for p in picked) == 10  # the burst stops at the capacity, not at 60
    assert s.counts["budget"] == 30
    clock.now += 30  # half a token
    assert s.offer("h", "c", "half", "v1", uncertain(0.9)) is None
    clock.now += 30
    assert s.offer("one", "c", "one", "v1", uncertain(0.9)) is not None
    assert s.offer("none", "c", "none", "v1", uncertain(0.9)) is None
    clock.now += 3600 * 5  # a long quiet spell refills to the capacity only
    assert (
        sum(s.offer(f"r{i}", "c", f"r {i}", "v1", uncertain(0.9)) is not None for i in range(40))
        == 10
    )
    # Over an hour at a steady pace, the total stays at the budget (plus the initial bucket).
    total = 0
    for minute in range(60):
        clock.now += 60
        total += sum(
            s.offer(f"m{minute}-{i}", "c", f"m {minute} {i}", "v1", uncertain(0.9)) is not None
            for i in range(5)
        )
    assert total == 60


def test_budget_zero_requests_nothing_and_a_small_budget_still_trickles() -> None:
    clock = Clock()
    none = sampler(clock, budget_per_hour=0)
    assert all(none.offer(f"e{i}", "c", f"t {i}", "v1", uncertain(0.99)) is None for i in range(20))
    assert none.counts["budget"] == 20
    small = sampler(
        clock, budget_per_hour=3, diversity_threshold=0.0
    )  # capacity max(1, 3 // 6) = 1
    assert small.capacity == 1
    assert [
        small.offer(f"s{i}", "c", f"t {i}", "v1", uncertain(0.99)) is not None for i in range(3)
    ] == [True, False, False]
    clock.now += 1200  # one token every 20 minutes
    assert small.offer("later", "c", "later", "v1", uncertain(0.99)) is not None


def test_percentile_gate_after_warm_up() -> None:
    clock = Clock()
    s = sampler(clock, budget_per_hour=10**6, diversity_threshold=0.0, window=100)
    # Warm-up: 50 scores 0.01 .. 0.50, all above min_score 0, all picked (min_score alone decides).
    warm = [s.offer(f"w{i}", "c", f"w {i}", "v1", uncertain((i + 1) / 100)) for i in range(50)]
    assert all(warm) and s.percentile() == pytest.approx(
        0.402
    )  # p80 of 0.01..0.50 (linear interpolation)
    assert s.offer("low", "c", "low", "v1", uncertain(0.40)) is None
    assert s.counts["below_percentile"] == 1
    high = s.offer("high", "c", "high", "v1", uncertain(0.45))
    assert high is not None and "p80 0.40 of the last 51" in high["reason"]
    # The window forgets: after 100 scores of 0.9 the old ones are gone and p80 is 0.9.
    for i in range(100):
        s.offer(f"x{i}", "c", f"x {i}", "v1", uncertain(0.9))
    assert s.percentile() == pytest.approx(0.9)
    assert s.offer("was-high", "c", "was high", "v1", uncertain(0.8)) is None


@pytest.mark.parametrize("percentile", [0.0, 50.0, 95.0])
def test_a_configured_percentile_sets_the_share_requested(percentile: float) -> None:
    s = sampler(
        Clock(),
        strategy="random",
        budget_per_hour=10**9,
        diversity_threshold=0.0,
        window=400,
        percentile=percentile,
    )
    picked = [
        r for i in range(4000) if (r := s.offer(f"e{i}", "c", f"text {i}", "v1", uncertain(0.5)))
    ]
    # Uniform scores: everything at or above the running p-th percentile, so about (100 - p)%.
    assert abs(len(picked) / 4000 - (100 - percentile) / 100) < 0.04, len(picked)
    assert f"p{percentile:g} " in picked[-1]["reason"]


def test_min_score_still_applies_after_warm_up() -> None:
    s = sampler(Clock(), min_score=0.95, budget_per_hour=10**6, diversity_threshold=0.0)
    for i in range(60):
        s.offer(f"e{i}", "c", f"t {i}", "v1", uncertain(0.1))
    assert s.percentile() is not None and s.percentile() < 0.95
    assert (
        s.offer("mid", "c", "mid", "v1", uncertain(0.9)) is None
        and s.counts["below_min_score"] == 61
    )


def test_diversity_guard_skips_near_duplicates_but_not_different_texts() -> None:
    s = sampler(Clock(), budget_per_hour=10**6)
    base = "please block my credit card because i lost it on the train this morning"
    variants = [base, base + " thanks", base.upper(), base + " please", "please " + base]
    picked = [
        s.offer(f"d{i}", "c", text, "v1", uncertain(0.9)) is not None
        for i, text in enumerate(variants)
    ]
    assert picked[0] and sum(picked) == 1, (
        picked
    )  # near copies of a picked text are not picked again
    assert s.counts["near_duplicate"] == len(variants) - 1
    different = [
        s.offer(f"t{i}", "c", text, "v1", uncertain(0.9)) is not None
        for i, text in enumerate(TEXTS)
    ]
    assert all(different)
    off = sampler(Clock(), budget_per_hour=10**6, diversity_threshold=0.0)
    assert all(off.offer(f"o{i}", "c", base, "v1", uncertain(0.9)) is not None for i in range(5))


def test_diversity_guard_remembers_only_the_last_window_picks() -> None:
    s = sampler(Clock(), budget_per_hour=10**6, window=3)
    assert s.offer("a", "c", TEXTS[0], "v1", uncertain(0.9)) is not None
    assert s.offer("a2", "c", TEXTS[0], "v1", uncertain(0.9)) is None
    for i in range(1, 4):
        assert s.offer(f"b{i}", "c", TEXTS[i], "v1", uncertain(0.9)) is not None
    assert (
        s.offer("a3", "c", TEXTS[0], "v1", uncertain(0.9)) is not None
    )  # pushed out of the last 3 picks


def test_counts_add_up() -> None:
    clock = Clock()
    s = sampler(clock, min_score=0.3, budget_per_hour=60)
    for i in range(300):
        clock.now += 7
        s.offer(
            f"e{i}", "c", TEXTS[i % len(TEXTS)] + f" {i % 4}", "v1", uncertain((i * 37 % 100) / 100)
        )
    counts = s.counts
    assert counts["offered"] == 300 == counts["picked"] + sum(counts[r] for r in SKIP_REASONS)
    assert all(counts[r] > 0 for r in SKIP_REASONS), counts


@pytest.mark.parametrize(
    "bad",
    [
        dict(strategy="smallest_margin"),
        dict(budget_per_hour=-1),
        dict(window=0),
        dict(diversity_threshold=1.5),
        dict(percentile=100.0),
        dict(percentile=-1.0),
    ],
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        sampler(Clock(), **bad)


# --- Label Studio ---------------------------------------------------------------------------------


def requests_for_tasks() -> list[dict]:
    s = sampler(Clock(), budget_per_hour=10**6)
    made = [
        s.offer(
            "u-1",
            "c-1",
            "I lost my card",
            "v000003",
            [("card_lost", 0.55), ("freeze_account", 0.40)],
            turn=2,
        ),
        s.offer("u-2", "c-2", "what's the weather", "v000003", [("weather", 0.5), ("oos", 0.45)]),
    ]
    assert all(made)
    return made


def test_label_studio_tasks_format() -> None:
    tasks = to_label_studio_tasks(
        requests_for_tasks(), ["card_lost", "freeze_account", "weather", "oos"]
    )
    assert len(tasks) == 2
    first = tasks[0]
    assert first["data"]["text"] == "I lost my card" and first["data"]["event_id"] == "u-1"
    assert (
        first["data"]["conversation_id"] == "c-1"
        and first["data"]["model_version"] == "v000003"
        and first["data"]["turn"] == 2
    )
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == "v000003" and prediction["score"] == pytest.approx(0.55)
    assert prediction["result"] == [
        {
            "from_name": "intent",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": ["card_lost"]},
        }
    ]
    json.dumps(tasks)  # importable as is
    # A top intent the labelling config does not offer gets no pre-annotation.
    assert to_label_studio_tasks(requests_for_tasks(), ["card_lost"])[1]["predictions"] == []


def test_label_studio_config_is_xml_with_every_choice_once() -> None:
    xml = label_studio_config(["card_lost", 'a "quoted" & <odd> one', "card_lost"])
    root = ET.fromstring(xml)
    assert root.tag == "View"
    text = root.find("Text")
    choices = root.find("Choices")
    assert text is not None and text.get("name") == "text" and text.get("value") == "$text"
    assert (
        choices is not None
        and choices.get("name") == "intent"
        and choices.get("toName") == "text"
        and choices.get("choice") == "single"
    )
    assert [c.get("value") for c in choices.findall("Choice")] == [
        "card_lost",
        'a "quoted" & <odd> one',
    ]
    with pytest.raises(ValueError):
        label_studio_config([])


def annotation(ann_id: int, intent: str | None, **extra: object) -> dict:
    result = (
        []
        if intent is None
        else [
            {
                "id": "r1",
                "from_name": "intent",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": [intent]},
            }
        ]
    )
    return {"id": ann_id, "result": result, "completed_by": 1, **extra}


def task(task_id: int, event_id: str, annotations: list[dict], **data: object) -> dict:
    return {
        "id": task_id,
        "data": {
            "text": "t",
            "event_id": event_id,
            "conversation_id": f"c-{event_id}",
            "model_version": "v1",
            **data,
        },
        "annotations": annotations,
        "predictions": [],
    }


def test_parse_a_label_studio_export() -> None:
    export = [
        task(1, "u-1", [annotation(11, "card_lost")], turn=4),
        task(2, "u-2", [annotation(21, "oos", was_cancelled=True)]),
        task(3, "u-3", [annotation(31, "weather"), annotation(32, "travel")]),
        task(4, "u-4", []),
        task(5, "u-5", [annotation(51, None)]),
        task(6, "u-6", [annotation(61, "balance"), annotation(62, "transfer", was_cancelled=True)]),
        {"data": {"event_id": "u-7"}, "annotations": [annotation(71, "x")]},  # no task id
        task(8, "u-8", [annotation(81, "x" * 200)]),  # longer than an intent may be
        {"id": 9, "data": {"text": "from elsewhere"}, "annotations": [annotation(91, "x")]},
    ]
    events, skipped = label_events_from_label_studio(export, now=1_750_000_000.0)
    by_ref = {e["ref_event_id"]: e for e in events}
    assert sorted(by_ref) == ["u-1", "u-3", "u-6"]
    assert (
        by_ref["u-1"]["intent"] == "card_lost"
        and by_ref["u-1"]["event_id"] == "ls-1-11"
        and by_ref["u-1"]["turn"] == 4
    )
    assert (
        by_ref["u-3"]["intent"] == "travel" and by_ref["u-3"]["event_id"] == "ls-3-32"
    )  # the last annotation wins
    assert (
        by_ref["u-6"]["intent"] == "balance" and by_ref["u-6"]["event_id"] == "ls-6-61"
    )  # a cancelled last one does not
    assert (
        by_ref["u-3"]["conversation_id"] == "c-u-3"
        and by_ref["u-3"]["ts"] == 1_750_000_000.0
        and by_ref["u-3"]["turn"] == 0
    )
    for event in events:
        decoded = decode_event(json.dumps(event).encode(), 65536)
        assert (
            isinstance(decoded, LabelEvent)
            and decoded.intent == event["intent"]
            and decoded.ref_event_id == event["ref_event_id"]
        )
    assert len(skipped) == 6
    reasons = "\n".join(skipped)
    assert "task 2: every annotation was cancelled" in reasons
    assert "task 4: no annotations" in reasons
    assert "task 5: no annotation chose" in reasons
    assert "task #6: not a task with an id" in reasons
    assert "task 8: the label event is invalid: invalid_value" in reasons
    assert "task 9: data has no event_id" in reasons
    again, _ = label_events_from_label_studio(export, now=1_760_000_000.0)
    assert [e["event_id"] for e in again] == [
        e["event_id"] for e in events
    ]  # a re-import repeats the ids


def test_tasks_survive_the_round_trip_through_an_export() -> None:
    tasks = to_label_studio_tasks(requests_for_tasks(), [])
    export = [
        {
            **t,
            "id": 100 + i,
            "annotations": [
                annotation(200 + i, t["predictions"][0]["result"][0]["value"]["choices"][0])
            ],
        }
        for i, t in enumerate(tasks)
    ]
    events, skipped = label_events_from_label_studio(json.loads(json.dumps(export)), now=1.0)
    assert skipped == []
    assert [(e["ref_event_id"], e["conversation_id"], e["turn"], e["intent"]) for e in events] == [
        ("u-1", "c-1", 2, "card_lost"),
        ("u-2", "c-2", 0, "weather"),
    ]


def test_an_export_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(ValueError, match="list of tasks"):
        label_events_from_label_studio({"tasks": []}, now=0.0)


def test_the_export_queue_puts_the_most_uncertain_first_and_unscored_requests_last() -> None:
    from daemon.label_studio import most_uncertain_first

    requests = [
        {"event_id": "none"},
        {"event_id": "low", "score": 0.2},
        {"event_id": "nan", "score": float("nan")},
        {"event_id": "high", "score": 0.9},
        {"event_id": "text", "score": "0.95"},
        {"event_id": "tie-a", "score": 0.5},
        {"event_id": "flag", "score": True},
        {"event_id": "tie-b", "score": 0.5},
    ]
    assert [r["event_id"] for r in most_uncertain_first(requests)] == [
        "high",
        "tie-a",
        "tie-b",
        "low",
        "none",
        "nan",
        "text",
        "flag",
    ]
