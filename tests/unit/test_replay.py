"""streams.replay without a broker: drift schedules and the planned event stream."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from streams.datasets import Example, groups, load_examples
from streams.replay import DriftSchedule, ReplayStats, _chunk_size, _pace_delay, plan_events
from streams.schema import LabelEvent, UtteranceEvent, decode_event

START_TS = 1_700_000_000.0


@pytest.fixture(scope="module")
def clinc() -> list[Example]:
    return load_examples("clinc150", "train")


@pytest.fixture(scope="module")
def domains() -> dict[str, list[str]]:
    return groups("clinc150")


@pytest.fixture(scope="module")
def intents(clinc: list[Example]) -> set[str]:
    return {ex.intent for ex in clinc}


def plan(examples: list[Example], schedule: DriftSchedule, **overrides: object) -> list[dict]:
    args: dict = {
        "limit": 2_000,
        "label_fraction": 0.5,
        "label_delay": 50,
        "seed": 7,
        "start_ts": START_TS,
        "dataset": "clinc150",
    }
    args.update(overrides)
    return list(plan_events(examples, schedule, **args))


def utterances(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "utterance"]


def labels(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "label"]


# --- DriftSchedule
# ---------------------------------------------------------------------------------


def test_parse_domains_intents_and_star(domains: dict[str, list[str]], intents: set[str]) -> None:
    schedule = DriftSchedule.parse(
        " 0 = banking , translate ; 100=credit_cards;500=* ", domains, intents
    )
    assert [p.start for p in schedule.phases] == [0, 100, 500]
    assert schedule.intents_at(0) == frozenset(domains["banking"]) | {"translate"}
    assert schedule.intents_at(99) == schedule.intents_at(0)
    assert schedule.intents_at(100) == frozenset(domains["credit_cards"])
    assert schedule.intents_at(499) == frozenset(domains["credit_cards"])
    assert schedule.intents_at(500) is None and schedule.intents_at(10**9) is None
    assert [schedule.phase_at(i) for i in (0, 99, 100, 500)] == [0, 0, 1, 2]
    assert str(schedule) == "0=banking,translate;100=credit_cards;500=*"
    assert DriftSchedule.parse(str(schedule), domains, intents) == schedule


def test_parse_without_domains_uses_intents(domains: dict[str, list[str]]) -> None:
    schedule = DriftSchedule.parse(
        "0=card_arrival,top_up_failed;10=*", {}, {"card_arrival", "top_up_failed", "exchange_rate"}
    )
    assert schedule.intents_at(5) == {"card_arrival", "top_up_failed"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty drift schedule"),
        ("banking", "malformed"),
        ("x=banking", "malformed"),
        ("-1=banking", "malformed"),
        ("0=banking,,home", "empty name"),
        ("5=banking", "must start at utterance 0"),
        ("0=banking;100=home;100=*", "strictly increase.*100 follows 100"),
        ("0=banking;100=home;50=*", "strictly increase.*50 follows 100"),
    ],
)
def test_parse_rejects_bad_syntax_and_order(
    text: str, match: str, domains: dict[str, list[str]], intents: set[str]
) -> None:
    with pytest.raises(ValueError, match=match):
        DriftSchedule.parse(text, domains, intents)


def test_parse_names_the_unknown_name_and_valid_ones(
    domains: dict[str, list[str]], intents: set[str]
) -> None:
    with pytest.raises(ValueError) as info:
        DriftSchedule.parse("0=banking;10=bankng,home", domains, intents)
    message = str(info.value)
    assert "'bankng'" in message
    assert "did you mean 'banking'" in message
    assert "credit_cards" in message and "150 in all" in message


def test_intents_at_negative_index_is_an_error(
    domains: dict[str, list[str]], intents: set[str]
) -> None:
    with pytest.raises(ValueError):
        DriftSchedule.parse("0=*", domains, intents).intents_at(-1)


# --- plan_events ---------------------------------------------------------------------------------


def test_drift_phase_zero_only_allowed_then_new_intents(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    schedule = DriftSchedule.parse("0=banking,credit_cards;1000=*", domains, intents)
    events = plan(clinc, schedule, label_fraction=1.0, label_delay=0)
    truth = {e["ref_event_id"]: e["intent"] for e in labels(events)}
    said = [(e["meta"]["phase"], truth[e["event_id"]]) for e in utterances(events)]
    allowed = set(domains["banking"]) | set(domains["credit_cards"])
    before = {intent for phase, intent in said[:1000]}
    after = {intent for phase, intent in said[1000:]}
    assert {phase for phase, _ in said[:1000]} == {0} and {phase for phase, _ in said[1000:]} == {1}
    assert before <= allowed and len(before) == 30  # 1000 draws cover all 30 allowed intents
    assert len(after - allowed) > 50  # the switch brings intents never seen before


def test_widening_phase_continues_with_unsent_examples(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    schedule = DriftSchedule.parse("0=banking;500=*", domains, intents)
    texts = [e["text"] for e in utterances(plan(clinc, schedule, limit=3_000, label_fraction=0))]
    assert len(set(texts)) == len(texts)


def test_after_a_widening_the_traffic_is_the_mix_the_phase_names(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    """Not every example the first phase skipped first: right after 0=5 domains -> all 10,
    about half the utterances are still of the 5 old domains (they hold half the intents)."""
    old_domains = ["banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute"]
    schedule = DriftSchedule.parse(f"0={','.join(old_domains)};3000=*", domains, intents)
    events = plan(clinc, schedule, limit=4_000, label_fraction=1.0, label_delay=0)
    truth = {e["ref_event_id"]: e["intent"] for e in labels(events)}
    old = {i for d in old_domains for i in domains[d]}
    said = [truth[e["event_id"]] in old for e in utterances(events)]
    assert all(said[:3000])
    for start in range(3000, 4000, 250):
        assert 0.35 <= sum(said[start : start + 250]) / 250 <= 0.65, start


def test_exhausted_pool_cycles(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    schedule = DriftSchedule.parse("0=translate", domains, intents)  # 100 training examples
    texts = [e["text"] for e in plan(clinc, schedule, limit=250, label_fraction=0)]
    assert len(texts) == 250 and len(set(texts)) == 100
    assert texts[:100] == texts[100:200] and texts[200:] == texts[:50]


def test_limit_zero_means_one_per_example() -> None:
    examples = load_examples("snips", "test")
    events = plan(examples, DriftSchedule.unrestricted(), limit=0, label_fraction=0)
    assert len(events) == 700
    assert Counter(e["text"] for e in events) == Counter(ex.text for ex in examples)


@pytest.mark.parametrize("delay", [0, 1, 37])
def test_labels_arrive_exactly_label_delay_utterances_later(
    clinc: list[Example], delay: int
) -> None:
    events = plan(
        clinc, DriftSchedule.unrestricted(), limit=500, label_fraction=0.6, label_delay=delay
    )
    seen = 0  # utterances emitted so far
    index_of: dict[str, int] = {}
    flushed = 0
    for event in events:
        if event["type"] == "utterance":
            index_of[event["event_id"]] = seen
            seen += 1
        else:
            utterance_index = index_of[event["ref_event_id"]]
            if utterance_index + delay < 500:
                assert seen - 1 == utterance_index + delay  # right after utterance i + delay
            else:
                assert seen == 500  # flushed at the end
                flushed += 1
    assert flushed == sum(1 for e in labels(events) if index_of[e["ref_event_id"]] + delay >= 500)
    assert len(labels(events)) > 200


def test_labels_carry_the_true_intent(clinc: list[Example]) -> None:
    by_text = {ex.text: ex.intent for ex in clinc}
    events = plan(clinc, DriftSchedule.unrestricted(), label_fraction=1.0)
    text_of = {e["event_id"]: e["text"] for e in utterances(events)}
    conv_of = {e["event_id"]: e["conversation_id"] for e in utterances(events)}
    assert len(labels(events)) == 2_000
    for label in labels(events):
        assert label["intent"] == by_text[text_of[label["ref_event_id"]]]
        assert label["conversation_id"] == conv_of[label["ref_event_id"]] and label["turn"] == 1


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_label_fraction_is_honoured(clinc: list[Example], fraction: float) -> None:
    events = plan(
        clinc, DriftSchedule.unrestricted(), limit=5_000, label_fraction=fraction, label_delay=10
    )
    assert len(utterances(events)) == 5_000
    assert abs(len(labels(events)) / 5_000 - fraction) <= 0.03


def test_same_seed_same_events_other_seed_different(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    schedule = DriftSchedule.parse("0=home;300=*", domains, intents)
    first, again, other = (
        plan(clinc, schedule, seed=3),
        plan(clinc, schedule, seed=3),
        plan(clinc, schedule, seed=4),
    )
    assert first == again
    assert [e["text"] for e in utterances(first)] != [e["text"] for e in utterances(other)]
    assert [e["ref_event_id"] for e in labels(first)] != [e["ref_event_id"] for e in labels(other)]


def test_every_event_decodes_as_its_type(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    schedule = DriftSchedule.parse("0=banking;500=*", domains, intents)
    events = plan(
        clinc, schedule, priority_of=lambda ex: "high" if ex.domain == "banking" else "normal"
    )
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    for event in events:
        decoded = decode_event(json.dumps(event, separators=(",", ":")).encode(), 65536)
        assert isinstance(
            decoded, UtteranceEvent if event["type"] == "utterance" else LabelEvent
        ), decoded
        assert decoded.event_id == event["event_id"] and decoded.meta == {
            "dataset": "clinc150",
            "phase": event["meta"]["phase"],
        }
    assert {e["priority"] for e in utterances(events)[:500]} == {"high"}


def test_ids_and_timestamps(clinc: list[Example]) -> None:
    events = plan(
        clinc, DriftSchedule.unrestricted(), limit=100, seed=11, label_fraction=1.0, label_delay=0
    )
    assert [e["event_id"] for e in events[:4]] == ["11-u0", "11-l0", "11-u1", "11-l1"]
    assert [e["conversation_id"] for e in events[:4]] == ["c0", "c0", "c1", "c1"]
    assert [e["ts"] for e in utterances(events)] == [START_TS + i * 0.001 for i in range(100)]
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))


def test_bad_arguments_fail_at_call_time(
    clinc: list[Example], domains: dict[str, list[str]], intents: set[str]
) -> None:
    everything = DriftSchedule.unrestricted()
    for bad in ({"label_fraction": 1.5}, {"label_delay": -1}, {"limit": -1}, {"start_ts": -5.0}):
        with pytest.raises(ValueError):
            plan_events(
                clinc,
                everything,
                **{"limit": 10, "label_fraction": 0.5, "label_delay": 0, "seed": 1, **bad},
            )
    with pytest.raises(ValueError, match="no examples"):
        plan_events([], everything, limit=10, label_fraction=0, label_delay=0, seed=1)
    home_only = [ex for ex in clinc if ex.domain == "home"]
    schedule = DriftSchedule.parse("0=home;100=banking", domains, intents)
    with pytest.raises(ValueError, match="matches no example"):
        plan_events(home_only, schedule, limit=200, label_fraction=0, label_delay=0, seed=1)
    # a phase the limit never reaches is no error
    assert (
        len(
            list(
                plan_events(home_only, schedule, limit=100, label_fraction=0, label_delay=0, seed=1)
            )
        )
        == 100
    )
    with pytest.raises(ValueError, match="priority_of"):
        list(
            plan_events(
                clinc,
                everything,
                limit=1,
                label_fraction=0,
                label_delay=0,
                seed=1,
                priority_of=lambda ex: "urgent",
            )
        )


# --- replay helpers (producing to Kafka needs a broker,
# so it is not unit-tested here) ----------------


def test_rate_limit_sleeps_per_chunk_against_the_start() -> None:
    assert _chunk_size(0) == 500 and _chunk_size(2_000) == 100 and _chunk_size(3) == 1
    assert _pace_delay(started=10.0, sent=100, rate=2_000, now=10.01) == pytest.approx(0.04)
    # behind schedule: no sleep
    assert _pace_delay(started=10.0, sent=100, rate=2_000, now=10.2) == 0.0
    assert _pace_delay(started=10.0, sent=100, rate=0, now=10.0) == 0.0


def test_replay_stats_total() -> None:
    assert ReplayStats(utterances=10, labels=4, seconds=1.0).sent == 14
    assert ReplayStats(utterances=10, labels=4, seconds=1.0, other=2).sent == 16
