"""Feedback on HTTP predictions: the pending store's answers (404, 410, 422), the events
a report becomes, how ingest treats them (a real TieredStore, the real OutcomeJoiner
and training-set query), and the routes on a real aiohttp server with a real model;
the broker is an in-memory stand-in here (tests/integration has the real one)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from daemon.config import load_settings
from daemon.feedback import (
    FeedbackRefused,
    PendingPredictions,
    encode_events,
    feedback_events,
    parse_feedback,
)
from daemon.http_routes import PredictRoutes
from models.classifier import ClassifierConfig
from models.export import build_version_files
from models.featurize import HashingFeaturizer
from models.registry import Registry
from models.serving import ModelServer
from models.train import TrainSettings, train_classifier
from streams.ingest import SERVED_PREDICTION_FIELD, IngestAgent, RawRecord
from streams.metrics import StreamMetrics
from streams.monitor.outcomes import OutcomeJoiner
from streams.schema import decode_event
from streams.tiers import TieredStore, TierPolicy
from streams.training_set import labelled_examples, query_recent
from tests.toy_intents import examples


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused(call: Any, status: int, *needles: str) -> str:
    with pytest.raises(FeedbackRefused) as caught:
        call()
    assert caught.value.status == status, caught.value.message
    for needle in needles:
        assert needle in caught.value.message
    return caught.value.message


# --- the pending store ----------------------------------------------------------------------------


def test_a_served_prediction_is_found_by_its_id_until_its_horizon() -> None:
    clock = Clock()
    pending = PendingPredictions(horizon_s=60, max_pending=10, clock=clock)
    pid = pending.add("where is my parcel", "track", 0.9, "v000001")
    assert len(pid) == 32 and pid != pending.add("where is my parcel", "track", 0.9, "v000001")
    clock.now += 59
    served = pending.get(pid)
    assert (served.text, served.intent, served.confidence) == ("where is my parcel", "track", 0.9)
    assert served.model_version == "v000001"
    clock.now += 2
    refused(lambda: pending.get(pid), 410, "expired", "61 s ago", "web.feedback_horizon_s")
    assert len(pending) == 0  # expiry frees the memory


def test_malformed_unknown_and_evicted_ids_are_told_apart() -> None:
    clock = Clock()
    pending = PendingPredictions(horizon_s=600, max_pending=2, clock=clock)
    for bad in (None, 7, "", "xyz", "g" * 32, "A" * 32, "0" * 31):
        refused(lambda bad=bad: pending.get(bad), 422, "32 hex digits")
    first = pending.add("a", "greet", 0.5, "v1")
    clock.now += 1
    pending.add("b", "greet", 0.5, "v1")
    clock.now += 1
    pending.add("c", "greet", 0.5, "v1")  # over max_pending: the first goes
    refused(lambda: pending.get(first), 410, "web.feedback_max_pending")
    forged = f"{int(clock.now * 1000):012x}" + "0" * 20  # a current issue time nobody served
    refused(lambda: pending.get(forged), 404, "not served by this daemon")
    restarted = PendingPredictions(horizon_s=600, max_pending=2, clock=Clock(clock.now + 5))
    refused(lambda: restarted.get(first), 404, "before this daemon started")


# --- a report and its events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([], "JSON object"),
        ({"correct": True}, 'missing "prediction_id"'),
        ({"prediction_id": "0" * 32}, "exactly one"),
        ({"prediction_id": "0" * 32, "correct": True, "intent": "x"}, "exactly one"),
        ({"prediction_id": "0" * 32, "correct": "yes"}, "true or false"),
        ({"prediction_id": "0" * 32, "intent": " "}, "non-empty string"),
        ({"prediction_id": "0" * 32, "intent": "x" * 129}, "at most 128"),
        ({"prediction_id": "0" * 32, "intent": "x", "text": "hi"}, "unknown field(s) 'text'"),
    ],
)
def test_a_malformed_report_is_refused_with_what_is_wrong(payload: Any, needle: str) -> None:
    refused(lambda: parse_feedback(payload), 422, needle)


def test_a_report_becomes_the_utterance_once_then_its_label_or_feedback() -> None:
    pending = PendingPredictions(horizon_s=600, max_pending=10, clock=Clock())
    pid = pending.add("refund the phone please", "refund", 0.8, "v000002")
    served = pending.get(pid)
    utterance, label = feedback_events(
        pid, served, correct=None, intent="cancel", now=1_800_000_010.0
    )
    decoded = [decode_event(raw, 65536) for raw in encode_events([utterance, label], 65536)]
    assert [e.type for e in decoded] == ["utterance", "label"]
    assert (
        decoded[0].event_id == pid == decoded[1].ref_event_id
        and decoded[0].text == "refund the phone please"
    )
    served_field = decoded[0].model_extra[SERVED_PREDICTION_FIELD]
    assert served_field == {"intent": "refund", "confidence": 0.8, "model_version": "v000002"}
    assert (
        decoded[0].meta == {"source": "http"}
        and decoded[1].intent == "cancel"
        and decoded[1].ts == 1_800_000_010.0
    )
    served.published = True  # a second report (a correction) does not send the utterance again
    (right,) = feedback_events(pid, served, correct=True, intent=None, now=1_800_000_020.0)
    # training data too
    assert (right["type"], right["correct"], right["intent"]) == ("feedback", True, "refund")
    (wrong,) = feedback_events(pid, served, correct=False, intent=None, now=1_800_000_020.0)
    assert (wrong["type"], wrong["correct"], "intent" in wrong) == ("feedback", False, False)
    assert len({label["event_id"], right["event_id"], wrong["event_id"]}) == 3


def test_an_event_ingest_would_refuse_is_not_published() -> None:
    pending = PendingPredictions(horizon_s=600, max_pending=10, clock=Clock())
    pid = pending.add("x" * 5000, "refund", 0.8, "v1")
    events = feedback_events(pid, pending.get(pid), correct=True, intent=None, now=1_800_000_010.0)
    refused(lambda: encode_events(events, 4096), 422, "utterance", "too_large")


# --- ingest of those events -----------------------------------------------------------------------


Reports = tuple[list[Any], list[str], TieredStore, list[tuple[str, str]]]


def ingest_reports(tmp_path: Path, *, observe_served: bool) -> Reports:
    """Two HTTP reports and one Kafka utterance through a real IngestAgent and TieredStore."""
    metrics = StreamMetrics(CollectorRegistry())
    store = TieredStore(
        tmp_path / "warm.sqlite3",
        str(tmp_path / "cold"),
        TierPolicy(60, 3600),
        100,
        metrics=metrics,
    )
    asyncio.run(store.open())
    clock = Clock()
    pending = PendingPredictions(horizon_s=600, max_pending=10, clock=clock)
    right = pending.add("where is my parcel", "track", 0.91, "v000001")
    wrong = pending.add("cancel my shoes order", "refund", 0.55, "v000001")
    events = [
        *feedback_events(right, pending.get(right), correct=True, intent=None, now=clock.now + 5),
        *feedback_events(
            wrong, pending.get(wrong), correct=None, intent="cancel", now=clock.now + 6
        ),
        {
            "event_id": "kafka-1",
            "type": "utterance",
            "conversation_id": "c",
            "turn": 0,
            "ts": clock.now,
            "text": "hello there",
        },
    ]
    predicted_texts: list[str] = []
    observed: list[tuple[Any, Any]] = []

    # a newer model that would answer differently
    def predict(texts: list[str]) -> list[dict[str, Any]]:
        predicted_texts.extend(texts)
        top = {"intent": "greet", "confidence": 0.99}
        return [{**top, "top_k": [top], "model_version": "v000009"} for _ in texts]

    async def publish(partition: int, records: list[tuple[bytes, bytes]]) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    agent = IngestAgent(
        store,
        None,
        metrics,
        predict=predict,
        publish_prediction=publish,
        observe=lambda valid, pairs: observed.append((valid, pairs)),
        observe_served=observe_served,
    )
    records = [
        RawRecord(
            "conversations",
            0,
            offset,
            e["conversation_id"].encode(),
            json.dumps(e).encode(),
            clock.now,
        )
        for offset, e in enumerate(events)
    ]
    assert asyncio.run(agent.handle(records)) == (5, 0)
    return observed, predicted_texts, store, [(right, "track"), (wrong, "cancel")]


def test_ingest_keeps_the_served_prediction_joins_it_and_learns_the_text(tmp_path: Path) -> None:
    observed, predicted_texts, store, truths = ingest_reports(tmp_path, observe_served=True)
    assert predicted_texts == ["hello there"]  # the HTTP utterances are not predicted again
    ((valid, pairs),) = observed
    served = {
        event.event_id: prediction
        for event, prediction in pairs
        if prediction.get("source") == "http"
    }
    assert {pid: p["intent"] for pid, p in served.items()} == {
        truths[0][0]: "track",
        truths[1][0]: "refund",
    }
    assert {p["model_version"] for p in served.values()} == {"v000001"}

    # The learning loop's join (daemon/learning.observe_batch
    # feeds it the same way): what the client was told.
    joiner = OutcomeJoiner(horizon_s=600)
    outcomes = [
        joiner.record_prediction(e.event_id, p["intent"], p["confidence"], p["model_version"], e.ts)
        for e, p in pairs
    ]
    reports = [e for e in valid if e.ref_event_id]
    outcomes += [
        joiner.record_label(e.ref_event_id, intent=e.intent, correct=e.correct, ts=e.ts)
        for e in reports
    ]
    judged = {o.event_id: (o.correct, o.model_version) for o in outcomes if o is not None}
    assert judged == {truths[0][0]: (True, "v000001"), truths[1][0]: (False, "v000001")}

    # Training data: each report names its utterance's text (ref_text filled by the store).
    expected = {("where is my parcel", "track"), ("cancel my shoes order", "cancel")}
    assert {(x.text, x.intent) for x in labelled_examples(valid)} == expected
    recent = asyncio.run(query_recent(store, 0, 2e9, 100))
    assert {(x.text, x.intent) for x in recent} == expected


def test_with_monitoring_off_http_predictions_are_not_observed_but_still_trained_on(
    tmp_path: Path,
) -> None:
    observed, predicted_texts, _store, _ = ingest_reports(tmp_path, observe_served=False)
    ((valid, pairs),) = observed
    assert predicted_texts == ["hello there"] and [e.event_id for e, _ in pairs] == ["kafka-1"]
    assert len(labelled_examples(valid)) == 2


# --- the routes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    texts, intents = examples(["greet", "bye", "refund", "track", "cancel"], 200, 0)
    result = train_classifier(
        texts,
        intents,
        featurizer=HashingFeaturizer(buckets=4096),
        config=ClassifierConfig(buckets=4096, dim=16, hidden=32),
        settings=TrainSettings(epochs=30, seed=0),
    )
    files, _ = build_version_files(result.model, result.featurizer, result.labels, texts[:8])
    registry = Registry(tmp_path_factory.mktemp("registry"))
    registry.publish(files, parent=None, info={})
    return registry


class Broker:
    """The producer's contract: ``send`` queues and returns what resolves at the acknowledgement."""

    def __init__(self, mode: str = "ack") -> None:
        self.mode = mode
        self.records: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> Any:
        future = asyncio.get_running_loop().create_future()
        if self.mode == "ack":
            self.records.append((topic, key, json.loads(value)))
            future.set_result(None)
        elif self.mode == "fail":
            future.set_exception(ConnectionError("no broker"))
        return future  # "hang": never acknowledged


