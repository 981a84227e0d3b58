"""One fine-tune run on real parts (SQLite store, the spawned training child,
registry, model server): a run with too little data is skipped and waits,
one that passes the gate is promoted, and one that fails it is not."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import Settings, load_settings
from daemon.finetune_run import FineTuneRunner
from daemon.followups import FineTuneState, FollowUpPolicy
from daemon.job_builder import JobBuilder
from daemon.learning_metrics import LearningMetrics
from daemon.promoter import Promoter
from models.finetune import FineTuneResult
from models.registry import Registry
from models.serving import ModelServer
from streams.tiers import TieredStore
from tests.toy_intents import examples
from tests.unit.test_tiers import Clock, event, label, make_store, run

NOW = 1_000_000.0 + 5000


class Parts:
    """A runner wired as the learning loop wires it, with a
    real promotion (publish and swap) and the marks kept."""

    def __init__(self, tmp_path: Path, store: TieredStore, settings: Settings) -> None:
        self.registry, self.server = Registry(tmp_path / "registry"), ModelServer()
        self.metrics = CollectorRegistry()
        learning_metrics = LearningMetrics(self.metrics)
        self.followups = FollowUpPolicy(settings.learning, lambda: NOW, serving=False)
        self.promoter = Promoter(
            self.server,
            self.registry,
            asyncio.Lock(),
            self._announce,
            "model-updates",
            learning_metrics,
            lambda: NOW,
        )
        self.marks: list[tuple[str, float, str]] = []
        jobs = JobBuilder(settings, store, self.registry, lambda: NOW)
        self.runner = FineTuneRunner(
            settings.learning,
            self.server,
            self.registry,
            jobs,
            self.followups,
            learning_metrics,
            lambda: NOW,
            self._mark,
            self._promote,
        )

    def _mark(self, kind: str, at: float, label: str) -> None:
        self.marks.append((kind, at, label))

    async def _announce(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _promote(
        self, result: FineTuneResult, incumbent: str | None, trigger: str, run: dict[str, Any]
    ) -> str:
        version = await self.promoter.publish(result, incumbent, trigger, run)
        await self.promoter.swap(version)
        return version

    def result(self, name: str) -> float | None:
        return self.metrics.get_sample_value("driftd_finetune_results_total", {"result": name})


def labelled_store(tmp_path: Path, n: int) -> TieredStore:
    store = make_store(tmp_path, Clock())
    texts, intents = examples(["refund", "track", "cancel"], n, seed=5)
    events = []
    for i, (text, intent) in enumerate(zip(texts, intents, strict=False)):
        events += [
            event(2 * i, event_id=f"u{i}", text=f"{text} #{i}", ts=1_000_000.0 + i),
            label(2 * i + 1, f"u{i}", intent, ts=1_000_000.0 + i + 0.5),
        ]
    run(store.write(events))
    return store


def settings_for(tmp_path: Path, **learning: object) -> Settings:
    return load_settings(
        daemon={"data_dir": str(tmp_path)},
        learning={
            "replay_ratio": 0,
            "hygiene": False,
            "epochs": 3,
            "batch_size": 32,
            "min_labelled": 300,
            "followup_patience": 1,
            **learning,
        },
    )


def test_a_run_with_too_little_data_is_skipped_and_waits_for_the_shortfall_without_a_cooldown(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = labelled_store(tmp_path, 120)
    parts = Parts(tmp_path, store, settings_for(tmp_path))
    parts.followups.started()
    caplog.set_level(logging.WARNING, "driftd.learning")
    try:
        asyncio.run(parts.runner.run("decay", None))
    finally:
        store.close_now()
    run_record = parts.runner.last_run
    assert run_record is not None and parts.runner.history == [run_record]
    assert run_record["result"] == "skipped" and run_record["data"] == {
        "recent": 120,
        "from_replicas": 0,
    }
    assert run_record["seconds"] >= 0
    assert (
        "fine-tune (decay) skipped: 120 labelled examples, fewer than the 300 it "
        "needs (learning.min_labelled); "
        "it starts once 180 more labels arrived"
    ) in caplog.text
    assert (
        parts.followups.awaiting == ("decay", 180) and parts.followups.state is FineTuneState.IDLE
    )
    assert parts.followups.finished_at == 0.0, "a run that trained nothing starts no cooldown"
    assert (
        parts.result("skipped") == 1.0
        and parts.metrics.get_sample_value("driftd_finetune_running") == 0.0
    )
    parts.server.close(timeout=5)


def test_a_candidate_that_passes_the_gate_is_promoted_and_a_follow_up_that_fails_it_is_not(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = labelled_store(tmp_path, 700)
    # A follow-up would have to gain 100 points of holdout accuracy.
    parts = Parts(tmp_path, store, settings_for(tmp_path, followup_gate_margin=1.0))
    caplog.set_level(logging.INFO, "driftd.learning")

    async def scenario() -> None:
        parts.followups.decay_confirmed()
        parts.followups.started()
        await parts.runner.run("decay", None)
        first = parts.runner.last_run
        assert first is not None and first["result"] == "swapped", first
        assert (
            parts.server.version == first["version"]
            and parts.registry.verify(first["version"]).parent is None
        )
        assert first["progress"]["stage"] == "verdict" and first["gate"]["passed"]
        assert first["train"]["samples_per_s"] > 0
        assert parts.followups.finished_at == NOW and parts.followups.rejections == 0

        parts.followups.started()
        await parts.runner.run("followup", None)
        second = parts.runner.last_run
        assert (
            second is not None
            and second["result"] == "gate_rejected"
            and second["incumbent"] == first["version"]
        )
        assert parts.server.version == first["version"], "the incumbent keeps serving"
        assert parts.marks == [("gate_rejected", NOW, "followup")]
        assert parts.followups.followups_left == 0, (
            "followup_patience = 1: one rejection ends the episode"
        )

    try:
        asyncio.run(scenario())
    finally:
        store.close_now()
        parts.server.close(timeout=5)
    assert (
        parts.result("swapped") == 1.0
        and parts.result("gate_rejected") == 1.0
        and parts.result("failed") == 0.0
    )
    assert "fine-tune (decay) started: " in caplog.text and "gate (followup): " in caplog.text
    assert (
        parts.metrics.get_sample_value("driftd_gate_holdout_accuracy", {"model": "incumbent"})
        is not None
    )
    assert [r["result"] for r in parts.runner.history] == ["swapped", "gate_rejected"]
