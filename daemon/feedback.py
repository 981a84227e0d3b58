"""Feedback on HTTP predictions: the answers that wait for it, and the events it becomes.

``/v1/predict`` remembers each answer (the redacted text and the prediction) under a random
``prediction_id`` in :class:`PendingPredictions`, bounded in count (``web.feedback_max_pending``)
and age (``web.feedback_horizon_s``). ``POST /v1/feedback`` turns a report into events on the
input topic, keyed by the prediction id so that both land on one partition, in order: first (once
per id) an ``utterance`` with ``event_id = prediction_id`` that carries the served prediction
(``streams.ingest.SERVED_PREDICTION_FIELD``), then the ``label`` (an intent) or ``feedback``
(correct or not) that names it. From there they are stored, joined and trained on exactly like
events a Kafka producer sent, by whichever replica consumes the partition.

The request is answered only once the broker acknowledged every event (503 otherwise: nothing is
acknowledged that could be lost). The pending answers live in this process's memory:
feedback must reach the replica that served the prediction, before it restarts.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.ingest import SERVED_PREDICTION_FIELD
from streams.schema import Rejection, decode_event

from .producer import Send

__all__ = [
    "FeedbackRefused",
    "PendingPredictions",
    "ServedPrediction",
    "encode_events",
    "feedback_events",
    "parse_feedback",
    "publish_feedback",
]

# 12 hex digits of the issue time in ms (to tell an expired id from an unknown one), 20 random ones.
PREDICTION_ID = re.compile(r"[0-9a-f]{32}")
MAX_INTENT_CHARS = 128  # streams.schema's limit on an intent
SOURCE_META = {"source": "http"}


class FeedbackRefused(Exception):
    """A report that cannot be taken: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class ServedPrediction:
    text: str  # as the model saw it: redacted
    intent: str
    confidence: float
    model_version: str
    served_at: float
    # its utterance event is on the input topic: a second report sends only the label
    published: bool = False


class PendingPredictions:
    """Served predictions by id, oldest first; the
    oldest go past ``max_pending`` or ``horizon_s``."""

    def __init__(
        self, horizon_s: float, max_pending: int, clock: Callable[[], float] = time.time
    ) -> None:
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        self.horizon_s = float(horizon_s)
        self.max_pending = int(max_pending)
        self._clock = clock
        self._entries: OrderedDict[str, ServedPrediction] = OrderedDict()
        self._started_ms = int(clock() * 1000)
        # issue time of the newest id dropped for room: older ids were ours, and are gone
        self._evicted_until_ms = -1

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, text: str, intent: str, confidence: float, model_version: str) -> str:
        now = self._clock()
        self.expire(now)
        prediction_id = f"{int(now * 1000):012x}{secrets.token_hex(10)}"
        self._entries[prediction_id] = ServedPrediction(
            text, intent, float(confidence), model_version, now
        )
        while len(self._entries) > self.max_pending:
            evicted, _ = self._entries.popitem(last=False)
            self._evicted_until_ms = max(self._evicted_until_ms, _issued_ms(evicted))
        return prediction_id

    def get(self, prediction_id: Any) -> ServedPrediction:
        """The served prediction, or FeedbackRefused: 422
        malformed, 410 expired or evicted, 404 unknown."""
        if not isinstance(prediction_id, str) or not PREDICTION_ID.fullmatch(prediction_id):
            raise FeedbackRefused(
                422, '"prediction_id" must be the 32 hex digits a /v1/predict answer carries'
            )
        now = self._clock()
        self.expire(now)
        served = self._entries.get(prediction_id)
        if served is not None:
            return served
        age_s = now - _issued_ms(prediction_id) / 1000
        if age_s > self.horizon_s:
            raise FeedbackRefused(
                410,
                f"prediction {prediction_id} expired: served {age_s:.0f} s ago, "
                "feedback is taken for "
                f"{self.horizon_s:g} s "
                "(web.feedback_horizon_s)",
            )
        if _issued_ms(prediction_id) < self._started_ms:
            raise FeedbackRefused(
                404,
                f"unknown prediction {prediction_id}: served before this daemon "
                "started "
                "(answers waiting for feedback live in "
                "memory) or never served",
            )
        if _issued_ms(prediction_id) <= self._evicted_until_ms:
            raise FeedbackRefused(
                410,
                f"prediction {prediction_id} expired: more than {self.max_pending} "
                "predictions "
                "were served after it (web.feedback_max_pending)",
            )
        raise FeedbackRefused(
            404,
            f"unknown prediction {prediction_id}: not served by this daemon "
            "(feedback goes to the replica that answered)",
        )

    def expire(self, now: float | None = None) -> int:
        cutoff = (self._clock() if now is None else now) - self.horizon_s
        dropped = 0
        while self._entries and next(iter(self._entries.values())).served_at <= cutoff:
            self._entries.popitem(last=False)
            dropped += 1
        return dropped


