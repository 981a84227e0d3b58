"""Tiers against a real SQLite warm store and real Parquet cold files, with an injected clock.
What the cold tier does on every backend (a path and s3) is in
tests/integration/test_cold_store_contract.py; here, the rest, and what only a local path or a
memory:// URL does."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from streams.tiers import ColdStore, StoredEvent, TieredStore, TierPolicy
from streams.training_set import query_training_set, stratified_sample

HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(
    offset: int,
    *,
    kind: str = "utterance",
    priority: str = "normal",
    at: float = 1_000_000.0,
    partition: int = 0,
    **fields,
) -> StoredEvent:
    body = {"event_id": fields.pop("event_id", f"e{partition}-{offset}"), "type": kind}
    values = dict(
        topic="conversations",
        partition=partition,
        offset=offset,
        event_id=body["event_id"],
        type=kind,
        ts=fields.pop("ts", at),
        conversation_id=f"c{offset}",
        turn=0,
        priority=priority,
        channel=None,
        user_ref=None,
        text=fields.pop("text", f"text {offset}" if kind == "utterance" else None),
        ref_event_id=fields.pop("ref_event_id", None),
        intent=fields.pop("intent", None),
        correct=None,
        ref_text=None,
        payload=json.dumps(body).encode(),
        kafka_ts=at,
        ingested_at=at,
    )
    values.update(fields)
    return StoredEvent(**values)


def label(
    offset: int, ref: str, intent: str, at: float = 1_000_000.0, kind: str = "label", **fields
) -> StoredEvent:
    return event(offset, kind=kind, at=at, ref_event_id=ref, intent=intent, **fields)


def make_store(
    tmp_path: Path,
    clock: Clock,
    *,
    hot_max_events: int = 1000,
    hot_age: float = 60.0,
    warm_age: float = HOUR,
    rules=None,
    cold_url: str | None = None,
    **kw,
) -> TieredStore:
    policy = TierPolicy(hot_age, warm_age, rules or {})
    store = TieredStore(
        tmp_path / "warm.sqlite3",
        cold_url or str(tmp_path / "cold"),
        policy,
        hot_max_events,
        clock=clock,
        **kw,
    )
    asyncio.run(store.open())
    return store


def run(coro):
    return asyncio.run(coro)


def test_warm_writes_are_idempotent_by_topic_partition_offset(tmp_path):
    store = make_store(tmp_path, Clock())
    batch = [event(i) for i in range(100)]
    assert run(store.write(batch)) == 100
    assert run(store.write(batch)) == 0  # a redelivery stores nothing
    assert run(store.write([event(i, event_id="other") for i in range(50, 150)])) == 50
    assert store.warm.count == 150
    assert len(set(store.warm.all_keys())) == 150


def test_warm_store_survives_reopen(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    run(store.write([event(i) for i in range(10)]))
    store.close_now()
    reopened = make_store(tmp_path, clock)
    assert reopened.warm.count == 10
    assert run(reopened.write([event(i) for i in range(10)])) == 0


def test_hot_tier_stays_bounded_under_a_long_stream(tmp_path):
    store = make_store(tmp_path, Clock(), hot_max_events=500)
    peak_len = peak_bytes = 0
    for start in range(0, 20_000, 250):
        run(store.write([event(i) for i in range(start, start + 250)]))
        peak_len = max(peak_len, len(store.hot))
        peak_bytes = max(peak_bytes, store.hot.bytes)
    largest_payload = max(len(event(i).payload) for i in range(19_750, 20_000))
    assert peak_len == 500
    assert peak_bytes <= 500 * largest_payload
    assert store.warm.count == 20_000  # eviction from hot loses nothing
    assert [e.offset for e in store.hot] == list(range(19_500, 20_000))  # the newest stay


def test_hot_evicts_by_age_and_high_priority_stays_longer(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock, hot_age=60.0, rules={"high": {"hot_max_age_s": 600.0}})
    run(store.write([event(1), event(2, priority="high"), event(3, priority="low")]))
    clock.now += 61
    moved = run(store.maintain())
    assert moved["hot_to_warm"] == 2
    assert [e.offset for e in store.hot] == [2]
    clock.now += 600
    run(store.maintain())
    assert len(store.hot) == 0
    assert store.warm.count == 3


def test_a_rule_can_keep_a_priority_out_of_hot(tmp_path):
    store = make_store(tmp_path, Clock(), rules={"low": {"hot": False}})
    run(store.write([event(1, priority="low"), event(2)]))
    assert [e.offset for e in store.hot] == [2]
    assert store.warm.count == 2


def test_high_priority_stays_warm_longer(tmp_path):
    clock = Clock()
    store = make_store(
        tmp_path, clock, warm_age=HOUR, rules={"high": {"warm_retention_s": 10 * HOUR}}
    )
    run(store.write([event(1), event(2, priority="high")]))
    clock.now += 2 * HOUR
    run(store.maintain())
    assert store.sizes()["warm"] == 1 and store.sizes()["cold"] == 1
    clock.now += 10 * HOUR
    run(store.maintain())
    assert store.sizes()["warm"] == 0 and store.sizes()["cold"] == 2


def test_cold_tier_works_on_an_fsspec_url(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock, warm_age=HOUR, cold_url="memory://driftd-test-bucket/cold")
    run(store.write([event(i) for i in range(5)]))
    clock.now += 2 * HOUR
    run(store.maintain())
    assert store.sizes()["cold"] == 5
    assert all(p.startswith("/driftd-test-bucket/cold/") for p, _, _ in store.warm.cold_files())
    assert (
        ColdStore("memory://driftd-test-bucket/cold")
        .read([p for p, _, _ in store.warm.cold_files()])
        .num_rows
        == 5
    )


def test_a_local_cold_write_leaves_no_temp_file_and_a_leftover_one_is_an_orphan(tmp_path):
    cold = ColdStore(str(tmp_path / "cold"))
    path = Path(cold.write([event(i) for i in range(5)]))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written aside, then renamed
    leftover = path.with_name("0" * 32 + ".parquet.tmp")  # a crash before the rename
    leftover.write_bytes(b"half a parquet file")
    assert cold.files() == sorted([str(path), str(leftover)])
    assert cold.remove_orphans({str(path)}) == [str(leftover)] and not leftover.exists()


def test_labels_carry_their_utterance_text_from_hot_warm_or_the_same_batch(tmp_path):
    store = make_store(tmp_path, Clock(), hot_max_events=2)
    run(store.write([event(1, text="freeze my card")]))
    run(store.write([event(2), event(3)]))  # utterance 1 leaves hot, stays in warm
    run(
        store.write(
            [
                label(4, "e0-1", "freeze_account"),
                event(5, text="pay my bill"),
                label(6, "e0-5", "pay_bill"),
            ]
        )
    )
    examples = run(query_training_set(store, 0, 2e6)).recent
    assert {(e.text, e.intent) for e in examples} == {
        ("freeze my card", "freeze_account"),
        ("pay my bill", "pay_bill"),
    }


def test_a_label_that_arrives_before_its_utterance_is_joined_at_query_time(tmp_path):
    store = make_store(tmp_path, Clock())
    run(store.write([label(1, "e0-2", "balance")]))
    run(store.write([event(2, text="what is my balance")]))
    (example,) = run(query_training_set(store, 0, 2e6)).recent
    assert (example.text, example.intent) == ("what is my balance", "balance")


def test_training_window_and_latest_label_wins(tmp_path):
    store = make_store(tmp_path, Clock())
    run(store.write([event(1, text="a"), event(2, text="b"), event(3, text="c")]))
    run(
        store.write(
            [
                label(10, "e0-1", "old", ts=100.0),
                label(11, "e0-1", "new", ts=200.0),
                label(12, "e0-2", "x", ts=150.0),
                label(13, "e0-2", "y", ts=150.0, kind="feedback"),
                label(14, "e0-3", "late", ts=900.0),
            ]
        )
    )
    recent = run(query_training_set(store, 50.0, 500.0)).recent
    assert [(e.text, e.intent) for e in recent] == [("b", "x"), ("a", "new")]


def test_replay_sample_is_stratified_deterministic_and_excludes_recent(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock, warm_age=HOUR)
    intents = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    old = [event(i, text=f"old {i}") for i in range(100)] + [
        label(100 + i, f"e0-{i}", intent, ts=10.0) for i, intent in enumerate(intents)
    ]
    run(store.write(old))
    clock.now += 2 * HOUR
    run(store.maintain())  # all of it is cold now
    run(store.write([event(500, text="fresh"), label(501, "e0-500", "a", ts=clock.now)]))
    first = run(query_training_set(store, clock.now - 60, clock.now + 60, replay_size=30, seed=1))
    again = run(query_training_set(store, clock.now - 60, clock.now + 60, replay_size=30, seed=1))
    other = run(query_training_set(store, clock.now - 60, clock.now + 60, replay_size=30, seed=2))
    assert [(e.text, e.intent) for e in first.recent] == [("fresh", "a")]
    assert first.replay == again.replay and first.replay != other.replay
    assert Counter(e.intent for e in first.replay) == {"a": 10, "b": 10, "c": 10}
    assert all(e.source == "cold" and e.text.startswith("old ") for e in first.replay)
    big = run(query_training_set(store, 0, 1, replay_size=70, seed=1)).replay
    assert Counter(e.intent for e in big) == {
        "a": 30,
        "b": 30,
        "c": 10,
    }  # c runs out, the rest is shared evenly


def test_stratified_sample_never_exceeds_the_size_or_repeats():
    from streams.training_set import LabelledExample

    pool = [LabelledExample(f"t{i}", f"i{i % 7}", float(i), f"u{i}", "cold") for i in range(100)]
    for size in (0, 1, 7, 50, 100, 500):
        sample = stratified_sample(pool, size, seed=3)
        assert len(sample) == min(size, 100)
        assert len({e.utterance_id for e in sample}) == len(sample)


def test_a_redelivery_after_demotion_to_cold_stores_nothing_within_the_horizon(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock, warm_age=60.0, redelivery_horizon_s=HOUR)
    batch = [event(i) for i in range(50)]
    run(store.write(batch))
    clock.now += 61
    run(store.maintain())
    assert store.sizes() == {"hot": 0, "warm": 0, "cold": 50}
    assert run(store.write([event(i) for i in range(40, 60)])) == 10  # only offsets 50..59 are new
    assert store.sizes()["warm"] == 10
    assert sorted(e.offset for e in store.hot) == list(
        range(50, 60)
    )  # hot caches only what is in warm
    clock.now += HOUR + 1
    run(
        store.maintain()
    )  # past the horizon the demotion records are dropped (an old group reset re-stores)
    assert run(store.write([event(0)])) == 1


def test_after_a_restart_a_redelivery_of_demoted_records_still_stores_nothing(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock, warm_age=60.0)
    run(store.write([event(i) for i in range(30)]))
    clock.now += 61
    run(store.maintain())
    store.close_now()
    reopened = make_store(tmp_path, clock, warm_age=60.0)
    assert run(reopened.write([event(i) for i in range(25, 35)])) == 5
    assert reopened.sizes() == {"hot": 5, "warm": 5, "cold": 30}


def test_a_partition_whose_log_was_reset_is_retired_at_open_and_its_reused_offsets_store_as_new(
    tmp_path,
):
    clock = Clock()
    store = make_store(tmp_path, clock, warm_age=HOUR, demotion_batch=50)
    asyncio.run(store.write([event(i, partition=p) for p in (0, 1) for i in range(100)]))
    clock.now += 2 * HOUR
    asyncio.run(
        store.maintain()
    )  # offsets 0..99 of both partitions now cold, remembered as demoted
    asyncio.run(store.write([event(i, partition=p) for p in (0, 1) for i in range(100, 120)]))
    store.close_now()

    # Partition 0's log now ends at 5 (reset, refilled a little); partition 1's at 120, past what is
    # stored.
    store = TieredStore(
        tmp_path / "warm.sqlite3",
        str(tmp_path / "cold"),
        TierPolicy(60.0, HOUR, {}),
        1000,
        clock=clock,
    )
    asyncio.run(
        store.open({("conversations", 0): 5, ("conversations", 1): 120}, retired_suffix="@old")
    )
    assert store.retired == {("conversations", 0): (119, 5)}
    fresh = [event(i, partition=p, event_id=f"new-{p}-{i}") for p in (0, 1) for i in (3, 110)]
    inserted = asyncio.run(store.write(fresh))
    # Partition 0: stored as new; partition 1: offsets 3 (demoted) and 110 (in warm) are
    # redeliveries.
    assert inserted == 2
    topics = dict(
        store.warm._db.execute("SELECT topic, COUNT(*) FROM events GROUP BY topic").fetchall()
    )
    assert topics == {"conversations@old": 20, "conversations": 22}
    store.close_now()


STATEMENT_CACHE_PROGRAM = r"""
import json, sys
from pathlib import Path
from streams.tiers.warm import WarmStore
sys.path.insert(0, ".")
from tests.unit.test_tiers import event
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
store = WarmStore(Path(sys.argv[1]), synchronous="OFF")
offset = 0
def write(rows):
    global offset
    store.write([event(offset + i) for i in range(rows)], [0.0] * rows)
    offset += rows
