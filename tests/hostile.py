"""Hostile input, shared by the fast tests (tests/unit/test_decoder_fuzz.py,
tests/integration/test_hostile_*.py) and the long harness
(tests/stress/test_hostile_input.py), so that nothing is generated in two ways.

Three families:

- **Event payloads** for the decoder and the broker:
  :func:`malformed` draws payloads that are wrong in a
  known way (round-robin over :data:`MALFORMED_KINDS`), each with the set of reasons the
  producer contract (docs/events.md, streams/schema.py) allows for it; :func:`controls`
  draws valid but unusual events that must be accepted. Both are deterministic for a seed.
- **HTTP requests** for ``/v1/predict`` and the admin
  routes: :func:`http_cases` (hand-written, with the
  expected status) and :func:`random_predict_bodies`; :func:`raw_http` sends
  any bytes on a socket and reads the answer with a deadline, so malformed
  HTTP (bad chunking, bad encodings, slow bodies) can be sent too.
- **Broker helpers**: :func:`produce_positions`
  (produce and return each record's partition/offset) and
  :func:`reconcile` (expected vs seen positions: lost and duplicated counts).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import socket
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streams.schema import REJECTION_REASONS

MAX_EVENT_BYTES = 65536  # ingest.max_event_bytes default (a test checks it against daemon.config)
ANY_REJECTION = frozenset(REJECTION_REASONS) - {"too_large"}
TYPES = ("utterance", "feedback", "label")
REQUIRED = {
    "utterance": ("type", "event_id", "conversation_id", "turn", "ts", "text"),
    "feedback": ("type", "event_id", "conversation_id", "turn", "ts", "ref_event_id"),
    "label": ("type", "event_id", "conversation_id", "turn", "ts", "ref_event_id", "intent"),
}
OPTIONAL = {
    "utterance": ("channel", "user_id", "priority", "meta"),
    "feedback": ("channel", "user_id", "priority", "meta", "correct", "intent"),
    "label": ("channel", "user_id", "priority", "meta"),
}
TEXTS = (
    "please move 40 dollars to savings",
    "what is my account balance",
    "book me a flight to paris",
    "freeze my card",
    "how do i reset my pin",
    "is it going to rain tomorrow",
    "pay my water bill",
)
INTENTS = (
    "transfer",
    "balance",
    "book_flight",
    "freeze_account",
    "pin_change",
    "weather",
    "pay_bill",
)
# Text that is valid but unusual: right-to-left, zero-width,
# combining marks, astral plane, NUL (escaped), CJK.
ODD_TEXTS = (
    "مرحبا، أين بطاقتي؟",
    "שלום \u202eevil\u202c",
    "zero\u200bwidth\u200djoiner\ufeff",
    "e\u0301\u0301\u0301",
    "\U0001f600\U0001f4b3 card",
    "a\u0000b",
    "\u0000",
    "日本語のテキスト",
    "\u00a0\u2028\u2029",
    "\uffff\ufffe",
    "tab\there",
    '\\"quoted\\"',
    "   ",
    "\u200b",
    "x" * 1000,
)

# JSON values of each wrong type, per expected field type
# (see the decoder's strict mode in docs/events.md).
_ANY_VALUES: dict[str, list[Any]] = {
    "int": [5, 0, -3, 2**40],
    "float": [1.5, 0.25, -2.5],
    "bool": [True, False],
    "null": [None],
    "str": ["3", "", "true", "1700000000"],
    "list": [[], [1], ["a", "b"]],
    "object": [{}, {"a": 1}],
}
_WRONG_FOR = {  # field kind -> kinds of JSON values that are the wrong type for it
    "str": ("int", "float", "bool", "null", "list", "object"),
    "opt_str": ("int", "float", "bool", "list", "object"),
    "int": ("float", "bool", "null", "str", "list", "object"),
    "num": ("bool", "null", "str", "list", "object"),
    "opt_bool": ("int", "float", "str", "list", "object"),
    "opt_obj": ("int", "float", "bool", "str", "list"),
}
FIELD_KIND = {
    "event_id": "str",
    "conversation_id": "str",
    "turn": "int",
    "ts": "num",
    "text": "str",
    "ref_event_id": "str",
    "channel": "opt_str",
    "user_id": "opt_str",
    "meta": "opt_obj",
    "correct": "opt_bool",
}


def _field_kind(event_type: str, name: str) -> str:
    if name == "intent":
        return "str" if event_type == "label" else "opt_str"
    return FIELD_KIND[name]


@dataclass(frozen=True)
class Case:
    """One payload: ``reasons`` is what the contract allows (empty: it must be accepted)."""

    kind: str
    raw: bytes | None
    reasons: frozenset[str]
    event_id: str | None = None  # for accepted ones

    @property
    def valid(self) -> bool:
        return not self.reasons


# --------------------------------------------------------------------------------------------------
# events


def event(
    rng: random.Random, i: int, *, run: str = "h", kind: str | None = None, optional: float = 0.3
) -> dict[str, Any]:
    """A valid event of a random type, with some optional fields."""
    kind = kind or rng.choice(TYPES)
    e: dict[str, Any] = {
        "type": kind,
        "event_id": f"{run}-{i}",
        "conversation_id": f"c{rng.randrange(1000)}",
        "turn": rng.randrange(50),
        "ts": round(1_700_000_000 + rng.random() * 1e6, 3),
    }
    if kind == "utterance":
        e["text"] = rng.choice(TEXTS)
    else:
        e["ref_event_id"] = f"{run}-u{rng.randrange(10**6)}"
        if kind == "label" or rng.random() < 0.5:
            e["intent"] = rng.choice(INTENTS)
        if kind == "feedback" and rng.random() < 0.7:
            e["correct"] = rng.choice([True, False, None])
    if rng.random() < optional:
        e["channel"] = rng.choice(["web", "app", "voice", None])
    if rng.random() < optional:
        e["user_id"] = rng.choice([f"u-{rng.randrange(10**4)}", None])
    if rng.random() < optional:
        e["priority"] = rng.choice(["low", "normal", "high"])
    if rng.random() < optional:
        e["meta"] = rng.choice([None, {}, {"locale": "en-GB", "n": [1, 2.5, None, True]}])
    if rng.random() < 0.3:
        keys = list(e)
        rng.shuffle(keys)
        e = {k: e[k] for k in keys}
    return e


def dumps(obj: Any, rng: random.Random | None = None) -> bytes:
    ascii_only = rng.random() < 0.5 if rng else True
    compact = rng.random() < 0.5 if rng else False
    return json.dumps(
        obj, ensure_ascii=ascii_only, separators=(",", ":") if compact else None
    ).encode()


_LIT = "__hostile_literal__"


def with_literal(
    e: dict[str, Any], name: str, literal: str | bytes, rng: random.Random | None = None
) -> bytes:
    """The event encoded with ``name`` set to raw JSON text
    that json.dumps cannot write (NaN, 1e999, 01...)."""
    literal = literal.encode() if isinstance(literal, str) else literal
    return dumps({**e, name: _LIT}, rng).replace(f'"{_LIT}"'.encode(), literal, 1)


def with_placeholder(e: dict[str, Any], name: str, raw_bytes: bytes, rng: random.Random) -> bytes:
    """The event encoded with raw bytes spliced into the string value of ``name``."""
    before = rng.choice(["", "abc ", "caf\u00e9 "])
    return dumps({**e, name: before + _LIT}, rng).replace(_LIT.encode(), raw_bytes, 1)


def _string_field(rng: random.Random, e: dict[str, Any]) -> str:
    return rng.choice(
        [
            k
            for k in ("event_id", "conversation_id", "text", "ref_event_id", "intent", "channel")
            if k in e
        ]
        + ["extra_field"]
    )


def _budget(max_bytes: int) -> int:
    return max(200, max_bytes - 400)


def padded(e: dict[str, Any], size: int) -> bytes:
    """``e`` with an unknown ``pad`` field making the encoding exactly ``size`` bytes."""
    base = json.dumps({**e, "pad": ""}).encode()
    return json.dumps({**e, "pad": "p" * max(0, size - len(base))}).encode()


# --- malformed kinds: each returns (raw, allowed reasons)
# -----------------------------------------------------

Gen = Callable[[random.Random, int, int], "tuple[bytes | None, frozenset[str]]"]
_R = frozenset


def _random_bytes(rng: random.Random, i: int, max_bytes: int):
    return rng.randbytes(rng.randint(0, min(1024, _budget(max_bytes)))), ANY_REJECTION


_TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b'"type"',
    b'"utterance"',
    b'"text"',
    b"1",
    b"-0.5",
    b"true",
    b"null",
    b' "a"',
    b" ",
    b"\n",
    b'"\\u0000"',
    b"1e5",
]


def _token_soup(rng: random.Random, i: int, max_bytes: int):
    return b"".join(rng.choice(_TOKENS) for _ in range(rng.randint(1, 60))), ANY_REJECTION


def _truncated(rng: random.Random, i: int, max_bytes: int):
    raw = dumps(event(rng, i, optional=0.6), rng)
    return raw[: rng.randrange(len(raw))], _R({"not_json"})


_BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xbf",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3\x28",
    b"\xa0\xa1",
]


def _invalid_utf8(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    while True:  # some concatenations of broken sequences are whole characters again
        bad = b"".join(rng.choice(_BAD_UTF8) for _ in range(rng.randint(1, 3)))
        try:
            bad.decode("utf-8")
        except UnicodeDecodeError:
            break
    if rng.random() < 0.7:
        return with_placeholder(e, _string_field(rng, e), bad, rng), _R({"not_json"})
    raw = dumps(e, rng)
    at = rng.randrange(len(raw) + 1)
    return raw[:at] + bad + raw[at:], _R({"not_json"})


_SURROGATES = [
    b"\\ud800",
    b"\\udbff",
    b"\\udc00",
    b"\\udfff",
    b"\\udc00\\ud800",
    b"\\ud800\\u0041",
    b"\\ud800x",
    b"\\ud800\\ud800",
    b"\\uDFFF",
    b"\\ud83d",
]


def _lone_surrogate(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    where = rng.choice(["value", "value", "meta_value", "meta_key"])
    if where == "value":
        return with_placeholder(e, _string_field(rng, e), rng.choice(_SURROGATES), rng), _R(
            {"not_json"}
        )
    key_or_value = {_LIT: 1} if where == "meta_key" else {"k": _LIT}
    return dumps({**e, "meta": key_or_value}, rng).replace(
        _LIT.encode(), rng.choice(_SURROGATES), 1
    ), _R({"not_json"})


def _wrong_top_level(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    value = rng.choice(
        [
            5,
            -1.5,
            0,
            "utterance",
            "",
            True,
            False,
            None,
            [],
            [e],
            [1, 2, 3],
            json.dumps(e),
            [[[]]],
            "{}",
        ]
    )
    raw = dumps(value, rng)
    if rng.random() < 0.2:
        raw = b" \n" + raw + b"\t"
    return raw, _R({"wrong_type"})


def _sprinkle_wrong_type(rng: random.Random, e: dict[str, Any], avoid: str) -> None:
    name = rng.choice([k for k in e if k not in ("type", "priority", avoid)])
    e[name] = rng.choice(_ANY_VALUES[rng.choice(_WRONG_FOR[_field_kind(e["type"], name)])])


def _missing_field(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i, optional=0.5)
    gone = rng.sample(REQUIRED[e["type"]], rng.randint(1, 3))
    # a wrong type elsewhere does not change the verdict
    if rng.random() < 0.3 and "type" not in gone:
        _sprinkle_wrong_type(rng, e, avoid=gone[0])
    if rng.random() < 0.05:
        return b"{}", _R({"missing_field"})
    return dumps({k: v for k, v in e.items() if k not in gone}, rng), _R({"missing_field"})


def _wrong_type(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i, optional=0.5)
    names = [n for n in REQUIRED[e["type"]] + OPTIONAL[e["type"]] if n not in ("type", "priority")]
    name = rng.choice(names)
    e[name] = rng.choice(_ANY_VALUES[rng.choice(_WRONG_FOR[_field_kind(e["type"], name)])])
    if rng.random() < 0.3:  # an out-of-range value elsewhere: wrong_type still wins
        other = rng.choice([n for n in ("turn", "event_id") if n != name])
        e[other] = -1 if other == "turn" else ""
    return dumps(e, rng), _R({"wrong_type"})


def _invalid_value(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i, optional=0.5)
    budget = _budget(max_bytes)
    long = lambda lo: "x" * rng.randint(lo, max(lo, min(budget - 250, lo * 4)))  # noqa: E731 - a one-line helper
    choices: list[tuple[str, Any]] = [
        ("turn", -rng.randint(1, 2**63)),
        ("turn", rng.randint(2**31, 10**30)),
        ("ts", -rng.random() * 1e9 - 1e-9),
        ("ts", -rng.randint(1, 10**6)),
        ("event_id", ""),
        ("event_id", long(257)),
        ("conversation_id", ""),
        ("conversation_id", long(257)),
        ("channel", long(65)),
        ("user_id", long(257)),
        (
            "priority",
            rng.choice(
                ["urgent", "HIGH", "", " normal", "low ", 1, None, True, ["high"], {"p": 1}, 0.5]
            ),
        ),
    ]
    if e["type"] == "utterance":
        choices.append(("text", ""))
    else:
        choices += [
            ("ref_event_id", ""),
            ("ref_event_id", long(257)),
            ("intent", ""),
            ("intent", long(129)),
        ]
    name, value = rng.choice(choices)
    e[name] = value
    if rng.random() < 0.1:
        return with_literal(
            e, "ts", rng.choice(["1e309", "-1e309", "1e999", "9" * rng.randint(310, 400)]), rng
        ), _R({"invalid_value"})
    return dumps(e, rng), _R({"invalid_value"})


_NAN = ["NaN", "Infinity", "-Infinity"]


def _nan_infinity(rng: random.Random, i: int, max_bytes: int):
    """NaN/Infinity literals in fields that are validated
    (accepted in meta/unknown fields: see the xfail test)."""
    e = event(rng, i, optional=0.5)
    lit = rng.choice(_NAN)
    target = rng.choice(
        ["ts", "turn", "string", "correct", "meta", "priority", "type", "top", "bad_spelling"]
    )
    if target == "top":
        return lit.encode(), _R({"wrong_type"})
    if target == "bad_spelling":  # not literals pydantic's parser knows: a syntax error
        return with_literal(
            e,
            "ts",
            rng.choice(["nan", "inf", "+Infinity", "-NaN", "NaNa", "Infinit", "infinity", "+NaN"]),
            rng,
        ), _R({"not_json"})
    if target == "ts":
        return with_literal(e, "ts", lit, rng), _R({"invalid_value"})
    if target == "turn":
        return with_literal(e, "turn", lit, rng), _R({"wrong_type"})
    if target == "string":
        return with_literal(
            e, rng.choice([n for n in REQUIRED[e["type"]] if FIELD_KIND.get(n) == "str"]), lit, rng
        ), _R({"wrong_type"})
    if target == "correct":
        return with_literal(
            {**e, "type": "feedback", "ref_event_id": "r"}, "correct", lit, rng
        ), _R({"wrong_type"})
    if target == "meta":
        return with_literal(e, "meta", lit, rng), _R({"wrong_type"})
    if target == "priority":
        return with_literal(e, "priority", lit, rng), _R({"invalid_value"})
    return with_literal(e, "type", lit, rng), _R({"unknown_type"})


def _huge_number(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    budget = _budget(max_bytes)
    field_name = rng.choice(["turn", "ts"])
    sign = rng.choice(["", "-"])
    # pydantic's parser reads integers of up to 4300 digits (Python's int
    # limit); beyond that it refuses the JSON itself ("number out of range"):
    # not_json. Within it, the value is out of range: invalid_value.
    lowest = 11 if field_name == "turn" else 310  # past int32 / past the largest float
    digits = (
        rng.randint(lowest, min(4300, budget - 200))
        if rng.random() < 0.7 or budget < 4600
        else rng.randint(4301, min(budget - 200, 20000))
    )
    literal = sign + "9" * digits
    if digits > 4300:
        return with_literal(e, field_name, literal, rng), _R({"not_json"})
    return with_literal(e, field_name, literal, rng), _R({"invalid_value"})


def _too_large(rng: random.Random, i: int, max_bytes: int):
    how = rng.choice(["padded", "padded", "just_over", "junk", "text"])
    if how == "just_over":
        return padded(event(rng, i), max_bytes + 1), _R({"too_large"})
    size = rng.randint(max_bytes + 1, max_bytes * 3)
    if how == "junk":
        return rng.randbytes(size), _R({"too_large"})
    if how == "text":
        e = event(rng, i, kind="utterance")
        e["text"] = "y" * size
        return dumps(e), _R({"too_large"})
    return padded(event(rng, i), size), _R({"too_large"})


def _deep_nesting(rng: random.Random, i: int, max_bytes: int):
    budget = _budget(max_bytes)
    depth = rng.randint(201, max(202, budget // 2 - 10))
    shape = rng.choice(["open", "balanced", "objects", "in_meta", "in_extra", "mixed"])
    if shape == "open":
        return b"[" * min(depth * 2, budget), _R({"not_json"})
    if shape == "balanced":
        return b"[" * depth + b"]" * depth, _R({"not_json"})
    if shape == "objects":
        d = min(depth, budget // 6)
        return b'{"a":' * d + b"1" + b"}" * d, _R({"not_json"})
    if shape == "mixed":
        d = min(depth, budget // 8)
        return b'[{"a":' * d + b"0" + b"}]" * d, _R({"not_json"})
    e = event(rng, i)
    d = min(depth, (budget - 300) // 2)
    nested = b"[" * d + b"]" * d
    if shape == "in_meta":
        return with_literal(e, "meta", b'{"a":' + nested + b"}", rng), _R({"not_json"})
    return with_literal(e, "extra_field", nested, rng), _R({"not_json"})


def _duplicate_keys(rng: random.Random, i: int, max_bytes: int):
    """The same key twice, the last value wrong: the parser keeps the last one."""
    e = event(rng, i, kind=rng.choice(["utterance", "label"]))
    bad = rng.choice(
        [
            ("turn", '"3"', "wrong_type"),
            ("turn", "-1", "invalid_value"),
            ("ts", "true", "wrong_type"),
            ("event_id", '""', "invalid_value"),
            ("type", '"shout"', "unknown_type"),
            ("priority", '"urgent"', "invalid_value"),
            ("conversation_id", "7", "wrong_type"),
            ("meta", "[1]", "wrong_type"),
        ]
    )
    raw = dumps(e, rng)
    return raw[:-1] + f', "{bad[0]}": {bad[1]}}}'.encode(), _R({bad[2]})


_TYPE_LOOKALIKES = [
    "Utterance",
    "UTTERANCE",
    " utterance",
    "utterance ",
    "utterance\u0000",
    "utter\u0430nce",
    "",
    "label\n",
    "feedbacks",
    "event",
    "labels",
    "utterance\u200b",
    "ｕｔｔｅｒａｎｃｅ",
    "null",
    "None",
    "0",
]


def _unknown_type(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    roll = rng.random()
    if roll < 0.4:
        e["type"] = rng.choice(_TYPE_LOOKALIKES)
    elif roll < 0.7:
        e["type"] = rng.choice(
            [5, 0, 1.5, True, False, None, [], ["utterance"], {}, {"type": "utterance"}]
        )
    # long, multi-byte: its echo in driftd-detail must be cut at 1024 bytes on a character boundary
    elif roll < 0.9:
        e["type"] = rng.choice(["é", "€", "😀", "a", "é€"]) * rng.randint(
            100, min(3000, _budget(max_bytes) // 8)
        )
    else:
        e["type"] = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 30)))
        if e["type"] in TYPES:
            e["type"] += "!"
    if rng.random() < 0.3:  # unknown_type comes before missing_field
        e.pop(rng.choice([k for k in e if k != "type"]))
    return dumps(e, rng), _R({"unknown_type"})


def _null_bytes(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    how = rng.choice(["in_string", "anywhere", "trailing", "only", "leading"])
    if how == "in_string":
        return with_placeholder(e, _string_field(rng, e), b"\x00" * rng.randint(1, 5), rng), _R(
            {"not_json"}
        )
    if how == "only":
        return b"\x00" * rng.randint(1, 100), _R({"not_json"})
    raw = dumps(e, rng)
    if how == "trailing":
        return raw + b"\x00", _R({"not_json"})
    if how == "leading":
        return b"\x00" + raw, _R({"not_json"})
    at = rng.randrange(len(raw) + 1)
    return raw[:at] + b"\x00" + raw[at:], _R({"not_json"})


def _control_chars(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i)
    chars = bytes(rng.choice([c for c in range(1, 32)]) for _ in range(rng.randint(1, 4)))
    return with_placeholder(e, _string_field(rng, e), chars, rng), _R({"not_json"})


def _empty(rng: random.Random, i: int, max_bytes: int):
    return rng.choice([b"", b" ", b"\n", b"\r\n", b"\t \t", b" " * rng.randint(1, 200)]), _R(
        {"not_json"}
    )


def _syntax_error(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i, kind="feedback")
    raw = json.dumps(e).encode()
    mutations: list[Callable[[], bytes]] = [
        lambda: raw.replace(b'"', b"'"),
        lambda: raw[:-1] + b",}",
        lambda: b"/* c */" + raw,
        lambda: raw[:-1] + b" // c\n}",
        lambda: raw.replace(b'"type"', b"type", 1),
        lambda: with_literal(
            e, "turn", rng.choice(["01", "00", "0x10", "+1", "1_000", "0b1", "--1", "1.2.3"])
        ),
        lambda: with_literal(
            e, "ts", rng.choice([".5", "1.", "1e", "1e+", "-", "1E--1", "0.5f", "Infinity1"])
        ),
        lambda: raw.replace(b", ", b" ", 1),
        lambda: raw.replace(b'": ', b'" ', 1),
        lambda: raw + rng.choice([b"x", b"}", b"]", b",", b"{}", b"null"]),
        lambda: raw + b"\n" + raw,
        lambda: with_literal(
            e,
            "correct",
            rng.choice(["True", "False", "None", "undefined", "nil", "tru", "nul", "yes"]),
        ),
        lambda: with_placeholder(
            e, "event_id", rng.choice([b'a"b', b"\\x41", b"\\u12", b"\\q", b"\\u00g0", b"\\"]), rng
        ),
        lambda: b"{" + raw[1:-1] + b",,}",
        lambda: b"[" + raw[1:-1] + b"]",
        lambda: raw[:-1],
        lambda: raw[1:],
    ]
    return rng.choice(mutations)(), _R({"not_json"})


def _wrong_encoding(rng: random.Random, i: int, max_bytes: int):
    e = event(rng, i, kind="utterance")
    e["text"] = rng.choice(["caf\u00e9 na\u00efve", "\u00fcber \u00f1", "r\u00e9sum\u00e9"])
    text = json.dumps(e, ensure_ascii=False)
    encoding = rng.choice(
        ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "utf-8-bom"]
    )
    if encoding == "utf-8-bom":
        return b"\xef\xbb\xbf" + text.encode(), _R({"not_json"})
    return text.encode(encoding), _R({"not_json"})


def _tombstone(rng: random.Random, i: int, max_bytes: int):
    # decode_event alone: not_json; through ingest: tombstone
    return None, _R({"not_json", "tombstone"})


MALFORMED_KINDS: dict[str, Gen] = {
    "random bytes": _random_bytes,
    "JSON token soup": _token_soup,
    "truncated event": _truncated,
    "invalid UTF-8": _invalid_utf8,
    "lone surrogate escape": _lone_surrogate,
    "wrong top-level type": _wrong_top_level,
    "missing required field": _missing_field,
    "wrong field type": _wrong_type,
    "out-of-range value": _invalid_value,
    "NaN/Infinity literal": _nan_infinity,
    "huge number literal": _huge_number,
    "over max_event_bytes": _too_large,
    "deep nesting": _deep_nesting,
    "duplicate key, last wrong": _duplicate_keys,
    "unknown event type": _unknown_type,
    "NUL bytes": _null_bytes,
    "raw control characters": _control_chars,
    "empty/whitespace": _empty,
    "JSON syntax error": _syntax_error,
    "not UTF-8 (UTF-16/32, latin-1, BOM)": _wrong_encoding,
    "tombstone (no value)": _tombstone,
}


def malformed(
    count: int, *, seed: int = 0, max_bytes: int = MAX_EVENT_BYTES, tombstones: bool = True
) -> list[Case]:
    """``count`` malformed payloads, round-robin over the kinds (deterministic for ``seed``)."""
    assert max_bytes >= 2048, "the generators need ingest.max_event_bytes >= 2048"
    rng = random.Random(seed)
    kinds = [k for k in MALFORMED_KINDS if tombstones or k != "tombstone (no value)"]
    out: list[Case] = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        for _ in range(50):
            raw, reasons = MALFORMED_KINDS[kind](rng, i, max_bytes)
            if raw is None or "too_large" in reasons or len(raw) <= max_bytes:
                break
        else:  # pragma: no cover - every generator stays under its budget
            raise AssertionError(f"{kind} cannot stay under {max_bytes} bytes")
        out.append(Case(kind, raw, reasons))
    return out


# --- valid but unusual (the control group)
# ------------------------------------------------------------------


def _c_plain(rng, e, max_bytes):
    return dumps(e, rng)


def _c_unicode(rng, e, max_bytes):
    odd = rng.choice([t for t in ODD_TEXTS if len(t) * 6 < max_bytes // 2])
    if e["type"] == "utterance":
        e["text"] = odd if odd.strip() or rng.random() < 0.5 else odd + "x"
    e["conversation_id"] = rng.choice(
        ["\u05e9\u05dc\u05d5\u05dd", "c\u200b1", "\U0001f600", "c\u0000", "e\u0301"]
    )
    e["channel"] = rng.choice(["\u202eweb", "app\u0000", "\u30a6\u30a7\u30d6"])
    e["meta"] = {rng.choice(["\u0000", "", "\u202e", "k\U0001f600"]): odd}
    return dumps(e, rng)


def _c_whitespace(rng, e, max_bytes):
    return (
        rng.choice([b" ", b"\n", b"\r\n\t", b""])
        + json.dumps(e, indent=rng.choice([None, 1, 4])).encode()
        + rng.choice([b" ", b"\n", b"\r\n"])
    )


def _c_duplicate_keys(rng, e, max_bytes):
    """A wrong value first, the valid one last: the
    parser keeps the last (as Python's json does)."""
    name, first = rng.choice(
        [
            ("turn", '"3"'),
            ("ts", "null"),
            ("type", '"shout"'),
            ("event_id", "5"),
            ("priority", '"urgent"'),
        ]
    )
    raw = dumps({k: v for k, v in e.items() if k != name}, rng)
    value = json.dumps(e.get(name, "normal"))
    return b"{" + f'"{name}": {first}, '.encode() + raw[1:-1] + f', "{name}": {value}}}'.encode()


def _c_extra_fields(rng, e, max_bytes):
    depth = rng.randint(1, 100)
    e["nested"] = json.loads("[" * depth + "]" * depth)
    e["meta"] = {
        "deep": json.loads('{"a":' * min(depth, 90) + "1" + "}" * min(depth, 90)),
        "big": 10**30,
        "neg": -1e308,
        "s": "\u0000",
    }
    e["experiment"] = rng.choice(["b", 1, None, [True], {"k": {"k": {}}}])
    e["type_"] = "not the type"
    return dumps(e, rng)


def _c_edge_numbers(rng, e, max_bytes):
    e["turn"] = rng.choice([0, 2**31 - 1, 1])
    e["ts"] = rng.choice([0, 0.0, 1e300, 5, 1.7976931348623157e308, 5e-324, 4102444800])
    if rng.random() < 0.3:
        return with_literal(e, "ts", rng.choice(["-0.0", "1e-400", "0e0", "1E2", "-0"]), rng)
    return dumps(e, rng)


def _c_exact_size(rng, e, max_bytes):
    return padded(e, max_bytes)


def _c_explicit_nulls(rng, e, max_bytes):
    e.update(channel=None, user_id=None, meta=None)
    if e["type"] == "feedback":
        e.update(correct=None, intent=None)
    return dumps(e, rng)


def _c_limits(rng, e, max_bytes):
    e["event_id"] = e["event_id"] + "i" * (256 - len(e["event_id"]))
    e["conversation_id"] = "c" * 256
    e["channel"] = "h" * 64
    e["user_id"] = rng.choice(["u" * 256, "\u00e9" * 256]) if max_bytes >= 8192 else "u" * 256
    if "intent" in e and e["intent"] is not None:
        e["intent"] = "n" * 128
    if e["type"] == "utterance":
        e["text"] = "t"
        # the longest text that still fits, ASCII-escaped
        room = max_bytes - len(json.dumps(e).encode()) - 1
        e["text"] = "t" * rng.randint(1, max(1, min(5000, room)))
    return dumps(e, rng)


CONTROL_KINDS: dict[str, Callable[[random.Random, dict[str, Any], int], bytes]] = {
    "plain": _c_plain,
    "unicode/RTL/zero-width/NUL escape": _c_unicode,
    "whitespace around, indented": _c_whitespace,
    "duplicate key, last valid": _c_duplicate_keys,
    "unknown fields, nested meta": _c_extra_fields,
    "edge numbers": _c_edge_numbers,
    "exactly max_event_bytes": _c_exact_size,
    "explicit nulls": _c_explicit_nulls,
    "strings at their length limits": _c_limits,
}


def controls(
    count: int, *, seed: int = 1, max_bytes: int = MAX_EVENT_BYTES, run: str = "ok"
) -> list[Case]:
    """``count`` valid events (round-robin over unusual shapes), each with a unique ``event_id``."""
    assert max_bytes >= 2048, "the generators need ingest.max_event_bytes >= 2048"
    rng = random.Random(seed)
    kinds = list(CONTROL_KINDS)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        e = event(rng, i, run=run, optional=0.5)
        raw = CONTROL_KINDS[kind](rng, e, max_bytes)
        assert len(raw) <= max_bytes, (kind, len(raw))
        out.append(Case(kind, raw, frozenset(), event_id=e["event_id"]))
    return out


def interleave(bad: Sequence[Case], good: Sequence[Case], seed: int = 2) -> list[Case]:
    mixed = list(bad) + list(good)
    random.Random(seed).shuffle(mixed)
    return mixed


# --------------------------------------------------------------------------------------------------
# verdict tables


@dataclass
class Tally:
    """kind -> how many payloads, and which verdicts they got."""

    counts: Counter[str] = field(default_factory=Counter)
    verdicts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)  # the first 50
    wrong: Counter[str] = field(default_factory=Counter)  # every failure, by what went wrong

    def add(
        self, kind: str, verdict: str, ok: bool, detail: str = "", problem: str = "wrong verdict"
    ) -> None:
        self.counts[kind] += 1
        self.verdicts[kind][verdict] += 1
        if not ok:
            self.wrong[problem] += 1
            if len(self.failures) < 50:
                self.failures.append(f"{kind}: {verdict} {detail}")

    def table(self, title: str) -> str:
        width = max([len(k) for k in self.counts] + [22])
        lines = [title, f"  {'kind of input'.ljust(width)}  {'count':>7}  verdicts seen"]
        for kind, n in self.counts.items():
            seen = ", ".join(f"{v} {c}" for v, c in self.verdicts[kind].most_common())
            lines.append(f"  {kind.ljust(width)}  {n:>7}  {seen}")
        lines.append(f"  {'total'.ljust(width)}  {sum(self.counts.values()):>7}")
        return "\n".join(lines)


