"""The encoder architecture end to end (issue 22, acceptance 3): a daemon serving an
encoder model (a tiny, randomly initialised BERT written by the test; no download)
detects a decay, fine-tunes it, gates the candidate and swaps it in, while a client
predicting through /v1/predict the whole time sees no failed request. Real embedded
broker, real daemon subprocess, real ONNX Runtime; the scenario is test_http_feedback's.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from models.architectures import EncoderSource, new_model_config
from models.checkpoints import sha256_file
from models.export import build_version_files
from models.registry import Registry
from models.train import TrainSettings, train_classifier
from streams.datasets import groups, load_examples
from tests.integration.harness import DaemonProcess, hammer_predict, unique
from tests.integration.test_http_feedback import HTTP_LOOP, NEW_DOMAIN, predict, report
from tests.integration.test_learning_loop import learning_status
from tests.tiny_bert import write_tiny_bert

SEED_DOMAIN = "banking"
# A random tiny encoder has nothing worth freezing:
# every layer trains, at a from-scratch learning rate.
TINY_TRAINING = {"trainable_layers": -1, "lr": 3e-3, "epochs": 12, "batch_size": 64}


@pytest.mark.timeout(300)
def test_an_encoder_model_is_fine_tuned_gated_and_swapped_with_no_failed_request(
    broker: Any, tmp_path: Path
) -> None:
    domains = groups("clinc150")
    seed_intents, new_intents = set(domains[SEED_DOMAIN]), set(domains[NEW_DOMAIN])
    train, test = load_examples("clinc150", "train"), load_examples("clinc150", "test")
    seed_examples = [e for e in train if e.intent in seed_intents]
    checkpoint = write_tiny_bert(
        tmp_path / "tiny-bert",
        texts=[e.text for e in train + test if e.intent in seed_intents | new_intents],
    )
    trained = train_classifier(
        [e.text for e in seed_examples],
        [e.intent for e in seed_examples],
        architecture="encoder",
        config=new_model_config("encoder", EncoderSource(str(checkpoint))),
        settings=TrainSettings(seed=0, **TINY_TRAINING),
    )
    files, _ = build_version_files(
        trained.model, trained.featurizer, trained.labels, [e.text for e in seed_examples[::25]]
    )
    registry = Registry(tmp_path / "registry")
    seed_version = registry.publish(files, parent=None, info={"source": "test seed"}).version
    registry.set_current(seed_version)

    rng = random.Random(22)
    known = rng.sample([e for e in test if e.intent in seed_intents], 150)
    unseen = rng.sample([e for e in train if e.intent in new_intents], 600)
    fresh = [e for e in test if e.intent in new_intents]
    env = {
        **HTTP_LOOP,
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry"),
        "DRIFTD_MODELS__ARCHITECTURE": "encoder",
        "DRIFTD_MODELS__ENCODER": str(checkpoint),
        "DRIFTD_LEARNING__ENCODER_TRAINABLE_LAYERS": str(TINY_TRAINING["trainable_layers"]),
        "DRIFTD_LEARNING__LR": str(TINY_TRAINING["lr"]),
        "DRIFTD_LEARNING__EPOCHS": str(TINY_TRAINING["epochs"]),
        "DRIFTD_LEARNING__BATCH_SIZE": str(TINY_TRAINING["batch_size"]),
    }
    daemon = DaemonProcess(
        broker.bootstrap, tmp_path / "daemon", unique("encoder-loop"), extra_env=env
    ).start()

    async def scenario() -> tuple[tuple[int, list[str], list[str]], list[dict[str, Any]]]:
        done = asyncio.Event()
        hammer = asyncio.ensure_future(hammer_predict(daemon.url, [e.text for e in known], done))
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            answers = await predict(session, daemon.url, [e.text for e in known])
            await report(
                session,
                daemon.url,
                [
                    {"prediction_id": a["prediction_id"], "correct": a["intent"] == e.intent}
                    for a, e in zip(answers, known, strict=False)
                ],
            )
            await loop.run_in_executor(
                None,
                daemon.wait_until,
                lambda: daemon.metric("driftd_outcomes_total") >= len(known),
                60,
                "the reference outcomes",
            )
            answers = await predict(session, daemon.url, [e.text for e in unseen])
            await report(
                session,
                daemon.url,
                [
                    {"prediction_id": a["prediction_id"], "intent": e.intent}
                    for a, e in zip(answers, unseen, strict=False)
                ],
            )
            swapped = "driftd_finetune_results_total{result=swapped}"
            await loop.run_in_executor(
                None,
                daemon.wait_until,
                lambda: daemon.metric(swapped) >= 1,
                200,
                "a fine-tune and a swap",
            )
            await asyncio.sleep(1.0)  # the hammer goes on past the swap
            done.set()
            return await hammer, await predict(session, daemon.url, [e.text for e in fresh])

    try:
        daemon.wait_ready(timeout_s=90, model=True)
        started = time.monotonic()
        (requests, failures, versions), fresh_answers = asyncio.run(scenario())
        status, metrics = learning_status(daemon), daemon.metrics()
        serving = status["serving"]
        accuracy = sum(
            a["intent"] == e.intent for a, e in zip(fresh_answers, fresh, strict=False)
        ) / len(fresh)
        manifest = registry.verify(serving)
        print(
            f"\n  encoder loop: {requests} predictions while it ran, "
            f"{len(failures)} failed; versions served {versions}; "
            f"{NEW_DOMAIN} accuracy after the swap {accuracy:.3f}; first "
            f"report to swap and beyond {time.monotonic() - started:.0f} s; "
            f"gate {manifest.info['gate']['candidate_holdout']:.3f} vs "
            f"{manifest.info['gate']['incumbent_holdout']:.3f}"
        )
        assert failures == [] and requests > 100
        assert versions[0] == seed_version and versions[-1] == serving != seed_version
        assert (
            metrics["driftd_decay_decisions_total"] >= 1
            and metrics["driftd_finetune_runs_total{trigger=decay}"] >= 1
        )
        assert {a["model_version"] for a in fresh_answers} == {serving} and accuracy >= 0.3, (
            "the new model did not learn the new domain"
        )
        trained_as = manifest.info["train"]
        assert trained_as["architecture"] == "encoder" and manifest.info["gate"]["passed"]
        assert trained_as["export"]["pretrained"] == {
            "checkpoint": str(checkpoint),
            "weights_sha256": sha256_file(checkpoint / "model.safetensors"),
        }
    finally:
        daemon.stop_quietly()
