"""The input topic's hot path, a fetch at a time: fetch -> prepare -> deliver -> commit.

faust's agent machinery costs a few event-loop turns, tasks and futures per record, which capped the
whole daemon at a bare agent's rate (bench/ingest.py). Here one dedicated aiokafka consumer, run
as a mode service beside faust's app, hands each fetch to ``IngestAgent`` as one batch and commits
its offsets once the warm write is durable: no per-record task, future or loop turn. The next
fetch is decoded (``prepare``) while the previous batch is delivered, so the event loop works
while SQLite, ONNX Runtime and the broker do.

Consumer-group semantics:
- a revoked partition waits for the batch in flight: it is finished and committed before the
  partition goes (``on_partitions_revoked``), so the next owner starts after it; a batch
  prepared but not yet delivered is dropped, uncommitted;
- offsets are committed only after ``deliver`` returned (warm durable, DLQ and predictions acked);
- while ingest retries a failing sink it reports itself blocked and the assigned partitions are
  paused (heartbeats go on in aiokafka's background task), then resumed;
- a record batch that cannot be read stalls only its
  partition (``daemon.consumer.fetched_records``);
- stop finishes the batch in flight (bounded by
  ``stop_timeout_s``), commits it and leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from prometheus_client import CollectorRegistry, Histogram

from streams.ingest import IngestAgent, PreparedBatch, RawRecord

from .consumer import PartitionStalls, fetched_records

__all__ = ["BatchIngest", "StallingBatchConsumer"]

log = logging.getLogger("driftd.ingest")


class StallingBatchConsumer(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's consumer whose ``getmany`` stalls only the partition of an unreadable batch."""

    def __init__(self, *topics: str, stalls: PartitionStalls, **options: Any) -> None:
        super().__init__(*topics, **options)
        self.stalls = stalls

    async def getmany(  # partitions are never narrowed here
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        if self._closed:
            raise ConsumerStoppedError()
        self._coordinator.check_errors()
        fetcher = self._fetcher

        def on_unreadable(tp: TopicPartition, offset: int, error: BaseException) -> None:
            self.pause(tp)  # fetched no more until a rebalance assigns it afresh
            self.stalls.stall(tp.topic, tp.partition, offset, error)

        with self._subscription.fetch_context():
            return await fetched_records(
                fetcher, None, timeout_ms / 1000, max_records, on_unreadable=on_unreadable
            )


class _FinishBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, service: BatchIngest) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.service.generation_ends()
        await self.service.finish_in_flight()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.service.assigned(set(assigned))