def check_decoder(cases: Iterable[Case], max_bytes: int, tally: Tally | None = None) -> Tally:
    """Run every case through the real decoder: nothing
    may raise, each verdict must be the allowed one."""
    from streams.schema import Rejection, decode_event

    tally = tally or Tally()
    for case in cases:
        try:
            result = decode_event(case.raw, max_bytes)
        except BaseException as exc:  # noqa: BLE001 - this is what the harness looks for
            tally.add(
                case.kind,
                f"RAISED {type(exc).__name__}",
                False,
                f"{exc!r:.200} on {(case.raw or b'')[:120]!r}",
                "crash",
            )
            continue
        if isinstance(result, Rejection):
            ok = result.reason in case.reasons and bool(result.detail)
            problem = "valid rejected" if case.valid else "wrong reason"
            tally.add(
                case.kind,
                result.reason,
                ok,
                f"({result.detail[:150]}) on {(case.raw or b'')[:120]!r}",
                problem,
            )
        else:
            ok = case.valid and result.event_id == case.event_id
            tally.add(
                case.kind,
                "accepted",
                ok,
                f"on {(case.raw or b'')[:120]!r}",
                "malformed accepted" if not case.valid else "wrong event",
            )
    return tally


# --------------------------------------------------------------------------------------------------
# broker


