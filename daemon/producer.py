"""The daemon's one way onto Kafka: predictions, dead letters, model announcements, forwarded
quality records, labelling requests and HTTP feedback all go out through ``Producer.send``, and
stream predictions through ``Producer.send_batch``: a fetch's predictions per partition as record
batches, with one acknowledgement, instead of a future and a callback per record.

It calls faust's producer directly, not ``Topic.send``: one record per utterance makes faust's
per-message send machinery (codecs, FutureMessage, callbacks) a visible share of the ingest path.
Every send returns once the record is queued, with an awaitable of the broker's acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import faust

from streams.ingest import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER, RawRecord
from streams.schema import Rejection

__all__ = ["BatchSendTo", "DeadLetters", "Producer", "Send", "SendTo"]

# (topic, key, value) -> awaitable of the broker's ack
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]


class SendTo(Protocol):
    """``Producer.send`` with the topic bound (``Producer.to``)."""

    async def __call__(self, key: bytes, value: bytes) -> Awaitable[Any]: ...


class BatchSendTo(Protocol):
    """``Producer.send_batch`` with the topic bound (``Producer.batches_to``)."""

    async def __call__(
        self, partition: int, records: Sequence[tuple[bytes, bytes]]
    ) -> Awaitable[Any]: ...


class Producer:
    def __init__(self, app: faust.App) -> None:
        self._app = app  # its producer is created and started with the app

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]:
        return await self._app.producer.send(
            topic, key, value, partition=partition, timestamp=None, headers=headers
        )

    async def send_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]]
    ) -> Awaitable[Any]:
        """Queue (key, value) records on one partition, in this order, as few record batches as
        fit (``producer_max_batch_size`` bytes each); returns the acknowledgement of them all.
        aiokafka keeps one batch per partition in flight, so the order holds on the broker."""
        # faust's wrapper has no batch API: its aiokafka producer does (faust-streaming pinned)
        producer = self._app.producer._ensure_producer()  # type: ignore[attr-defined]  # pinned
        acks = []
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # an empty batch takes one
        if batch.record_count():
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        return asyncio.gather(*acks)

    def batches_to(self, topic: str, partitions: int) -> BatchSendTo:
        """``send_batch`` with its topic bound; an input partition's records go to the same
        partition number (modulo ``partitions``), as dead letters do."""

        async def send_to(partition: int, records: Sequence[tuple[bytes, bytes]]) -> Awaitable[Any]:
            return await self.send_batch(topic, partition % partitions, records)

        return send_to

    def to(self, topic: str) -> SendTo:
        """``send`` with its topic bound: the sink of one kind of record."""

        async def send_to(key: bytes, value: bytes) -> Awaitable[Any]:
            return await self.send(topic, key, value)

        return send_to


class DeadLetters:
    """Ingest's rejected records, on the dead-letter topic: the original key and value, with why
    (``REASON_HEADER``, ``DETAIL_HEADER``) and where from (``SOURCE_HEADER``) in headers."""

    def __init__(self, producer: Producer, topic: str, partitions: int) -> None:
        self.producer, self.topic, self.partitions = producer, topic, partitions

    async def send(self, record: RawRecord, rejection: Rejection) -> Awaitable[Any]:
        # cut on a character boundary
        detail = rejection.detail.encode("utf-8", "replace")[:1024].decode("utf-8", "ignore")
        headers = [
            (REASON_HEADER, rejection.reason.encode()),
            (DETAIL_HEADER, detail.encode()),
            (SOURCE_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        return await self.producer.send(
            self.topic,
            record.key,
            record.value,
            # the source partition's number on the dead-letter topic, where it has one
            partition=record.partition % self.partitions,
            headers=headers,
        )
