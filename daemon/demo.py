"""The README's main command: embedded broker, the real
daemon as a child process, a CLINC150 replay with drift.

The daemon bootstraps a model on 5 CLINC150 domains; the replay then moves to all 10
with delayed labels. Its log (on this terminal) shows the decay being detected, the
fine-tune's epochs, the gate verdict and the swap as they happen, plus the tier counts.
This driver waits until every event is stored and has aged into cold, prints a summary
from /metrics, and writes ``timeline.png``: windowed accuracy with the drift onset, the
detection and every swap marked. Tier ages are shortened so all three tiers fill.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaProducer

from .app import topic_specs
from .broker import EmbeddedBroker, ensure_topics_sync
from .config import Settings
from .metrics_scrape import family_total, scrape, wait_for
from .replaying import replay_dataset

__all__ = ["run_demo"]

log = logging.getLogger("driftd.demo")

# The demo compresses time: hot for 5 s, warm for 30 s, then cold; fine-tunes replay from cold 1:1.
DEMO_TIER_ENV = {
    "DRIFTD_TIERS__HOT_MAX_AGE_S": "5",
    "DRIFTD_TIERS__WARM_RETENTION_S": "30",
    "DRIFTD_LEARNING__REPLAY_RATIO": "1.0",
    "DRIFTD_LEARNING__COOLDOWN_S": "0",
    "DRIFTD_TIERS__MAINTENANCE_INTERVAL_S": "2",
    "DRIFTD_TIERS__RULES": "[]",
    "DRIFTD_DAEMON__STATS_INTERVAL_S": "3",
}


async def _send_malformed(bootstrap: str, topic: str, count: int) -> None:
    samples = [
        b"{not json",
        b'{"type": "utterance"}',
        b'{"event_id": "x", "type": "shout", "conversation_id": "c", "turn": 0, "ts": 1}',
        b"[1, 2, 3]",
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.gather(
            *[await producer.send(topic, samples[i % len(samples)]) for i in range(count)]
        )
    finally:
        await producer.stop()


def _show_predictions(url: str) -> None:
    """Ask the live model about one seen domain and two
    it was not bootstrapped on (travel, utility)."""
    texts = [
        "what is my checking account balance",
        "book me a flight to lisbon",
        "what time is it in tokyo",
    ]
    request = urllib.request.Request(
        url,
        data=json.dumps({"texts": texts}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    print(f"driftd demo: POST /v1/predict answered by model {answer['model_version']}:")
    for text, p in zip(texts, answer["predictions"], strict=True):
        print(f"  {text!r:45s} -> {p['intent']} ({p['confidence']:.2f})")


def onset_outcome(settings: Settings) -> int | None:
    """How many labelled outcomes precede the first one about
    a post-onset utterance (the plan is deterministic)."""
    from streams.datasets import groups, load_examples
    from streams.replay import DriftSchedule, plan_events

    r = settings.replay
    examples = load_examples(r.dataset, "train", r.data_dir)
    plan = DriftSchedule.parse(
        r.schedule, groups(r.dataset, r.data_dir), {e.intent for e in examples}
    )
    if len(plan.phases) < 2:
        return None
    onset = plan.phases[1].start
    labels = 0
    for event in plan_events(
        examples,
        plan,
        limit=r.limit or len(examples),
        label_fraction=r.label_fraction,
        label_delay=r.label_delay,
        seed=r.seed,
        start_ts=0,
    ):
        if event["type"] == "label":
            if int(event["ref_event_id"].rsplit("-u", 1)[1]) >= onset:
                return labels
            labels += 1
    return None


def write_timeline_png(settings: Settings, data_dir: Path) -> Path | None:
    from .timeline import TimelineRecorder, render_png

    source = data_dir / "timeline.json"
    if not source.exists():
        print("driftd demo: the daemon wrote no timeline.json; no PNG")
        return None
    timeline = TimelineRecorder.from_json(json.loads(source.read_text()))
    onset = onset_outcome(settings)
    if onset is not None:
        timeline.mark("drift_onset", onset, 0.0, "drift onset")
    return render_png(
        timeline,
        data_dir / "timeline.png",
        title=f"driftd demo: windowed accuracy over the last {timeline.window} labelled outcomes",
    )


SUMMARY_METRICS = (
    "driftd_events_total",
    "driftd_dlq_total",
    "driftd_tier_events",
    "driftd_demotions_total",
    "driftd_cold_files",
    "driftd_predictions_total",
    "driftd_outcomes_total",
    "driftd_decay_decisions_total",
    "driftd_finetune_runs_total",
    "driftd_finetune_results_total",
    "driftd_live_accuracy",
)


def run_demo(settings: Settings, malformed: int = 25, keep: bool = True) -> int:
    data_dir = settings.daemon.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port = settings.kafka.embedded_port
    bootstrap = f"127.0.0.1:{port}"
    metrics_url = f"http://{settings.web.host}:{settings.web.port}/metrics"
    print(
        f"driftd demo: embedded broker on {bootstrap}, data in {data_dir}, metrics at {metrics_url}"
    )
    print(
        "driftd demo: a first model is trained on 5 CLINC150 domains; the replay "
        f"drifts ({settings.replay.schedule}); watch the daemon detect it, "
        "fine-tune, gate and swap."
    )
    with EmbeddedBroker(port, log_path=data_dir / "broker.log") as broker:
        ensure_topics_sync(broker.bootstrap, topic_specs(settings))
        daemon = _start_daemon(settings, bootstrap, data_dir, metrics_url)
        try:
            _drive(settings, bootstrap, metrics_url, malformed, daemon)
        finally:
            code = _stop(daemon)
    png = write_timeline_png(settings, data_dir)
    if png is not None:
        print(
            "driftd demo: timeline of windowed accuracy (drift onset, detection, "
            f"swaps) written to {png}"
        )
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return code


def _start_daemon(
    settings: Settings, bootstrap: str, data_dir: Path, metrics_url: str
) -> subprocess.Popen[bytes]:
    """``driftd run`` against the demo's broker and data directory, once it is ready."""
    env = {
        **os.environ,
        **DEMO_TIER_ENV,
        "DRIFTD_KAFKA__BOOTSTRAP": bootstrap,
        "DRIFTD_DAEMON__DATA_DIR": str(data_dir),
        # named explicitly: the child sees a host:port broker,
        # and only "embedded" implies the demo dataset
        "DRIFTD_MODELS__BOOTSTRAP_SOURCE": settings.models.bootstrap_source
        or settings.models.bootstrap_dataset,
    }
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run"], env=env)
    wait_for(
        lambda: json.load(
            urllib.request.urlopen(metrics_url.replace("/metrics", "/readyz"), timeout=2)
        )["ready"],
        180,
        "the daemon to be ready (first run: training the bootstrap model)",
        daemon,
    )
    return daemon


