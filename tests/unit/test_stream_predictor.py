"""Stream prediction in a child process, against real registry versions and ONNX Runtime
sessions: the child answers as the daemon's own copy does, follows the server's swaps, and a
child that dies or hangs costs no batch."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


@pytest.fixture
def server(registry: Registry) -> Iterator[ModelServer]:
    """Serving the registry's first version."""
    server = ModelServer()
    server.swap(LoadedModel.load(registry, registry.versions()[0]))
    yield server
    server.close()


@contextmanager
def running(server: ModelServer, registry: Registry, **options: Any) -> Iterator[StreamPredictor]:
    predictor = StreamPredictor(server, registry.root, **options)
    asyncio.run(predictor.on_start())
    try:
        yield predictor
    finally:
        predictor.close()


def served(server: ModelServer, top_k: int) -> list[dict[str, Any]]:
    return [p.to_dict() for p in server.predict(TEXTS, top_k=top_k)]


def test_the_child_predicts_what_the_server_would_and_follows_its_swaps(registry, server) -> None:
    first, second = registry.versions()
    with running(server, registry, top_k=3) as predictor:
        expected = served(server, 3)
        assert predictor.predict(TEXTS) == expected
        assert {p["model_version"] for p in expected} == {first}

        server.swap(LoadedModel.load(registry, second))
        after = predictor.predict(TEXTS)
        assert after == served(server, 3)
        assert {p["model_version"] for p in after} == {second}
        assert any(p["intent"] == "upgrade" for p in after)  # the second version's own intent


def test_a_child_that_dies_costs_no_batch_and_is_started_again(registry, server) -> None:
    with running(server, registry, top_k=2) as predictor:
        expected = served(server, 2)
        assert predictor.predict(TEXTS) == expected
        pid = predictor.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert predictor.predict(TEXTS) == expected  # answered here meanwhile
        assert predictor.predict(TEXTS) == expected  # by a new child
        assert predictor.child_pid not in (None, pid)


def test_a_child_that_hangs_is_replaced_and_the_batch_predicted_here(registry, server) -> None:
    with running(server, registry, top_k=3, timeout_s=10) as predictor:
        expected = served(server, 3)
        assert predictor.predict(TEXTS) == expected
        hung = predictor.child_pid
        predictor._child().submit(time.sleep, 60)  # the one child is busy for a minute
        assert predictor.predict(TEXTS) == expected  # after 10 s, here
        assert predictor.predict(TEXTS) == expected  # by a new child
        assert predictor.child_pid not in (None, hung)


def test_no_model_no_predictions_and_thread_mode_needs_no_child(registry, server) -> None:
    assert StreamPredictor(ModelServer(), registry.root, top_k=3).predict(TEXTS) is None
    in_thread = StreamPredictor(server, registry.root, top_k=3, in_child=False)
    assert in_thread.predict(TEXTS) == served(server, 3)
    assert in_thread.child_pid is None
