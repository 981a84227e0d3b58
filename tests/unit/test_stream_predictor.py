"""Stream prediction in a child process, against real registry versions and ONNX Runtime
sessions: the child answers as the daemon's own copy does, follows the server's swaps, and a
child that dies costs no batch."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from daemon.stream_predictor import StreamPredictor
from models.registry import Registry
from models.serving import LoadedModel, ModelServer
from tests.unit.test_serving import PROBE, version_files

TEXTS = [*PROBE, "where is my laptop", "hi team, good morning"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    registry = Registry(tmp_path_factory.mktemp("registry"))
    five = ["greet", "bye", "refund", "track", "cancel"]
    parent = None
    for files in (version_files(five, 0), version_files([*five, "upgrade"], 2)):
        parent = registry.publish(files, parent=parent, info={}).version
    return registry


def serving(registry: Registry, version: str) -> ModelServer:
    server = ModelServer()
    server.swap(LoadedModel.load(registry, version))
    return server


def started(predictor: StreamPredictor) -> StreamPredictor:
    asyncio.run(predictor.on_start())
    return predictor


def test_the_child_predicts_what_the_server_would_and_follows_its_swaps(registry) -> None:
    first, second = registry.versions()
    server = serving(registry, first)
    predictor = started(StreamPredictor(server, registry.root, top_k=3))
    try:
        expected = [p.to_dict() for p in server.predict(TEXTS, top_k=3)]
        assert predictor.predict(TEXTS) == expected
        assert {p["model_version"] for p in expected} == {first}

        server.swap(LoadedModel.load(registry, second))
        after = predictor.predict(TEXTS)
        assert after == [p.to_dict() for p in server.predict(TEXTS, top_k=3)]
        assert {p["model_version"] for p in after} == {second}
        assert any(p["intent"] == "upgrade" for p in after)  # the second version's own intent
    finally:
        predictor.close()
        server.close()


def test_a_child_that_dies_costs_no_batch_and_is_started_again(registry) -> None:
    server = serving(registry, registry.versions()[0])
    predictor = started(StreamPredictor(server, registry.root, top_k=2))
    try:
        expected = [p.to_dict() for p in server.predict(TEXTS, top_k=2)]
        assert predictor.predict(TEXTS) == expected
        pid = predictor.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert predictor.predict(TEXTS) == expected  # answered here meanwhile
        assert predictor.predict(TEXTS) == expected  # by a new child
        assert predictor.child_pid not in (None, pid)
    finally:
        predictor.close()
        server.close()


def test_a_child_that_hangs_is_replaced_and_the_batch_predicted_here(registry) -> None:
    server = serving(registry, registry.versions()[0])
    predictor = started(StreamPredictor(server, registry.root, top_k=3, timeout_s=10))
    try:
        expected = [p.to_dict() for p in server.predict(TEXTS, top_k=3)]
        assert predictor.predict(TEXTS) == expected
        hung = predictor.child_pid
        predictor._child().submit(time.sleep, 60)  # the one child is busy for a minute
        assert predictor.predict(TEXTS) == expected  # after 10 s, here
        assert predictor.predict(TEXTS) == expected  # by a new child
        assert predictor.child_pid not in (None, hung)
    finally:
        predictor.close()
        server.close()


def test_no_model_no_predictions_and_thread_mode_needs_no_child(registry) -> None:
    assert StreamPredictor(ModelServer(), registry.root, top_k=3).predict(TEXTS) is None
    server = serving(registry, registry.versions()[0])
    in_thread = StreamPredictor(server, registry.root, top_k=3, in_child=False)
    try:
        assert in_thread.predict(TEXTS) == [p.to_dict() for p in server.predict(TEXTS, top_k=3)]
        assert in_thread.child_pid is None
    finally:
        server.close()
