"""Ingest: decode and validate each record, dead-letter
the malformed ones, store the rest in the tiers.

The daemon's hot path (daemon/batch_ingest) hands it one fetch at a time: ``prepare`` decodes,
validates and redacts the batch (CPU only), ``deliver`` dead-letters, stores, predicts and
publishes it and returns only once every valid record is durable in warm, every malformed one is
on the DLQ and every prediction is acknowledged; only then are its offsets committed. Failing sinks
are retried (``on_blocked`` pauses consumption meanwhile: backpressure), never skipped. One bad
record never stops the daemon: a tombstone (no value) and, under ingest.null_key = "dlq", a valid
event without a record key go to the DLQ too.

Personal data is handled before a valid event goes anywhere: the configured patterns
(streams.redact) are replaced in its text, meta and unknown fields, and user_id is
pseudonymised (UserIdPolicy), so the tiers, the predictions topic, the observe hook
and the model only ever see the redacted event. The DLQ gets the original bytes of a
malformed record (it may not even decode), for operators to inspect.

An utterance that carries ``served_prediction`` (an HTTP prediction its client
reported on, daemon/feedback) is stored but not predicted again: the observe hook
gets the served prediction, so its outcome judges exactly what the client was told.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from .metrics import StreamMetrics, observe_all
from .redact import Redactor
from .schema import Event, Rejection, decode_event
from .tiers import StoredEvent, TieredStore

__all__ = [
    "SERVED_PREDICTION_FIELD",
    "BatchObserver",
    "DeadLetterSink",
    "IngestAgent",
    "PredictionSink",
    "Predictor",
    "PreparedBatch",
    "RawRecord",
    "UserIdPolicy",
    "served_prediction",
    "to_stored",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

REASON_HEADER = "driftd-reason"
DETAIL_HEADER = "driftd-detail"
SOURCE_HEADER = "driftd-source"
# Record-level rejections (streams.schema.RECORD_REJECTION_REASONS):
# the value's own problem, if any, is named first.
TOMBSTONE = Rejection(
    "tombstone", "record has no value (a tombstone): driftd events are never deleted by key"
)
MISSING_KEY = Rejection(
    "missing_key",
    "record has no key: producers key each event by its conversation_id "
    '(ingest.null_key = "accept" stores it)',
)
# An utterance answered over HTTP and reported back
# (daemon/feedback) carries the prediction its client was told.
SERVED_PREDICTION_FIELD = "served_prediction"


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float  # seconds
    headers: Sequence[tuple[str, bytes]] = ()


# texts -> prediction dicts, None: no model yet
Predictor = Callable[[list[str]], "list[dict[str, Any]] | None"]
# After each stored batch: its valid events, and the (utterance, prediction) pairs made for it.
BatchObserver = Callable[
    [Sequence["StoredEvent"], Sequence[tuple["StoredEvent", dict[str, Any]]]], None
]


class PredictionSink(Protocol):
    async def __call__(
        self, partition: int, records: Sequence[tuple[bytes, bytes]]
    ) -> Awaitable[Any]:
        """Queue (key, value) records in this order on the predictions topic's partition for
        the input's ``partition`` (record batches, not one send each); the returned awaitable
        resolves once the broker has them all."""


class DeadLetterSink(Protocol):
    async def __call__(self, record: RawRecord, rejection: Rejection) -> Awaitable[Any]:
        """Queue the record for the DLQ; the returned awaitable resolves once the broker has it."""


@dataclass(frozen=True)
class UserIdPolicy:
    mode: str = "pseudonymised"  # "pseudonymised" | "clear" | "drop"
    salt: bytes = b""

    def apply(self, user_id: str | None) -> str | None:
        if user_id is None or self.mode == "drop":
            return None
        if self.mode == "clear":
            return user_id
        return hmac.new(self.salt, user_id.encode(), hashlib.sha256).hexdigest()[:32]


def to_stored(
    record: RawRecord,
    event: Event,
    users: UserIdPolicy,
    now: float,
    redactor: Redactor | None = None,
) -> StoredEvent:
    # Read type-specific fields from __dict__: getattr on a missing one raises inside pydantic's
    # __getattr__ (extra="allow"), which costs more than the whole rest of this function.
    fields = event.__dict__
    user_ref = users.apply(event.user_id)
    # Redacted text, meta and unknown fields: what is
    # stored (row and payload), predicted and published.
    update = (
        redactor.event_updates(fields, event.__pydantic_extra__) if redactor is not None else {}
    )
    if event.user_id is not None and user_ref != event.user_id:
        update["user_id"] = user_ref
    payload = record.value
    if update:  # the original bytes are kept only when nothing in them changed
        payload = event.model_copy(update=update).model_dump_json(exclude_none=True).encode()
    return StoredEvent(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event_id=event.event_id,
        type=event.type,
        ts=event.ts,
        conversation_id=event.conversation_id,
        turn=event.turn,
        priority=event.priority,
        channel=event.channel,
        user_ref=user_ref,
        text=update.get("text", fields.get("text")),
        ref_event_id=fields.get("ref_event_id"),
        intent=fields.get("intent"),
        correct=fields.get("correct"),
        ref_text=None,
        payload=payload,
        kafka_ts=record.timestamp,
        ingested_at=now,
    )


def served_prediction(event: Event) -> dict[str, Any] | None:
    """The prediction an utterance was already answered with
    (``SERVED_PREDICTION_FIELD``), as a prediction dict with ``source="http"``;
    None when it carries none or one of the wrong shape (it is then predicted)."""
    served = (event.__pydantic_extra__ or {}).get(SERVED_PREDICTION_FIELD)
    if not isinstance(served, dict):
        return None
    intent, confidence, version = (
        served.get("intent"),
        served.get("confidence"),
        served.get("model_version"),
    )
    if not (isinstance(intent, str) and isinstance(version, str)):
        return None
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
        return None
    top = {"intent": intent, "confidence": float(confidence)}
    return {**top, "top_k": [top], "model_version": version, "source": "http"}


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A decoded batch (``IngestAgent.prepare``): its records, the valid events, the rejections,
    the utterances already answered over HTTP with their served predictions, and the model call
    for the others, already started."""

    records: Sequence[RawRecord]
    valid: list[StoredEvent]
    rejected: list[tuple[RawRecord, Rejection]]
    served: list[tuple[StoredEvent, dict[str, Any]]]
    to_predict: list[StoredEvent]  # the other utterances
    predictions: asyncio.Future[list[dict[str, Any]] | None] | None  # theirs, under way


