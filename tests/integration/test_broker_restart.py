"""A broker restart during ingest: the daemon reconnects by itself, the outage shows in
its metrics, and every event the producer had acknowledged is stored exactly once.

The broker is the embedded Tansu on S3 storage (a moto server on loopback), so that, like a Kafka
cluster, it keeps its records and the group's committed offsets across its own restart. It is killed
(SIGKILL) mid-stream and started again on the same port seconds later; the producer keeps sending
and resends what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from daemon.broker import EmbeddedBroker
from tests.integration.harness import (
    DaemonProcess,
    free_port,
    produce,
    stored_event_ids,
    stored_keys,
    unique,
    valid_event,
)

OUTAGE_S = 6.0


@pytest.fixture
def s3_env() -> Any:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "driftd-test",
        "AWS_SECRET_ACCESS_KEY": "driftd-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
    }
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT"],
        aws_access_key_id="driftd-test",
        aws_secret_access_key="driftd-test",
        region_name="us-east-1",
    ).create_bucket(Bucket="tansu")
    yield {**os.environ, **env}
    server.stop()


class AcknowledgingProducer:
    """Sends every event until the broker acknowledges it, resending
    after a failure (at-least-once): an event resent after a lost
    acknowledgement may legitimately be in the log twice."""

    def __init__(
        self, bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float
    ) -> None:
        self.bootstrap, self.topic, self.events, self.rate = bootstrap, topic, events, rate
        self.acked: Counter[str] = Counter()
        self.resent: set[str] = set()
        self.failures = 0

    async def run(self) -> None:
        pending = list(self.events)
        while pending:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                request_timeout_ms=3000,
                retry_backoff_ms=200,
            )
            sent: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
            try:
                await producer.start()
                await self._send(producer, pending, sent)
                await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            except Exception:  # noqa: BLE001 - the broker is down: wait, then resend what is unacknowledged
                self.failures += 1
                await asyncio.sleep(0.5)
            finally:
                await asyncio.gather(producer.stop(), return_exceptions=True)
            unacked = []
            for event, future in sent:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self.acked[event["event_id"]] += 1
                else:
                    unacked.append(event)
                    self.resent.add(event["event_id"])  # it may have reached the log anyway
            pending = unacked + pending[len(sent) :]

    async def _send(
        self,
        producer: AIOKafkaProducer,
        events: list[dict[str, Any]],
        sent: list[tuple[dict[str, Any], asyncio.Future[Any]]],
    ) -> None:
        started = time.monotonic()
        for i, event in enumerate(events):
            sent.append(
                (
                    event,
                    await producer.send(
                        self.topic,
                        json.dumps(event).encode(),
                        key=event["conversation_id"].encode(),
                    ),
                )
            )
            if self.rate and i % 50 == 49:
                await asyncio.sleep(max(0.0, started + (i + 1) / self.rate - time.monotonic()))


def test_a_broker_killed_mid_stream_and_restarted_loses_nothing(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    port = free_port()
    broker = EmbeddedBroker(
        port, log_path=tmp_path / "tansu.log", storage="s3://tansu/", env=s3_env
    ).start()
    topic = unique("restart")
    data_dir = tmp_path / "state"
    daemon = DaemonProcess(
        broker.bootstrap, data_dir, topic, extra_env={"DRIFTD_KAFKA__PROBE_INTERVAL_S": "0.5"}
    ).start()
    events = [
        valid_event(i, kind="label" if i % 3 == 2 else "utterance", run="restart")
        for i in range(9000)
    ]
    producer = AcknowledgingProducer(broker.bootstrap, topic, events, rate=1000)
    sending = threading.Thread(target=lambda: asyncio.run(producer.run()), daemon=True)
    try:
        daemon.wait_ready()
        sending.start()
        daemon.wait_until(
            lambda: daemon.metric("driftd_events_total") >= 2000, 60, "ingest under way"
        )
        os.kill(broker.pid, signal.SIGKILL)
        broker.stop()
        killed_at = time.monotonic()
        daemon.wait_until(
            lambda: daemon.metric("driftd_broker_up") == 0,
            15,
            "the outage to show in driftd_broker_up",
        )
        stored_during = sum(stored_event_ids(data_dir).values())
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
        assert daemon.proc.poll() is None, daemon.log_tail()
        with urllib.request.urlopen(daemon.url + "/healthz", timeout=2) as health:
            assert health.status == 200  # alive and serving HTTP through the outage

        broker.start()
        daemon.wait_until(
            lambda: daemon.metric("driftd_broker_up") == 1, 30, "the daemon to see the broker again"
        )
        sending.join(120)
        assert not sending.is_alive(), "the producer did not finish"
        acked = set(producer.acked)
        daemon.wait_until(
            lambda: acked <= set(stored_event_ids(data_dir)), 120, "every acknowledged event stored"
        )
        metrics = daemon.metrics()
        code, _ = daemon.terminate()
    finally:
        daemon.stop_quietly()
        broker.stop()

    stored = stored_event_ids(data_dir)
    lost = acked - set(stored)
    twice = {event_id for event_id, n in stored.items() if n > 1}
    print(
        f"\n  broker killed after {stored_during} stored, down {OUTAGE_S:.0f} s; "
        f"producer: {len(acked)} acknowledged, {producer.failures} failed rounds, "
        f"{len(producer.resent)} resent; daemon: {sum(stored.values())} "
        f"stored, lost {len(lost)}, stored twice {len(twice)} "
        f"(all resent: {twice <= producer.resent}); outages "
        f"{metrics['driftd_broker_outages_total']:.0f}, "
        f"{metrics['driftd_broker_outage_seconds_total']:.1f} s down, store "
        "errors "
        f"{metrics.get('driftd_store_errors_total{sink=predictions}', 0):.0f} "
        "(predictions)"
    )
    assert code == 0
    assert len(acked) == len(events) and not lost
    # a record twice in the log is the producer's resend, never the daemon's
    assert twice <= producer.resent
    assert set(stored_keys(data_dir).values()) == {1}  # each (partition, offset) stored once
    assert (
        metrics["driftd_broker_outages_total"] == 1
        and metrics["driftd_broker_outage_seconds_total"] >= OUTAGE_S - 2
    )
    assert stored_during < len(events)


def test_after_an_in_memory_broker_restart_records_that_reuse_old_offsets_are_stored_as_new(
    tmp_path: Path,
) -> None:
    """The embedded broker's default storage is memory: a daemon restart starts an empty log
    whose offsets collide with the stored (topic, partition, offset) keys. The daemon
    retires the old keys at start, so the new records are not taken for redeliveries."""
    port = free_port()
    data_dir = tmp_path / "state"
    topic = unique("reset")
    run1 = [json.dumps(valid_event(i, run="before")).encode() for i in range(300)]
    run2 = [json.dumps(valid_event(i, run="after")).encode() for i in range(300)]
    for payloads in (run1, run2):
        daemon = DaemonProcess(
            "embedded",
            data_dir,
            topic,
            partitions=2,
            extra_env={"DRIFTD_KAFKA__EMBEDDED_PORT": str(port)},
        ).start()
        try:
            daemon.wait_ready()
            asyncio.run(produce(f"127.0.0.1:{port}", topic, payloads))
            daemon.wait_stored(300)
            redelivered = daemon.metric("driftd_events_redelivered_total")
            assert daemon.terminate()[0] == 0
        finally:
            daemon.stop_quietly()
        assert redelivered == 0
    stored = stored_event_ids(data_dir)
    expected = Counter(json.loads(p)["event_id"] for p in run1 + run2)
    assert stored == expected, f"missing {len(expected - stored)}"
    log = daemon.log_path.read_text()
    assert re.search(
        r"the embedded broker keeps nothing across its restart .* its previous log "
        rf"of {topic} partition \d \(offsets up to \d+\)",
        log,
    )
    # default tier ages: everything is still in warm
    with closing(sqlite3.connect(data_dir / "warm.sqlite3")) as db:
        topics = dict(db.execute("SELECT topic, COUNT(*) FROM events GROUP BY topic").fetchall())
    retired = {t: n for t, n in topics.items() if t.startswith(f"{topic}@retired-")}
    assert topics[topic] == 300 and list(retired.values()) == [300], topics
