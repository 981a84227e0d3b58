"""What producers send, as a librdkafka producer sends
it, through the real broker into a real daemon.

confluent-kafka (librdkafka) sends 1,000 events with each codec (none, gzip, snappy, lz4,
zstd), tombstones and events without a key; then a record batch that cannot be read (lz4
attribute, garbage payload, valid CRC: written with the raw Kafka protocol, as no client
would) lands in one partition, followed by more events everywhere. Every event before the bad
batch and on the other partitions is stored exactly once, tombstones and keyless events are in
the DLQ with their reasons, that one partition stalls (metric, log line, alert in promtool),
its committed offset stops at the bad batch, and the daemon stays up and stops cleanly.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from tests.integration.harness import (
    DaemonProcess,
    read_topic,
    stored_event_ids,
    unique,
    valid_event,
)
from tests.promtools import ALERTS, require_binary

confluent_kafka = pytest.importorskip("confluent_kafka")


CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 1000
PARTITIONS = 4
STALLED = 2  # the partition that gets the unreadable batch
CODEC_LZ4 = 3


def unreadable_batch() -> bytes:
    """One v2 record batch whose attributes say lz4 but whose records section is garbage,
    with a valid CRC, so that brokers store it and only a consumer's decompression fails."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=None, key=b"c-bad", value=b"never readable", headers=[])
    batch = bytearray(builder.build())
    attributes = struct.unpack_from(">h", batch, 21)[0]
    struct.pack_into(">h", batch, 21, (attributes & ~0x07) | CODEC_LZ4)
    # the records section starts after the 61-byte batch header
    batch[61:] = b"\x00not an lz4 frame" * 4
    # batch length: everything after the length field
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))  # CRC-32C from the attributes on
    return bytes(batch)


async def write_raw_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Produce ``batch`` as is (Produce request, acks=all); returns its base offset."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        response = await client.send(
            node, ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        )
        ((_, ((_, error_code, offset, *_),)),) = response.topics
        assert error_code == 0, f"the broker refused the batch: error {error_code}"
        return offset
    finally:
        await client.close()


def keyed(events: list[dict]) -> list[tuple[bytes | None, bytes | None]]:
    return [(e["conversation_id"].encode(), json.dumps(e).encode()) for e in events]


