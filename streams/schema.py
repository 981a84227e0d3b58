"""The conversation event contract: pydantic models, the JSON Schema they generate, and the decoder.

One decoder call turns the raw bytes of a Kafka record into either an :class:`Event` or a
:class:`Rejection` whose ``reason`` is one of :data:`REJECTION_REASONS`. It never raises on
bad input: the ingest path sends every rejection to the dead-letter topic with that reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

__all__ = [
    "EVENT_SCHEMA_PATH",
    "RECORD_REJECTION_REASONS",
    "REJECTION_REASONS",
    "Event",
    "FeedbackEvent",
    "LabelEvent",
    "Rejection",
    "UtteranceEvent",
    "decode_event",
    "event_json_schema",
]

EVENT_SCHEMA_PATH = Path(__file__).with_name("event.schema.json")

# Ordered from most to least fundamental: when a payload has several problems, the first one that
# applies names it (a record with no "type" is
# "missing_field" even if its other fields are wrong too).
REJECTION_REASONS = (
    "too_large",
    "not_json",
    "unknown_type",
    "missing_field",
    "wrong_type",
    "invalid_value",
)
# About the Kafka record rather than its value, decided by ingest (streams/ingest): a record
# with no value (a tombstone; decode_event alone calls it not_json), and a valid event in a
# record with no key under ingest.null_key = "dlq" (a value's own problem is named first).
RECORD_REJECTION_REASONS = ("tombstone", "missing_key")

Identifier = Annotated[str, Field(min_length=1, max_length=256)]
Priority = Literal["low", "normal", "high"]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class _EventBase(BaseModel):
    # strict: "3" is not a turn number and 1 is not a channel name. Unknown fields
    # are kept, not fatal, so producers can add context without a schema release.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)

    event_id: Identifier = Field(
        description="Globally unique id of this event, set by the producer."
    )
    conversation_id: Identifier = Field(description="Conversation this event belongs to.")
    turn: int = Field(
        ge=0,
        le=2**31 - 1,
        description="0-based turn index inside the conversation (stored as int32).",
    )
    ts: float = Field(ge=0, description="Event time, seconds since the Unix epoch (UTC).")
    channel: str | None = Field(
        default=None,
        max_length=64,
        description="Where the conversation happens (web, app, voice...).",
    )
    user_id: str | None = Field(
        default=None,
        max_length=256,
        description="End-user id; pseudonymised before storage unless configured otherwise.",
    )
    priority: Priority = Field(
        default="normal",
        description="Routing priority; tier rules can keep high-priority events hot longer.",
    )
    meta: dict[str, Any] | None = Field(
        default=None, description="Free-form producer metadata, stored as is."
    )

    @model_validator(mode="after")
    def _free_form_values_are_json(self) -> _EventBase:
        # The JSON parser takes NaN and Infinity literals, which RFC 8259 JSON has not; typed fields
        # refuse them (allow_inf_nan=False), free-form ones (meta, unknown fields) are checked here.
        if not (_finite(self.meta) and _finite(self.model_extra)):
            raise PydanticCustomError(
                "json_invalid", "NaN and Infinity are not JSON values (in meta or an unknown field)"
            )
        return self


class UtteranceEvent(_EventBase):
    """Something a user said; the model predicts its intent."""

    type: Literal["utterance"]
    text: str = Field(min_length=1, description="The user's utterance.")


class FeedbackEvent(_EventBase):
    """A signal about an earlier prediction: was it right, and optionally the right intent."""

    type: Literal["feedback"]
    ref_event_id: Identifier = Field(
        description="event_id of the utterance this feedback is about."
    )
    correct: bool | None = Field(
        default=None, description="Whether the prediction served for that utterance was right."
    )
    intent: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The intent the user meant, when known.",
    )


class LabelEvent(_EventBase):
    """The true intent of an earlier utterance, typically from a human labeller, often late."""

    type: Literal["label"]
    ref_event_id: Identifier = Field(description="event_id of the utterance this label is for.")
    intent: str = Field(
        min_length=1, max_length=128, description="The true intent of that utterance."
    )


Event = Annotated[UtteranceEvent | FeedbackEvent | LabelEvent, Field(discriminator="type")]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was refused: ``reason`` is a stable
    label (metrics, DLQ header), ``detail`` is for humans."""

    reason: str
    detail: str


# pydantic error types -> our stable reasons. Anything
# not listed is a value outside its allowed range.
_ERROR_REASON = {
    "json_invalid": "not_json",
    "json_type": "not_json",
    "union_tag_invalid": "unknown_type",
    "union_tag_not_found": "missing_field",
    "missing": "missing_field",
    "literal_error": "invalid_value",
}


def _reason_for(error_type: str) -> str:
    if error_type in _ERROR_REASON:
        return _ERROR_REASON[error_type]
    if error_type.endswith("_type") or error_type.endswith("_parsing"):
        return "wrong_type"
    return "invalid_value"


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "<payload>"
    return f"{where}: {error['msg']}"


def decode_event(raw: bytes, max_bytes: int) -> Event | Rejection:
    """Decode and validate one record value. Never raises for bad input."""
    if raw is None:
        return Rejection("not_json", "record has no value (tombstone)")
    if len(raw) > max_bytes:
        return Rejection("too_large", f"payload is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        return _EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        reasons = [_reason_for(e["type"]) for e in errors]
        reason = min(reasons, key=REJECTION_REASONS.index)
        first = errors[reasons.index(reason)]
        return Rejection(reason, _describe(first))


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema generated from the models; docs/events.md and EVENT_SCHEMA_PATH carry it."""
    schema = _EVENT_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://driftd.dev/schemas/event.schema.json"
    schema["title"] = "driftd conversation event"
    return schema


def write_event_json_schema(path: Path = EVENT_SCHEMA_PATH) -> None:
    path.write_text(json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n")
