"""The event contract: the committed JSON Schema, the
decoder's verdicts, and the examples in docs/events.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.schema import (
    EVENT_SCHEMA_PATH,
    REJECTION_REASONS,
    FeedbackEvent,
    LabelEvent,
    Rejection,
    UtteranceEvent,
    decode_event,
    event_json_schema,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "events.md"
LIMIT = 65536
EVENT_TYPES = (UtteranceEvent, FeedbackEvent, LabelEvent)
MODEL_FOR = {"utterance": UtteranceEvent, "feedback": FeedbackEvent, "label": LabelEvent}

UTTERANCE: dict[str, Any] = {
    "type": "utterance",
    "event_id": "e1",
    "conversation_id": "c1",
    "turn": 0,
    "ts": 1_700_000_000.5,
    "text": "block my card",
}
FEEDBACK: dict[str, Any] = {
    "type": "feedback",
    "event_id": "e2",
    "conversation_id": "c1",
    "turn": 1,
    "ts": 1_700_000_001,
    "ref_event_id": "e1",
    "correct": False,
    "intent": "card_lost",
}
LABEL: dict[str, Any] = {
    "type": "label",
    "event_id": "e3",
    "conversation_id": "c1",
    "turn": 0,
    "ts": 1_700_000_002.0,
    "ref_event_id": "e1",
    "intent": "card_lost",
}


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def with_(base: dict[str, Any], **changes: Any) -> bytes:
    return encode({**base, **changes})


def without(base: dict[str, Any], *keys: str) -> bytes:
    return encode({k: v for k, v in base.items() if k not in keys})


def padded_to(size: int) -> bytes:
    """A valid utterance of exactly ``size`` bytes (the text is padded)."""
    raw = with_(UTTERANCE, text="")
    return with_(UTTERANCE, text="x" * (size - len(raw)))


# --- (a) the committed schema cannot go stale ---------------------------------------------------


def test_committed_json_schema_matches_the_models() -> None:
    assert EVENT_SCHEMA_PATH == REPO / "streams" / "event.schema.json"
    committed = json.loads(EVENT_SCHEMA_PATH.read_text())
    assert committed == event_json_schema(), (
        "streams/event.schema.json is stale: run `driftd schema --write`"
    )


def test_json_schema_covers_every_type() -> None:
    schema = event_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {d["properties"]["type"]["const"] for d in schema["$defs"].values()} == set(MODEL_FOR)


# --- (b) valid events -----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [UTTERANCE, FEEDBACK, LABEL], ids=lambda p: p["type"])
def test_each_type_decodes(payload: dict[str, Any]) -> None:
    event = decode_event(encode(payload), LIMIT)
    assert isinstance(event, MODEL_FOR[payload["type"]])
    for key, value in payload.items():
        assert getattr(event, key) == value
    assert (
        event.priority == "normal"
        and event.channel is None
        and event.user_id is None
        and event.meta is None
    )


def test_optional_fields_decode() -> None:
    event = decode_event(
        with_(
            UTTERANCE, channel="voice", user_id="u-1", priority="high", meta={"a": [1, {"b": None}]}
        ),
        LIMIT,
    )
    assert isinstance(event, UtteranceEvent)
    assert (event.channel, event.user_id, event.priority, event.meta) == (
        "voice",
        "u-1",
        "high",
        {"a": [1, {"b": None}]},
    )
    feedback = decode_event(without(FEEDBACK, "correct", "intent"), LIMIT)
    assert (
        isinstance(feedback, FeedbackEvent) and feedback.correct is None and feedback.intent is None
    )


@pytest.mark.parametrize("payload", [UTTERANCE, FEEDBACK, LABEL], ids=lambda p: p["type"])
def test_unknown_fields_are_kept(payload: dict[str, Any]) -> None:
    extra = {"experiment": "b", "scores": [0.1, 0.9], "nested": {"k": None}}
    event = decode_event(encode({**payload, **extra}), LIMIT)
    assert isinstance(event, MODEL_FOR[payload["type"]])
    assert event.model_extra == extra
    assert json.loads(event.model_dump_json())["experiment"] == "b"


def test_size_limit_is_inclusive() -> None:
    at_limit = padded_to(300)
    assert len(at_limit) == 300
    assert isinstance(decode_event(at_limit, 300), UtteranceEvent)


def test_turn_upper_bound_is_the_stored_int32_range() -> None:
    assert isinstance(decode_event(with_(UTTERANCE, turn=2**31 - 1), LIMIT), UtteranceEvent)


# --- (c) malformed payloads -----------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, int, str]] = [
    # too_large
    ("one byte over the limit", padded_to(301), 300, "too_large"),
    ("far over the limit", padded_to(5000), 256, "too_large"),
    ("too large beats not json", b"x" * 257, 256, "too_large"),
    # not_json
    ("invalid utf-8", b'{"type": "utterance", "text": "\xff\xfe"}', LIMIT, "not_json"),
    ("invalid utf-8 only", b"\xc3\x28", LIMIT, "not_json"),
    ("syntax error", b"{not json", LIMIT, "not_json"),
    ("empty value", b"", LIMIT, "not_json"),
    ("trailing garbage", encode(UTTERANCE) + b" x", LIMIT, "not_json"),
    ("truncated", encode(UTTERANCE)[:-1], LIMIT, "not_json"),
    ("lone surrogate escape", with_(UTTERANCE, text="\ud800"), LIMIT, "not_json"),
    (
        "nesting too deep",
        encode({**UTTERANCE, "meta": {"a": json.loads("[" * 500 + "]" * 500)}}),
        LIMIT,
        "not_json",
    ),
    # unknown_type
    ("unknown type", with_(UTTERANCE, type="shout"), LIMIT, "unknown_type"),
    ("type with wrong case", with_(LABEL, type="Label"), LIMIT, "unknown_type"),
    ("numeric type", with_(UTTERANCE, type=5), LIMIT, "unknown_type"),
    ("null type", with_(UTTERANCE, type=None), LIMIT, "unknown_type"),
    # missing_field
    ("missing type", without(UTTERANCE, "type"), LIMIT, "missing_field"),
    ("empty object", b"{}", LIMIT, "missing_field"),
    ("missing text", without(UTTERANCE, "text"), LIMIT, "missing_field"),
    ("missing ref_event_id", without(FEEDBACK, "ref_event_id"), LIMIT, "missing_field"),
    ("label without intent", without(LABEL, "intent"), LIMIT, "missing_field"),
    (
        "missing wins over wrong type",
        encode({**{k: v for k, v in UTTERANCE.items() if k != "text"}, "turn": "3"}),
        LIMIT,
        "missing_field",
    ),
    # wrong_type
    ("string turn", with_(UTTERANCE, turn="3"), LIMIT, "wrong_type"),
    ("bool turn", with_(UTTERANCE, turn=True), LIMIT, "wrong_type"),
    ("float turn", with_(UTTERANCE, turn=1.5), LIMIT, "wrong_type"),
    ("string ts", with_(UTTERANCE, ts="1700000000"), LIMIT, "wrong_type"),
    ("numeric channel", with_(UTTERANCE, channel=1), LIMIT, "wrong_type"),
    ("string correct", with_(FEEDBACK, correct="yes"), LIMIT, "wrong_type"),
    ("list meta", with_(UTTERANCE, meta=[1, 2]), LIMIT, "wrong_type"),
    ("json array", b"[1, 2, 3]", LIMIT, "wrong_type"),
    ("json null", b"null", LIMIT, "wrong_type"),
    ("json string", b'"utterance"', LIMIT, "wrong_type"),
    ("json number", b"42", LIMIT, "wrong_type"),
    # invalid_value
    ("negative turn", with_(UTTERANCE, turn=-1), LIMIT, "invalid_value"),
    ("turn beyond int32", with_(UTTERANCE, turn=2**31), LIMIT, "invalid_value"),
    ("turn beyond int64", with_(UTTERANCE, turn=10**30), LIMIT, "invalid_value"),
    ("negative ts", with_(UTTERANCE, ts=-0.5), LIMIT, "invalid_value"),
    ("empty event_id", with_(UTTERANCE, event_id=""), LIMIT, "invalid_value"),
    ("event_id too long", with_(UTTERANCE, event_id="e" * 257), LIMIT, "invalid_value"),
    ("empty text", with_(UTTERANCE, text=""), LIMIT, "invalid_value"),
    ("unknown priority", with_(UTTERANCE, priority="urgent"), LIMIT, "invalid_value"),
    ("channel too long", with_(UTTERANCE, channel="c" * 65), LIMIT, "invalid_value"),
    ("intent too long", with_(LABEL, intent="i" * 129), LIMIT, "invalid_value"),
    ("empty feedback intent", with_(FEEDBACK, intent=""), LIMIT, "invalid_value"),
]


@pytest.mark.parametrize(
    ("raw", "max_bytes", "reason"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_payload_reason(raw: bytes, max_bytes: int, reason: str) -> None:
    result = decode_event(raw, max_bytes)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.detail


def test_every_reason_is_covered_at_least_twice() -> None:
    counts = {reason: sum(1 for c in MALFORMED if c[3] == reason) for reason in REJECTION_REASONS}
    assert all(n >= 2 for n in counts.values()), counts


def test_tombstone_is_not_json() -> None:
    result = decode_event(None, LIMIT)
    assert isinstance(result, Rejection) and result.reason == "not_json"


def test_rejection_detail_names_the_field() -> None:
    result = decode_event(with_(UTTERANCE, turn=-1), LIMIT)
    assert isinstance(result, Rejection) and "turn" in result.detail


# --- (d) the decoder never raises -----------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
FIELD_NAMES = [
    "type",
    "event_id",
    "conversation_id",
    "turn",
    "ts",
    "channel",
    "user_id",
    "priority",
    "meta",
    "text",
    "ref_event_id",
    "correct",
    "intent",
]
# Objects that look like events, so the field validators are exercised and not only the tag check.
EVENTISH = st.builds(
    lambda base, fields: {**base, **fields},
    st.sampled_from([UTTERANCE, FEEDBACK, LABEL]),
    st.dictionaries(
        st.sampled_from([*FIELD_NAMES, "extra"]),
        JSON_VALUES | st.sampled_from(["utterance", "feedback", "label"]),
        max_size=4,
    ),
)


def _assert_verdict(result: object) -> None:
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert isinstance(result.detail, str)
    else:
        assert isinstance(result, EVENT_TYPES), result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=2048), max_bytes=st.integers(min_value=0, max_value=4096))
def test_decode_never_raises_on_arbitrary_bytes(raw: bytes, max_bytes: int) -> None:
    _assert_verdict(decode_event(raw, max_bytes))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES | EVENTISH, ascii_only=st.booleans())
def test_decode_never_raises_on_arbitrary_json(value: Any, ascii_only: bool) -> None:
    # ensure_ascii=False with surrogatepass also produces
    # invalid UTF-8 when the text has lone surrogates.
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    _assert_verdict(decode_event(raw, LIMIT))


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES, max_size=4))
def test_decode_valid_events_stay_valid_or_get_a_reason(fields: dict[str, Any]) -> None:
    result = decode_event(encode({**UTTERANCE, **fields}), LIMIT)
    _assert_verdict(result)
    if not isinstance(result, Rejection):
        assert result.type == (fields.get("type") or "utterance")


@pytest.mark.parametrize(
    "number", [b"NaN", b"-Infinity", b"Infinity", b"1e400", b"-2.5E+308", b"1" + b"0" * 400 + b".0"]
)
@pytest.mark.parametrize("where", ["meta", "unknown"])
def test_non_finite_numbers_in_free_form_fields_are_refused(number: bytes, where: str) -> None:
    value = b'{"deep": [1, {"x": ' + number + b"}]}"
    field = b'"meta": ' + value if where == "meta" else b'"extra": ' + value
    payload = encode(UTTERANCE)[:-1] + b", " + field + b"}"
    result = decode_event(payload, LIMIT)
    assert isinstance(result, Rejection) and result.reason == "not_json", result


def test_large_but_finite_numbers_in_free_form_fields_are_kept() -> None:
    payload = encode({**UTTERANCE, "meta": {"big": 1e300, "text": "1e400 in a string"}})
    event = decode_event(payload, LIMIT)
    assert not isinstance(event, Rejection) and event.meta == {
        "big": 1e300,
        "text": "1e400 in a string",
    }


# --- (e) the documented examples are valid
# ---------------------------------------------------------


def _doc_examples() -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", DOCS.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_docs_have_an_example_per_type() -> None:
    types = {json.loads(block)["type"] for block in _doc_examples()}
    assert types == set(MODEL_FOR)


@pytest.mark.parametrize("index", range(len(_doc_examples())))
def test_doc_example_decodes(index: int) -> None:
    block = _doc_examples()[index]
    claimed = json.loads(block)["type"]
    event = decode_event(block.encode("utf-8"), LIMIT)
    assert isinstance(event, MODEL_FOR[claimed]), event
    assert event.type == claimed
