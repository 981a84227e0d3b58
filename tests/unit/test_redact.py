"""Redaction of e-mail addresses, phone numbers and
configured patterns before an event is stored."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import ENV_PREFIX, ConfigError, load_settings
from streams.ingest import RawRecord, UserIdPolicy, to_stored
from streams.redact import DEFAULT_PATTERNS, Redactor
from streams.schema import decode_event
from tests.unit.test_ingest_agent import make_agent, record, utterance

DEFAULT = Redactor(DEFAULT_PATTERNS)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --- the default patterns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "john.doe@example.com",
        "a+tag@sub.example.co.uk",
        "X_Y-z@EXAMPLE.ORG",
        "jörg.müller@beispiel.de",
        "用户@例子.中国",
        "o.x@x.io",
    ],
)
def test_email_addresses(address: str) -> None:
    assert DEFAULT.text(f"mail {address}, thanks") == "mail <email>, thanks"


@pytest.mark.parametrize(
    "number",
    [
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+1 (555) 123-4567",
        "+1-555-123-4567",
        "+33 1 23 45 67 89",
        "0033 1 23 45 67 89",
        "+49 30 1234567",
        "+4915112345678",
        "+91 98765 43210",
        "+86 138 0013 8000",
        "+81 3-1234-5678",
        "+7 495 123-45-67",
        "+61 2 9876 5432",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "555 123 4567",
        "01 23 45 67 89",
        "(020) 7946 0958",
        "030/1234567",
        "07911 123456",
        "07911123456",
        "5551234567",
    ],
)
def test_phone_numbers_national_and_international(number: str) -> None:
    assert DEFAULT.text(f"call me at {number} please") == "call me at <phone> please"
    assert DEFAULT.text(number) == "<phone>"


@pytest.mark.parametrize(
    "text",
    [
        "order 12345",
        "order #12345 shipped",
        "orders 12345 and 67890",
        "ref 1234567",
        "account 123456789",
        "year 2024",
        "from 2019-2023",
        "on 2024-01-15 at 10:30",
        "on 15.01.2024",
        "on 1/2/2024",
        "1.250.000 euros",
        "1,250,000 dollars",
        "version 3.14.15",
        "pin 1234",
        "192.168.1.1",
        "price 12.99",
        "pi is 3.14159265",
        "ts 1700000000.5",
        "room 12, floor 3, 45 people",
        "1 2 3 4 5 6 7",
        "ISBN 978-3-16-148410-0",
        "x@",
        "@handle",
        "user@localhost",
        "a.b@c",
        "",
    ],
)
def test_plain_numbers_dates_and_handles_are_left_alone(text: str) -> None:
    assert DEFAULT.text(text) is text  # unchanged, and not even copied


# The same patterns, each wrapped in a group, so no precondition applies: every text is scanned.
SCANNED = Redactor((name, f"(?:{regex})", new) for name, regex, new in DEFAULT_PATTERNS)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789٣@ .-+()/abcé_x\n"), max_size=40))
def test_the_cheap_preconditions_never_skip_a_text_the_patterns_match(text: str) -> None:
    assert DEFAULT.text(text) == SCANNED.text(text)


@pytest.mark.parametrize(
    "text", ["+1 555 0100 123", "tel 0301234567", "x@y.de", "٣٣٣٣٣٣٣٣٣٣", "ring 555-123-4567"]
)
def test_texts_that_meet_a_precondition_are_scanned_and_redacted(text: str) -> None:
    assert DEFAULT.text(text) == SCANNED.text(text) != text


def test_several_matches_of_several_kinds_in_one_text() -> None:
    text = "write to a@b.com or c.d@e.org, or call +44 20 7946 0958 / 555-123-4567; order 12345."
    assert (
        DEFAULT.text(text) == "write to <email> or <email>, or call <phone> / <phone>; order 12345."
    )


def test_unicode_text_around_matches_is_kept() -> None:
    text = "Grüße — schreib an jörg@beispiel.de oder ruf 030 1234567 an 🙂, Bestellung 12345"
    assert (
        DEFAULT.text(text) == "Grüße — schreib an <email> oder ruf <phone> an 🙂, Bestellung 12345"
    )


def test_pathological_input_stays_linear() -> None:
    # Not a timing assertion: these finish at once with the patterns as written, and would hang a
    # backtracking-prone pattern (nested quantifiers over the same characters).
    tokens = (
        ("0" * 23 + " ") * 800,
        ("1 " * 10 + "x ") * 900,
        ("00" + "1 2 3 4 5 6 " * 3) * 500,
        "555-123-4567-" * 1500,
    )
    for text in (
        "0" * 20000,
        "1 " * 10000,
        "(12) " * 4000,
        "a@" * 10000,
        "a." * 10000 + "@",
        "+44 (0)20 " * 2000,
        *tokens,
    ):
        DEFAULT.text(text)


def test_values_are_walked_and_unchanged_ones_kept() -> None:
    meta = {
        "contact": "a@b.com",
        "nested": [{"phone": "+1 555 123 4567"}, 7, None, True],
        "order": "12345",
        "a@b.com": "key kept",
    }
    out = DEFAULT.value(meta)
    assert out == {
        "contact": "<email>",
        "nested": [{"phone": "<phone>"}, 7, None, True],
        "order": "12345",
        "a@b.com": "key kept",
    }
    clean = {"order": "12345", "tags": ["x", 1]}
    assert DEFAULT.value(clean) is clean


# --- configured patterns ------------------------------------------------------------------------


def test_custom_patterns_with_groups_scoped_flags_and_literal_replacements() -> None:
    redactor = Redactor(
        [
            ("iban", r"\b(?i:de)\d{2}(?:\s?\d{4}){4}\s?\d{2}\b", "<iban>"),
            # replacement inserted as is, groups inside the pattern are fine
            ("ticket", r"(?P<prefix>TCK)-(\d+)", r"<ticket \1>"),
            ("email", DEFAULT_PATTERNS[0][1], "<email>"),
        ]
    )
    text = "pay de89 3704 0044 0532 0130 00, see TCK-991 or x@y.fr"
    assert redactor.text(text) == r"pay <iban>, see <ticket \1> or <email>"


def test_no_patterns_turns_redaction_off() -> None:
    redactor = Redactor([])
    assert (
        not redactor.enabled
        and redactor.text("a@b.com") == "a@b.com"
        and redactor.event_updates({"text": "a@b.com"}, None) == {}
    )


@pytest.mark.parametrize(
    ("regex", "expected"),
    [
        ("(unclosed", "does not compile"),
        ("(?i)abc", "scoped flag"),
        ("x*", "matches the empty string"),
        (r"(a)\1", "numbered back-reference"),
    ],
)
def test_bad_patterns_are_refused(regex: str, expected: str) -> None:
    with pytest.raises(ValueError, match="pattern 'bad'") as info:
        Redactor([("bad", regex, "<x>")])
    assert expected in str(info.value)


def test_config_error_names_the_key_and_the_pattern(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[privacy.redact_patterns]]\nname = "ticket"\nregex = "TCK-(\\\\d+"\nreplacement = "<t>"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    for part in ("privacy.redact_patterns.0.regex", "'ticket'", "TCK-(\\\\d+", "does not compile"):
        assert part in message, message


def test_config_refuses_two_patterns_with_one_name(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[privacy.redact_patterns]]\nname = "a"\nregex = "x"\nreplacement = '
        '"1"\n[[privacy.redact_patterns]]\nname = "a"\nregex = "y"\nreplacement = '
        '"2"\n'
    )
    with pytest.raises(ConfigError, match=r"privacy.redact_patterns.*two patterns are named 'a'"):
        load_settings(path)


def test_default_settings_redact_email_and_phone_and_env_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [p.name for p in load_settings(None).privacy.redact_patterns] == ["email", "phone"]
    assert (
        load_settings(None).privacy.redactor().text("a@b.com, 555-123-4567") == "<email>, <phone>"
    )
    monkeypatch.setenv("DRIFTD_PRIVACY__REDACT_PATTERNS", "[]")
    assert not load_settings(None).privacy.redactor().enabled


# --- on the ingest path -------------------------------------------------------------------------


def _raw(event: dict) -> RawRecord:
    return RawRecord("conversations", 0, 7, b"k", json.dumps(event).encode(), 1_700_000_000.0)


def test_stored_event_row_and_payload_are_redacted_with_the_user_id_pseudonymised() -> None:
    event = utterance(
        1,
        text="I'm bob@example.com, call +44 20 7946 0958",
        user_id="bob",
        meta={"email": "bob@example.com", "n": 3},
        crm={"phone": "555-123-4567"},
    )
    raw = _raw(event)
    stored = to_stored(
        raw, decode_event(raw.value, 65536), UserIdPolicy("pseudonymised", b"salt"), 5.0, DEFAULT
    )
    assert stored.text == "I'm <email>, call <phone>"
    payload = json.loads(stored.payload)
    assert (
        payload["text"] == stored.text
        and payload["meta"] == {"email": "<email>", "n": 3}
        and payload["crm"] == {"phone": "<phone>"}
    )
    assert payload["user_id"] == stored.user_ref != "bob"
    for secret in (b"bob@example.com", b"7946", b"555-123"):
        assert secret not in stored.payload


def test_an_event_with_nothing_to_redact_keeps_its_original_bytes() -> None:
    raw = _raw(utterance(2, text="order 12345 never came", meta={"order": "12345"}))
    stored = to_stored(raw, decode_event(raw.value, 65536), UserIdPolicy(), 5.0, DEFAULT)
    assert stored.payload is raw.value and stored.text == "order 12345 never came"


def test_ingest_stores_and_predicts_redacted_text_and_dead_letters_original_bytes(tmp_path) -> None:
    agent, store, _, delivered = make_agent(tmp_path)
    agent.redactor = DEFAULT
    seen: list[list[str]] = []
    published: list[bytes] = []

    def predict(texts):
        seen.append(texts)
        return [
            {"intent": "contact", "confidence": 1.0, "top_k": [], "model_version": "v1"}
            for _ in texts
        ]

    async def publish(partition, records):
        published.extend(value for _, value in records)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    agent.predict, agent.publish_prediction = predict, publish
    malformed = b'{"type": "utterance", "text": "mail me at eve@example.com"'
    asyncio.run(
        agent.handle(
            [record(0, utterance(0, text="mail me at eve@example.com")), record(1, malformed)]
        )
    )
    (stored,) = list(store.hot)
    assert stored.text == "mail me at <email>" and b"eve@" not in stored.payload
    assert seen == [["mail me at <email>"]] and not any(b"eve@" in value for value in published)
    assert delivered == [(malformed, "not_json")]  # the DLQ is for operators: original bytes
