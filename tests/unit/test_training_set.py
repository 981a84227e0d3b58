"""The training-set queries against a real SQLite warm store and real Parquet cold files,
checked against a plain-Python oracle: relabelled utterances, label/feedback ties, labels
stored before their utterance, labels of utterances never stored, several cold files."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from streams import training_set
from streams.training_set import (
    LabelledExample,
    _files_to_scan,
    query_recent,
    query_replay,
    query_training_set,
    stratified_sample,
)
from tests.unit.test_tiers import HOUR, Clock, event, label, make_store, run

RANK = {"feedback": 0, "label": 1}


def labelled_history(
    rng: random.Random, utterances: int, first_offset: int, t0: float
) -> tuple[list, dict[str, str]]:
    """Events of ``utterances`` utterances, most labelled once, some twice
    (a relabel, or a feedback tie), some labelled before they are
    stored, some never stored. Returns (events in write order, texts)."""
    events, texts, offset = [], {}, first_offset
    for i in range(utterances):
        ref = f"u{first_offset}-{i}"
        ts = t0 + i * 10.0
        utterance = event(offset, event_id=ref, text=f"utterance {ref}", ts=ts)
        offset += 1
        stored = rng.random() > 0.05
        if stored:
            texts[ref] = f"utterance {ref}"
        labels = [label(offset, ref, f"intent{rng.randrange(12)}", ts=ts + 1)]
        offset += 1
        roll = rng.random()
        if roll < 0.15:  # relabelled later
            labels.append(label(offset, ref, f"intent{rng.randrange(12)}", ts=ts + 5))
            offset += 1
        elif roll < 0.25:  # feedback at the same instant: the label wins
            labels.append(label(offset, ref, "from_feedback", ts=ts + 1, kind="feedback"))
            offset += 1
        if not stored:
            events += labels
        elif rng.random() < 0.1:  # the label reaches driftd before its utterance
            events += [*labels, utterance]
        else:
            events += [utterance, *labels]
    return events, texts


def oracle(events: list, texts: dict[str, str], source: str) -> list[LabelledExample]:
    best: dict[str, tuple] = {}
    for e in events:
        if e.type in RANK and (
            e.ref_event_id not in best or (e.ts, RANK[e.type]) > best[e.ref_event_id][:2]
        ):
            best[e.ref_event_id] = (e.ts, RANK[e.type], e.intent)
    examples = [
        LabelledExample(texts[ref], intent, ts, ref, source)
        for ref, (ts, _, intent) in best.items()
        if ref in texts
    ]
    return sorted(examples, key=lambda e: (e.ts, e.utterance_id))


def write_in_batches(store, events: list, size: int = 97) -> None:
    for start in range(0, len(events), size):
        run(store.write(events[start : start + size]))


@pytest.mark.parametrize("limit", [None, 1, 57, 400])
# shuffled: hot may hold old labels
@pytest.mark.parametrize("arrival", ["in_time_order", "shuffled"])
def test_recent_query_returns_the_newest_examples_of_hot_and_warm_as_the_oracle_does(
    tmp_path, monkeypatch, limit, arrival
):
    # so that the query stops early, as it does at scale
    monkeypatch.setattr(training_set, "_WARM_CHUNK", 50)
    clock = Clock()
    store = make_store(tmp_path, clock, hot_max_events=150)  # most of it only in warm
    events, texts = labelled_history(random.Random(7), 600, 0, clock.now - 9000)
    if arrival == "shuffled":
        random.Random(8).shuffle(events)
    write_in_batches(store, events)
    expected = oracle(events, texts, "")
    got = run(query_recent(store, 0, 2e6, limit))
    assert [(e.text, e.intent, e.ts, e.utterance_id) for e in got] == [
        (e.text, e.intent, e.ts, e.utterance_id) for e in expected
    ][-limit if limit else 0 :]
    assert {e.source for e in got} <= {"hot", "warm"} and "from_feedback" not in {
        e.intent for e in got
    }


def cold_store(tmp_path, utterances: int = 400, seed: int = 3):
    clock = Clock()
    store = make_store(tmp_path, clock, warm_age=HOUR, demotion_batch=150)  # several cold files
    events, texts = labelled_history(random.Random(seed), utterances, 0, 10.0)
    write_in_batches(store, events)
    clock.now += 2 * HOUR
    run(store.maintain())
    assert store.sizes()["warm"] == 0 and len(store.warm.cold_files()) >= 3
    return store, events, texts


def test_replay_sample_from_cold_equals_the_stratified_sample_of_the_oracles_examples(tmp_path):
    store, events, texts = cold_store(tmp_path)
    pool = oracle(events, texts, "cold")
    exclude = {e.utterance_id for e in pool[::5]}
    for size, seed in ((1, 0), (40, 1), (40, 2), (10_000, 3)):
        expected = stratified_sample([e for e in pool if e.utterance_id not in exclude], size, seed)
        got = run(query_replay(store, size, seed, exclude))
        assert got == expected
    assert len(got) == len(pool) - len(exclude)  # a size beyond the pool takes all of it


def test_a_scan_budget_reads_whole_cold_files_chosen_by_the_seed(tmp_path):
    store, events, texts = cold_store(tmp_path)
    files = store.warm.cold_files()
    budget = sum(rows for _, rows, _ in files) // 2
    assert (
        _files_to_scan(files, None, 5)
        == _files_to_scan(files, 10**9, 5)
        == sorted(p for p, _, _ in files)
    )
    chosen = _files_to_scan(files, budget, 5)
    assert 0 < sum(rows for path, rows, _ in files if path in chosen) <= budget
    assert chosen == _files_to_scan(files, budget, 5) != _files_to_scan(files, budget, 6)
    sample = run(query_replay(store, 10_000, 5, scan_rows=budget))
    assert sample == run(query_replay(store, 10_000, 5, scan_rows=budget))
    labelled_in_chosen = set(store.cold.read(chosen, ["ref_event_id"])["ref_event_id"].to_pylist())
    assert 0 < len(sample) < len(oracle(events, texts, "cold"))
    assert {e.utterance_id for e in sample} <= labelled_in_chosen


def test_the_training_set_replay_never_repeats_a_recent_example(tmp_path):
    store, events, texts = cold_store(tmp_path, utterances=200)
    relabels = [
        label(10_000 + i, e.utterance_id, "relabelled", ts=store.clock() + i, ref_text=e.text)
        for i, e in enumerate(oracle(events, texts, "cold")[:50])
    ]
    run(store.write(relabels))
    training = run(
        query_training_set(
            store, store.clock() - 60, store.clock() + 3600, replay_size=10_000, seed=1
        )
    )
    assert Counter(e.intent for e in training.recent) == {"relabelled": 50}
    assert not {e.utterance_id for e in training.recent} & {e.utterance_id for e in training.replay}
