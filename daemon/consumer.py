"""The input consumer's drain, made to stall one partition on a record batch it cannot read
instead of failing the whole fetch.

aiokafka decompresses and parses a partition's records only when they are drained
(``Fetcher.fetched_records``). A batch it cannot read (an unknown codec, a codec whose library is
missing, a compressed payload that does not decompress, a bad CRC or record structure) raises there,
out of the whole fetch, and retrying only raises again, since the same bytes come back. Records
already drained from other partitions in that call would be lost from the return while their
positions had moved on.

Here each partition is drained on its own. The records before an unreadable batch are returned; the
partition is paused in aiokafka at the batch (a rebalance starts it afresh), so nothing at or after
it is consumed or committed and nothing is lost: the log still has it. The other partitions go on.
``driftd_partition_stalled`` and an error log line name the partition and offset (alert
DriftdPartitionStalled); docs/metrics.md says what an operator can do.

``daemon.batch_ingest.StallingBatchConsumer.getmany`` calls ``fetched_records`` below, which
follows aiokafka 0.14.0's ``Fetcher.fetched_records`` (pinned in pyproject.toml) with one change:
a partition that raises is stalled, not the whole fetch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer.fetcher import FetchResult
from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = [
    "PartitionStalls",
    "Stall",
    "drain_partition",
    "fetched_records",
]

log = logging.getLogger("driftd.consumer")

# (topic, partition, offset of the first record not read, the error): called from the batch
# consumer's getmany, in the event loop
OnUnreadable = Callable[[Any, int, BaseException], None]


@dataclass(frozen=True)
class Stall:
    topic: str
    partition: int
    offset: int  # the first offset not consumed: where the unreadable batch begins
    error: str
    since: float


class PartitionStalls:
    """Which partitions stand still at an unreadable batch: metrics, log lines and
    ``driftd status``. Written by the ingest consumer, read by metrics and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stalled_gauge = Gauge(
            "driftd_partition_stalled",
            "1 while consumption of a partition stands still at a record batch "
            "the consumer cannot read "
            "(codec, corrupt data).",
            ["topic", "partition"],
            registry=registry,
        )
        self.stalls_total = Counter(
            "driftd_partition_stalls_total",
            "Times a partition stopped at a record batch the consumer cannot read.",
            ["topic", "partition"],
            registry=registry,
        )
        self._stalls: dict[tuple[str, int], Stall] = {}
        self._lock = threading.Lock()

    def stall(self, topic: str, partition: int, offset: int, error: BaseException) -> None:
        described = f"{type(error).__name__}: {error}"[:500]
        with self._lock:
            self._stalls[(topic, partition)] = Stall(
                topic, partition, offset, described, time.time()
            )
        self.stalled_gauge.labels(topic, str(partition)).set(1)
        self.stalls_total.labels(topic, str(partition)).inc()
        log.error(
            "partition stalled: topic %s partition %d offset %d: a record "
            "batch there cannot be read (%s). "
            "Consumption of this partition stops here and nothing at or after "
            "offset %d is committed; the other "
            "partitions go on. See DriftdPartitionStalled in docs/metrics.md.",
            topic,
            partition,
            offset,
            described,
            offset,
        )

    def clear(self, topic: str, partition: int, why: str) -> None:
        with self._lock:
            stall = self._stalls.pop((topic, partition), None)
        if stall is not None:
            self.stalled_gauge.labels(topic, str(partition)).set(0)
            log.warning(
                "partition %s/%d no longer stalled at offset %d (%s)",
                topic,
                partition,
                stall.offset,
                why,
            )

    def snapshot(self) -> list[Stall]:
        with self._lock:
            return sorted(self._stalls.values(), key=lambda s: (s.topic, s.partition))

    def keys(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._stalls)


def drain_partition(
    result: FetchResult, max_records: int | None
) -> tuple[list[Any], BaseException | None]:
    """Up to ``max_records`` records of one partition's fetch result (aiokafka's
    ``FetchResult.getall``, which loses the records before an error): on an unreadable batch,
    the records before it and the error, with the position just after the last one returned."""
    if not result.check_assignment(result._topic_partition) or not result.has_more():
        return [], None  # no longer assigned, or paused
    records: list[Any] = []
    partition_records = result._partition_records
    try:
        for record in partition_records:
            records.append(record)
            if max_records is not None and len(records) >= max_records:
                result._update_position()
                return records, None
    except Exception as exc:  # noqa: BLE001 - whatever the batch raises, only its partition stops
        if records:
            state = result._assignment.state_value(result._topic_partition)
            state.consumed_to(records[-1].offset + 1)
        return records, exc
    result._update_position()  # drained: as getall does
    result._partition_records = None
    return records, None


async def fetched_records(
    fetcher: Any,
    partitions: Iterable[Any] | None,
    timeout: float = 0,
    max_records: int | None = None,
    on_unreadable: OnUnreadable | None = None,
) -> dict[Any, list[Any]]:
    """aiokafka 0.14.0's ``Fetcher.fetched_records``, each partition drained on its own: one
    that raises is handed to ``on_unreadable`` (which pauses it) with the records before
    the bad batch returned, instead of the error leaving the whole call. Fetch errors
    (``FetchError``: offsets out of range, authorisation) still raise, as in aiokafka."""
    partitions = set(partitions or ())
    while True:
        if fetcher._subscriptions.reassignment_in_progress:
            await fetcher._subscriptions.wait_for_assignment()
        start_time = time.monotonic()
        drained: dict[Any, list[Any]] = {}
        for tp in list(fetcher._records.keys()):
            if partitions and tp not in partitions:
                if not fetcher._subscriptions.is_assigned(tp):
                    del fetcher._records[tp]
                continue
            res_or_error = fetcher._records[tp]
            if type(res_or_error) is FetchResult:
                records, error = drain_partition(res_or_error, max_records)
                if error is not None or not res_or_error.has_more():
                    del fetcher._records[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                if error is not None and on_unreadable is not None:
                    # The position stands after the last record
                    # returned: the start of what could not be read.
                    position = fetcher._subscriptions.subscription.assignment.state_value(
                        tp
                    ).position
                    on_unreadable(tp, position, error)
                elif error is not None:
                    raise error
                if not records:
                    continue
                drained[tp] = records
                if max_records is not None:
                    max_records -= len(records)
                    if max_records == 0:
                        break
            elif drained:
                return drained  # the error is raised on the next call, as in aiokafka
            else:
                del fetcher._records[tp]
                fetcher._notify(fetcher._wait_consume_future)
                res_or_error.check_raise()

        if drained or not timeout:
            return drained

        if not await _wait_for_fetch(fetcher, timeout):
            return {}
        timeout = max(0, timeout - (time.monotonic() - start_time))


async def _wait_for_fetch(fetcher: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` for the next fetch result; False when
    none came or the fetcher closed (aiokafka's wait, unchanged)."""
    waiter = fetcher._create_fetch_waiter()
    done, pending = await asyncio.wait([waiter], timeout=timeout)
    if not done or fetcher._closed:
        if pending:
            pending.pop().cancel()
        return False
    if waiter.done():
        waiter.result()  # authorisation errors
    return True
