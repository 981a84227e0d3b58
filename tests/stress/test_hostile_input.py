"""The "hostile input" harness: malformed payloads through the decoder (100,000+) and
through the real broker into a real daemon (10,000+), and the HTTP endpoint fuzzed. Each
test prints what it tried and the number of events lost or duplicated, which must be 0.

    .venv/bin/python -m pytest -m stress tests/stress/test_hostile_input.py -s

The generators are shared with the fast variants in the default suite (tests/hostile.py):
tests/unit/test_decoder_fuzz.py, tests/integration/test_hostile_broker.py,
tests/integration/test_hostile_http.py.
"""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.schema import REJECTION_REASONS, Rejection, decode_event
from tests import hostile

LIMIT = hostile.MAX_EVENT_BYTES
TOKEN = "stress-admin-token-0123456789abcdef"


# --- (a) the decoder
# ------------------------------------------------------------------------------------------


def test_decoder_rejects_105000_malformed_payloads_with_their_reason_and_accepts_the_controls():
    started = time.monotonic()
    per_kind = 5000
    bad = hostile.malformed(per_kind * len(hostile.MALFORMED_KINDS), seed=101)
    good = hostile.controls(10_008, seed=102)
    tally = hostile.check_decoder(bad + good, LIMIT)
    # Mutations of valid events: any verdict is fine, but
    # nothing may raise and rejections name documented reasons.
    rng = random.Random(103)
    valid = [c.raw for c in good[:2000]]
    for _ in range(50_000):
        raw = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(raw))
            how = rng.random()
            if how < 0.4:
                raw[at] = rng.randrange(256)
            elif how < 0.7:
                raw[at:at] = bytes([rng.choice(b'{}[]",:\\\x00\xff0e-')])
            else:
                del raw[at]
        try:
            result = decode_event(bytes(raw), LIMIT)
        except BaseException as exc:  # noqa: BLE001 - reported as the case's outcome
            tally.add(
                "mutated valid event (any verdict)",
                f"RAISED {type(exc).__name__}",
                False,
                repr(bytes(raw[:120])),
                "crash",
            )
            continue
        verdict = result.reason if isinstance(result, Rejection) else "accepted"
        tally.add(
            "mutated valid event (any verdict)",
            verdict,
            verdict in REJECTION_REASONS or verdict == "accepted",
        )
    print(
        "\n"
        + tally.table(
            f"decoder fuzz: {len(bad)} malformed, {len(good)} valid controls, 50000 "
            "mutations "
            f"({time.monotonic() - started:.1f} s)"
        )
    )
    print(
        f"decoder: {len(bad) + len(good) + 50_000} payloads; crashes "
        f"{tally.wrong['crash']}, malformed accepted "
        f"{tally.wrong['malformed accepted']}, wrong reason "
        f"{tally.wrong['wrong reason']}, valid rejected "
        f"{tally.wrong['valid rejected']}"
    )
    assert len(bad) >= 100_000
    assert not tally.failures, "\n".join(tally.failures)


@settings(max_examples=5000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    raw=st.binary(max_size=8192)
    | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")),
    max_bytes=st.sampled_from([256, 4096, LIMIT]),
)
def test_decoder_never_raises_on_arbitrary_bytes(raw, max_bytes):
    result = decode_event(raw, max_bytes)
    assert (isinstance(result, Rejection) and result.reason in REJECTION_REASONS) or hasattr(
        result, "event_id"
    )


@pytest.mark.parametrize("depth", [100_000, 1_000_000])
def test_decoder_refuses_absurd_nesting_quickly(depth):
    for payload in (b"[" * depth, b"[" * depth + b"]" * depth, b'{"a":' * depth):
        started = time.monotonic()
        result = decode_event(payload, len(payload))
        assert isinstance(result, Rejection) and result.reason == "not_json"
        assert time.monotonic() - started < 1.0


# --- (b) through the real broker
# --------------------------------------------------------------------------------

BROKER_MAX_BYTES = 4096


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory):
    return hostile.build_small_registry(tmp_path_factory.mktemp("hostile-registry"))


