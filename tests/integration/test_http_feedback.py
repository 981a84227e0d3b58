"""HTTP-only learning (issue 21, acceptance 5): a client that sends nothing on
Kafka predicts through /v1/predict and reports through /v1/feedback, and that
alone drives a decay, a fine-tune and a swap. Real embedded broker, real daemon
subprocess. Also: a broker outage gets a 503, never a lost acknowledgement.

The seed model knows two CLINC150 domains. First the client reports on
answers for texts of those domains (the accuracy reference), then it sends
texts of a domain the model has never seen and reports their intents.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.broker import EmbeddedBroker, free_port
from streams.datasets import groups, load_examples
from tests.integration.harness import DaemonProcess, read_topic, unique
from tests.integration.test_learning_loop import learning_status, publish_seed_model

SEED_DOMAINS = ("banking", "credit_cards")
NEW_DOMAIN = "travel"
# small, so that one decay and one fine-tune take seconds; the rest is the shipped default
HTTP_LOOP = {
    "DRIFTD_WEB__ADMIN_TOKEN": "learning-loop-test-token",  # learning_status reads the admin API
    "DRIFTD_MONITOR__MIN_SAMPLES": "100",
    "DRIFTD_MONITOR__EWMA_WARMUP": "100",
    "DRIFTD_MONITOR__EWMA_ALPHA": "0.05",
    "DRIFTD_MONITOR__COOLDOWN_S": "10",
    "DRIFTD_LEARNING__COOLDOWN_S": "0",
    # most of the new domain's reports: skipped at the decision, started later
    "DRIFTD_LEARNING__MIN_LABELLED": "700",
    "DRIFTD_LEARNING__FOLLOWUP_LABELS": "0",  # one fine-tune: the decay's
    "DRIFTD_LEARNING__CANARY_LABELS": "0",
}


async def predict(
    session: aiohttp.ClientSession, url: str, texts: list[str]
) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for start in range(0, len(texts), 64):
        async with session.post(
            url + "/v1/predict", json={"texts": texts[start : start + 64]}
        ) as response:
            assert response.status == 200, await response.text()
            answers += (await response.json())["predictions"]
    return answers


async def report(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """POST every body to /v1/feedback; each must be acknowledged (202)."""
    gate = asyncio.Semaphore(16)

    async def one(body: dict[str, Any]) -> dict[str, Any]:
        async with gate, session.post(url + "/v1/feedback", json=body) as response:
            assert response.status == 202, (body, response.status, await response.text())
            return await response.json()

    return list(await asyncio.gather(*(one(body) for body in bodies)))


@pytest.mark.timeout(300)
def test_http_predictions_and_feedback_alone_drive_a_decay_a_fine_tune_and_a_swap(
    broker: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    domains = groups("clinc150")
    seed_intents = {i for d in SEED_DOMAINS for i in domains[d]}
    new_intents = set(domains[NEW_DOMAIN])
    train, test = load_examples("clinc150", "train"), load_examples("clinc150", "test")
    seed_version, _ = publish_seed_model(
        tmp_path / "registry", [e for e in train if e.intent in seed_intents]
    )
    rng = random.Random(21)  # the splits are grouped by intent
    known = rng.sample([e for e in test if e.intent in seed_intents], 150)
    unseen = rng.sample([e for e in train if e.intent in new_intents], 600)
    fresh = rng.sample([e for e in test if e.intent in new_intents], 150)
    topic = unique("http-feedback")
    env = {**HTTP_LOOP, "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry")}
    daemon = DaemonProcess(broker.bootstrap, tmp_path / "daemon", topic, extra_env=env).start()

    def wait_for_outcomes(count: int) -> None:
        daemon.wait_until(
            lambda: daemon.metric("driftd_outcomes_total") >= count, 60, f"{count} outcomes"
        )

    async def client() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            # The reference: reports on the known domains, as "right" or "wrong".
            answers = await predict(session, daemon.url, [e.text for e in known])
            bodies = [
                {"prediction_id": a["prediction_id"], "correct": a["intent"] == e.intent}
                for a, e in zip(answers, known, strict=False)
            ]
            acks = await report(session, daemon.url, bodies)
            await asyncio.get_running_loop().run_in_executor(None, wait_for_outcomes, len(known))
            # The drift: a domain the model has never seen, each report naming the right intent.
            answers = await predict(session, daemon.url, [e.text for e in unseen])
            assert {a["model_version"] for a in answers} == {seed_version}
            assert not {a["intent"] for a in answers} & new_intents
            bodies = [
                {"prediction_id": a["prediction_id"], "intent": e.intent}
                for a, e in zip(answers, unseen, strict=False)
            ]
            acks += await report(session, daemon.url, bodies)
            return acks, answers

    try:
        daemon.wait_ready(timeout_s=90, model=True)
        acks, unseen_answers = asyncio.run(client())
        reported = len(known) + len(unseen)
        swapped = "driftd_finetune_results_total{result=swapped}"
        daemon.wait_until(lambda: daemon.metric(swapped) >= 1, 180, "a fine-tune and a swap")
        wait_for_outcomes(reported)
        status, metrics = learning_status(daemon), daemon.metrics()
        serving = status["serving"]

        async def after_swap() -> list[dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                return await predict(session, daemon.url, [e.text for e in fresh])

        fresh_answers = asyncio.run(after_swap())
        fresh_accuracy = sum(
            a["intent"] == e.intent for a, e in zip(fresh_answers, fresh, strict=False)
        ) / len(fresh)
        elapsed = time.monotonic() - started
        run = status["last_run"]
        print(
            f"\n  {reported} HTTP reports; decisions "
            f"{metrics['driftd_decay_decisions_total']:.0f}, "
            f"last run {run.get('trigger')} on {run.get('data')}: "
            f"{run.get('result')}; serving {serving} "
            f"(seed {seed_version}); {NEW_DOMAIN} accuracy after the swap "
            f"{fresh_accuracy:.3f}; {elapsed:.0f} s"
        )

        assert metrics["driftd_decay_decisions_total"] >= 1
        assert metrics["driftd_finetune_runs_total{trigger=decay}"] >= 1
        assert serving != seed_version and {a["model_version"] for a in fresh_answers} == {serving}
        assert fresh_accuracy >= 0.5, (
            "the swapped-in model did not learn the domain it got feedback on"
        )
        # Every report joined exactly once, with the prediction
        # its client was told, and none was predicted again.
        assert daemon.metric("driftd_outcomes_total") == reported
        assert daemon.metric("driftd_predictions_total") == 0

        # Durable on Kafka: each prediction's utterance (with
        # the served answer) and its report, on one partition.
        records = asyncio.run(read_topic(broker.bootstrap, topic, 2 * reported, timeout_s=30))
        events = [(r.partition, json.loads(r.value)) for r in records]
        utterances = {e["event_id"]: (p, e) for p, e in events if e["type"] == "utterance"}
        reports = [(p, e) for p, e in events if e["type"] != "utterance"]
        assert (
            len(utterances) == len(reports) == reported == len({a["prediction_id"] for a in acks})
        )
        assert all(utterances[e["ref_event_id"]][0] == p for p, e in reports)
        first = utterances[unseen_answers[0]["prediction_id"]][1]
        told = {k: unseen_answers[0][k] for k in ("intent", "confidence", "model_version")}
        assert first["served_prediction"] == told
        assert first["text"] == unseen[0].text and first["meta"] == {"source": "http"}
        # ...and training data: each stored report knows its utterance's text.
        db = sqlite3.connect(tmp_path / "daemon" / "warm.sqlite3")
        try:
            query = (
                "SELECT COUNT(*), COUNT(ref_text) FROM events WHERE type IN ('label', 'feedback')"
            )
            texts = db.execute(query).fetchone()
        finally:
            db.close()
        assert texts == (reported, reported)
    finally:
        daemon.stop_quietly()


def test_feedback_during_a_broker_outage_is_a_503_and_never_acknowledged(tmp_path: Path) -> None:
    domains = groups("clinc150")
    intents = set(domains["banking"])
    # its quality is not under test
    seed = [e for e in load_examples("clinc150", "train") if e.intent in intents][::4]
    publish_seed_model(tmp_path / "registry", seed)
    with EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log") as own_broker:
        daemon = DaemonProcess(
            own_broker.bootstrap,
            tmp_path / "daemon",
            unique("http-outage"),
            extra_env={
                "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry"),
                "DRIFTD_WEB__FEEDBACK_PUBLISH_TIMEOUT_S": "3",
            },
        ).start()
        try:
            daemon.wait_ready(timeout_s=90, model=True)

            async def client(phase: str) -> tuple[int, dict[str, Any], float]:
                async with aiohttp.ClientSession() as session:
                    # goes on
                    (answer,) = await predict(
                        session, daemon.url, [f"what is my account balance ({phase})"]
                    )
                    sent = time.monotonic()
                    right = {"prediction_id": answer["prediction_id"], "correct": True}
                    async with session.post(daemon.url + "/v1/feedback", json=right) as response:
                        return response.status, await response.json(), time.monotonic() - sent

            status, body, _ = asyncio.run(client("before"))
            assert status == 202 and set(body["event_ids"]) == {"utterance", "feedback"}
            own_broker.stop()
            status, body, seconds = asyncio.run(client("during"))
            print(f"\n  feedback during the outage: {status} after {seconds:.1f} s: {body}")
            assert status == 503 and "retry" in body["error"] and seconds < 10
        finally:
            daemon.stop_quietly()
