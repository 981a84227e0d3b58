"""The warm store fills up and the cold store becomes read-only, on real filesystems
(size-limited tmpfs mounts): ingest applies backpressure (consumes and commits nothing more),
says so in the log and in driftd_ingest_blocked / driftd_store_errors_total, and resumes by
itself once space or write access is back. Every event ends up stored exactly once.

Mounting needs root (or CAP_SYS_ADMIN): elsewhere the test
is skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.harness import DaemonProcess, produce, stored_event_ids, unique, valid_event

# Demotion every 0.3 s, so that the cold store is written all the time.
CHURN = {
    "DRIFTD_TIERS__HOT_MAX_AGE_S": "1",
    "DRIFTD_TIERS__WARM_RETENTION_S": "2",
    "DRIFTD_TIERS__RULES": "[]",
    "DRIFTD_TIERS__MAINTENANCE_INTERVAL_S": "0.3",
}


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs here ({done.stderr.strip()}); this test needs root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def filesystems(tmp_path: Path) -> Any:
    warm, cold = tmp_path / "warm-fs", tmp_path / "cold-fs"
    mounted = []
    try:
        for path, size in ((warm, "24m"), (cold, "64m")):
            mount_tmpfs(path, size)
            mounted.append(path)
        yield warm, cold
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a ballast file until the filesystem is full."""
    ballast = directory / "ballast"
    with open(ballast, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as full:
                assert full.errno == errno.ENOSPC
    return ballast


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic`` (read without joining the group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offsets = [
            await consumer.committed(TopicPartition(topic, p))
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return sum(o for o in offsets if o is not None and o >= 0)
    finally:
        await consumer.stop()


def test_a_full_warm_store_and_a_read_only_cold_store_pause_ingest_which_resumes_losing_nothing(
    broker: Any, tmp_path: Path, filesystems: tuple[Path, Path]
) -> None:
    warm_fs, cold_fs = filesystems
    topic = unique("storefault")
    env = {**CHURN, "DRIFTD_TIERS__COLD_URL": str(cold_fs / "cold")}
    daemon = DaemonProcess(
        broker.bootstrap,
        warm_fs / "state",
        topic,
        partitions=2,
        extra_env=env,
        log_path=tmp_path / "daemon.log",
    ).start()
    batches = [
        [json.dumps(valid_event(i, run=f"b{b}")).encode() for i in range(1500)] for b in range(3)
    ]
    group = f"{topic}-group"
    try:
        daemon.wait_ready()
        asyncio.run(produce(broker.bootstrap, topic, batches[0]))
        daemon.wait_stored(1500)
        daemon.wait_until(
            lambda: daemon.metric("driftd_demotions_total{source=warm,target=cold}") > 0,
            30,
            "demotion to cold",
        )

        # 1. Warm full: the next batch cannot be stored.
        ballast = fill(warm_fs)
        asyncio.run(produce(broker.bootstrap, topic, batches[1]))
        daemon.wait_until(
            lambda: daemon.metric("driftd_ingest_blocked{sink=warm}") == 1,
            60,
            "ingest to block on warm",
        )
        stored_while_full = sum(stored_event_ids(warm_fs / "state").values())
        committed_while_full = asyncio.run(committed_total(broker.bootstrap, group, topic))
        with urllib.request.urlopen(daemon.url + "/healthz", timeout=5) as health:
            assert health.status == 200
        assert daemon.metric("driftd_store_errors_total{sink=warm}") >= 1
        assert "writing to warm failed" in daemon.log_path.read_text()
        ballast.unlink()
        daemon.wait_until(
            lambda: daemon.metric("driftd_ingest_blocked{sink=warm}") == 0,
            60,
            "ingest to resume on its own",
        )
        daemon.wait_stored(3000)

        # 2. Cold read-only: demotion fails, events stay in warm, ingest goes on.
        subprocess.run(["mount", "-o", "remount,ro", str(cold_fs)], check=True)
        cold_errors = daemon.metric("driftd_store_errors_total{sink=cold}")
        asyncio.run(produce(broker.bootstrap, topic, batches[2]))
        daemon.wait_stored(4500)
        daemon.wait_until(
            lambda: daemon.metric("driftd_store_errors_total{sink=cold}") >= cold_errors + 3,
            30,
            "failed demotions to be counted",
        )
        warm_while_read_only = daemon.metric("driftd_tier_events{tier=warm}")
        subprocess.run(["mount", "-o", "remount,rw", str(cold_fs)], check=True)
        daemon.wait_until(
            lambda: daemon.metric("driftd_tier_events{tier=warm}") == 0, 60, "demotion to catch up"
        )
        metrics = daemon.metrics()
        assert daemon.terminate()[0] == 0
    finally:
        daemon.stop_quietly()

    stored = stored_event_ids(warm_fs / "state")
    expected = Counter(json.loads(p)["event_id"] for batch in batches for p in batch)
    log = daemon.log_path.read_text()
    print(
        f"\n  warm full: {stored_while_full} stored and {committed_while_full} "
        f"committed while {3000} were sent; "
        f"{metrics['driftd_store_errors_total{sink=warm}']:.0f} failed warm "
        f"writes; cold read-only: {warm_while_read_only:.0f} events held in "
        "warm, "
        f"{metrics['driftd_store_errors_total{sink=cold}']:.0f} failed "
        f"demotions; end: {sum(stored.values())} stored, "
        f"lost {len(expected - stored)}, duplicated {sum((stored - expected).values())}"
    )
    # consumed and committed nothing it could not store
    assert stored_while_full < 3000 and committed_while_full <= stored_while_full
    assert warm_while_read_only > 0
    assert stored == expected
    assert (
        "database or disk is full" in log
        and "writing to warm works again" in log
        and "Read-only file system" in log
    )