async def produce_positions(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
) -> list[tuple[int, int]]:
    """Produce every value (None: a tombstone), wait for every
    acknowledgement, return (partition, offset) of each."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 << 20
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=keys[i] if keys else None)
            for i, value in enumerate(values)
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


def reconcile(
    expected: Iterable[tuple[int, int]], seen: Counter[tuple[int, int]]
) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected): expected positions
    never seen, extra copies, positions not expected."""
    wanted = set(expected)
    lost = sum(1 for p in wanted if seen[p] == 0)
    duplicated = sum(n - 1 for p, n in seen.items() if p in wanted and n > 1)
    unexpected = sum(n for p, n in seen.items() if p not in wanted)
    return lost, duplicated, unexpected


def random_keys(rng: random.Random, n: int) -> list[bytes | None]:
    """Record keys as hostile as the values: none, empty, binary, long."""
    pool: list[Callable[[], bytes | None]] = [
        lambda: None,
        lambda: b"",
        lambda: rng.randbytes(rng.randint(1, 64)),
        lambda: f"c{rng.randrange(100)}".encode(),
        lambda: b"\xff" * 1000,
    ]
    return [rng.choice(pool)() for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# models for the HTTP tests


def build_small_registry(root: Path) -> Path:
    """One small real version (two CLINC150 domains) as
    the registry's CURRENT, so a daemon serves at once."""
    from models.classifier import ClassifierConfig
    from models.export import build_version_files
    from models.featurize import HashingFeaturizer
    from models.registry import Registry
    from models.train import TrainSettings, train_classifier
    from streams.datasets import groups, load_examples

    registry = Registry(root)
    domains = groups("clinc150")
    intents = {i for d in ("banking", "travel") for i in domains[d]}
    chosen = [e for e in load_examples("clinc150", "train") if e.intent in intents]
    result = train_classifier(
        [e.text for e in chosen],
        [e.intent for e in chosen],
        featurizer=HashingFeaturizer(buckets=4096),
        config=ClassifierConfig(buckets=4096, dim=16, hidden=32),
        settings=TrainSettings(epochs=2, seed=0),
    )
    files, _ = build_version_files(
        result.model, result.featurizer, result.labels, [e.text for e in chosen[:16]]
    )
    version = registry.publish(files, parent=None, info={"note": "hostile-input tests"}).version
    registry.set_current(version)
    return root


# --------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Answer:
    status: int | None  # None: the connection closed (or timed out) with no response
    headers: dict[str, str]
    body: bytes
    elapsed: float
    timed_out: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    def message(self) -> str | None:
        """The JSON ``error`` message, or None when the body is not a JSON object with one."""
        try:
            payload = self.json()
        except ValueError:
            return None
        return (
            payload.get("error")
            if isinstance(payload, dict)
            and isinstance(payload.get("error"), str)
            and payload["error"]
            else None
        )


def _parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        return None, {}, data
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, buf = body + buf[:size], buf[size + 2 :]
        return status, headers, body
    if "content-length" in headers:
        return status, headers, rest[: int(headers["content-length"])]
    return status, headers, rest


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":")[1])
    if b"transfer-encoding: chunked" in lower:
        return rest.endswith(b"0\r\n\r\n")
    return False