def confluent_produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    codec: str,
) -> list[tuple[int, int]]:
    """Send (key, value) records with librdkafka and
    ``codec``; returns each record's (partition, offset)."""
    config = {
        "bootstrap.servers": bootstrap,
        "compression.type": codec,
        "linger.ms": 20,
        "acks": "all",
    }
    producer = confluent_kafka.Producer(config)
    positions: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def delivered(index: int):
        def report(err, msg) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                positions[index] = (msg.partition(), msg.offset())

        return report

    for i, (key, value) in enumerate(records):
        producer.produce(topic, value=value, key=key, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(30) == 0, "librdkafka could not deliver everything in 30 s"
    assert not errors and None not in positions, errors[:3]
    return positions


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    """The group's committed offset of one partition (read without joining the group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()


def promtool_fires(series: str, tmp_path: Path) -> None:
    """The scraped stall series, held for 5 minutes, fires DriftdPartitionStalled in promtool."""
    selector, labels = series.split("{", 1)
    label_map = dict(pair.split("=", 1) for pair in labels.rstrip("}").split(","))
    matcher = ", ".join(f'{k}="{v}"' for k, v in label_map.items())
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    description = next(r for r in rules if r.get("alert") == "DriftdPartitionStalled")[
        "annotations"
    ]["description"]
    summary = (
        f"driftd daemon:8780 has stopped consuming {label_map['topic']} partition "
        f"{label_map['partition']}: "
        "a record batch there cannot be read"
    )
    labels = {
        "alertname": "DriftdPartitionStalled",
        "severity": "critical",
        "instance": "daemon:8780",
        **label_map,
    }
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'{selector}{{job="driftd", instance="daemon:8780", {matcher}}}',
                        "values": "1x10",
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "DriftdPartitionStalled",
                        "exp_alerts": [
                            {
                                "exp_labels": labels,
                                "exp_annotations": {"summary": summary, "description": description},
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "stall.test.yml"
    path.write_text(yaml.safe_dump(test))
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_codec_is_stored_and_an_unreadable_batch_stalls_only_its_partition(
    broker, tmp_path_factory
):
    topic = unique("codecs")
    data_dir = tmp_path_factory.mktemp("codecs")
    daemon = DaemonProcess(broker.bootstrap, data_dir, topic, partitions=PARTITIONS).start()
    group = daemon.env["DRIFTD_KAFKA__GROUP_ID"]
    try:
        daemon.wait_ready()
        sent: dict[str, tuple[int, int]] = {}  # event_id -> (partition, offset)
        for codec in CODECS:
            events = [valid_event(i, run=codec) for i in range(PER_CODEC)]
            positions = confluent_produce(broker.bootstrap, topic, keyed(events), codec)
            sent.update((e["event_id"], pos) for e, pos in zip(events, positions, strict=False))

        tombstones = [(f"c{i}".encode(), None) for i in range(20)]
        keyless = [valid_event(i, run="keyless") for i in range(20)]
        confluent_produce(
            broker.bootstrap,
            topic,
            tombstones + [(None, value) for _, value in keyed(keyless)],
            "lz4",
        )

        bad_offset = asyncio.run(
            write_raw_batch(broker.bootstrap, topic, STALLED, unreadable_batch())
        )
        after = [valid_event(i, run="after") for i in range(200)]
        after_positions = confluent_produce(broker.bootstrap, topic, keyed(after), "zstd")
        behind = {
            e["event_id"] for e, (p, _) in zip(after, after_positions, strict=False) if p == STALLED
        }
        assert behind and len(behind) < len(after), (
            "the keys should spread the later events over every partition"
        )
        sent.update(
            (e["event_id"], pos)
            for e, pos in zip(after, after_positions, strict=False)
            if e["event_id"] not in behind
        )
        assert all(offset < bad_offset for event_id, (p, offset) in sent.items() if p == STALLED)

        dead_count = len(tombstones) + len(keyless)

        def handled() -> bool:
            return (
                daemon.metric("driftd_events_total") >= len(sent)
                and daemon.metric("driftd_dlq_total") >= dead_count
            )

        daemon.wait_until(handled, 60, "every readable record handled")
        stall_series = f"driftd_partition_stalled{{partition={STALLED},topic={topic}}}"
        daemon.wait_until(
            lambda: daemon.metrics().get(stall_series) == 1, 30, "the stall on /metrics"
        )
        # Committed up to the bad batch on its partition, never past it.
        committed = lambda: asyncio.run(committed_offset(broker.bootstrap, group, topic, STALLED))  # noqa: E731 - a one-line helper
        daemon.wait_until(lambda: committed() == bad_offset, 30, "the commit up to the bad batch")

        metrics = daemon.metrics()
        assert metrics["driftd_events_total{type=utterance}"] == len(sent)
        assert metrics["driftd_dlq_total{reason=tombstone}"] == len(tombstones)
        assert metrics["driftd_dlq_total{reason=missing_key}"] == len(keyless)
        assert metrics[f"driftd_partition_stalls_total{{partition={STALLED},topic={topic}}}"] == 1
        assert [
            k for k, v in metrics.items() if k.startswith("driftd_partition_stalled{") and v
        ] == [stall_series]
        assert daemon.proc.poll() is None
        log = daemon.log_path.read_text(errors="replace")
        assert f"partition stalled: topic {topic} partition {STALLED} offset {bad_offset}" in log
        assert "DecompressionError" in log  # the error is named
        assert "We experienced a crash" not in log

        dead = asyncio.run(read_topic(broker.bootstrap, daemon.dlq, dead_count))
        reasons = Counter(dict(r.headers)["driftd-reason"].decode() for r in dead)
        assert reasons == {"tombstone": len(tombstones), "missing_key": len(keyless)}
        # as sent
        assert sorted(r.value for r in dead if r.value is not None) == sorted(
            v for _, v in keyed(keyless)
        )

        # the bad batch and what follows it stay in the log, unconsumed
        assert committed() == bad_offset
        promtool_fires(stall_series, data_dir)
        code, _ = daemon.terminate(timeout_s=30)
        assert code == 0
    finally:
        daemon.stop_quietly()
    # each exactly once; none from behind the bad batch
    assert stored_event_ids(data_dir) == Counter(sent.keys())
