"""faust's Kafka consumer, made to stall one partition
on a record batch it cannot read instead of dying.

aiokafka decompresses and parses a partition's records only when faust drains them
(``Fetcher.fetched_records``). A batch it cannot read (an unknown codec, a codec whose library is
missing, a compressed payload that does not decompress, a bad CRC or record structure) raises there,
out of the whole fetch: faust's consumer thread crashes the worker ("We experienced a crash!"), and
retrying only raises again, since the same bytes come back. Records already drained from other
partitions in that call would be lost from the return while their positions had moved on.

Here each partition is drained on its own. The records before an unreadable batch are returned; the
partition is paused in aiokafka at the batch (faust never resumes an aiokafka
pause; a rebalance starts it afresh), so nothing at or after it is consumed or
committed and nothing is lost: the log still has it. The other partitions go on.
``driftd_partition_stalled`` and an error log line name the partition and offset
(alert DriftdPartitionStalled); docs/metrics.md says what an operator can do.

faust lets an app bring its own transport: ``StallingApp`` (built in daemon/app.py) makes
``StallingTransport`` its transport, and so gives it this consumer. The one narrow override
is ``_fetch_records`` of faust's aiokafka consumer thread, whose drain loop
(``fetched_records`` below) follows aiokafka 0.14.0's ``Fetcher.fetched_records``
(pinned in pyproject.toml) with one change: a partition that raises is stalled, not the whole fetch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.consumer.fetcher import FetchResult
from aiokafka.errors import ConsumerStoppedError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT
from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = [
    "PartitionStalls",
    "Stall",
    "StallingApp",
    "StallingTransport",
    "drain_partition",
    "fetched_records",
]

log = logging.getLogger("driftd.consumer")

# (topic, partition, offset of the first record not
# read, the error): called in the consumer's thread
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
    ``driftd status``. Written from faust's consumer thread, read from the event loop."""

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
    """Up to ``max_records`` records of one partition's fetch result, one at
    a time so that the position moves past each record returned and no
    further: on an unreadable batch, the records before it and the error."""
    records: list[Any] = []
    try:
        while max_records is None or len(records) < max_records:
            record = result.getone()  # None once drained (or no longer assigned/paused)
            if record is None:
                break
            records.append(record)
    except Exception as exc:  # noqa: BLE001 - whatever the batch raises, only its partition stops
        return records, exc
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


class StallingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread with the per-partition drain (module docstring)."""

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        if not self.consumer.flow_active:
            return {}
        fetcher = consumer._fetcher
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        transport = self.consumer.transport
        if not isinstance(transport, StallingTransport):
            raise TypeError(f"{type(self).__name__} needs StallingTransport, not {transport!r}")
        stalls = transport.stalls
        if stalls.keys():
            paused = {(tp.topic, tp.partition) for tp in consumer.paused()}
            # a rebalance assigned it afresh (or to another replica)
            for topic, partition in stalls.keys() - paused:
                stalls.clear(
                    topic,
                    partition,
                    "revoked or assigned again: read again from the committed offset",
                )

        def on_unreadable(tp: Any, offset: int, error: BaseException) -> None:
            # aiokafka fetches it no more; faust never resumes it (a rebalance does)
            consumer.pause(tp)
            stalls.stall(tp.topic, tp.partition, offset, error)

        with fetcher._subscriptions.fetch_context():
            return await fetched_records(
                fetcher,
                active_partitions,
                timeout=timeout or 0,
                max_records=max_records,
                on_unreadable=on_unreadable,
            )


class StallingConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> StallingConsumerThread:
        return StallingConsumerThread(self, loop=self.loop, beacon=self.beacon)


class StallingTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with ``StallingConsumer``;
    ``stalls`` records what stands still."""

    Consumer = StallingConsumer

    def __init__(self, url: Any, app: Any, *, stalls: PartitionStalls, **kwargs: Any) -> None:
        super().__init__(url, app, **kwargs)
        self.stalls = stalls


class StallingApp(faust.App):
    """A faust app whose transport is ``StallingTransport``, recording in ``stalls``."""

    def __init__(self, *args: Any, stalls: PartitionStalls, **kwargs: Any) -> None:
        self._stalls = (
            stalls  # before faust's __init__: whatever it builds may ask for the transport
        )
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return StallingTransport(self.conf.broker_consumer, self, stalls=self._stalls)