def raw_http(port: int, chunks: bytes | Sequence[bytes | float], timeout: float = 10.0) -> Answer:
    """Send raw bytes (a float in ``chunks`` sleeps that
    long) and read one response, within ``timeout``.

    Sending stops at the first error (the server may answer 413 and
    close before the body is sent); the answer is then read. ``status``
    None means no HTTP response came back before the connection closed.
    """
    started = time.monotonic()
    deadline = started + timeout
    parts = [chunks] if isinstance(chunks, bytes) else list(chunks)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    timed_out = False
    try:
        sock.settimeout(timeout)
        for part in parts:
            if isinstance(part, float):
                time.sleep(part)
                continue
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
        while not _complete(data):
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            sock.settimeout(left)
            try:
                got = sock.recv(1 << 16)
            except TimeoutError:
                timed_out = True
                break
            except ConnectionResetError:
                break
            if not got:
                break
            data += got
    finally:
        sock.close()
    status, headers, body = _parse_response(data)
    return Answer(status, headers, body, time.monotonic() - started, timed_out)


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: bool = True,
) -> bytes:
    hdrs = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if (
        content_length
        and "Transfer-Encoding" not in hdrs
        and (body or method in ("POST", "PUT", "PATCH"))
    ):
        hdrs.setdefault("Content-Length", str(len(body)))
    head = (
        f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    )
    return head.encode("utf-8", "surrogateescape") + body