@pytest.mark.timeout(900)
def test_10500_malformed_records_through_the_broker(broker, tmp_path_factory, small_registry):
    """10,500 malformed records (500 of each kind, tombstones included, hostile
    keys) and 2,007 valid but unusual events interleaved, into a daemon
    serving a model (valid utterances are predicted and published too)."""
    started = time.monotonic()
    bad = hostile.malformed(
        500 * len(hostile.MALFORMED_KINDS), seed=201, max_bytes=BROKER_MAX_BYTES
    )
    good = hostile.controls(2007, seed=202, max_bytes=BROKER_MAX_BYTES, run="stress")
    report = hostile.broker_scenario(
        broker.bootstrap,
        tmp_path_factory.mktemp("hostile-broker"),
        bad,
        good,
        max_bytes=BROKER_MAX_BYTES,
        registry=small_registry,
        timeout_s=600,
    )
    print(
        "\n"
        + report.tally.table(f"through the broker ({time.monotonic() - started:.1f} s)")
        + "\n"
        + report.line()
    )
    assert len(bad) >= 10_000
    assert report.clean, report.line() + "\n" + "\n".join(report.problems)


# --- (c) HTTP
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(broker, tmp_path_factory):
    with hostile.serving_daemon(
        broker.bootstrap, tmp_path_factory.mktemp("hostile-http"), token=TOKEN
    ) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def http_report():
    return hostile.HttpReport()


@pytest.mark.timeout(900)
def test_http_hand_written_cases_serially_and_concurrently(served, http_report):
    cases = hostile.http_cases(TOKEN, large=True)
    hostile.run_http_cases(served.web_port, cases, http_report)
    # the same, 16 at a time
    hostile.run_http_cases(served.web_port, cases * 3, http_report, workers=16)
    assert not http_report.failures, "\n".join(http_report.failures)


@pytest.mark.timeout(900)
def test_http_random_bodies(served, http_report):
    for name, body in hostile.random_predict_bodies(3000, seed=301):
        hostile.post_body(served.web_port, body, http_report, f"random bodies ({name})", name)
    assert not http_report.failures, "\n".join(http_report.failures)


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    body=hostile.predict_json_bodies(max_text=50, max_list=8, max_dict=5, max_leaves=60),
    ascii_only=st.booleans(),
)
def test_http_generated_json_bodies(served, http_report, body, ascii_only):
    answer = hostile.post_json(served.web_port, body, ascii_only, http_report)
    assert answer.status in (200, 400, 413, 422), answer


@pytest.mark.timeout(300)
def test_http_slowloris(served, http_report):
    slowest = hostile.slowloris(
        served.web_port, http_report, connections=60, duration_s=10.0, probes=20
    )
    print(
        "\n"
        + http_report.table("hostile HTTP against a daemon serving a model")
        + f"\nslowest normal request during slowloris {slowest:.2f} s"
    )
    errors = hostile.server_errors_logged(served.log_path)
    print(
        f"unhandled handler exceptions in the daemon log: {len(errors)}"
        + "".join(f"\n  {e}" for e in errors[:20])
    )
    assert slowest < 2.0
    assert not http_report.failures, "\n".join(http_report.failures)
    assert not errors


def test_http_before_any_model(broker, tmp_path_factory):
    """No model yet: valid requests are 503 with a message,
    malformed ones the same 4xx as with a model."""
    report = hostile.HttpReport()
    with hostile.serving_daemon(
        broker.bootstrap, tmp_path_factory.mktemp("hostile-http-nomodel"), token=TOKEN, model=False
    ) as daemon:
        hostile.run_http_cases(
            daemon.web_port, hostile.http_cases(TOKEN, model=False, large=False), report
        )
        errors = hostile.server_errors_logged(daemon.log_path)
    print("\n" + report.table("hostile HTTP against a daemon with no model"))
    assert not report.failures, "\n".join(report.failures)
    assert not errors, errors


@pytest.mark.timeout(300)
def test_http_connection_flood_does_not_crash_the_daemon(broker, tmp_path_factory):
    result = hostile.connection_flood(broker.bootstrap, tmp_path_factory.mktemp("hostile-flood"))
    print("\nconnection flood: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    assert (
        result["alive_after"]
        and result["healthz_after"] == 200
        and result["ingest_after"] == "ok"
        and result["exit_code"] == 0
    ), result
    # asyncio's accept error, once per 10 s (daemon.logs.RepeatFilter), not thousands a second
    assert result["log_lines"] < 2000, result