def _issued_ms(prediction_id: str) -> int:
    return int(prediction_id[:12], 16)


def parse_feedback(payload: Any) -> tuple[str, bool | None, str | None]:
    """(prediction_id, correct, intent) of a request
    body; exactly one of correct and intent is set."""
    if not isinstance(payload, dict):
        raise FeedbackRefused(
            422,
            'body must be a JSON object: {"prediction_id", "correct": true|false} '
            'or {"prediction_id", "intent": "..."}',
        )
    unknown = sorted(set(payload) - {"prediction_id", "correct", "intent"})
    if unknown:
        raise FeedbackRefused(
            422,
            f"unknown field(s) {', '.join(map(repr, unknown))}: "
            'give "prediction_id" and one of "correct" or "intent"',
        )
    if "prediction_id" not in payload:
        raise FeedbackRefused(422, 'missing "prediction_id"')
    if ("correct" in payload) == ("intent" in payload):
        raise FeedbackRefused(
            422, 'give exactly one of "correct" (was the answer right) or "intent" (the right one)'
        )
    correct, intent = payload.get("correct"), payload.get("intent")
    if "correct" in payload and not isinstance(correct, bool):
        raise FeedbackRefused(422, '"correct" must be true or false')
    if "intent" in payload and not (
        isinstance(intent, str) and intent.strip() and len(intent) <= MAX_INTENT_CHARS
    ):
        raise FeedbackRefused(
            422, f'"intent" must be a non-empty string of at most {MAX_INTENT_CHARS} characters'
        )
    return payload["prediction_id"], correct, intent


def feedback_events(
    prediction_id: str,
    served: ServedPrediction,
    *,
    correct: bool | None,
    intent: str | None,
    now: float,
) -> list[dict[str, Any]]:
    """The events a report becomes: the utterance (unless
    published already), then its label or feedback.

    An intent is a ``label``. ``correct`` is ``feedback``; when true it also
    carries the served intent, so the utterance is training data as well
    (streams.training_set learns from label and feedback events with an intent).
    """
    common = {"conversation_id": prediction_id, "turn": 0, "meta": SOURCE_META}
    events: list[dict[str, Any]] = []
    if not served.published:
        events.append(
            {
                **common,
                "event_id": prediction_id,
                "type": "utterance",
                "ts": served.served_at,
                "text": served.text,
                SERVED_PREDICTION_FIELD: {
                    "intent": served.intent,
                    "confidence": served.confidence,
                    "model_version": served.model_version,
                },
            }
        )
    report = {
        **common,
        "event_id": f"{prediction_id}-{secrets.token_hex(6)}",
        "ts": now,
        "ref_event_id": prediction_id,
    }
    if intent is not None:
        events.append({**report, "type": "label", "intent": intent})
    else:
        # "wrong" alone does not say what was right
        right = {"intent": served.intent} if correct else {}
        events.append({**report, "type": "feedback", "correct": correct, **right})
    return events


def encode_events(events: list[dict[str, Any]], max_event_bytes: int) -> list[bytes]:
    """Encoded events, each validated as ingest will: a
    refusal there would dead-letter what we acknowledged."""
    encoded = [json.dumps(event).encode() for event in events]
    for event, raw in zip(events, encoded, strict=True):
        decoded = decode_event(raw, max_event_bytes)
        if isinstance(decoded, Rejection):
            raise FeedbackRefused(
                422,
                f"the {event['type']} event would be refused by ingest "
                f"({decoded.reason}): {decoded.detail}",
            )
    return encoded


async def publish_feedback(
    send: Send,
    topic: str,
    prediction_id: str,
    served: ServedPrediction,
    events: list[dict[str, Any]],
    encoded: list[bytes],
    timeout_s: float,
) -> None:
    """Publish in order, each acknowledged before the next (the utterance
    must be stored before its label names it: ingest fills the label's
    text from it); FeedbackRefused(503) when the broker does not ack."""
    key = prediction_id.encode()
    try:
        async with asyncio.timeout(timeout_s):
            for event, raw in zip(events, encoded, strict=True):
                await (await send(topic, key, raw))
                if event["type"] == "utterance":
                    served.published = True
    except TimeoutError:
        raise FeedbackRefused(
            503,
            f"the broker did not acknowledge the feedback within {timeout_s:g} s; "
            "retry (a repeated report is harmless)",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any producer failure means: not acknowledged
        raise FeedbackRefused(
            503,
            f"the broker did not acknowledge the feedback ({type(exc).__name__}: "
            f"{exc}); "
            "retry (a repeated report is harmless)",
        ) from None