@dataclass
class IngestAgent:
    store: TieredStore
    dead_letter: DeadLetterSink
    metrics: StreamMetrics
    max_event_bytes: int = 65536
    users: UserIdPolicy = field(default_factory=UserIdPolicy)
    # privacy.redact_patterns, applied before anything is stored or published
    redactor: Redactor | None = None
    clock: Callable[[], float] = time.time
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    predict: Predictor | None = None
    publish_prediction: PredictionSink | None = None
    observe: BatchObserver | None = None  # the learning loop's hook (outcome join, decay monitor)
    # ingest.null_key: a valid event without a record
    # key is dead-lettered ("dlq") or stored ("accept")
    null_key: str = "dlq"
    # pass served HTTP predictions to ``observe`` (web.monitor_http_predictions)
    observe_served: bool = True
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # for the lag gauge
    # backpressure: called with True when a sink starts failing, False once every sink works again
    on_blocked: Callable[[bool], None] | None = None
    _blocked_sinks: set[str] = field(default_factory=set)

    def _set_blocked(self, sink: str, blocked: bool) -> None:
        before = bool(self._blocked_sinks)
        if blocked:
            self._blocked_sinks.add(sink)
        else:
            self._blocked_sinks.discard(sink)
        if self.on_blocked is not None and bool(self._blocked_sinks) != before:
            self.on_blocked(bool(self._blocked_sinks))

    async def handle(self, records: Sequence[RawRecord]) -> tuple[int, int]:
        """Store the valid records and dead-letter the rest; returns (stored, dead-lettered)."""
        return await self.deliver(self.prepare(records))

    def prepare(self, records: Sequence[RawRecord]) -> PreparedBatch:
        """Decode, validate and redact a batch and start its model call. Nothing is stored or
        sent yet: a caller may prepare the next batch while the previous one is delivered, and
        may drop a prepared batch."""
        now = self.clock()
        valid: list[StoredEvent] = []
        rejected: list[tuple[RawRecord, Rejection]] = []
        # answered over HTTP already: never predicted again
        served: list[tuple[StoredEvent, dict[str, Any]]] = []
        for record in records:
            decoded = (
                TOMBSTONE
                if record.value is None
                else decode_event(record.value, self.max_event_bytes)
            )
            if record.key is None and self.null_key == "dlq" and not isinstance(decoded, Rejection):
                decoded = MISSING_KEY
            if isinstance(decoded, Rejection):
                rejected.append((record, decoded))
            else:
                valid.append(stored := to_stored(record, decoded, self.users, now, self.redactor))
                if (
                    stored.type == "utterance"
                    and (prediction := served_prediction(decoded)) is not None
                ):
                    served.append((stored, prediction))
        served_ids = {id(event) for event, _ in served}
        unserved = [e for e in valid if e.type == "utterance" and id(e) not in served_ids]
        return PreparedBatch(
            records, valid, rejected, served, unserved, self._start_predicting(unserved)
        )

    async def deliver(self, batch: PreparedBatch) -> tuple[int, int]:
        """Dead-letter, store, predict and publish a prepared batch, then observe it; returns
        (stored, dead-lettered) once every sink has it (retried until then: backpressure)."""
        records, valid, rejected, served = batch.records, batch.valid, batch.rejected, batch.served
        _, inserted, predicted = await asyncio.gather(
            self._retry(
                "dlq",
                self._delivery_attempt(rejected, lambda r: self.dead_letter(*r), "dead letter(s)"),
            ),
            self._retry("warm", lambda: self.store.write(valid)),
            self._publish_predictions(batch.to_predict, batch.predictions),
        )
        # the outcome judges exactly what the HTTP client was told
        if served and self.observe_served:
            predicted = [*predicted, *served]

        stored_at = self.clock()
        for kind, count in Counter(event.type for event in valid).items():
            self.metrics.events.labels(kind).inc(count)
        for reason, count in Counter(rejection.reason for _, rejection in rejected).items():
            self.metrics.dlq.labels(reason).inc(count)
        observe_all(self.metrics.ingest_latency, [max(0.0, stored_at - e.kafka_ts) for e in valid])
        if len(valid) > inserted:
            self.metrics.duplicates.inc(len(valid) - inserted)
        self.metrics.batch_size.observe(len(records))
        for record in records:  # records of one partition arrive in offset order
            self.next_offsets[(record.topic, record.partition)] = record.offset + 1
        if self.observe is not None:
            try:
                self.observe(valid, predicted)
            except Exception:
                log.exception("the batch observer failed on a batch of %d events", len(valid))
        return len(valid), len(rejected)

    def _start_predicting(
        self, utterances: list[StoredEvent]
    ) -> asyncio.Future[list[dict[str, Any]] | None] | None:
        """One model call for the batch's utterances, started in a worker thread as soon as the
        batch is prepared, so it runs while the previous batch is delivered."""
        if not utterances or self.predict is None or self.publish_prediction is None:
            return None
        return asyncio.get_running_loop().run_in_executor(
            None, self.predict, [e.text or "" for e in utterances]
        )

    async def _publish_predictions(
        self,
        utterances: list[StoredEvent],
        predicting: asyncio.Future[list[dict[str, Any]] | None] | None,
    ) -> list[tuple[StoredEvent, dict[str, Any]]]:
        """The batch's predictions on `predictions`, in record batches per input partition and
        in its order."""
        if predicting is None or self.publish_prediction is None:
            return []
        try:
            predictions = await predicting
        except Exception:  # a model that fails must not stop ingest: stored, not predicted
            log.exception(
                "predicting %d utterances failed; they are stored unpredicted", len(utterances)
            )
            predictions = None
        if predictions is None:
            self.metrics.predictions_skipped.inc(len(utterances))
            return []
        # Each input partition's predictions go out together, in event order: one item (and
        # one record batch or a few) per partition instead of one send per utterance.
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for e, p in zip(utterances, predictions, strict=True):
            value = {"event_id": e.event_id, "conversation_id": e.conversation_id, "ts": e.ts, **p}
            by_partition.setdefault(e.partition, []).append(
                (e.conversation_id.encode(), orjson.dumps(value))
            )
        publish = self.publish_prediction
        await self._retry(
            "predictions",
            self._delivery_attempt(
                list(by_partition.items()), lambda item: publish(*item), "prediction batch(es)"
            ),
        )
        self.metrics.predictions.inc(len(utterances))
        return list(zip(utterances, predictions, strict=True))

    @staticmethod
    def _delivery_attempt(
        items: list[T], send: Callable[[T], Awaitable[Awaitable[Any]]], what: str
    ) -> Callable[[], Awaitable[None]]:
        """One attempt sends every item not yet delivered;
        a retry resends only those that failed."""
        pending = list(items)

        async def attempt() -> None:
            nonlocal pending
            results = await asyncio.gather(
                *[await send(item) for item in pending], return_exceptions=True
            )
            failed = [
                (item, res)
                for item, res in zip(pending, results, strict=True)
                if isinstance(res, BaseException)
            ]
            pending = [item for item, _ in failed]
            if failed:
                raise RuntimeError(f"{len(failed)} {what} not delivered: {failed[0][1]!r}")

        return attempt

    async def _retry(self, sink: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """Retry until it works: losing a record is worse than pausing consumption (backpressure:
        the agent takes no new batch and commits nothing until this one is stored)."""
        delay = self.retry_initial_s
        failures, since = 0, time.monotonic()
        while True:
            try:
                result = await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any storage/broker failure is retried the same way
                failures += 1
                self.metrics.store_errors.labels(sink).inc()
                self.metrics.ingest_blocked.labels(sink).set(1)
                self._set_blocked(sink, True)
                log.error(
                    "writing to %s failed (attempt %d), consumption paused, retrying in %.1fs: %s",
                    sink,
                    failures,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if failures:
                self.metrics.ingest_blocked.labels(sink).set(0)
                self._set_blocked(sink, False)
                log.warning(
                    "writing to %s works again after %d failed attempts (%.1f s "
                    "paused); consumption resumes",
                    sink,
                    failures,
                    time.monotonic() - since,
                )
            return result