class BatchIngest(mode.Service):
    """Consumes ``topic`` in batches through ``ingest`` (module docstring)."""

    def __init__(
        self,
        topic: str,
        ingest: IngestAgent,
        new_consumer: Callable[[], StallingBatchConsumer],
        registry: CollectorRegistry,
        *,
        batch_size: int,
        batch_timeout_s: float,
        stop_timeout_s: float = 8.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.topic, self.ingest, self._new_consumer = topic, ingest, new_consumer
        self.batch_size, self.batch_timeout_s = batch_size, batch_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.consumer: StallingBatchConsumer | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._blocked = False
        self._generation = 0  # rebalances begun: a batch prepared across one is dropped
        self._failed_from: dict[TopicPartition, int] = {}  # where a failed batch began
        self.fetch_to_commit = Histogram(
            "driftd_ingest_fetch_to_commit_seconds",
            "From a batch's fetch to the commit of its offsets (decode, warm write, predict, "
            "publish, commit).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment()) if self.consumer is not None else set()

    async def on_start(self) -> None:
        self.consumer = self._new_consumer()
        self.consumer.subscribe([self.topic], listener=_FinishBeforeRevoke(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        await self.finish_in_flight(self.stop_timeout_s)
        if self.consumer is not None:
            await self.consumer.stop()

    def generation_ends(self) -> None:
        """A rebalance begins: the batch being prepared is not delivered (``_consume``)."""
        self._generation += 1

    def assigned(self, partitions: set[TopicPartition]) -> None:
        if self.consumer is None:
            return
        stalls = self.consumer.stalls
        stalled = stalls.keys()
        for topic, partition in stalled:
            if TopicPartition(topic, partition) in partitions:
                stalls.clear(topic, partition, "assigned again: read from the committed offset")

    def blocked(self, blocked: bool) -> None:
        """Ingest's backpressure callback: pause every assigned, unstalled partition while a
        sink fails, resume them once it works again."""
        if self.consumer is None or blocked == self._blocked:
            return
        self._blocked = blocked
        stalled_keys = self.consumer.stalls.keys()
        stalled = {TopicPartition(t, p) for t, p in stalled_keys}
        partitions = self.assignment() - stalled
        if blocked:
            self.consumer.pause(*partitions)
        else:
            self.consumer.resume(*partitions)

    async def finish_in_flight(self, timeout_s: float | None = None) -> None:
        """Wait for the batch in flight (stored, published, committed); on timeout it is left
        uncommitted, so its records are read again by whoever owns them next."""
        batch = self._in_flight
        if batch is None or batch.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(batch), timeout_s)
        except TimeoutError:
            log.warning("the batch in flight did not finish in %.1f s; left uncommitted", timeout_s)

    @mode.Service.task
    async def _consume(self) -> None:
        """Fetch and prepare batch N+1 while batch N is delivered, then deliver N+1 once N is
        committed: one batch in flight, commits in order. A rebalance between the two drops
        the prepared batch: every partition assigned after it restarts from its committed
        offset, so those records are read again by whoever owns them now. A batch that fails
        unexpectedly (a bug: sinks are retried in ``deliver``) is read again, not skipped."""
        assert self.consumer is not None
        while not self.should_stop:
            try:
                fetched = await self.consumer.getmany(
                    timeout_ms=int(self.batch_timeout_s * 1000), max_records=self.batch_size
                )
            except ConsumerStoppedError:
                return
            if not fetched:
                continue
            started, generation = time.monotonic(), self._generation
            first = {tp: batch[0].offset for tp, batch in fetched.items()}
            try:
                prepared = self.ingest.prepare(_raw_records(fetched))
            except Exception:  # one bad batch never stops the daemon: read again
                log.exception("preparing a batch of %d partitions failed", len(fetched))
                prepared = None
            await self.finish_in_flight()
            if self._failed_from:  # the batch before failed: it, and so this one, is read again
                # (where both hold a partition, the failed one's offsets come first)
                self._rewind({**first, **self._failed_from})
                self._failed_from = {}
                continue
            if generation != self._generation or self.should_stop:
                continue
            if prepared is None:
                self._rewind(first)
                continue
            offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items()}
            self._in_flight = asyncio.ensure_future(
                self._deliver(prepared, first, offsets, started)
            )

    async def _deliver(
        self,
        prepared: PreparedBatch,
        first: dict[TopicPartition, int],
        offsets: dict[TopicPartition, int],
        started: float,
    ) -> None:
        assert self.consumer is not None
        try:
            await self.ingest.deliver(prepared)
        except Exception:  # one bad batch never stops the daemon: read again
            log.exception("delivering a batch of %d records failed", len(prepared.records))
            self._failed_from = first
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # stored already, idempotently by offset: read again, not lost
            log.warning("committing the offsets of %d partitions failed: %s", len(offsets), exc)
            return
        self.fetch_to_commit.observe(time.monotonic() - started)

    def _rewind(self, first: dict[TopicPartition, int]) -> None:
        """Read these partitions again from these offsets (those still assigned)."""
        assert self.consumer is not None
        assigned = self.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        log.warning("%d partitions are read again from the failed batch", len(first))


def _raw_records(fetched: dict[TopicPartition, list[Any]]) -> list[RawRecord]:
    return [
        RawRecord(
            r.topic,
            r.partition,
            r.offset,
            r.key,
            r.value,
            r.timestamp / 1000,
            tuple(r.headers or ()),
        )
        for batch in fetched.values()
        for r in batch
    ]
