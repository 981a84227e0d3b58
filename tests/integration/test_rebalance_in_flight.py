"""The consumer group rebalances while batches are in flight (issue 24).

Two replicas with a model read one stream that keeps coming: a second replica joins mid-stream,
then the first leaves mid-stream (SIGTERM), then a third joins and the second is killed (SIGKILL).
The batched hot path finishes and commits the batch in flight before a revoked partition goes
(daemon/batch_ingest.py), so the joins and the graceful leave store nothing twice. A SIGKILLed
replica cannot commit: what it stored after its last commit is read again by the partition's
next owner (Kafka's at-least-once), at most one batch per partition, at the end of what it held.
Every utterance's prediction is published at least once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from models.train import TrainSettings, train_classifier
from tests.integration.harness import (
    DaemonProcess,
    read_topic,
    stored_positions,
    unique,
    valid_event,
)

PARTITIONS = 6
BATCH_SIZE = 200
RATE = 600  # events/s: every phase has batches in flight when the group changes


def publish_model(registry_dir: Path) -> None:
    from models.export import build_version_files
    from models.registry import Registry
    from tests.toy_intents import examples

    texts, intents = examples(["greet", "refund", "track"], 120, seed=4)
    result = train_classifier(texts, intents, settings=TrainSettings(epochs=3))
    files, _ = build_version_files(result.model, result.featurizer, result.labels, texts[:16])
    registry = Registry(registry_dir)
    registry.set_current(registry.publish(files, parent=None, info={"source": "test"}).version)


async def stream_while(bootstrap: str, topic: str, changes: Callable[[], None]) -> list[str]:
    """Produce events at RATE until ``changes`` (run in a thread) returns; their event ids."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent: list[str] = []
    acks = []
    try:
        changing = asyncio.get_running_loop().run_in_executor(None, changes)
        started = time.monotonic()
        while not changing.done():
            event = valid_event(len(sent), run=topic)
            acks.append(
                await producer.send(
                    topic, json.dumps(event).encode(), key=event["conversation_id"].encode()
                )
            )
            sent.append(event["event_id"])
            if len(sent) % 50 == 0:
                await asyncio.sleep(max(0.0, len(sent) / RATE - (time.monotonic() - started)))
        await changing  # its errors
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return sent


@pytest.mark.timeout(600)
def test_rebalances_with_batches_in_flight_lose_nothing_and_store_nothing_twice(
    broker: Any, tmp_path: Path
) -> None:
    publish_model(tmp_path / "registry")
    topic = unique("rebalance")
    env = {
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry"),
        "DRIFTD_INGEST__BATCH_SIZE": str(BATCH_SIZE),
        "DRIFTD_LEARNING__ENABLED": "false",
    }

    def replica(name: str) -> DaemonProcess:
        return DaemonProcess(
            broker.bootstrap, tmp_path / name, topic, partitions=PARTITIONS, extra_env=env
        )

    first, second, third = replica("first"), replica("second"), replica("third")
    replicas = [first, second, third]
    try:
        first.start().wait_ready(timeout_s=90, model=True)
        left: list[tuple[int, float]] = []

        def change_the_group() -> None:
            time.sleep(3)
            second.start().wait_ready(timeout_s=90)  # joins: the first's revoked partitions
            time.sleep(3)  # finish their batches in flight before they go
            left.append(first.terminate(timeout_s=15))  # leaves: its batch is finished
            time.sleep(3)
            third.start().wait_ready(timeout_s=90)
            time.sleep(3)
            second.kill()  # dies: what it stored after its last commit is read again
            time.sleep(3)

        sent = asyncio.run(stream_while(broker.bootstrap, topic, change_the_group))
        assert left and left[0][0] == 0 and left[0][1] < 10, f"SIGTERM: {left}"
        wanted = set(sent)

        def all_stored() -> bool:
            held = set()
            for r in replicas:
                held |= {event_id for event_id, _, _ in stored_positions(r.data_dir)}
            return set(wanted) <= held

        third.wait_until(all_stored, 120, f"all {len(wanted)} events stored by some replica")
        rows = {r.data_dir.name: stored_positions(r.data_dir) for r in replicas}
        held = Counter(event_id for held_by in rows.values() for event_id, _, _ in held_by)
        assert not set(wanted) - set(held), "lost events"

        # Within each store nothing twice; across stores only what the killed replica stored
        # after its last commit: its last batch of a partition at most.
        for name, held_by in rows.items():
            counts = Counter(event_id for event_id, _, _ in held_by)
            assert max(counts.values(), default=1) == 1, f"{name} stored an event twice"
        twice = {event_id for event_id, n in held.items() if n > 1}
        victim_offsets: dict[int, list[int]] = defaultdict(list)
        for _, partition, offset in rows["second"]:
            victim_offsets[partition].append(offset)
        last_batches = {
            (partition, offset)
            for partition, offsets in victim_offsets.items()
            for offset in sorted(offsets)[-BATCH_SIZE:]
        }
        for event_id, partition, offset in rows["second"]:
            assert event_id not in twice or (partition, offset) in last_batches, (
                f"{event_id} (partition {partition}, offset {offset}) is stored twice but is "
                "not in the killed replica's last batch of its partition"
            )
        # the joins and the graceful leave duplicated nothing
        assert twice <= {event_id for event_id, _, _ in rows["second"]}

        utterances = wanted  # valid_event's are utterances
        # more than there can be: reads until the topic's end (the kill may have republished)
        most = len(utterances) + len(twice) + PARTITIONS * BATCH_SIZE
        predictions = asyncio.run(
            read_topic(broker.bootstrap, f"{topic}.predictions", most, timeout_s=20)
        )
        predicted = {json.loads(record.value)["event_id"] for record in predictions}
        assert utterances <= predicted, f"{len(utterances - predicted)} predictions missing"
        print(
            f"\n  {len(wanted)} events over 3 replicas, {len(twice)} re-stored after the kill; "
            f"{len(predictions)} predictions for {len(utterances)} utterances"
        )
    finally:
        for r in replicas:
            r.stop_quietly()
