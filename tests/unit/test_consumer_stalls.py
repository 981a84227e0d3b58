"""daemon/consumer: real Kafka record batches (aiokafka's builder and parser,
the codecs' libraries) drained the way the daemon's consumer drains them; an
unreadable batch stops its partition only. The whole path, with a librdkafka
producer, the broker and a daemon, is tests/integration/test_codecs.py."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from prometheus_client import CollectorRegistry

from daemon.consumer import PartitionStalls, drain_partition, fetched_records

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
T0, T1 = TopicPartition("conversations", 0), TopicPartition("conversations", 1)


def batch(base_offset: int, values: list[bytes], codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta, value in enumerate(values):
        builder.append(delta, timestamp=None, key=b"c", value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)  # the base offset is outside the CRC
    return bytes(data)


def with_crc(data: bytearray) -> bytes:
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    return bytes(data)


def unknown_codec(base_offset: int) -> bytes:
    data = bytearray(batch(base_offset, [b"x"]))
    # codec 5: none such
    struct.pack_into(">h", data, 21, (struct.unpack_from(">h", data, 21)[0] & ~0x07) | 5)
    return with_crc(data)


def garbage_lz4(base_offset: int) -> bytes:
    data = bytearray(batch(base_offset, [b"x"]))
    struct.pack_into(
        ">h", data, 21, (struct.unpack_from(">h", data, 21)[0] & ~0x07) | CODECS["lz4"]
    )
    data[61:] = b"\x00not an lz4 frame" * 2
    struct.pack_into(">i", data, 8, len(data) - 12)
    return with_crc(data)


def bad_crc(base_offset: int) -> bytes:
    data = bytearray(batch(base_offset, [b"x"]))
    data[-1] ^= 0xFF
    return bytes(data)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Fetcher:
    """What ``fetched_records`` uses of aiokafka's Fetcher:
    real subscriptions and fetch results; no network."""

    def __init__(
        self, fetched: dict[TopicPartition, bytes], loop: asyncio.AbstractEventLoop
    ) -> None:
        loop.run_until_complete(self._subscribe(fetched))

    # aiokafka's state wants a running loop
    async def _subscribe(self, fetched: dict[TopicPartition, bytes]) -> None:
        self._subscriptions = SubscriptionState()
        self._subscriptions.assign_from_user(set(fetched))
        assignment = self._subscriptions.subscription.assignment
        self._records = {}
        for tp, data in fetched.items():
            assignment.state_value(tp).seek(0)
            records = PartitionRecords(tp, MemoryRecords(data), None, 0, None, None, True, 0)
            self._records[tp] = FetchResult(
                tp, assignment=assignment, partition_records=records, backoff=0
            )
        self._wait_consume_future = None
        self._closed = False

    def _notify(self, future) -> None:
        pass

    def position(self, tp: TopicPartition) -> int:
        return self._subscriptions.subscription.assignment.state_value(tp).position


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_aiokafka_knows_is_readable(codec: str, loop) -> None:
    """The codec libraries are installed (cramjam for snappy, lz4 and zstd: aiokafka/codec.py)."""
    values = [f"event {i}".encode() * 20 for i in range(50)]
    fetcher = Fetcher(
        {T0: batch(0, values, CODECS[codec]) + batch(50, values[:5], CODECS[codec])}, loop
    )
    records, error = drain_partition(fetcher._records[T0], None)
    assert error is None
    assert [r.value for r in records] == values + values[:5] and [
        r.offset for r in records
    ] == list(range(55))


@pytest.mark.parametrize(
    ("make_bad", "error_type"),
    [
        (unknown_codec, UnsupportedCodecError),
        (garbage_lz4, Exception),
        (bad_crc, CorruptRecordException),
    ],
    ids=["unknown codec", "garbage lz4 payload", "bad CRC"],
)
def test_a_partition_drains_up_to_the_unreadable_batch_and_its_position_stays_there(
    make_bad, error_type, loop
) -> None:
    fetcher = Fetcher({T0: batch(0, [b"a", b"b", b"c"]) + make_bad(3) + batch(4, [b"after"])}, loop)
    records, error = drain_partition(fetcher._records[T0], None)
    assert [r.value for r in records] == [b"a", b"b", b"c"]
    assert isinstance(error, error_type), repr(error)
    # the next fetch (after a rebalance, a restart) starts at the bad batch
    assert fetcher.position(T0) == 3


def test_max_records_leaves_the_rest_for_the_next_call(loop) -> None:
    fetcher = Fetcher({T0: batch(0, [b"a", b"b", b"c"])}, loop)
    records, error = drain_partition(fetcher._records[T0], 2)
    assert (
        [r.value for r in records] == [b"a", b"b"]
        and error is None
        and fetcher._records[T0].has_more()
    )
    assert fetcher.position(T0) == 2


def test_an_unreadable_batch_is_reported_for_its_partition_and_the_others_are_returned(
    loop,
) -> None:
    fetcher = Fetcher({T0: batch(0, [b"a"]) + unknown_codec(1), T1: batch(0, [b"x", b"y"])}, loop)
    unreadable: list[tuple[TopicPartition, int, BaseException]] = []
    on_unreadable = lambda tp, offset, exc: unreadable.append((tp, offset, exc))  # noqa: E731 - a one-line helper
    got = loop.run_until_complete(fetched_records(fetcher, {T0, T1}, on_unreadable=on_unreadable))
    assert {tp: [r.value for r in records] for tp, records in got.items()} == {
        T0: [b"a"],
        T1: [b"x", b"y"],
    }
    ((tp, offset, error),) = unreadable
    assert (tp, offset) == (T0, 1) and isinstance(error, UnsupportedCodecError)
    # dropped; the caller pauses the partition so that it is not fetched again
    assert T0 not in fetcher._records


def test_without_a_handler_the_error_is_raised_as_aiokafka_would(loop) -> None:
    fetcher = Fetcher({T0: unknown_codec(0)}, loop)
    with pytest.raises(UnsupportedCodecError):
        loop.run_until_complete(fetched_records(fetcher, {T0}))


def test_a_stall_is_counted_shown_logged_and_cleared(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    stalls = PartitionStalls(registry)
    with caplog.at_level(logging.ERROR, logger="driftd.consumer"):
        stalls.stall(
            "conversations", 2, 1194, UnsupportedCodecError("Unknown compression codec 0x05")
        )
    assert "partition stalled: topic conversations partition 2 offset 1194" in caplog.text
    assert "UnsupportedCodecError" in caplog.text
    labels = {"topic": "conversations", "partition": "2"}
    assert registry.get_sample_value("driftd_partition_stalled", labels) == 1
    assert registry.get_sample_value("driftd_partition_stalls_total", labels) == 1
    assert [(s.topic, s.partition, s.offset) for s in stalls.snapshot()] == [
        ("conversations", 2, 1194)
    ]
    stalls.clear("conversations", 2, "assigned again")
    assert (
        registry.get_sample_value("driftd_partition_stalled", labels) == 0
        and stalls.snapshot() == []
    )
    assert registry.get_sample_value("driftd_partition_stalls_total", labels) == 1
