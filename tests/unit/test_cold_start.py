"""The learning loop with no model serving: it counts the labelled examples that
arrive and says how many it waits for (status, metric, `driftd status`), and
a fine-tune skipped for too little data waits for the shortfall."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.config import load_settings
from daemon.learning import LearningLoop
from daemon.status_view import render_status
from models.registry import Registry
from models.serving import ModelServer
from streams.metrics import StreamMetrics
from streams.tiers import StoredEvent, TieredStore, TierPolicy
from tests.stored_events import stored_event as event


def labels(start: int, n: int, with_text: bool = True) -> list[StoredEvent]:
    return [
        event(
            start + i,
            "label",
            ref_event_id=f"u{start + i}",
            intent="погода",
            ref_text="какая погода" if with_text else None,
        )
        for i in range(n)
    ]


def test_with_no_model_the_loop_counts_labels_toward_the_first_model(tmp_path: Path) -> None:
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)}, learning={"enabled": False, "min_labelled": 300}
    )
    metrics = CollectorRegistry()
    loop = LearningLoop(
        settings,
        store=None,
        server=ModelServer(),
        registry=Registry(tmp_path / "registry"),
        metrics_registry=metrics,
        announce=None,
        swap_lock=None,
    )
    loop.observe_batch(labels(0, 120), [])
    # a label whose utterance was never stored teaches nothing
    loop.observe_batch(labels(200, 50, with_text=False), [])
    status = loop.status()
    assert status["awaiting"] == {
        "trigger": "cold_start",
        "labels": 120,
        "needed": 300,
        "enabled": False,
    }
    assert metrics.get_sample_value("driftd_finetune_labels_waiting") == 180.0
    loop.observe_batch(labels(400, 300), [])
    assert loop.followups.state == "idle", "learning.enabled is off: it reports, never trains"
    assert loop.status()["awaiting"]["labels"] == 420
    assert metrics.get_sample_value("driftd_finetune_labels_waiting") == 0.0
    assert metrics.get_sample_value("driftd_finetune_runs_total", {"trigger": "cold_start"}) == 0.0


def test_status_shows_the_wait_and_the_triggers(tmp_path: Path) -> None:
    settings = load_settings(daemon={"data_dir": str(tmp_path)})
    loop = LearningLoop(
        settings,
        store=None,
        server=ModelServer(),
        registry=Registry(tmp_path / "registry"),
        metrics_registry=CollectorRegistry(),
        announce=None,
        swap_lock=None,
    )
    loop.observe_batch(labels(0, 42), [])
    training = loop.status()
    monitor = training.pop("monitor")
    status = {
        "pid": 1,
        "uptime_s": 5.0,
        "model": None,
        "quality": {
            **{
                k: monitor[k]
                for k in (
                    "ewma_accuracy",
                    "reference_accuracy",
                    "window_accuracy",
                    "samples",
                    "signals",
                    "fired",
                    "detectors",
                    "triggers",
                    "decisions",
                    "cooldown_remaining_s",
                )
            }
        },
        "tiers": None,
        "ingest": {"events": 42, "dead_lettered": 0},
        "broker": {},
        "consumer_lag": {},
        "training": training,
    }
    text = render_status(status, "127.0.0.1:8780")
    assert "waiting    the first model (no model serves): 42/300 labels" in text
    assert "triggers   unknown intents 0/30 outcomes | floor above 0.50" in text


def test_a_skipped_run_starts_no_cooldown_and_a_wait_that_ends_in_one_starts_when_it_ends(
    tmp_path: Path,
) -> None:
    """A skipped run trained nothing, so the run it waits for starts as soon as its
    labels are in; and a wait whose labels came during a real run's cooldown
    starts when the cooldown ends, also if no label follows (the README guide's
    stream sat a minute idle that way, until the quiet-stream follow-up)."""
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)}, learning={"cooldown_s": 300, "min_labelled": 300}
    )
    now = [1000.0]
    store = TieredStore(
        tmp_path / "warm.sqlite3",
        str(tmp_path / "cold"),
        TierPolicy(60, 3600),
        100,
        metrics=StreamMetrics(CollectorRegistry()),
    )
    metrics = CollectorRegistry()
    loop = LearningLoop(
        settings,
        store=store,
        server=ModelServer(),
        registry=Registry(tmp_path / "registry"),
        metrics_registry=metrics,
        announce=None,
        swap_lock=None,
        clock=lambda: now[0],
    )
    started: list[str] = []

    async def scenario() -> None:
        await store.open()
        try:
            # a real run against the real, empty store: skipped for want of labels
            await loop._fine_tune("decay", None)
            assert (
                loop.runner.last_run["result"] == "skipped"
                and loop.status()["awaiting"]["trigger"] == "decay"
            )
            loop._start = lambda trigger, decision: started.append(trigger)  # type: ignore[method-assign]  # the trigger, not a real run
            loop.observe_batch(labels(0, 299), [])
            assert not started, "one label short"
            loop.observe_batch(labels(400, 1), [])
            assert started == ["decay"], "no cooldown after a run that trained nothing"

            started.clear()
            # a skipped follow-up, 0 s after a real fine-tune ended
            loop.followups.awaiting, loop.followups.finished_at = ("followup", 300), now[0]
            loop.observe_batch(labels(1000, 300), [])
            assert not started and loop.status()["awaiting"] is not None, (
                "inside learning.cooldown_s"
            )
            now[0] += 299
            loop.settle()
            assert not started
            now[0] += 2
            loop.settle()  # the timer, with no new label
            assert started == ["followup"] and loop.status()["awaiting"] is None
        finally:
            store.close_now()

    asyncio.run(scenario())
    assert metrics.get_sample_value("driftd_finetune_results_total", {"result": "skipped"}) == 1.0
