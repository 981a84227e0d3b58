"""Promotion and rollback on real parts (registry, ONNX Runtime sessions
behind the model server): what is published, served, made CURRENT and
announced, and what a failed announcement or rollback leaves behind."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.learning_metrics import LearningMetrics
from daemon.promoter import Promoter
from models.finetune import FineTuneJob, FineTuneResult, run_fine_tune
from models.registry import Registry
from models.serving import ModelServer
from models.train import TrainSettings
from streams.jsonsafe import json_safe
from tests.toy_intents import examples


def pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    return examples(["refund", "track", "cancel"], n, seed)


@pytest.fixture(scope="module")
def candidate() -> FineTuneResult:
    return run_fine_tune(
        FineTuneJob(
            train=pairs(300, 0),
            holdout=pairs(60, 1),
            replay_eval=([], []),
            incumbent_dir=None,
            settings=TrainSettings(epochs=2, batch_size=32),
        )
    )


class Announced:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[tuple[bytes, dict[str, Any]]] = []
        self.fail = fail

    async def __call__(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.records.append((key, json.loads(value)))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
def server() -> Iterator[ModelServer]:
    server = ModelServer()
    yield server
    server.close(timeout=5)


def promoter(
    server: ModelServer,
    registry: Registry,
    announce: Announced,
    metrics: CollectorRegistry | None = None,
) -> Promoter:
    learning_metrics = LearningMetrics(metrics or CollectorRegistry())
    return Promoter(
        server,
        registry,
        asyncio.Lock(),
        announce,
        "model-updates",
        learning_metrics,
        lambda: 1234.0,
    )


def test_a_promotion_is_published_with_its_run_served_made_current_and_announced(
    tmp_path: Path,
    candidate: FineTuneResult,
    server: ModelServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(tmp_path / "registry")
    announced = Announced()
    promotion = promoter(server, registry, announced)
    caplog.set_level(logging.WARNING, "driftd.learning")

    async def scenario() -> str:
        run = {"data": {"recent": 360}, "evidence": {"ewma": 0.5}}
        version = await promotion.publish(candidate, None, "decay", run)
        assert server.version is None and registry.current() is None, "published, not yet served"
        await promotion.swap(version)
        await promotion.announce_swap(version, None, "decay", candidate.verdict)
        return version

    version = asyncio.run(scenario())
    info = registry.verify(version).info
    assert (
        info["source"] == "fine-tune"
        and info["trigger"] == "decay"
        and info["data"] == {"recent": 360}
    )
    assert (
        info["decay_evidence"] == {"ewma": 0.5}
        and info["gate"]["passed"] == candidate.verdict.passed
    )
    assert server.version == version and registry.current() == version
    assert announced.records == [
        (
            b"driftd",
            {
                "event": "model_promoted",
                "version": version,
                "parent": None,
                "trigger": "decay",
                "gate": json_safe(candidate.verdict.to_dict()),
                "at": 1234.0,
            },
        )
    ]
    assert f"swapped to {version} (parent None, decay): " in caplog.text


def test_a_failed_announcement_is_logged_and_the_swap_stands(
    tmp_path: Path,
    candidate: FineTuneResult,
    server: ModelServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(tmp_path / "registry")
    promotion = promoter(server, registry, Announced(fail=True))

    async def scenario() -> str:
        version = await promotion.publish(candidate, None, "manual", {"data": {}})
        await promotion.swap(version)
        await promotion.announce_swap(version, None, "manual", candidate.verdict)
        return version

    version = asyncio.run(scenario())
    assert server.version == version
    assert f"could not announce {version} on model-updates: broker unreachable" in caplog.text
    assert f"swapped to {version}" in caplog.text


def test_a_swap_waits_for_the_swap_lock(
    tmp_path: Path, candidate: FineTuneResult, server: ModelServer
) -> None:
    registry = Registry(tmp_path / "registry")
    version = registry.publish(candidate.files, parent=None, info={}).version

    async def scenario() -> None:
        promotion = promoter(server, registry, Announced())
        async with promotion.swap_lock:  # an admin activation in progress
            swap = asyncio.create_task(promotion.swap(version))
            await asyncio.sleep(0.2)
            assert not swap.done() and server.version is None
        await swap
        assert server.version == version and registry.current() == version

    asyncio.run(scenario())


def test_a_rollback_restores_the_previous_version_and_one_that_cannot_load_changes_nothing(
    tmp_path: Path,
    candidate: FineTuneResult,
    server: ModelServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(tmp_path / "registry")
    v1 = registry.publish(candidate.files, parent=None, info={}).version
    v2 = registry.publish(candidate.files, parent=v1, info={}).version
    v3 = registry.publish(candidate.files, parent=v2, info={}).version
    (registry.root / v1 / "model.int8.onnx").write_bytes(b"corrupted")
    metrics = CollectorRegistry()

    async def scenario() -> None:
        promotion = promoter(server, registry, Announced(), metrics)
        await promotion.swap(v3)
        assert not await promotion.rollback(v1, v3)
        assert server.version == v3 and registry.current() == v3
        assert metrics.get_sample_value("driftd_canary_rollbacks_total") == 0.0
        assert await promotion.rollback(v2, v3)
        assert server.version == v2 and registry.current() == v2

    asyncio.run(scenario())
    assert f"rollback to {v1} failed; {v3} keeps serving" in caplog.text
    assert metrics.get_sample_value("driftd_canary_rollbacks_total") == 1.0
    assert (
        metrics.get_sample_value("driftd_finetune_results_total", {"result": "rolled_back"}) == 1.0
    )