def chunked(body: bytes, sizes: Iterable[int]) -> bytes:
    out, at = b"", 0
    for size in sizes:
        if at >= len(body):
            break
        piece = body[at : at + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        at += size
    if at < len(body):
        out += f"{len(body) - at:x}\r\n".encode() + body[at:] + b"\r\n"
    return out + b"0\r\n\r\n"


@dataclass(frozen=True)
class HttpCase:
    """One request and what may come back: ``statuses`` allowed; ``json_error``:
    a 4xx must carry a JSON ``error`` message (our handlers); otherwise any
    non-empty body (aiohttp's own 400/404/405 are text)."""

    name: str
    request: bytes | tuple[bytes | float, ...]
    statuses: frozenset[int]
    json_error: bool = True
    timeout: float = 10.0
    body_required: bool = True  # False for HEAD (no body by definition)
    group: str = ""


PREDICT = "/v1/predict"
MIB = 1 << 20


def _post(body: bytes | str, headers: dict[str, str] | None = None, path: str = PREDICT) -> bytes:
    return http_request(
        "POST",
        path,
        body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body,
        {"Content-Type": "application/json", **(headers or {})},
    )


def _nest(depth: int, open_: str = "[", close: str = "]", inner: str = "") -> str:
    return open_ * depth + inner + close * depth


def http_cases(
    token: str, *, model: bool = True, large: bool = True, give_up_s: float = 3.0
) -> list[HttpCase]:
    """Hand-written hostile requests (see below)."""
    return _http_cases(token, model=model, large=large, give_up_s=give_up_s)


def _http_cases(
    token: str, *, model: bool = True, large: bool = True, give_up_s: float = 3.0
) -> list[HttpCase]:
    """Hand-written hostile requests. ``model``: a model serves (valid
    predictions are 200, else 503); ``large``: include the multi-MiB bodies."""
    ok = frozenset({200}) if model else frozenset({503})
    s = frozenset
    cases: list[HttpCase] = []
    section = ""

    def add(case: HttpCase) -> None:
        cases.append(replace(case, group=section))

    # -- malformed JSON and empty bodies
    section = "malformed JSON, wrong shapes"
    for name, body in [
        ("empty body", b""),
        ("not json", b"{not json"),
        ("truncated", b'{"text": "hi'),
        ("single quotes", b"{'text': 'hi'}"),
        ("trailing comma", b'{"text": "hi",}'),
        ("comment", b'/*c*/{"text": "hi"}'),
        ("NUL", b"\x00"),
        ("only whitespace", b" \r\n "),
        ("invalid utf-8", b'{"text": "\xff\xfe"}'),
        ("latin-1", '{"text": "caf\u00e9"}'.encode("latin-1")),
        ("raw control char", b'{"text": "a\x01b"}'),
        ("two objects", b'{"text": "a"}{"text": "b"}'),
        ("garbage after", b'{"text": "a"} x'),
        ("nan literal lowercase", b'{"text": "a", "top_k": nan}'),
        ("unquoted key", b'{text: "a"}'),
    ]:
        add(HttpCase(f"malformed JSON: {name}", _post(body), s({400})))
    for name, body in [
        ("array", "[1, 2]"),
        ("string", '"hi"'),
        ("number", "42"),
        ("null", "null"),
        ("true", "true"),
        ("NaN", "NaN"),
        ("empty object", "{}"),
        ("no text key", '{"txt": "hi"}'),
        ("both keys", '{"text": "a", "texts": ["a"]}'),
    ]:
        add(HttpCase(f"wrong shape: {name}", _post(body), s({422})))

    # -- wrong types
    section = "wrong types (text, texts, top_k)"
    for value in ["5", "1.5", "true", "null", "[]", '["a"]', '{"a": 1}', "NaN", "Infinity", "-0"]:
        add(HttpCase(f"wrong type: text={value}", _post(f'{{"text": {value}}}'), s({422})))
    for value in [
        '"a"',
        "5",
        "null",
        "true",
        "{}",
        "[]",
        '["ok", 3]',
        '["ok", null]',
        '[["a"]]',
        '[{"text": "a"}]',
        "NaN",
    ]:
        add(HttpCase(f"wrong type: texts={value}", _post(f'{{"texts": {value}}}'), s({422})))
    for value in [
        '"3"',
        "3.0",
        "true",
        "false",
        "null",
        "0",
        "-1",
        "21",
        "1e3",
        "[3]",
        "{}",
        "NaN",
        "Infinity",
        str(2**64),
        "-" + str(2**70),
    ]:
        add(
            HttpCase(
                f"wrong type/range: top_k={value}",
                _post(f'{{"text": "hi", "top_k": {value}}}'),
                s({422}),
            )
        )
    add(
        HttpCase(
            "top_k with 5000 digits (over Python's int limit)",
            _post('{"text": "hi", "top_k": ' + "9" * 5000 + "}"),
            s({400}),
        )
    )
    for value in ["1", "20", "3"]:
        add(HttpCase(f"valid top_k={value}", _post(f'{{"text": "hi", "top_k": {value}}}'), ok))

    # -- nesting
    section = "deep nesting"
    for depth in (10_000, 100_000):
        add(HttpCase(f"nested arrays {depth} deep (whole body)", _post(_nest(depth)), s({400})))
        add(
            HttpCase(
                f"nested objects {depth} deep (whole body)",
                _post(_nest(depth, '{"a":', "}", "1")),
                s({400}),
            )
        )
        add(
            HttpCase(
                f"nested arrays {depth} deep in text",
                _post('{"text": ' + _nest(depth) + "}"),
                s({400}),
            )
        )
        add(
            HttpCase(
                f"nested objects {depth} deep in an unknown key",
                _post('{"text": "hi", "x": ' + _nest(depth, '{"a":', "}", "1") + "}"),
                s({400}),
            )
        )
    add(
        HttpCase(
            "nested arrays 500 deep in an unknown key (parses)",
            _post('{"text": "hi", "x": ' + _nest(500) + "}"),
            ok,
        )
    )
    add(
        HttpCase(
            "nested arrays 500 deep as texts", _post('{"texts": ' + _nest(500) + "}"), s({422})
        )
    )

    # -- text lengths and batch sizes (models.max_text_chars 2000, models.max_batch 256)
    section = "long texts, big batches"
    add(HttpCase("text of 2000 chars (the limit)", _post(json.dumps({"text": "a " * 1000})), ok))
    add(HttpCase("text of 2001 chars", _post(json.dumps({"text": "a" * 2001})), s({413})))
    add(HttpCase("text of 500k chars", _post(json.dumps({"text": "word " * 100_000})), s({413})))
    add(HttpCase("empty text", _post('{"text": ""}'), s({422})))
    add(HttpCase("whitespace-only text", _post('{"text": " \\t\\n\\u3000 "}'), s({422})))
    add(
        HttpCase("256 texts (the limit)", _post(json.dumps({"texts": ["book a flight"] * 256})), ok)
    )
    for n in (257, 1000, 5000, 20_000):
        add(HttpCase(f"{n} texts", _post(json.dumps({"texts": ["hi"] * n})), s({413})))
    add(
        HttpCase(
            "a batch with one empty text",
            _post(json.dumps({"texts": ["hi"] * 10 + [""]})),
            s({422}),
        )
    )
    add(
        HttpCase(
            "a batch with one over-long text",
            _post(json.dumps({"texts": ["hi", "x" * 2001]})),
            s({413}),
        )
    )

    # -- unicode
    section = "unicode edge cases"
    for name, text in [
        ("lone high surrogate (escaped)", '"\\ud800"'),
        ("lone low surrogate", '"hi \\udc00 there"'),
        ("reversed pair", '"\\udc00\\ud800"'),
        ("RTL override", json.dumps("\u202eevil\u202c card")),
        ("zero-width only", json.dumps("\u200b\u200c\u200d")),
        ("BOM char", json.dumps("\ufeffhi")),
        ("combining marks", json.dumps("e" + "\u0301" * 1000)),
        ("emoji", json.dumps("\U0001f600 freeze my card")),
        ("NUL escape", '"a\\u0000b"'),
        ("noncharacters", json.dumps("\uffff\ufffe")),
        ("arabic", json.dumps("\u0645\u0631\u062d\u0628\u0627")),
        ("raw utf-8 CJK", json.dumps("\u65e5\u672c\u8a9e", ensure_ascii=False)),
        ("dotted I lowercases longer", json.dumps("\u0130" * 1500)),
    ]:
        add(HttpCase(f"unicode: {name}", _post(f'{{"text": {text}}}'), ok))
        add(HttpCase(f"unicode in a batch: {name}", _post(f'{{"texts": ["ok", {text}]}}'), ok))
    # Python's json decodes bytes with "surrogatepass": a CESU-encoded
    # surrogate becomes a lone surrogate, which predicts fine.
    add(
        HttpCase(
            "unicode: lone surrogate as raw (CESU) bytes",
            _post(b'{"text": "\xed\xa0\x80"}'),
            ok | s({400}),
        )
    )
    add(
        HttpCase(
            "BOM before the JSON (Python's json reads it)",
            _post(b"\xef\xbb\xbf" + b'{"text": "hi"}'),
            ok | s({400}),
        )
    )

    # -- body sizes around client_max_size (1 MiB)
    section = "bodies around/over 1 MiB"

    def pad(size):
        return (
            '{"text": "hi", "pad": "' + "p" * (size - len('{"text": "hi", "pad": ""}')) + '"}'
        ).encode()

    add(HttpCase("body 1 MiB - 1 (valid, an unknown field pads it)", _post(pad(MIB - 1)), ok))
    add(HttpCase("body exactly 1 MiB", _post(pad(MIB)), s({413}) | ok))
    add(HttpCase("body 1 MiB + 1", _post(pad(MIB + 1)), s({413})))
    if large:
        add(
            HttpCase(
                "body 2 MiB of JSON text", _post(json.dumps({"text": "x" * (2 * MIB)})), s({413})
            )
        )
        add(HttpCase("body 16 MiB of junk", _post(b"\x00" * (16 * MIB)), s({413}), timeout=30))
        add(
            HttpCase(
                "body 2 MiB, chunked",
                _post(chunked(pad(2 * MIB), [65536] * 64), {"Transfer-Encoding": "chunked"}),
                s({413}),
            )
        )
    add(
        HttpCase(
            "Content-Length 1 GiB announced, 10 bytes sent, then nothing",
            (_post(b'{"text": ', {"Content-Length": str(1 << 30)}),),
            s(),
            timeout=give_up_s,
        )
    )

    # -- content types and encodings
    section = "content types and encodings"
    valid = b'{"text": "freeze my card"}'
    for ctype in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-16",
        "application/xml",
        "",
        "*/*",
    ]:
        add(
            HttpCase(
                f"content type {ctype!r}",
                http_request("POST", PREDICT, valid, {"Content-Type": ctype}),
                ok | s({415}),
            )
        )
    add(
        HttpCase(
            "content type with a DEL byte",
            http_request("POST", PREDICT, valid, {"Content-Type": "application/json\x7f"}),
            ok | s({400, 415}),
            json_error=False,
        )
    )
    add(HttpCase("no content type", http_request("POST", PREDICT, valid), ok | s({415})))
    add(
        HttpCase(
            "form-encoded body",
            http_request(
                "POST",
                PREDICT,
                b"text=freeze+my+card",
                {"Content-Type": "application/x-www-form-urlencoded"},
            ),
            s({400, 415}),
        )
    )
    boundary = "XyZ"
    multipart = (
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="text"\r\n\r\nhi\r\n--{boundary}--\r\n'
    ).encode()
    add(
        HttpCase(
            "multipart body",
            http_request(
                "POST",
                PREDICT,
                multipart,
                {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            ),
            s({400, 415}),
        )
    )
    add(
        HttpCase(
            "gzip body (valid)",
            _post(gzip.compress(valid), {"Content-Encoding": "gzip"}),
            ok | s({415}),
        )
    )
    add(
        HttpCase(
            "deflate body (valid)",
            _post(zlib.compress(valid), {"Content-Encoding": "deflate"}),
            ok | s({415}),
        )
    )
    add(
        HttpCase(
            "gzip bomb (64 MiB of zeros)",
            _post(gzip.compress(b"0" * (64 * MIB)), {"Content-Encoding": "gzip"}),
            s({413, 415}),
            json_error=False,
            timeout=30,
        )
    )
    add(
        HttpCase(
            "Content-Encoding gzip, body not gzip",
            _post(valid, {"Content-Encoding": "gzip"}),
            s({400, 415}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Content-Encoding deflate, body not deflate",
            _post(b"\x00garbage" * 20, {"Content-Encoding": "deflate"}),
            s({400, 415}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Content-Encoding br, body not brotli",
            _post(b"\x00garbage", {"Content-Encoding": "br"}),
            s({400, 415}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Content-Encoding unknown",
            _post(valid, {"Content-Encoding": "x-hostile"}),
            ok | s({400, 415}),
        )
    )
    add(
        HttpCase(
            "gzip body without its trailer",
            _post(gzip.compress(valid)[:-8], {"Content-Encoding": "gzip"}),
            ok | s({400, 415}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "gzip body cut in the middle",
            _post(gzip.compress(valid)[:12], {"Content-Encoding": "gzip"}),
            s({400, 415}),
            json_error=False,
        )
    )

    # -- chunked transfer
    section = "chunked bodies"
    add(
        HttpCase(
            "chunked, valid, 1-byte chunks",
            _post(chunked(valid, [1] * len(valid)), {"Transfer-Encoding": "chunked"}),
            ok,
        )
    )
    add(
        HttpCase(
            "chunked, bad chunk size",
            _post(b"zz\r\n" + valid + b"\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "chunked, chunk longer than announced",
            _post(b"3\r\n" + valid + b"\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "chunked, size overflows 64 bits",
            _post(b"fffffffffffffffffffff\r\nab\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "chunked, no final chunk, then nothing",
            (_post(b'5\r\n{"tex\r\n', {"Transfer-Encoding": "chunked"}),),
            s(),
            timeout=give_up_s,
        )
    )
    add(
        HttpCase(
            "chunked and Content-Length together",
            _post(chunked(valid, [8] * 8), {"Transfer-Encoding": "chunked", "Content-Length": "5"}),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Transfer-Encoding unknown",
            _post(valid, {"Transfer-Encoding": "hostile"}),
            s({400}),
            json_error=False,
        )
    )

    # -- framing and protocol
    section = "broken HTTP framing"
    add(
        HttpCase(
            "Content-Length not a number",
            http_request("POST", PREDICT, valid, {"Content-Length": "abc"}, content_length=False),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Content-Length negative",
            http_request("POST", PREDICT, valid, {"Content-Length": "-5"}, content_length=False),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Content-Length twice, different",
            http_request(
                "POST",
                PREDICT,
                valid,
                {"Content-Length": "5", "content-length": "26"},
                content_length=False,
            ),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "Content-Length shorter than the body",
            http_request("POST", PREDICT, valid, {"Content-Length": "5"}, content_length=False),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "header line over 8 KiB",
            _post(valid, {"X-Big": "b" * 9000}),
            s({400, 431}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "500 headers",
            _post(valid, {f"X-H{i}": "v" for i in range(500)}),
            ok | s({400, 431}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "URL of 20 KiB",
            http_request("POST", PREDICT + "?" + "q" * 20_000, valid),
            s({400, 414}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
            s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", s({400, 505}), json_error=False
        )
    )
    add(
        HttpCase(
            "HTTP/9.9",
            b"POST /v1/predict HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            s({400, 505}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "LF-only line endings",
            b"POST /v1/predict HTTP/1.1\nHost: x\nContent-Length: 26\n\n" + valid,
            ok | s({400}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "NUL in header value", _post(valid, {"X-Evil": "a\x00b"}), s({400}), json_error=False
        )
    )
    add(
        HttpCase(
            "Expect: 100-continue, 64 MiB announced, nothing sent",
            (_post(b"", {"Expect": "100-continue", "Content-Length": str(64 * MIB)}),),
            s(),
            timeout=give_up_s,
        )
    )

    # -- methods and routes
    section = "bad methods and routes"
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "FOO", "PROPFIND"]:
        add(
            HttpCase(
                f"method {method} on /v1/predict",
                http_request(method, PREDICT, valid if method != "HEAD" else b""),
                s({400, 405}) if method == "FOO" else s({405}),
                json_error=False,
                body_required=method != "HEAD",
            )
        )
    add(
        HttpCase(
            "lowercase method",
            http_request("post", PREDICT, valid),
            s({400, 405}),
            json_error=False,
        )
    )
    for path in [
        "/v1/predict/",
        "/v1/PREDICT",
        "/v2/predict",
        "/v1/predict/../predict",
        "/%00",
        "/%ff%fe",
        "/" + "a" * 4000,
        "//v1//predict",
        "/v1/predict%00",
    ]:
        add(
            HttpCase(
                f"path {path[:40]!r}",
                http_request("POST", path, valid),
                s({404}) | (ok if path in ("/v1/predict/../predict",) else s()),
                json_error=False,
            )
        )
    add(HttpCase("healthz", http_request("GET", "/healthz"), s({200}), json_error=False))

    # -- admin routes: no token, wrong tokens, odd tokens; valid token on harmless routes
    section = "admin routes and tokens"
    admin_routes = [
        ("GET", "/admin/v1/models"),
        ("POST", "/admin/v1/models/v000001/activate"),
        ("POST", "/admin/v1/rollback"),
        ("POST", "/admin/v1/retrain"),
        ("GET", "/admin/v1/learning"),
        ("GET", "/admin/v1/status"),
    ]
    wrong = {
        "none": None,
        "wrong": "Bearer wrong",
        "empty bearer": "Bearer ",
        "bearer only": "Bearer",
        "basic": f"Basic {token}",
        "token without scheme": token,
        "prefix of the token": f"Bearer {token[:-1]}",
        "token + suffix": f"Bearer {token}x",
        "token twice": f"Bearer {token} {token}",
        "NUL after token": f"Bearer {token}\x00",
        "unicode token": "Bearer t\u00f6ken\u202e",
        "8 KiB token": "Bearer " + "t" * 8000,
        "non-UTF-8 bytes": "Bearer \udcff\udcfe",
    }
    for method, path in admin_routes:
        for name, value in wrong.items():
            headers = {} if value is None else {"Authorization": value}
            allowed = s({401})
            json_needed = True
            if name == "NUL after token":
                # aiohttp refuses NUL in a header value before our handler
                allowed, json_needed = s({400, 401}), False
            if name == "8 KiB token":
                allowed = s({400, 401, 431})
                json_needed = False
            add(
                HttpCase(
                    f"admin {method} {path} with {name} token",
                    http_request(method, path, b"" if method == "GET" else b"{}", headers),
                    allowed,
                    json_error=json_needed,
                )
            )
    good = {"Authorization": f"Bearer {token}"}
    add(
        HttpCase(
            "admin models with the token",
            http_request("GET", "/admin/v1/models", b"", good),
            s({200}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "admin learning with the token",
            http_request("GET", "/admin/v1/learning", b"", good),
            s({200, 409}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "admin status with the token",
            http_request("GET", "/admin/v1/status", b"", good),
            s({200, 409}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "admin bearer in lowercase",
            http_request("GET", "/admin/v1/models", b"", {"Authorization": f"bearer {token}"}),
            s({200}),
            json_error=False,
        )
    )
    for version in [
        "v999999",
        "..",
        "%2e%2e",
        "%00",
        "%ff",
        "v000001%00",
        "x" * 2000,
        "v000001.bak",
        "%2F..%2F..%2Fetc",
        "%C3%A9",
    ]:
        add(
            HttpCase(
                f"activate version {version[:30]!r}",
                http_request("POST", f"/admin/v1/models/{version}/activate", b"{}", good),
                s({404}),
            )
        )
    add(
        HttpCase(
            "activate version with a raw non-ASCII byte in the path",
            http_request("POST", "/admin/v1/models/\u00e9/activate", b"{}", good),
            s({400, 404}),
            json_error=False,
        )
    )
    add(
        HttpCase(
            "rollback with the token (no parent)",
            http_request("POST", "/admin/v1/rollback", b"{}", good),
            s({409}) | (s({404}) if not model else s()),
        )
    )
    add(
        HttpCase(
            "admin route with a wrong method",
            http_request("DELETE", "/admin/v1/models", b"", good),
            s({405}),
            json_error=False,
        )
    )
    return cases


def check_answer(case: HttpCase, answer: Answer) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    if answer.status is not None and answer.status >= 500 and answer.status not in case.statuses:
        return f"{answer.status} (a 5xx): {answer.body[:300]!r}"
    # the client gave up mid-request: no answer is owed, but the server must not have failed
    if not case.statuses:
        return (
            None
            if answer.status is None or answer.status < 500
            else f"{answer.status}: {answer.body[:200]!r}"
        )
    if answer.status is None:
        return (
            f"no response within {case.timeout}s (timed out: {answer.timed_out}); "
            f"got {answer.body[:200]!r}"
        )
    if answer.status not in case.statuses:
        return (
            f"status {answer.status}, expected one of {sorted(case.statuses)}: "
            f"{answer.body[:300]!r}"
        )
    if 400 <= answer.status < 500 or answer.status == 503:
        if case.json_error and answer.message() is None:
            return f"{answer.status} without a JSON error message: {answer.body[:300]!r}"
        if case.body_required and not answer.body.strip():
            return f"{answer.status} with an empty body"
    if answer.status == 200 and case.json_error:
        try:
            payload = answer.json()
        except ValueError:
            return f"200 with a body that is not JSON: {answer.body[:200]!r}"
        if not isinstance(payload, dict):
            return f"200 with {payload!r:.200}"
    return None


def random_predict_bodies(count: int, seed: int = 3) -> list[tuple[str, bytes]]:
    """Structured-random request bodies: right keys with
    random values, random keys, truncations and flips."""
    rng = random.Random(seed)
    scalars: list[Callable[[], Any]] = [
        lambda: rng.choice(TEXTS),
        lambda: "",
        lambda: " ",
        lambda: rng.randint(-5, 30),
        lambda: rng.random(),
        lambda: rng.choice([True, False, None]),
        lambda: "x" * rng.choice([1, 1999, 2000, 2001, 5000]),
        lambda: (
            "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(rng.randint(1, 20)))
            .encode("utf-8", "surrogatepass")
            .decode("utf-8", "replace")
        ),
    ]

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.6:
            return rng.choice(scalars)()
        if roll < 0.8:
            return [value(depth + 1) for _ in range(rng.randint(0, 5))]
        return {
            rng.choice(["text", "texts", "top_k", "x"]): value(depth + 1)
            for _ in range(rng.randint(0, 3))
        }

    out = []
    for _ in range(count):
        roll = rng.random()
        body: dict[str, Any] = {}
        if roll < 0.4:
            body["text"] = rng.choice([rng.choice(TEXTS), value()])
        elif roll < 0.8:
            body["texts"] = rng.choice(
                [[rng.choice(TEXTS) for _ in range(rng.randint(0, 300))], value()]
            )
        else:
            body = {
                rng.choice(["text", "texts", "top_k", "Text", "", "\u0000"]): value()
                for _ in range(rng.randint(0, 4))
            }
        if rng.random() < 0.4:
            body["top_k"] = rng.choice([rng.randint(-2, 25), value()])
        raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        how = rng.random()
        if how < 0.1:
            raw, name = raw[: rng.randrange(len(raw) + 1)], "truncated"
        elif how < 0.15:
            at = rng.randrange(len(raw) + 1)
            raw, name = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1 :], "byte flipped"
        else:
            name = "structured"
        out.append((name, raw))
    return out


# --------------------------------------------------------------------------------------------------
# scenario runners (the fast tests and the stress harness differ only in their counts)


async def read_all(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` from the beginning
    up to its end offsets at the time of the call."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = [
            TopicPartition(topic, p)
            for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in partitions]
            if all(at >= ends[tp] for at, tp in zip(positions, partitions, strict=False)):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for part in batch.values():
                records.extend(part)
        else:
            raise TimeoutError(
                f"{topic}: read {len(records)} records in {timeout_s}s without "
                f"reaching the end offsets {ends}"
            )
    finally:
        await consumer.stop()
    return records


async def _partitions(consumer: Any, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no partitions")


@dataclass
class BrokerReport:
    malformed: int
    valid: int
    dlq_records: int
    dlq_lost: int
    dlq_duplicated: int
    dlq_unexpected: int
    wrong_reason: int
    wrong_bytes: int
    bad_headers: int
    stored: int
    stored_lost: int
    stored_duplicated: int
    stored_unexpected: int
    predictions_missing: int | None
    alive: bool
    exit_code: int | None
    tally: Tally
    problems: list[str]

    def line(self) -> str:
        predicted = (
            ""
            if self.predictions_missing is None
            else f"; utterances without a prediction {self.predictions_missing}"
        )
        return (
            f"sent {self.malformed} malformed, {self.valid} valid; DLQ "
            f"{self.dlq_records} (lost {self.dlq_lost}, duplicated "
            f"{self.dlq_duplicated}, unexpected {self.dlq_unexpected}, "
            f"wrong reason {self.wrong_reason}, altered bytes "
            f"{self.wrong_bytes}, "
            f"bad headers {self.bad_headers}); stored {self.stored} (lost "
            f"{self.stored_lost}, duplicated {self.stored_duplicated}, "
            f"unexpected {self.stored_unexpected}){predicted}; daemon alive "
            f"{self.alive}, exit code {self.exit_code}"
        )

    @property
    def clean(self) -> bool:
        return (
            self.dlq_lost
            == self.dlq_duplicated
            == self.dlq_unexpected
            == self.wrong_reason
            == self.wrong_bytes
            == self.bad_headers
            == 0
            and self.stored_lost == self.stored_duplicated == self.stored_unexpected == 0
            and self.alive
            and self.exit_code == 0
            and not self.predictions_missing
            and not self.problems
        )


def broker_scenario(
    bootstrap: str,
    data_dir: Path,
    bad: Sequence[Case],
    good: Sequence[Case],
    *,
    max_bytes: int,
    registry: Path | None = None,
    partitions: int = 4,
    timeout_s: float = 300,
    seed: int = 7,
) -> BrokerReport:
    """Produce ``bad`` and ``good`` interleaved (hostile keys too)
    to a real daemon; reconcile its DLQ and stores by position."""
    from tests.integration.harness import DaemonProcess, stored_keys, unique

    rng = random.Random(seed)
    mixed = interleave(bad, good, seed)
    keys = random_keys(rng, len(mixed))
    # Kafka needs one of the two
    keys = [
        key if key is not None or case.raw is not None else b"tombstone"
        for key, case in zip(keys, mixed, strict=False)
    ]
    # The keys are hostile too, none included: valid events must be stored whatever
    # their key (the null-key policy's own test is tests/integration/test_codecs.py).
    env = {"DRIFTD_INGEST__MAX_EVENT_BYTES": str(max_bytes), "DRIFTD_INGEST__NULL_KEY": "accept"}
    if registry is not None:
        env["DRIFTD_MODELS__REGISTRY_DIR"] = str(registry)
    topic = unique("hostile")
    daemon = DaemonProcess(bootstrap, data_dir, topic, partitions=partitions, extra_env=env).start()
    problems: list[str] = []
    exit_code = None
    try:
        daemon.wait_ready(model=registry is not None)
        positions = asyncio.run(produce_positions(bootstrap, topic, [c.raw for c in mixed], keys))
        daemon.wait_until(
            lambda: (
                daemon.metric("driftd_events_total") + daemon.metric("driftd_dlq_total")
                >= len(mixed)
            ),
            timeout_s,
            "every record handled",
        )
        dead = asyncio.run(read_all(bootstrap, daemon.dlq))
        predictions = (
            asyncio.run(read_all(bootstrap, f"{topic}.predictions"))
            if registry is not None
            else None
        )
        metrics = daemon.metrics()
        alive = daemon.proc is not None and daemon.proc.poll() is None
        if alive:
            exit_code, _ = daemon.terminate(timeout_s=30)
    finally:
        daemon.stop_quietly()

    at = {pos: (case, keys[i]) for i, (case, pos) in enumerate(zip(mixed, positions, strict=False))}
    bad_positions = [pos for pos, (case, _) in at.items() if not case.valid]
    good_positions = [pos for pos, (case, _) in at.items() if case.valid]
    seen: Counter[tuple[int, int]] = Counter()
    tally = Tally()
    wrong_reason = wrong_bytes = bad_headers = 0
    for record in dead:
        headers = {name: value for name, value in record.headers}
        try:
            src_topic, partition, offset = headers["driftd-source"].decode().rsplit("/", 2)
            reason = headers["driftd-reason"].decode("ascii")
            detail = headers["driftd-detail"]
        except (KeyError, ValueError) as exc:
            bad_headers += 1
            problems.append(f"DLQ record with unreadable headers {headers!r:.300}: {exc!r}")
            continue
        pos = (int(partition), int(offset))
        seen[pos] += 1
        if src_topic != topic:
            bad_headers += 1
            continue
        case, key = at.get(pos, (None, None))
        if case is None:
            continue  # counted as unexpected by reconcile
        tally.add(case.kind, reason, reason in case.reasons)
        if reason not in case.reasons:
            wrong_reason += 1
            if len(problems) < 30:
                problems.append(
                    f"{case.kind}: reason {reason}, expected {sorted(case.reasons)} "
                    f"for {case.raw and case.raw[:120]!r}"
                )
        if (
            record.value != case.raw
            or (record.key or b"") != (key or b"")
            or record.partition != pos[0] % partitions
        ):
            wrong_bytes += 1
            if len(problems) < 30:
                problems.append(
                    f"{case.kind}: DLQ record differs from the original "
                    f"(value/key/partition) at {pos}"
                )
        try:
            detail.decode("utf-8")
            assert 0 < len(detail) <= 1024
        except (UnicodeDecodeError, AssertionError):
            bad_headers += 1
            if len(problems) < 30:
                problems.append(
                    f"{case.kind}: driftd-detail is not 1-1024 bytes of UTF-8: "
                    f"{len(detail)} bytes, ends {detail[-8:]!r}"
                )
    dlq_lost, dlq_dup, dlq_unexpected = reconcile(bad_positions, seen)
    stored = stored_keys(data_dir)
    st_lost, st_dup, st_unexpected = reconcile(good_positions, stored)
    for pos in good_positions:
        tally.add(at[pos][0].kind, "stored" if stored[pos] else "NOT STORED", stored[pos] == 1)
    missing = None
    if predictions is not None:
        predicted = {json.loads(r.value)["event_id"] for r in predictions}
        utterances = {
            case.event_id
            for case, _ in at.values()
            if case.valid and json.loads(case.raw)["type"] == "utterance"
        }
        missing = len(utterances - predicted)
    from daemon.metrics_scrape import family_total

    if family_total(metrics, "driftd_dlq_total") != len(bad) or family_total(
        metrics, "driftd_events_total"
    ) != len(good):
        problems.append(
            f"metrics: driftd_dlq_total {family_total(metrics, 'driftd_dlq_total')} "
            f"(sent {len(bad)} malformed), "
            "driftd_events_total "
            f"{family_total(metrics, 'driftd_events_total')} (sent "
            f"{len(good)} valid)"
        )
    return BrokerReport(
        len(bad),
        len(good),
        len(dead),
        dlq_lost,
        dlq_dup,
        dlq_unexpected,
        wrong_reason,
        wrong_bytes,
        bad_headers,
        sum(stored.values()),
        st_lost,
        st_dup,
        st_unexpected,
        missing,
        alive,
        exit_code,
        tally,
        problems,
    )


@dataclass
class HttpReport:
    statuses: Counter[str] = field(default_factory=Counter)
    by_group: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    sent: int = 0

    def record(self, group: str, name: str, answer: Answer, problem: str | None) -> None:
        label = "no answer" if answer.status is None else str(answer.status)
        self.sent += 1
        self.statuses[label] += 1
        self.by_group[group][label] += 1
        if answer.elapsed > self.slowest[0]:
            self.slowest = (answer.elapsed, name)
        if problem:
            self.failures.append(f"{name}: {problem}")

    def table(self, title: str) -> str:
        lines = [
            title,
            f"  requests {self.sent}; by status: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
        ]
        for group, counts in self.by_group.items():
            lines.append(
                f"  {group.ljust(44)} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
        lines.append(
            f"  slowest answer {self.slowest[0]:.2f} s ({self.slowest[1]}); "
            f"failures {len(self.failures)}"
        )
        return "\n".join(lines)


def _group(name: str) -> str:
    return name.split(":")[0] if ":" in name else " ".join(name.split()[:2])


def run_http_cases(
    port: int, cases: Sequence[HttpCase], report: HttpReport, *, workers: int = 1
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(case: HttpCase) -> tuple[HttpCase, Answer]:
        return case, raw_http(port, case.request, case.timeout)

    with ThreadPoolExecutor(workers) as pool:
        for case, answer in pool.map(one, cases):
            report.record(
                case.group or _group(case.name), case.name, answer, check_answer(case, answer)
            )


def predict_json_bodies(max_text: int, max_list: int, max_dict: int, max_leaves: int) -> Any:
    """A hypothesis strategy of JSON values shaped like
    /v1/predict bodies (its keys, wrong types, nesting)."""
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=max_text)
    keys = st.sampled_from(["text", "texts", "top_k", "x"]) | st.text(max_size=5)
    return st.recursive(
        scalars,
        lambda kids: (
            st.lists(kids, max_size=max_list) | st.dictionaries(keys, kids, max_size=max_dict)
        ),
        max_leaves=max_leaves,
    )


def post_json(port: int, body: Any, ascii_only: bool, report: HttpReport) -> Answer:
    """``body`` serialised as JSON (lone surrogates passed
    through when not ASCII) and POSTed by ``post_body``."""
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return post_body(port, raw, report, "hypothesis JSON bodies", f"hypothesis {raw[:80]!r}")


def post_body(
    port: int, body: bytes, report: HttpReport, group: str, name: str, timeout: float = 10.0
) -> Answer:
    """POST one body to /v1/predict; any 200/400/413/422
    with JSON is fine, anything else is a failure."""
    case = HttpCase(name, _post(body), frozenset({200, 400, 413, 422}), timeout=timeout)
    answer = raw_http(port, case.request, timeout)
    report.record(group, name, answer, check_answer(case, answer))
    return answer


def slowloris(
    port: int,
    report: HttpReport,
    *,
    connections: int = 10,
    duration_s: float = 4.0,
    probes: int = 10,
) -> float:
    """Slow clients (headers and bodies trickled a byte at a time, then abandoned) while normal
    requests must still be answered promptly; returns the slowest normal answer in seconds."""
    import threading

    stop = threading.Event()
    valid = b'{"text": "freeze my card"}'

    def trickle(i: int) -> None:
        request = _post(valid + b" " * 2000) if i % 2 else http_request("GET", "/healthz")
        # bodies: headers whole, body slowly; else headers slowly
        cut = len(request) - 1000 if i % 2 else len(request) - 2
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=duration_s + 5)
        except OSError:
            return
        try:
            sock.sendall(request[: max(1, cut - 200)])
            for byte in request[max(1, cut - 200) : cut]:
                if stop.is_set():
                    break
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        finally:
            stop.wait(duration_s + 1)
            sock.close()  # the client times out and gives up

    threads = [threading.Thread(target=trickle, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    slowest = 0.0
    ok = frozenset({200})
    for i in range(probes):
        case = HttpCase(f"normal request during slowloris #{i}", _post(valid), ok, timeout=5)
        answer = raw_http(port, case.request, case.timeout)
        report.record("during slowloris", case.name, answer, check_answer(case, answer))
        slowest = max(slowest, answer.elapsed)
        time.sleep(duration_s / probes)
    stop.set()
    for t in threads:
        t.join(duration_s + 10)
    after = raw_http(port, http_request("GET", "/healthz"), 5)
    report.record(
        "after slowloris",
        "healthz after slowloris",
        after,
        None if after.status == 200 else f"healthz {after.status}",
    )
    return slowest


def serving_daemon(
    bootstrap: str,
    root: Path,
    *,
    token: str,
    model: bool = True,
    extra_env: dict[str, str] | None = None,
):
    """A real daemon with a small model (or none) and an admin
    token; yields it, then checks it is alive and stops cleanly."""
    from contextlib import contextmanager

    from tests.integration.harness import DaemonProcess, unique

    @contextmanager
    def running():
        env = {"DRIFTD_WEB__ADMIN_TOKEN": token, **(extra_env or {})}
        if model:
            env["DRIFTD_MODELS__REGISTRY_DIR"] = str(build_small_registry(root / "registry"))
        proc = DaemonProcess(
            bootstrap, root / "state", unique("hostile-http"), extra_env=env
        ).start()
        try:
            proc.wait_ready(model=model)
            yield proc
            assert proc.proc is not None and proc.proc.poll() is None, (
                f"the daemon died under hostile requests:\n{proc.log_tail()}"
            )
            code, _ = proc.terminate(timeout_s=30)
            assert code == 0, proc.log_tail()
        finally:
            proc.stop_quietly()

    return running()


def server_errors_logged(log_path: Path) -> list[str]:
    """Unhandled exceptions in a request handler (each one a 500), from the
    daemon's log. aiohttp also logs its own 400s for broken HTTP and clients
    that hang up mid-body ("Connection lost") at ERROR: those are not counted."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    found = []
    blocks = text.split("aiohttp.server: Error handling request")[1:]
    for block in blocks:
        lines = [line for line in block.splitlines()[1:] if line.strip()]
        # the next log record
        end = next(
            (i for i, line in enumerate(lines) if line[:4].isdigit() and " " in line[:25]),
            len(lines),
        )
        trace = lines[:end]
        last = trace[-1].strip() if trace else ""
        if any("in _handle_request" in line for line in trace) and "Connection lost" not in last:
            found.append(last[:200])
    return found


def _probe(port: int, timeout: float = 5) -> int | str | None:
    try:
        return raw_http(port, http_request("GET", "/healthz"), timeout).status
    except OSError as exc:
        return type(exc).__name__


def connection_flood(
    bootstrap: str, root: Path, *, nofile: int = 1024, connections: int = 1100, hold_s: float = 15.0
) -> dict[str, Any]:
    """Idle TCP connections to the HTTP port, more than the daemon has file descriptors
    (``nofile``, as its hard limit too, so that the daemon cannot raise it), held
    across the daemon's 10-second timers, then closed. Returns what happened."""
    import resource

    from tests.integration.harness import DaemonProcess, unique

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections + 200:  # the client side needs them too
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections + 500), hard))
    daemon = DaemonProcess(
        bootstrap,
        root / "state",
        unique("hostile-flood"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
    )
    daemon.start()
    result: dict[str, Any] = {"nofile": nofile, "connections": connections, "hold_s": hold_s}
    socks: list[socket.socket] = []
    try:
        daemon.wait_ready()
        result["healthz_before"] = _probe(daemon.web_port)
        for _ in range(connections):
            try:
                socks.append(socket.create_connection(("127.0.0.1", daemon.web_port), timeout=2))
            except OSError:
                break
        result["opened"] = len(socks)
        time.sleep(hold_s)
        result["healthz_during"] = _probe(daemon.web_port, 3)
    finally:
        for sock in socks:
            sock.close()
    try:
        time.sleep(3)
        result["alive_after"] = daemon.proc is not None and daemon.proc.poll() is None
        result["exit_code"] = None if result["alive_after"] else daemon.proc.returncode
        result["healthz_after"] = _probe(daemon.web_port)
        if result["alive_after"]:
            values = [
                json.dumps(event(random.Random(i), i, run="flood")).encode() for i in range(20)
            ]
            asyncio.run(produce_positions(bootstrap, daemon.topic, values))
            try:
                daemon.wait_stored(20, timeout_s=30)
                result["ingest_after"] = "ok"
            except AssertionError:
                result["ingest_after"] = "stalled"
        log = daemon.log_path.read_text(errors="replace")
        result["log_lines"] = log.count("\n")
        crash = [
            line
            for line in log.splitlines()
            if "Crashed reason=" in line or "We experienced a crash" in line
        ]
        result["crash"] = crash[0][:200] if crash else None
        if result["alive_after"]:
            code, _ = daemon.terminate(timeout_s=30)
            result["exit_code"] = code
    finally:
        daemon.stop_quietly()
    return result