def _drive(
    settings: Settings,
    bootstrap: str,
    metrics_url: str,
    malformed: int,
    daemon: subprocess.Popen[bytes],
) -> None:
    """Replay the drifting stream and some malformed payloads, wait until every event is stored,
    in cold and learnt from, then show predictions and a summary."""
    stats = replay_dataset(settings, settings.replay, "train", bootstrap, progress=True)
    asyncio.run(_send_malformed(bootstrap, settings.topics.input, malformed))
    sent = stats.sent
    print(
        f"driftd demo: sent {stats.utterances} utterances + {stats.labels} "
        f"labels of {settings.replay.dataset} and {malformed} malformed "
        "payloads"
    )

    def all_stored() -> bool:
        samples = scrape(metrics_url)  # once per poll
        return (
            family_total(samples, "driftd_events_total") >= sent
            and family_total(samples, "driftd_dlq_total") >= malformed
        )

    wait_for(all_stored, 120, "every event to be stored", daemon)
    print(
        "driftd demo: every event is stored; "
        "waiting for them to age from hot through warm into cold ..."
    )
    wait_for(
        lambda: scrape(metrics_url).get("driftd_tier_events{tier=cold}", 0) >= sent,
        90,
        "demotion to cold",
        daemon,
    )
    wait_for(
        lambda: scrape(metrics_url).get("driftd_finetune_running", 0) == 0,
        300,
        "the last fine-tune to finish",
        daemon,
    )
    _show_predictions(metrics_url.replace("/metrics", "/v1/predict"))
    final = scrape(metrics_url)
    print("driftd demo: summary from /metrics")
    for name in SUMMARY_METRICS:
        for key, value in sorted(final.items()):
            if key == name or key.startswith(name + "{"):
                print(f"  {key:55s} {value:>10.0f}")


def _stop(daemon: subprocess.Popen[bytes]) -> int:
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(15)
    except subprocess.TimeoutExpired:
        daemon.kill()
        code = daemon.wait()
    print(f"driftd demo: daemon stopped (exit code {code})")
    return code
