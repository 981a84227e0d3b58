"""The inference endpoint of a real daemon: predictions,
hostile requests, admin auth, hot swap under load."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from models.classifier import ClassifierConfig
from models.export import SERVED_MODEL, build_version_files
from models.featurize import HashingFeaturizer
from models.registry import Registry
from models.train import TrainSettings, train_classifier
from streams.datasets import groups, load_examples
from tests.integration.harness import DaemonProcess, produce, read_topic, unique, valid_event

TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory) -> Path:
    """Three small real versions (different seeds and label sets) and one corrupted copy."""
    root = tmp_path_factory.mktemp("registry")
    registry = Registry(root)
    domains = groups("clinc150")
    examples = load_examples("clinc150", "train")
    parent = None
    for seed, names in enumerate(
        (["banking", "travel"], ["banking", "travel", "home"], ["banking", "home", "work"])
    ):
        intents = {i for d in names for i in domains[d]}
        chosen = [e for e in examples if e.intent in intents]
        featurizer = HashingFeaturizer(buckets=4096)
        result = train_classifier(
            [e.text for e in chosen],
            [e.intent for e in chosen],
            featurizer=featurizer,
            config=ClassifierConfig(buckets=4096, dim=16, hidden=32),
            settings=TrainSettings(epochs=3, seed=seed),
        )
        files, _ = build_version_files(
            result.model, result.featurizer, result.labels, [e.text for e in chosen[:16]]
        )
        parent = registry.publish(files, parent=parent, info={"seed": seed}).version
    registry.set_current("v000001")
    corrupt = registry.publish(files, parent=parent, info={"note": "truncated below"}).version
    served = registry.path(corrupt, SERVED_MODEL)
    served.write_bytes(served.read_bytes()[:1000])
    return root


@pytest.fixture(scope="module")
def daemon(broker, tmp_path_factory, registry_dir):
    """One daemon for the module: the swap test runs
    last and leaves v000001 current, as it found it."""
    tmp_path = tmp_path_factory.mktemp("serving")
    registry = tmp_path / "registry"
    shutil.copytree(registry_dir, registry)
    proc = DaemonProcess(
        broker.bootstrap,
        tmp_path / "state",
        unique("serve"),
        extra_env={"DRIFTD_MODELS__REGISTRY_DIR": str(registry), "DRIFTD_WEB__ADMIN_TOKEN": TOKEN},
    ).start()
    try:
        proc.wait_ready(model=True)
        yield proc
        code, seconds = proc.terminate()
        assert code == 0 and seconds < 10
    finally:
        proc.stop_quietly()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | str | None = None,
    token: str | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(
        method, path, body=body.encode() if isinstance(body, str) else body, headers=headers
    )
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    return response.status, (json.loads(data) if data else {})


def test_predict_single_and_batch(daemon):
    status, single = call(
        daemon.web_port, "POST", "/v1/predict", json.dumps({"text": "what is my account balance"})
    )
    assert status == 200, single
    assert single["model_version"] == "v000001" and single["intent"] == single["top_k"][0]["intent"]
    assert 0 < single["confidence"] <= 1 and len(single["top_k"]) == 3
    status, batch = call(
        daemon.web_port,
        "POST",
        "/v1/predict",
        json.dumps({"texts": ["what is my account balance", "book me a flight"], "top_k": 2}),
    )
    assert (
        status == 200
        and len(batch["predictions"]) == 2
        and all(len(p["top_k"]) == 2 for p in batch["predictions"])
    )
    assert batch["predictions"][0]["intent"] == single["intent"]


def test_streamed_utterances_are_predicted_and_published_with_the_model_version(daemon, broker):
    events = [valid_event(i, run="stream") for i in range(300)] + [
        valid_event(i, kind="label", run="stream") for i in range(50)
    ]
    asyncio.run(produce(broker.bootstrap, daemon.topic, [json.dumps(e).encode() for e in events]))
    records = asyncio.run(read_topic(broker.bootstrap, f"{daemon.topic}.predictions", 300))
    predictions = [json.loads(r.value) for r in records]
    # utterances only
    assert sorted(p["event_id"] for p in predictions) == sorted(f"stream-u{i}" for i in range(300))
    assert all(
        p["model_version"] == "v000001" and p["intent"] == p["top_k"][0]["intent"]
        for p in predictions
    )
    assert all(
        r.key == p["conversation_id"].encode() for r, p in zip(records, predictions, strict=False)
    )
    assert daemon.metric("driftd_predictions_total") == 300


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("{not json", 400),
        ("[1, 2]", 422),
        ('{"txt": "hi"}', 422),
        ('{"text": 5}', 422),
        ('{"texts": []}', 422),
        ('{"texts": ["ok", 3]}', 422),
        ('{"text": "hi", "texts": ["hi"]}', 422),
        ('{"text": "   "}', 422),
        ('{"text": "hi", "top_k": 0}', 422),
        ('{"text": "hi", "top_k": true}', 422),
        ("[" * 100_000 + "]" * 100_000, 400),
        (json.dumps({"text": "x" * 5000}), 413),
        (json.dumps({"texts": ["hi"] * 1000}), 413),
        ('{"text": "' + "y" * 2_000_000 + '"}', 413),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_message(daemon, body, status):
    got, payload = call(daemon.web_port, "POST", "/v1/predict", body)
    assert got == status and payload["error"], payload


def test_admin_routes_need_the_bearer_token(daemon):
    assert call(daemon.web_port, "GET", "/admin/v1/models")[0] == 401
    assert call(daemon.web_port, "GET", "/admin/v1/models", token="wrong")[0] == 401
    status, listing = call(daemon.web_port, "GET", "/admin/v1/models", token=TOKEN)
    assert status == 200
    statuses = {m["version"]: m["status"] for m in listing["models"]}
    assert statuses == {"v000001": "ok", "v000002": "ok", "v000003": "ok", "v000004": "corrupt"}


def test_a_corrupt_version_is_refused_and_the_current_one_keeps_serving(daemon):
    status, answer = call(daemon.web_port, "POST", "/admin/v1/models/v000004/activate", token=TOKEN)
    assert (
        status == 409
        and "v000004" in answer["error"]
        and "v000001 keeps serving" in answer["error"]
    )
    status, prediction = call(
        daemon.web_port, "POST", "/v1/predict", json.dumps({"text": "freeze my card"})
    )
    assert status == 200 and prediction["model_version"] == "v000001"
    assert call(daemon.web_port, "POST", "/admin/v1/models/v000099/activate", token=TOKEN)[0] == 404


def test_fifty_swaps_under_load_fail_no_request_and_serve_only_live_versions(daemon):
    port = daemon.web_port
    stop = threading.Event()
    responses: list[tuple[float, float, int, str | None]] = []
    errors: list[BaseException] = []

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps(
            {"texts": ["what is my balance", "plan a trip to rome", "my dishwasher is broken"]}
        )
        try:
            while not stop.is_set():
                started = time.monotonic()
                status, payload = call(port, "POST", "/v1/predict", body, conn=conn)
                responses.append((started, time.monotonic(), status, payload.get("model_version")))
        except BaseException as exc:  # noqa: BLE001 - any failure is a failed request
            errors.append(exc)

    generators = [threading.Thread(target=load) for _ in range(4)]
    for thread in generators:
        thread.start()
    switches: list[tuple[float, float, str]] = [(0.0, 0.0, "v000001")]  # (sent, answered, version)
    try:
        for i in range(51):
            version = ("v000002", "v000003", "v000001")[i % 3]
            sent = time.monotonic()
            status, answer = call(port, "POST", f"/admin/v1/models/{version}/activate", token=TOKEN)
            assert status == 200, answer
            switches.append((sent, time.monotonic(), version))
    finally:
        stop.set()
        for thread in generators:
            thread.join(30)
    assert not errors, errors[:3]
    assert len(responses) > 200 and {status for _, _, status, _ in responses} == {200}
    # A version may be live from when its activation
    # was sent until the next activation was answered.
    live = [
        (sent, switches[i + 1][1] if i + 1 < len(switches) else float("inf"), version)
        for i, (sent, _, version) in enumerate(switches)
    ]
    for started, ended, _, version in responses:
        assert any(
            v == version and started <= until and ended >= since for since, until, v in live
        ), (started, ended, version)
    assert len({version for *_, version in responses}) == 3
