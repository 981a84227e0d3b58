"""Helpers for integration tests: a real daemon
subprocess, a producer, a DLQ reader, store readers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from daemon.broker import free_port
from daemon.metrics_scrape import family_total, scrape, wait_for

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}-{int(time.time() * 1000) % 100000}"


def valid_event(i: int, *, kind: str = "utterance", run: str = "r") -> dict[str, Any]:
    base = {
        "event_id": f"{run}-{kind[0]}{i}",
        "type": kind,
        "conversation_id": f"c{i % 97}",
        "turn": i % 5,
        "ts": 1_700_000_000.0 + i,
    }
    if kind == "utterance":
        base["text"] = f"please move {i} dollars to savings"
    else:
        base.update(ref_event_id=f"{run}-u{i}", intent="transfer")
    return base


class DaemonProcess:
    """``python -m daemon run`` against a given broker, with its own topics, group and data dir."""

    def __init__(
        self,
        bootstrap: str,
        data_dir: Path,
        topic: str,
        *,
        partitions: int = 4,
        extra_env: dict[str, str] | None = None,
        group: str | None = None,
        log_path: Path | None = None,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        self.data_dir = data_dir
        # run in the child before the daemon starts (die with the bench, a lower fd limit...)
        self.preexec_fn = preexec_fn
        self.topic = topic
        self.dlq = f"{topic}.dlq"
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "DRIFTD_KAFKA__BOOTSTRAP": bootstrap,
            "DRIFTD_KAFKA__GROUP_ID": group or f"{topic}-group",
            "DRIFTD_KAFKA__SESSION_TIMEOUT_S": "6",
            "DRIFTD_KAFKA__REBALANCE_TIMEOUT_S": "6",
            "DRIFTD_KAFKA__HEARTBEAT_INTERVAL_S": "1",
            "DRIFTD_TOPICS__INPUT": topic,
            "DRIFTD_TOPICS__DLQ": self.dlq,
            "DRIFTD_TOPICS__PREDICTIONS": f"{topic}.predictions",
            "DRIFTD_TOPICS__MODEL_UPDATES": f"{topic}.model-updates",
            "DRIFTD_TOPICS__QUALITY": f"{topic}.quality",
            "DRIFTD_TOPICS__LABELING_REQUESTS": f"{topic}.labeling-requests",
            "DRIFTD_TOPICS__PARTITIONS": str(partitions),
            "DRIFTD_DAEMON__DATA_DIR": str(data_dir),
            "DRIFTD_DAEMON__STATS_INTERVAL_S": "2",
            "DRIFTD_WEB__PORT": str(self.web_port),
            # ingest tests: no background training competing for the CPU
            "DRIFTD_MODELS__BOOTSTRAP": "false",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path or data_dir / "daemon.log"

    def start(self) -> DaemonProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=self.preexec_fn,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def metrics(self) -> dict[str, float]:
        return scrape(self.url + "/metrics")

    def metric(self, name: str) -> float:
        return family_total(self.metrics(), name)

    def wait_until(self, predicate: Callable[[], object], timeout_s: float, what: str) -> None:
        assert self.proc is not None
        try:
            wait_for(predicate, timeout_s, what, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; daemon log:\n{self.log_tail()}") from None

    def readiness(self) -> dict[str, bool]:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return json.load(response)["checks"]
        except urllib.error.HTTPError as not_ready:  # 503 carries the same body
            return json.load(not_ready)["checks"]

    def wait_ready(self, timeout_s: float = 60, model: bool = False) -> None:
        """Until it consumes (and, with ``model``, serves a model)."""
        wanted = ("store_open", "consumer_assigned") + (("model_loaded",) if model else ())
        self.wait_until(lambda: all(self.readiness()[k] for k in wanted), timeout_s, "readiness")

    def wait_stored(self, count: int, timeout_s: float = 120) -> None:
        self.wait_until(
            lambda: self.metric("driftd_events_total") >= count, timeout_s, f"{count} stored events"
        )

    def terminate(self, timeout_s: float = 10) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        return code, time.monotonic() - started

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"


def _stored_rows(data_dir: Path, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """``columns`` of every event held by warm and cold, with multiplicity (read
    straight from the files). One snapshot: a demotion committing between the
    reads of warm and of the cold index would count its events twice."""
    db = sqlite3.connect(data_dir / "warm.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN")
        rows = db.execute(f"SELECT {', '.join(columns)} FROM events").fetchall()
        cold_files = [row[0] for row in db.execute("SELECT path FROM cold_files")]
        db.execute("COMMIT")
    finally:
        db.close()
    for path in cold_files:
        table = pq.read_table(path, columns=list(columns))
        rows += zip(*(table[c].to_pylist() for c in columns), strict=False)
    return rows


def stored_event_ids(data_dir: Path) -> Counter[str]:
    """Every event id held by warm and cold, with multiplicity."""
    return Counter(event_id for (event_id,) in _stored_rows(data_dir, ("event_id",)))


def stored_positions(data_dir: Path) -> list[tuple[str, int, int]]:
    """(event_id, partition, offset) of every row warm and cold hold."""
    return _stored_rows(data_dir, ("event_id", "partition", "offset"))


def stored_keys(data_dir: Path) -> Counter[tuple[int, int]]:
    """Every (partition, offset) held by warm and cold, with multiplicity."""
    return Counter(_stored_rows(data_dir, ("partition", "offset")))


def stored_count(data_dir: Path) -> int:
    """Events in warm + cold, duplicates included (one statement:
    one consistent snapshot while the daemon writes)."""
    db = sqlite3.connect(data_dir / "warm.sqlite3")
    try:
        return db.execute(
            "SELECT (SELECT COUNT(*) FROM events) + (SELECT COALESCE(SUM(rows), 0) FROM cold_files)"
        ).fetchone()[0]
    finally:
        db.close()


def cold_file_count(data_dir: Path) -> int:
    db = sqlite3.connect(data_dir / "warm.sqlite3")
    try:
        return db.execute("SELECT COUNT(*) FROM cold_files").fetchone()[0]
    finally:
        db.close()


def conversation_key(payload: bytes | None) -> bytes | None:
    """The key a producer gives an event: its conversation_id (None for a payload without one; a
    valid event with no key goes to the DLQ as missing_key under the default ingest.null_key)."""
    try:
        conversation = json.loads(payload)["conversation_id"]
        return conversation.encode() if isinstance(conversation, str) else None
    # not an event (a lone surrogate: ValueError)
    except (TypeError, ValueError, KeyError, IndexError, RecursionError):
        return None


async def produce(
    bootstrap: str,
    topic: str,
    payloads: list[bytes],
    *,
    rate: float = 0,
    keys: list[bytes | None] | None = None,
) -> None:
    """Send every payload and wait for every acknowledgement; ``rate`` events/s, 0 = unlimited.
    Without ``keys`` each record is keyed by its conversation_id, as producers do."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        futures = []
        for i, payload in enumerate(payloads):
            futures.append(
                await producer.send(
                    topic, payload, key=keys[i] if keys else conversation_key(payload)
                )
            )
            if rate and i % 50 == 49:
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def hammer_predict(
    url: str, texts: list[str], done: asyncio.Event, pause_s: float = 0.005
) -> tuple[int, list[str], list[str]]:
    """One /v1/predict request at a time until ``done``:
    (requests, failures, the versions that answered, in order)."""
    sent, failures, versions = 0, [], []
    async with aiohttp.ClientSession() as session:
        while not done.is_set():
            try:
                async with session.post(
                    url + "/v1/predict", json={"text": texts[sent % len(texts)]}
                ) as response:
                    body = await response.json()
                    if response.status != 200:
                        failures.append(f"{response.status}: {body}")
                    elif not versions or versions[-1] != body["model_version"]:
                        versions.append(body["model_version"])
            except aiohttp.ClientError as error:
                failures.append(repr(error))
            sent += 1
            await asyncio.sleep(pause_s)
    return sent, failures, versions


async def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    """All records of ``topic`` from the beginning, until ``expected`` have been read."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records