for rows in (1000, 999, 998):  # the first shapes, sqlite's own caches, the allocator's first arenas
    write(rows)
start = rss_mb()
for rows in range(997, 847, -1):  # 150 batch sizes never seen before
    write(rows)
written = rss_mb()
# 150 lookup sizes
found = [len(store.utterance_texts(f"e0-{i}" for i in range(n))) for n in range(500, 350, -1)]
print(json.dumps({"growth_mb": written - start, "lookup_growth_mb": rss_mb() - written,
                  "stored": store.count, "written": offset,
                  "found_all": found == list(range(500, 350, -1))}))
"""


def test_batches_and_lookups_of_ever_new_sizes_do_not_grow_memory_by_a_cached_statement_per_size(
    tmp_path,
):
    # One INSERT shape per batch size filled sqlite3's 128-statement cache with ~1.2 MB statements
    # (+236 MB over these batches); power-of-two pieces keep the shapes to a dozen. The same for the
    # IN lists of utterance_texts (~0.1 MB a shape), padded to a power of two.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", STATEMENT_CACHE_PROGRAM, str(tmp_path / "warm.sqlite3")],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    result = json.loads(out.stdout)
    assert result["stored"] == result["written"] and result["found_all"]
    assert result["growth_mb"] < 40 and result["lookup_growth_mb"] < 5, result
