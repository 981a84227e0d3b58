"""The daemon's one way onto Kafka: predictions, dead letters, model announcements, forwarded
quality records, labelling requests and HTTP feedback all go out through ``Producer.send``.

It calls faust's producer directly, not ``Topic.send``: one record per utterance makes faust's
per-message send machinery (codecs, FutureMessage, callbacks) a visible share of the ingest path.
Every send returns once the record is queued, with an awaitable of the broker's acknowledgement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import faust

from streams.ingest import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER, RawRecord
from streams.schema import Rejection

__all__ = ["DeadLetters", "Producer", "Send", "SendTo"]

# (topic, key, value) -> awaitable of the broker's ack
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]


class SendTo(Protocol):
    """``Producer.send`` with the topic bound (``Producer.to``)."""

    async def __call__(self, key: bytes, value: bytes) -> Awaitable[Any]: ...


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
