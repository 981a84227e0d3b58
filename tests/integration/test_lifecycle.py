"""The daemon process as an operator meets it: SIGKILL
and restart, SIGTERM, the embedded broker, the demo."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.harness import (
    REPO,
    DaemonProcess,
    cold_file_count,
    free_port,
    produce,
    stored_event_ids,
    stored_keys,
    unique,
    valid_event,
)

# Short tier ages so that demotion to cold runs all the time and kills land in it too.
CHURN = {
    "DRIFTD_TIERS__HOT_MAX_AGE_S": "1",
    "DRIFTD_TIERS__WARM_RETENTION_S": "2",
    "DRIFTD_TIERS__RULES": "[]",
    "DRIFTD_TIERS__MAINTENANCE_INTERVAL_S": "0.3",
    "DRIFTD_INGEST__BATCH_SIZE": "200",
}


def mixed_events(count: int, run: str) -> list[bytes]:
    events = []
    for i in range(count):
        kind = "label" if i % 3 == 2 else "utterance"
        events.append(
            json.dumps(
                valid_event(i, kind=kind, run=run) | {"priority": ("low", "normal", "high")[i % 3]}
            ).encode()
        )
    return events


def test_sigkill_at_five_moments_then_restart_stores_every_event_exactly_once(broker, tmp_path):
    topic = unique("kill")
    payloads = mixed_events(24_000, "k")
    expected_ids = Counter(json.loads(p)["event_id"] for p in payloads)
    data_dir = tmp_path / "state"
    first = DaemonProcess(broker.bootstrap, data_dir, topic, extra_env=CHURN).start()
    first.wait_ready()  # creates the topics with their partition counts before anything produces

    # The stream (48 s) outlasts the five kills, so that each restart has events left to ingest.
    producer = threading.Thread(
        target=lambda: asyncio.run(produce(broker.bootstrap, topic, payloads, rate=500)),
        daemon=True,
    )
    producer.start()
    rng = random.Random(20261125)
    kills: list[tuple[str, int]] = []
    daemon = first
    try:
        # Five kills at different moments: deep into ingest (three
        # times, while demotion to cold runs every 0.3 s), before the
        # restarted daemon has joined its group, and right at readiness.
        for moment in ("mid-ingest", "during start-up", "just ready", "mid-ingest", "mid-ingest"):
            if daemon.proc is None:
                daemon.start()
            if moment == "during start-up":
                time.sleep(rng.uniform(0.3, 1.5))
            else:
                daemon.wait_ready()
            if moment == "mid-ingest":
                daemon.wait_until(
                    lambda daemon=daemon: daemon.metric("driftd_events_total") > 0,
                    30,
                    "ingest under way",
                )
                time.sleep(rng.uniform(0.5, 3.0))
            daemon.kill()
            kills.append((moment, len(stored_keys(data_dir))))
            daemon = DaemonProcess(broker.bootstrap, data_dir, topic, extra_env=CHURN)
        producer.join(120)
        assert not producer.is_alive(), "producer did not finish"
        daemon.start()
        daemon.wait_ready()
        daemon.wait_until(
            lambda: len(stored_keys(data_dir)) >= len(payloads), 180, "every event stored"
        )
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.stop_quietly()

    stored = stored_event_ids(data_dir)
    keys = stored_keys(data_dir)
    assert stored == expected_ids, (
        f"kills at {kills}: missing {len(expected_ids - stored)}, duplicated "
        f"{sum((stored - expected_ids).values())}"
    )
    assert set(keys.values()) == {1} and len(keys) == len(payloads)
    # progress survived every kill
    assert [count for _, count in kills] == sorted(count for _, count in kills)
    assert kills[0][1] > 0 and kills[-1][1] > kills[0][1]
    assert cold_file_count(data_dir) > 0  # kills landed while events were being demoted to cold


def test_sigterm_under_load_exits_0_fast_and_commits_its_offsets(broker, tmp_path):
    topic = unique("term")
    payloads = mixed_events(20_000, "t")
    data_dir = tmp_path / "state"
    daemon = DaemonProcess(broker.bootstrap, data_dir, topic).start()
    try:
        daemon.wait_ready()
        producer = threading.Thread(
            target=lambda: asyncio.run(produce(broker.bootstrap, topic, payloads, rate=4000)),
            daemon=True,
        )
        producer.start()
        daemon.wait_stored(3000)
        code, seconds = daemon.terminate(timeout_s=15)
        assert code == 0 and seconds < 10, (code, seconds)
        stored_at_stop = sum(stored_event_ids(data_dir).values())
        assert 0 < stored_at_stop <= len(payloads)
        producer.join(60)

        # The restart resumes from the committed offsets: nothing it sees again was stored before.
        daemon = DaemonProcess(broker.bootstrap, data_dir, topic).start()
        daemon.wait_ready()
        daemon.wait_until(
            lambda: len(stored_keys(data_dir)) >= len(payloads), 120, "every event stored"
        )
        assert daemon.metric("driftd_events_redelivered_total") == 0
        assert daemon.metric("driftd_events_total") == len(payloads) - stored_at_stop
        code, seconds = daemon.terminate()
        assert code == 0 and seconds < 10
    finally:
        daemon.stop_quietly()
    assert stored_event_ids(data_dir) == Counter(json.loads(p)["event_id"] for p in payloads)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(topics)}
    finally:
        await admin.close()


def test_embedded_broker_starts_creates_topics_and_stops_with_the_daemon(tmp_path):
    port = free_port()
    daemon = DaemonProcess(
        "embedded",
        tmp_path / "state",
        unique("emb"),
        partitions=3,
        extra_env={"DRIFTD_KAFKA__EMBEDDED_PORT": str(port)},
    )
    daemon.start()
    try:
        daemon.wait_ready()
        bootstrap = f"127.0.0.1:{port}"
        counts = asyncio.run(
            _partition_counts(
                bootstrap,
                [
                    daemon.topic,
                    daemon.dlq,
                    f"{daemon.topic}.predictions",
                    f"{daemon.topic}.model-updates",
                ],
            )
        )
        assert counts == {
            daemon.topic: 3,
            daemon.dlq: 3,
            f"{daemon.topic}.predictions": 3,
            f"{daemon.topic}.model-updates": 1,
        }
        asyncio.run(produce(bootstrap, daemon.topic, mixed_events(300, "e")))
        daemon.wait_stored(300)
        code, seconds = daemon.terminate()
        assert code == 0 and seconds < 10
        assert not _port_open(port), "the embedded broker outlived the daemon"
    finally:
        daemon.stop_quietly()


def test_the_readme_demo_shows_the_learning_loop_and_events_flowing_through_every_tier(tmp_path):
    """The README's main command, shortened: drift detected,
    fine-tuned, gated, swapped, timeline drawn; every tier filled."""
    env = {
        **os.environ,
        "DRIFTD_KAFKA__EMBEDDED_PORT": str(free_port()),
        "DRIFTD_WEB__PORT": str(free_port()),
        "DRIFTD_DAEMON__DATA_DIR": str(tmp_path / "var"),
        "DRIFTD_REPLAY__LIMIT": "5000",
        "DRIFTD_REPLAY__RATE": "0",
        "DRIFTD_REPLAY__LABEL_FRACTION": "1.0",
        "DRIFTD_REPLAY__LABEL_DELAY": "20",
        "DRIFTD_REPLAY__SCHEDULE": (
            "0=banking,credit_cards,kitchen_and_dining,home,auto_and_commute;2000=*"
        ),
        # As in the real demo: follow-ups learn what the first fine-tune, right after the onset,
        # had too few examples of the new domains to learn (the gate may rightly refuse that one).
        "DRIFTD_LEARNING__FOLLOWUP_LABELS": "600",
    }
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "demo", "--malformed", "10"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    labels = int(out.split(" utterances + ")[1].split(" labels")[0])
    total = 5000 + labels
    summary = {
        line.split()[0]: float(line.split()[1])
        for line in out.splitlines()
        if line.startswith("  driftd_")
    }
    assert summary["driftd_events_total{type=utterance}"] == 5000
    assert summary["driftd_events_total{type=label}"] == labels
    assert sum(v for k, v in summary.items() if k.startswith("driftd_dlq_total")) == 10
    assert summary["driftd_tier_events{tier=cold}"] == total
    assert summary["driftd_demotions_total{source=warm,target=cold}"] == total
    assert "ingest:" in out and "tiers: hot=" in out  # the daemon's own count lines
    assert summary["driftd_predictions_total"] == 5000  # every utterance predicted
    # The learning loop, visible as it happens: the decision,
    # the fine-tune's epochs, the gate verdict, the swap.
    assert (
        summary["driftd_decay_decisions_total"] >= 1
        and summary["driftd_finetune_results_total{result=swapped}"] >= 1
    )
    for line in (
        "fine-tune (decay) started",
        "fine-tune epoch 1/",
        "gate (decay): ",
        "swapped to v000002",
    ):
        assert line in out, line
    # The onset brings intents the model has no output for:
    # the unknown-intent trigger may decide before the EWMA.
    assert re.search(r"(decay|poor quality): [a-z_, ]+ fired after \d+ labelled outcomes", out), (
        "no decision line"
    )
    assert re.search(r"gate \((decay|followup)\): PASS", out), "no gate verdict PASS"
    last_swap = re.findall(r"swapped to (v\d+)", out)[-1]  # follow-ups may swap again after v000002
    assert f"POST /v1/predict answered by model {last_swap}" in out
    png = tmp_path / "var" / "demo" / "timeline.png"
    assert f"written to {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    marks = {
        m["kind"]
        for m in json.loads((tmp_path / "var" / "demo" / "timeline.json").read_text())["marks"]
    }
    assert {"detection", "training_started", "swap"} <= marks
