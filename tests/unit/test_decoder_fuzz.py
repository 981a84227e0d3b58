"""Hostile input through the real decoder (the fast fuzz;
tests/stress/test_hostile_input.py runs 100,000+).

The generators live in tests/hostile.py: each malformed payload carries the reason(s) docs/events.md
allows for it, and a control group of valid but unusual events must all be accepted.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import IngestSettings
from streams.schema import REJECTION_REASONS, Rejection, decode_event
from tests import hostile

LIMIT = hostile.MAX_EVENT_BYTES


def test_the_generators_use_the_configured_default_limit() -> None:
    assert IngestSettings().max_event_bytes == hostile.MAX_EVENT_BYTES


@pytest.mark.parametrize("max_bytes", [LIMIT, 2048])
def test_generated_malformed_payloads_are_rejected_with_their_reason(max_bytes: int) -> None:
    cases = hostile.malformed(5040, seed=11, max_bytes=max_bytes) + hostile.controls(
        900, seed=12, max_bytes=max_bytes
    )
    tally = hostile.check_decoder(cases, max_bytes)
    print("\n" + tally.table(f"decoder fuzz, max_event_bytes={max_bytes}"))
    assert not tally.failures, "\n".join(tally.failures)
    assert set(tally.counts) == set(hostile.MALFORMED_KINDS) | set(hostile.CONTROL_KINDS)
    seen = {verdict for verdicts in tally.verdicts.values() for verdict in verdicts}
    assert seen == set(REJECTION_REASONS) | {"accepted"}
    assert sum(tally.verdicts[k]["accepted"] for k in hostile.CONTROL_KINDS) == 900


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000,
        b'{"meta": ' + b"[" * 100_000,
    ],
    ids=["open arrays", "balanced arrays", "objects", "in a field"],
)
def test_100k_levels_of_nesting_are_not_json(payload: bytes) -> None:
    result = decode_event(payload, len(payload))
    assert isinstance(result, Rejection) and result.reason == "not_json", result


def test_the_same_payloads_over_the_limit_are_too_large_without_parsing() -> None:
    result = decode_event(b"[" * 100_000, LIMIT)
    assert isinstance(result, Rejection) and result.reason == "too_large"


def _verdict_ok(result: object) -> bool:
    return (
        isinstance(result, Rejection) and result.reason in REJECTION_REASONS and bool(result.detail)
    ) or hasattr(result, "event_id")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(raw=st.binary(max_size=4096), max_bytes=st.sampled_from([256, 2048, LIMIT]))
def test_arbitrary_bytes_never_raise(raw: bytes, max_bytes: int) -> None:
    assert _verdict_ok(decode_event(raw, max_bytes))


VALID = [c.raw for c in hostile.controls(90, seed=13)]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(
        st.tuples(
            st.integers(0, 1 << 16),
            st.integers(0, 255),
            st.sampled_from(["set", "insert", "delete"]),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_valid_events_never_raise(base: bytes, edits: list[tuple[int, int, str]]) -> None:
    raw = bytearray(base)
    for at, byte, how in edits:
        at %= len(raw) + 1
        if how == "insert":
            raw[at:at] = bytes([byte])
        elif raw and how == "delete":
            del raw[min(at, len(raw) - 1)]
        elif raw:
            raw[min(at, len(raw) - 1)] = byte
    assert _verdict_ok(decode_event(bytes(raw), LIMIT))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=25,
)
FIELDS = sorted(
    {f for fs in hostile.REQUIRED.values() for f in fs}
    | {f for fs in hostile.OPTIONAL.values() for f in fs}
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    kind=st.sampled_from(hostile.TYPES),
    changes=st.dictionaries(st.sampled_from([*FIELDS, "extra"]), JSON, max_size=4),
    drop=st.sets(st.sampled_from(FIELDS), max_size=3),
)
def test_event_shaped_json_never_raises_and_rejections_name_a_documented_reason(
    kind: str, changes: dict, drop: set
) -> None:
    event = {
        k: v
        for k, v in {**hostile.event(random.Random(0), 0, kind=kind), **changes}.items()
        if k not in drop
    }
    # json.dumps writes NaN/Infinity for non-finite floats: refused as not_json (below)
    raw = json.dumps(event).encode()
    assert _verdict_ok(decode_event(raw, LIMIT))


NAN_OUTSIDE_VALIDATED_FIELDS = [
    (
        "meta value",
        b'{"type":"utterance","event_id":"e","conversation_id":"c","turn":0,"ts":1,"text":"x","meta":{"a":NaN}}',
    ),
    (
        "meta list",
        b'{"type":"utterance","event_id":"e","conversation_id":"c","turn":0,"ts":1,"text":"x","meta":{"a":[Infinity]}}',
    ),
    (
        "unknown field",
        b'{"type":"utterance","event_id":"e","conversation_id":"c","turn":0,"ts":1,"text":"x","score":-Infinity}',
    ),
    (
        "nested unknown field",
        b'{"type":"label","event_id":"e","conversation_id":"c","turn":0,"ts":1,"ref_event_id":"r","intent":"i","x":{"y":[1,NaN]}}',
    ),
]


@pytest.mark.parametrize(
    "raw",
    [raw for _, raw in NAN_OUTSIDE_VALIDATED_FIELDS],
    ids=[name for name, _ in NAN_OUTSIDE_VALIDATED_FIELDS],
)
def test_nan_and_infinity_literals_outside_validated_fields_are_rejected(raw: bytes) -> None:
    result = decode_event(raw, LIMIT)
    assert isinstance(result, Rejection) and result.reason == "not_json", f"accepted: {result!r}"
