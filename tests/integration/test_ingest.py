"""Ingest through the real embedded broker into real stores: dead-lettering, metrics, lifecycle."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.harness import (
    DaemonProcess,
    produce,
    read_topic,
    stored_event_ids,
    unique,
    valid_event,
)

MAX_BYTES = 2048
REQUIRED = {
    "utterance": ["event_id", "conversation_id", "turn", "ts", "text"],
    "label": ["event_id", "conversation_id", "turn", "ts", "ref_event_id", "intent"],
}
WRONG_TYPES = {
    "event_id": st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)),
    "conversation_id": st.one_of(st.integers(), st.floats(allow_nan=False), st.none()),
    "turn": st.one_of(
        st.text(max_size=5), st.booleans(), st.integers(0, 1000).map(lambda i: i + 0.5)
    ),
    "ts": st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2)),
    "text": st.one_of(
        st.integers(),
        st.booleans(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    "ref_event_id": st.one_of(st.integers(), st.booleans()),
    "intent": st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2)),
}


@st.composite
def malformed(draw) -> tuple[bytes, str]:
    """A payload that is wrong in exactly one known way, and the reason the daemon must give."""
    kind = draw(st.sampled_from(["utterance", "label"]))
    event = valid_event(draw(st.integers(0, 10**6)), kind=kind, run=draw(st.sampled_from("abcdef")))
    flaw = draw(
        st.sampled_from(
            [
                "not_json",
                "bad_utf8",
                "missing_field",
                "wrong_type",
                "unknown_type",
                "too_large",
                "invalid_value",
                "not_object",
            ]
        )
    )
    if flaw == "not_json":
        text = json.dumps(event).encode()
        return text[: draw(st.integers(1, len(text) - 1))], "not_json"
    if flaw == "bad_utf8":
        return b'{"event_id": "\xff\xfe' + draw(st.binary(max_size=20)), "not_json"
    if flaw == "not_object":
        value = draw(
            st.one_of(
                st.integers(),
                st.text(max_size=10),
                st.lists(st.integers(), max_size=3),
                st.none(),
                st.booleans(),
            )
        )
        return json.dumps(value).encode(), "wrong_type"
    if flaw == "missing_field":
        field = draw(st.sampled_from(REQUIRED[kind] + ["type"]))
        del event[field]
        return json.dumps(event).encode(), "missing_field"
    if flaw == "wrong_type":
        field = draw(st.sampled_from(REQUIRED[kind]))
        event[field] = draw(WRONG_TYPES[field])
        return json.dumps(event).encode(), "wrong_type"
    if flaw == "unknown_type":
        event["type"] = draw(
            st.text(min_size=1, max_size=12).filter(
                lambda t: t not in ("utterance", "feedback", "label")
            )
        )
        return json.dumps(event).encode(), "unknown_type"
    if flaw == "too_large":
        event["padding"] = "x" * draw(st.integers(MAX_BYTES, 3 * MAX_BYTES))
        return json.dumps(event).encode(), "too_large"
    event.update(
        draw(
            st.sampled_from([{"turn": -1}, {"priority": "urgent"}, {"event_id": ""}, {"ts": -5.0}])
        )
    )
    return json.dumps(event).encode(), "invalid_value"


def generate(strategy: st.SearchStrategy, count: int) -> list:
    """``count`` examples drawn by hypothesis (generation only: nothing here can fail to shrink)."""
    drawn: list = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example) -> None:
        drawn.append(example)

    collect()
    return drawn


def test_malformed_payloads_go_to_the_dlq_with_their_reason_and_valid_ones_are_stored(
    broker, tmp_path_factory
):
    bad = generate(malformed(), 1200)
    good = [json.dumps(valid_event(i, run="good")).encode() for i in range(800)]
    assert len(bad) >= 1000 and set(reason for _, reason in bad) >= {
        "not_json",
        "missing_field",
        "wrong_type",
        "unknown_type",
        "too_large",
        "invalid_value",
    }
    mixed = [
        payload
        for i, (payload, _) in enumerate(bad)
        for payload in ([payload, good[i]] if i < len(good) else [payload])
    ]

    topic = unique("dlq")
    daemon = DaemonProcess(
        broker.bootstrap,
        tmp_path_factory.mktemp("dlq"),
        topic,
        extra_env={"DRIFTD_INGEST__MAX_EVENT_BYTES": str(MAX_BYTES)},
    ).start()
    try:
        daemon.wait_ready()
        asyncio.run(produce(broker.bootstrap, topic, mixed))
        daemon.wait_until(
            lambda: (
                daemon.metric("driftd_events_total") + daemon.metric("driftd_dlq_total")
                >= len(mixed)
            ),
            120,
            "every record handled",
        )

        expected = Counter(reason for _, reason in bad)
        metrics = daemon.metrics()
        assert {
            reason: metrics.get(f"driftd_dlq_total{{reason={reason}}}", 0) for reason in expected
        } == expected
        assert metrics["driftd_events_total{type=utterance}"] == len(good)

        dead = asyncio.run(read_topic(broker.bootstrap, daemon.dlq, len(bad)))
        got = Counter(
            (record.value, dict(record.headers)["driftd-reason"].decode()) for record in dead
        )
        assert got == Counter(bad)  # every malformed payload, byte for byte, with the right reason
        for record in dead:
            headers = dict(record.headers)
            src_topic, partition, offset = headers["driftd-source"].decode().rsplit("/", 2)
            assert src_topic == topic and int(partition) >= 0 and int(offset) >= 0
            assert headers["driftd-detail"]

        # the lag gauge is set by a 1-s timer once a fetch has seen the partition's high watermark
        daemon.wait_until(
            lambda: "driftd_consumer_lag{partition=0}" in daemon.metrics(), 10, "the lag gauge"
        )
        metrics = daemon.metrics()
        for name in (
            "driftd_tier_events{tier=hot}",
            "driftd_tier_events{tier=warm}",
            "driftd_ingest_latency_seconds_count",
            "driftd_consumer_lag{partition=0}",
            "driftd_demotions_total{source=hot,target=warm}",
        ):
            assert name in metrics, name
        assert metrics["driftd_tier_events{tier=warm}"] == len(good)
        assert metrics["driftd_ingest_latency_seconds_count"] == len(good)
        assert daemon.proc.poll() is None  # no record crashed it
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.stop_quietly()
    assert stored_event_ids(daemon.data_dir) == Counter(f"good-u{i}" for i in range(len(good)))
