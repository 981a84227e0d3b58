"""The fine-tune child process: a real spawned interpreter
running a real job, and each way it can end."""

from __future__ import annotations

import asyncio

import pytest

from daemon.trainer import TrainerProcess, TrainingFailed
from models.finetune import FineTuneJob
from models.gate import GateSettings
from models.train import TrainSettings
from tests.toy_intents import examples


def pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    return examples(["refund", "track", "cancel"], n, seed)


def job(**settings: object) -> FineTuneJob:
    return FineTuneJob(
        train=pairs(300, 0),
        holdout=pairs(80, 1),
        replay_eval=([], []),
        incumbent_dir=None,
        settings=TrainSettings(**{"epochs": 5, "batch_size": 32, **settings}),
        gate=GateSettings(min_holdout=50),
    )


def run(j: FineTuneJob, timeout_s: float = 120) -> tuple[object, list[dict]]:
    progress: list[dict] = []
    trainer = TrainerProcess()
    result = asyncio.run(trainer.run(j, timeout_s, progress.append))
    assert trainer.pid is None  # cleared once the child is gone
    return result, progress


def test_a_job_runs_in_a_child_and_returns_files_and_a_verdict() -> None:
    result, progress = run(job())
    assert result.verdict.passed, result.verdict.describe()
    assert result.verdict.candidate_holdout >= 0.95 and result.verdict.incumbent_holdout is None
    assert {
        "model.int8.onnx",
        "model.int8.weights",
        "model.onnx",
        "labels.json",
        "model.pt",
        "probe.json",
        "featurizer.json",
    } <= set(result.files)
    stages = [p["stage"] for p in progress]
    assert stages[0] == "training" and "epoch" in stages and stages[-1] == "verdict"


def test_with_an_output_dir_the_files_come_back_as_paths_and_publish_as_written(tmp_path) -> None:
    """The daemon's way: the model bytes stay in the
    child and on disk; the registry streams them in."""
    from pathlib import Path

    from models.registry import Registry

    j = job()
    j.output_dir = str(tmp_path / "staging")
    result, _ = run(j)
    assert result.files and all(
        isinstance(p, Path) and p.parent == tmp_path / "staging" and p.stat().st_size > 0
        for p in result.files.values()
    )
    registry = Registry(tmp_path / "registry")
    manifest = registry.publish(result.files, parent=None, info={})
    assert (
        registry.verify(manifest.version).files["model.int8.onnx"]["bytes"]
        == result.files["model.int8.onnx"].stat().st_size
    )


def test_a_diverging_loss_is_reported_as_diverged() -> None:
    with pytest.raises(TrainingFailed) as failure:
        run(job(lr=1e30, clip_norm=0.0))
    assert failure.value.reason == "diverged" and "loss is" in failure.value.detail


def test_a_job_past_its_timeout_is_killed() -> None:
    with pytest.raises(TrainingFailed) as failure:
        run(job(epochs=10_000), timeout_s=3)
    assert failure.value.reason == "timeout"


def test_a_child_that_dies_is_reported_as_crashed() -> None:
    import os
    import signal

    async def kill_when_started() -> None:
        trainer = TrainerProcess()
        task = asyncio.ensure_future(trainer.run(job(epochs=10_000), 120, lambda p: None))
        while trainer.pid is None:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        os.kill(trainer.pid, signal.SIGKILL)
        await task

    with pytest.raises(TrainingFailed) as failure:
        asyncio.run(kill_when_started())
    assert failure.value.reason == "crashed" and "-9" in failure.value.detail


def test_a_big_job_does_not_hold_the_event_loop_while_the_child_starts() -> None:
    """The child reads its job only after its interpreter has started and
    imported torch; a job bigger than a pipe's buffer, written from the event
    loop's thread, held the loop (and /metrics, ingest...) for all that time.
    A heartbeat every 10 ms must keep beating while the job goes over."""
    texts, intents = pairs(300, 0)
    # ~10 MB of training text in all, trimmed away by the fine-tune's hygiene
    padding = " ".join(["filler"] * 4000)
    big = FineTuneJob(
        train=([t + " " + padding for t in texts] * 8, intents * 8),
        holdout=pairs(80, 1),
        replay_eval=([], []),
        incumbent_dir=None,
        settings=TrainSettings(epochs=1, batch_size=64),
        gate=GateSettings(min_holdout=50),
    )
    gaps: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def heartbeat() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - last)
                last = loop.time()

        beating = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0.05)  # beating before the trainer starts
        try:
            await TrainerProcess().run(big, 120, lambda update: None)
        finally:
            beating.cancel()

    asyncio.run(scenario())
    # A blocked loop misses beats for the child's whole
    # start-up (seconds); a free one misses none for long.
    assert max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.2f} s"
