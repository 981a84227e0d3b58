"""``BatchIngest`` on the real embedded broker with a real store: a batch that fails to prepare or
to deliver (a bug, not a failing sink: those are retried inside ``deliver``) is read again from
where it began, so every event is stored exactly once and the group's offsets end at the log's end.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from daemon.batch_ingest import BatchIngest, StallingBatchConsumer
from daemon.broker import TopicSpec, ensure_topics
from daemon.consumer import PartitionStalls
from streams.ingest import IngestAgent, PreparedBatch, RawRecord
from streams.metrics import StreamMetrics
from streams.tiers import TieredStore, TierPolicy
from tests.integration.harness import produce, unique, valid_event

PARTITIONS = 3
EVENTS = 600


@dataclass
class FailingOnce(IngestAgent):
    """A real agent whose second prepare and fourth deliver raise, as a bug would."""

    calls: dict[str, int] = field(default_factory=lambda: {"prepare": 0, "deliver": 0})

    def prepare(self, records: Any) -> PreparedBatch:
        self.calls["prepare"] += 1
        if self.calls["prepare"] == 2:
            raise RuntimeError("a bug in prepare")
        return super().prepare(records)

    async def deliver(self, batch: PreparedBatch) -> tuple[int, int]:
        self.calls["deliver"] += 1
        if self.calls["deliver"] == 4:
            raise RuntimeError("a bug in deliver")
        return await super().deliver(batch)


async def run(
    bootstrap: str, topic: str, tmp_path: Path
) -> tuple[TieredStore, FailingOnce, dict[str, int]]:
    await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS)])
    metrics = StreamMetrics(CollectorRegistry())
    store = await TieredStore(
        tmp_path / "warm.sqlite3", str(tmp_path / "cold"), TierPolicy(60, 3600), 10_000
    ).open()

    async def dead_letter(record: RawRecord, why: Any) -> Any:
        raise AssertionError(f"no record is malformed here: {why}")

    agent = FailingOnce(store, dead_letter, metrics)
    group = f"{topic}-group"

    def new_consumer() -> StallingBatchConsumer:
        return StallingBatchConsumer(
            stalls=PartitionStalls(CollectorRegistry()),
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            rebalance_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )

    service = BatchIngest(
        topic, agent, new_consumer, CollectorRegistry(), batch_size=50, batch_timeout_s=0.1
    )
    await service.start()
    try:
        await produce(
            bootstrap,
            topic,
            [json.dumps(valid_event(i, run=topic)).encode() for i in range(EVENTS)],
        )
        for _ in range(300):
            if store.warm.count >= EVENTS:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything stored twice would show now
    finally:
        await service.stop()
    committed = await committed_offsets(bootstrap, topic, group)
    return store, agent, committed


async def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {
            str(p): await consumer.committed(TopicPartition(topic, p)) or 0
            for p in range(PARTITIONS)
        }
    finally:
        await consumer.stop()


@pytest.mark.timeout(120)
def test_a_batch_that_fails_is_read_again_and_stored_once(broker: Any, tmp_path: Path) -> None:
    topic = unique("batch-ingest")
    store, agent, committed = asyncio.run(run(broker.bootstrap, topic, tmp_path))
    rows = store.warm._db.execute("SELECT event_id FROM events").fetchall()
    assert agent.calls["prepare"] >= 3 and agent.calls["deliver"] >= 5  # both failures happened
    assert len(rows) == len({r for (r,) in rows}) == EVENTS
    assert sum(committed.values()) == EVENTS  # every partition committed to its log's end