def serve(
    registry: Registry,
    broker: Broker | None,
    tmp_path: Path,
    metrics: CollectorRegistry | None = None,
    **web_settings: Any,
) -> TestClient:
    settings = load_settings(daemon={"data_dir": str(tmp_path)}, web=web_settings)
    server = ModelServer()
    server.load_and_swap(registry, "v000001")
    routes = PredictRoutes(
        settings,
        server,
        metrics or CollectorRegistry(),
        publish=broker.send if broker else None,
    )
    app = web.Application()
    routes.add_routes(app)
    return TestClient(TestServer(app))


async def post(client: TestClient, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, data=body if isinstance(body, bytes) else json.dumps(body))
    return response.status, await response.json()


def test_predict_answers_carry_ids_and_feedback_publishes_in_order_once_acknowledged(
    registry: Registry,
    tmp_path: Path,
) -> None:
    broker = Broker()
    metrics = CollectorRegistry()

    async def scenario() -> None:
        async with serve(registry, broker, tmp_path, metrics) as client:
            status, single = await post(client, "/v1/predict", {"text": "where is my parcel"})
            assert status == 200 and len(single["prediction_id"]) == 32
            status, batch = await post(
                client, "/v1/predict", {"texts": ["hello there friend", "cancel my book order"]}
            )
            ids = [p["prediction_id"] for p in batch["predictions"]]
            assert status == 200 and len(set(ids) | {single["prediction_id"]}) == 3

            status, body = await post(
                client, "/v1/feedback", {"prediction_id": ids[1], "intent": "cancel"}
            )
            assert status == 202 and body["prediction_id"] == ids[1]
            assert body["event_ids"] == {"utterance": ids[1], "label": body["event_ids"]["label"]}
            # A second word on the same prediction: only the feedback this time.
            status, body = await post(
                client, "/v1/feedback", {"prediction_id": ids[1], "correct": True}
            )
            assert status == 202 and list(body["event_ids"]) == ["feedback"]
            assert [(topic, key, e["type"]) for topic, key, e in broker.records] == [
                ("conversations", ids[1].encode(), "utterance"),
                ("conversations", ids[1].encode(), "label"),
                ("conversations", ids[1].encode(), "feedback"),
            ]
            utterance = broker.records[0][2]
            assert utterance["text"] == "cancel my book order"
            told = {
                k: batch["predictions"][1][k] for k in ("intent", "confidence", "model_version")
            }
            assert utterance[SERVED_PREDICTION_FIELD] == told

            for body, status_wanted, needle in [
                (b"{", 400, "not valid JSON"),
                ({"prediction_id": "nope", "correct": True}, 422, "32 hex digits"),
                (
                    {"prediction_id": ids[0][:12] + "f" * 20, "correct": True},
                    404,
                    "unknown prediction",
                ),
                ({"prediction_id": "0" * 32, "correct": False}, 410, "expired"),
            ]:
                status, answer = await post(client, "/v1/feedback", body)
                assert status == status_wanted and needle in answer["error"], (body, answer)
            assert len(broker.records) == 3
            counted = {
                s: metrics.get_sample_value("driftd_feedback_requests_total", {"status": s})
                for s in ("202", "400", "404", "410", "422")
            }
            assert counted == {"202": 2.0, "400": 1.0, "404": 1.0, "410": 1.0, "422": 1.0}
            assert metrics.get_sample_value("driftd_feedback_pending_predictions") == 3.0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("mode", "needle"), [("fail", "ConnectionError: no broker"), ("hang", "within 0.3 s")]
)
def test_a_broker_that_does_not_acknowledge_gets_a_503_and_a_retry_sends_what_is_missing(
    registry: Registry,
    tmp_path: Path,
    mode: str,
    needle: str,
) -> None:
    broker = Broker(mode)

    async def scenario() -> None:
        async with serve(registry, broker, tmp_path, feedback_publish_timeout_s=0.3) as client:
            _, answer = await post(client, "/v1/predict", {"text": "refund the phone please"})
            wrong = {"prediction_id": answer["prediction_id"], "correct": False}
            status, body = await post(client, "/v1/feedback", wrong)
            assert status == 503 and needle in body["error"] and "retry" in body["error"]
            broker.mode = "ack"
            status, body = await post(client, "/v1/feedback", wrong)
            assert status == 202 and [e["type"] for _, _, e in broker.records] == [
                "utterance",
                "feedback",
            ]

    asyncio.run(scenario())


def test_without_a_producer_feedback_is_a_503(registry: Registry, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serve(registry, None, tmp_path) as client:
            _, answer = await post(client, "/v1/predict", {"text": "hello there"})
            right = {"prediction_id": answer["prediction_id"], "correct": True}
            status, body = await post(client, "/v1/feedback", right)
            assert status == 503 and "no Kafka producer" in body["error"]

    asyncio.run(scenario())
