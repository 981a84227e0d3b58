"""Cold start on a new taxonomy in another language, end
to end: real embedded broker, real daemon process.

The daemon starts with a model of CLINC150's default 5 domains (or none at all) and receives another
dataset's utterances: intents it never saw, in Russian (massive_ru, 60 intents) or Chinese
(crosswoz_intents, 29), half of them labelled, each label 200 utterances after its
utterance. The labels show the model is poor (every true intent unknown to it; accuracy
under the floor), so the loop learns the new taxonomy. Served through /v1/predict on
the dataset's test split, the daemon's model must end within 3 points of an offline
model of the same architecture trained on the labels the daemon received.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.train import TrainSettings, accuracy, train_classifier
from streams.datasets import Example, groups, load_examples
from streams.replay import DriftSchedule, plan_events
from tests.integration.harness import DaemonProcess, produce, unique
from tests.integration.test_learning_loop import (
    CLINC_SEED_DOMAINS,
    FAST_LOOP,
    learning_status,
    publish_seed_model,
)

TOLERANCE = 0.03  # issue 21's criterion 1


def predict_all(daemon: DaemonProcess, texts: list[str]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for start in range(0, len(texts), 256):
        body = json.dumps({"texts": texts[start : start + 256], "top_k": 1}).encode()
        request = urllib.request.Request(
            daemon.url + "/v1/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answers += json.load(response)["predictions"]
    return answers


async def produce_timing_first_swap(
    broker: str, daemon: DaemonProcess, topic: str, events: list[dict[str, Any]], rate: float
) -> float | None:
    """Produce the stream; returns when (monotonic) the first
    swap was seen on /metrics, if during the stream."""
    sending = asyncio.ensure_future(
        produce(
            broker,
            topic,
            [json.dumps(e).encode() for e in events],
            rate=rate,
            keys=[e["conversation_id"].encode() for e in events],
        )
    )
    loop = asyncio.get_running_loop()
    while not sending.done():
        await asyncio.sleep(0.25)
        swapped = await loop.run_in_executor(
            None, daemon.metric, "driftd_finetune_results_total{result=swapped}"
        )
        if swapped >= 1:
            first_swap = time.monotonic()
            await sending
            return first_swap
    await sending
    return None


def run_cold_start(
    broker: str,
    tmp_path: Path,
    dataset: str,
    splits: tuple[str, ...],
    *,
    seed_model: bool,
    utterances: int,
    rate: float,
    followup_labels: int = 1000,
) -> dict[str, Any]:
    train: list[Example] = [e for split in splits for e in load_examples(dataset, split)]
    env = {
        **FAST_LOOP,
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry"),
        "DRIFTD_LEARNING__FOLLOWUP_LABELS": str(followup_labels),
    }
    seed_version = None
    if seed_model:  # CLINC150's default 5 domains, as the daemon's own bootstrap trains them
        domains = groups("clinc150")
        seed_intents = {i for d in CLINC_SEED_DOMAINS for i in domains[d]}
        seed_version, _ = publish_seed_model(
            tmp_path / "registry",
            [e for e in load_examples("clinc150", "train") if e.intent in seed_intents],
        )
    topic = unique(f"cold-{dataset}")
    daemon = DaemonProcess(broker, tmp_path / "daemon", topic, extra_env=env).start()
    try:
        if seed_model:
            daemon.wait_ready(timeout_s=90, model=True)
        else:
            daemon.wait_ready(timeout_s=60)
            assert not daemon.readiness()["model_loaded"], (
                "no model may serve before the first labels"
            )
        stream = list(
            plan_events(
                train,
                DriftSchedule.unrestricted(),
                limit=utterances,
                label_fraction=0.5,
                label_delay=200,
                seed=3,
                dataset=topic,
            )
        )
        for event in stream:  # ids unique to this run
            event["event_id"] = f"{topic}-{event['event_id']}"
            if "ref_event_id" in event:
                event["ref_event_id"] = f"{topic}-{event['ref_event_id']}"
        first_label_index = next(i for i, e in enumerate(stream) if e["type"] == "label")
        started = time.monotonic()
        first_swap = asyncio.run(produce_timing_first_swap(broker, daemon, topic, stream, rate))
        daemon.wait_stored(len(stream), timeout_s=180)
        if first_swap is None:
            daemon.wait_until(
                lambda: daemon.metric("driftd_finetune_results_total{result=swapped}") >= 1,
                300,
                "the first swap",
            )
            first_swap = time.monotonic()
        first_label_at = started + first_label_index / rate

        def settled() -> bool:
            status = learning_status(daemon)
            return (
                status["state"] == "idle"
                and not status["followup_pending"]
                and status["awaiting"] is None
            )

        daemon.wait_until(settled, 420, "the loop to settle")
        status = learning_status(daemon)

        test = load_examples(dataset, "test")
        answers = predict_all(daemon, [e.text for e in test])
        daemon_accuracy = float(
            np.mean([a["intent"] == e.intent for a, e in zip(answers, test, strict=False)])
        )
        texts = {e["event_id"]: e["text"] for e in stream if e["type"] == "utterance"}
        received = [(texts[e["ref_event_id"]], e["intent"]) for e in stream if e["type"] == "label"]
        offline = train_classifier(
            [t for t, _ in received],
            [i for _, i in received],
            settings=TrainSettings(epochs=10, batch_size=256),
        )
        offline_accuracy = accuracy(
            offline.model,
            offline.featurizer,
            offline.labels,
            [e.text for e in test],
            [e.intent for e in test],
        )
        return {
            "metrics": daemon.metrics(),
            "status": status,
            "seed_version": seed_version,
            "answered_by": {a["model_version"] for a in answers},
            "daemon_accuracy": daemon_accuracy,
            "offline_accuracy": offline_accuracy,
            "labels": len(received),
            "test_n": len(test),
            "first_label_to_swap_s": first_swap - first_label_at,
            "log": daemon.log_tail(400),
        }
    finally:
        daemon.stop_quietly()


def check(result: dict[str, Any], dataset: str, *, seeded: bool) -> None:
    metrics, status = result["metrics"], result["status"]
    runs = {
        k.split("=")[1].rstrip("}"): v
        for k, v in metrics.items()
        if k.startswith("driftd_finetune_runs_total{")
    }
    results = {
        k.split("=")[1].rstrip("}"): v
        for k, v in metrics.items()
        if k.startswith("driftd_finetune_results_total{")
    }
    print(
        f"\n  {dataset} ({'CLINC150 seed model' if seeded else 'no model'} at the "
        f"start): daemon {result['daemon_accuracy']:.4f} vs offline "
        f"{result['offline_accuracy']:.4f} on {result['test_n']} test texts, "
        f"trained on {result['labels']} labels; first label -> first swap "
        f"{result['first_label_to_swap_s']:.1f} s; runs {runs}; results "
        f"{results}; serving {status['serving']}"
    )
    for line in result["log"].splitlines():  # the loop's decisions, for a failure's report
        if "driftd.learning" in line and (
            "gate (" in line or "started:" in line or "skipped:" in line
        ):
            print("   ", line)
    assert metrics["driftd_finetune_results_total{result=swapped}"] >= 1
    assert (
        result["answered_by"] == {status["serving"]} and status["serving"] != result["seed_version"]
    )
    # the seed model was poor from its first outcome: the absolute triggers decided, not a drop
    if seeded:
        assert metrics["driftd_decay_decision_signals_total{signal=unknown_intent}"] >= 1
        assert "poor quality: " in result["log"] and "has no output for" in result["log"]
        assert runs["decay"] >= 1
    else:
        assert runs["cold_start"] == 1, "one first model, then follow-ups"
        assert "no model serves and" in result["log"]
    assert (
        metrics["driftd_finetune_failures_total{reason=crashed}"] == 0
        and metrics["driftd_finetune_failures_total{reason=error}"] == 0
    )
    assert result["daemon_accuracy"] >= result["offline_accuracy"] - TOLERANCE


@pytest.mark.timeout(900)
def test_a_clinc150_model_learns_massive_ru_a_russian_taxonomy_it_never_saw(
    broker: Any, tmp_path: Path
) -> None:
    result = run_cold_start(
        broker.bootstrap,
        tmp_path,
        "massive_ru",
        ("train",),
        seed_model=True,
        utterances=0,
        rate=1500,
        followup_labels=2000,
    )
    check(result, "massive_ru", seeded=True)


@pytest.mark.timeout(600)
def test_a_clinc150_model_learns_crosswoz_a_chinese_taxonomy_it_never_saw(
    broker: Any, tmp_path: Path
) -> None:
    result = run_cold_start(
        broker.bootstrap,
        tmp_path,
        "crosswoz_intents",
        ("train", "dev"),
        seed_model=True,
        utterances=0,
        rate=400,
    )
    check(result, "crosswoz_intents", seeded=True)


@pytest.mark.timeout(600)
def test_with_no_model_at_all_the_first_model_is_trained_from_the_labels_and_served(
    broker: Any, tmp_path: Path
) -> None:
    result = run_cold_start(
        broker.bootstrap,
        tmp_path,
        "crosswoz_intents",
        ("train", "dev"),
        seed_model=False,
        utterances=0,
        rate=400,
    )
    check(result, "crosswoz_intents", seeded=False)
