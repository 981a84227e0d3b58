"""Records that carry no value or no key, through
IngestAgent.handle into a real TieredStore and a DLQ sink."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import IngestSettings
from streams.ingest import IngestAgent, RawRecord
from streams.metrics import StreamMetrics
from streams.schema import RECORD_REJECTION_REASONS, REJECTION_REASONS, Rejection
from streams.tiers import TieredStore, TierPolicy


def record(offset: int, key: bytes | None, value: bytes | None) -> RawRecord:
    return RawRecord("conversations", 0, offset, key, value, 1_700_000_000.0)


def utterance(i: int) -> bytes:
    event = {
        "event_id": f"u{i}",
        "type": "utterance",
        "conversation_id": f"c{i}",
        "turn": 0,
        "ts": 1.0,
        "text": "hi",
    }
    return json.dumps(event).encode()


Dead = list[tuple[int, bytes | None, str, str]]  # offset, value, reason, detail


def run(
    tmp_path, records: list[RawRecord], **agent_options
) -> tuple[TieredStore, StreamMetrics, Dead]:
    metrics = StreamMetrics(CollectorRegistry())
    store = TieredStore(
        tmp_path / "warm.sqlite3",
        str(tmp_path / "cold"),
        TierPolicy(60, 3600),
        100,
        metrics=metrics,
    )
    asyncio.run(store.open())
    dead: Dead = []

    async def dead_letter(rec: RawRecord, why: Rejection):
        dead.append((rec.offset, rec.value, why.reason, why.detail))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    asyncio.run(IngestAgent(store, dead_letter, metrics, **agent_options).handle(records))
    return store, metrics, dead


def dlq_count(metrics: StreamMetrics, reason: str) -> float:
    (family,) = metrics.dlq.collect()
    return next(
        s.value
        for s in family.samples
        if s.name == "driftd_dlq_total" and s.labels == {"reason": reason}
    )


def test_the_null_key_policy_defaults_to_the_dlq() -> None:
    assert IngestSettings().null_key == "dlq"
    with pytest.raises(ValueError, match="null_key"):
        IngestSettings(null_key="drop")


def test_tombstones_and_keyless_events_go_to_the_dlq_with_their_reasons(tmp_path):
    store, metrics, dead = run(
        tmp_path,
        [
            record(0, b"c0", utterance(0)),
            record(1, b"c1", None),  # tombstone
            record(2, None, utterance(2)),  # a valid event without a key
            record(3, None, None),  # both: the tombstone is named
            record(4, None, b"{not json"),  # a bad value is named before the missing key
        ],
    )
    assert [(offset, value, reason) for offset, value, reason, _ in dead] == [
        (1, None, "tombstone"),
        (2, utterance(2), "missing_key"),
        (3, None, "tombstone"),
        (4, b"{not json", "not_json"),
    ]
    assert all(detail for *_, detail in dead)
    assert [e.event_id for e in store.hot] == ["u0"]
    assert [dlq_count(metrics, reason) for reason in ("tombstone", "missing_key", "not_json")] == [
        2,
        1,
        1,
    ]


def test_accept_stores_keyless_events_and_still_dead_letters_tombstones(tmp_path):
    store, _, dead = run(
        tmp_path, [record(0, None, utterance(0)), record(1, None, None)], null_key="accept"
    )
    assert [e.event_id for e in store.hot] == ["u0"]
    assert [(offset, reason) for offset, _, reason, _ in dead] == [(1, "tombstone")]


def test_record_reasons_are_distinct_from_the_decoders_and_exported_from_the_start() -> None:
    assert set(RECORD_REJECTION_REASONS) == {"tombstone", "missing_key"}
    assert not set(RECORD_REJECTION_REASONS) & set(REJECTION_REASONS)
    metrics = StreamMetrics(CollectorRegistry())
    assert dlq_count(metrics, "tombstone") == 0 and dlq_count(metrics, "missing_key") == 0
