"""The stored form of an event, shared by every tier (one column list, one row shape)."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

__all__ = ["COLUMNS", "EventKey", "StoredEvent"]


# Where a record sits in Kafka, (topic, partition, offset): the idempotency key of every tier.
# A plain tuple: it is built for every event on the ingest path.
EventKey = tuple[str, int, int]


@dataclass(slots=True)
class StoredEvent:
    topic: str
    partition: int
    offset: int
    event_id: str
    type: str
    ts: float
    conversation_id: str
    turn: int
    priority: str
    channel: str | None
    user_ref: str | None  # pseudonymised (or clear, if configured) user id
    text: str | None  # utterance text
    ref_event_id: str | None
    intent: str | None
    correct: bool | None
    ref_text: str | None  # text of the referenced utterance, filled when it is known at write time
    payload: bytes  # the event as JSON, user_id handled per config
    kafka_ts: float  # broker/producer record timestamp, seconds
    ingested_at: float  # when driftd stored it, seconds; tier ages are measured from here

    @property
    def key(self) -> EventKey:
        return (self.topic, self.partition, self.offset)

    def row(self) -> tuple[Any, ...]:
        return _ROW(self)  # attrgetter, not dataclasses.astuple: 30x cheaper on the ingest hot path


COLUMNS: tuple[str, ...] = tuple(StoredEvent.__dataclass_fields__)
_ROW = attrgetter(*COLUMNS)
