"""Fine-tuning under torchrun (DDP, gloo, 2 CPU processes): real launcher, real workers, no mocks.

A warm start on CLINC150 (an incumbent on two domains learns a third) runs once in one process and
once in two; both candidates must pass the same gate and score alike on the holdout. Then each way
a distributed run can end badly: a worker error, a diverging loss, a killed launcher, a timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from daemon.trainer import TrainerProcess, TrainingFailed
from models.export import build_version_files
from models.finetune import FineTuneJob, FineTuneResult
from models.gate import GateSettings
from models.registry import Registry
from models.train import TrainSettings, train_classifier
from streams.datasets import groups, load_examples
from tests.toy_intents import examples

GATE = GateSettings(margin=0.005, forgetting_epsilon=0.03)


def pairs(items: list) -> tuple[list[str], list[str]]:
    return [e.text for e in items], [e.intent for e in items]


@pytest.fixture(scope="module")
def clinc_job(tmp_path_factory: pytest.TempPathFactory) -> FineTuneJob:
    """An incumbent on banking + travel, published to a registry; the job adds the home domain."""
    domains = groups("clinc150")
    old, new = {i for d in ("banking", "travel") for i in domains[d]}, set(domains["home"])
    train, val, test = (load_examples("clinc150", split) for split in ("train", "val", "test"))
    seed = [e for e in train if e.intent in old]
    result = train_classifier(*pairs(seed), settings=TrainSettings(epochs=5, batch_size=256))
    files, _ = build_version_files(
        result.model, result.featurizer, result.labels, [e.text for e in seed[::50]][:64]
    )
    registry = Registry(tmp_path_factory.mktemp("ddp") / "registry")
    version = registry.publish(files, parent=None, info={"source": "test seed"}).version
    rng = random.Random(0)
    fresh = [e for e in train if e.intent in new]
    rng.shuffle(fresh)
    return FineTuneJob(
        # replay first, then what is new (oldest first)
        train=pairs(rng.sample(seed, 1200) + fresh),
        holdout=pairs([e for e in test if e.intent in old | new]),
        replay_eval=pairs([e for e in val if e.intent in old]),
        incumbent_dir=str(registry.root / version),
        settings=TrainSettings(epochs=6, batch_size=64),
        gate=GATE,
    )


def toy_job(incumbent_dir: str | None = None, **settings: object) -> FineTuneJob:
    return FineTuneJob(
        train=examples(["refund", "track", "cancel"], 300, 0),
        holdout=examples(["refund", "track", "cancel"], 80, 1),
        replay_eval=([], []),
        incumbent_dir=incumbent_dir,
        settings=TrainSettings(**{"epochs": 3, "batch_size": 32, **settings}),
        gate=GateSettings(min_holdout=50),
    )


def run(
    trainer: TrainerProcess, job: FineTuneJob, timeout_s: float = 120
) -> tuple[FineTuneResult, list[dict]]:
    progress: list[dict] = []
    result = asyncio.run(trainer.run(job, timeout_s, progress.append))
    assert trainer.pid is None
    return result, progress


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def run_watching_workers(
    trainer: TrainerProcess,
    job: FineTuneJob,
    timeout_s: float,
    kill_after_first_epoch: bool = False,
) -> tuple[set[int], BaseException | None]:
    """Run, noting torchrun's workers as they appear;
    optionally SIGKILL torchrun once they train."""
    progress: list[dict] = []
    task = asyncio.ensure_future(trainer.run(job, timeout_s, progress.append))
    workers: set[int] = set()
    while not task.done():
        if trainer.pid is not None:
            workers |= children(trainer.pid)
            if kill_after_first_epoch and any(p["stage"] == "epoch" for p in progress):
                os.kill(trainer.pid, signal.SIGKILL)
                kill_after_first_epoch = False
        await asyncio.sleep(0.1)
    return workers, task.exception()


def assert_gone(pids: set[int], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "torchrun workers outlived the launcher"


def test_two_gloo_workers_pass_the_same_gate_as_one_process(clinc_job: FineTuneJob) -> None:
    started = time.monotonic()
    single, _ = run(TrainerProcess(processes=1), clinc_job)
    single_s = time.monotonic() - started
    started = time.monotonic()
    ddp, progress = run(TrainerProcess(processes=2, backend="gloo"), clinc_job)
    ddp_s = time.monotonic() - started
    for name, result, seconds in (("1 process", single, single_s), ("2 gloo workers", ddp, ddp_s)):
        r = result.report
        print(
            f"{name}: {result.verdict.describe()}; {r['epochs_run']} epochs, "
            f"{r['samples_per_s']} samples/s, {seconds:.1f}s wall"
        )
    assert single.verdict.passed, single.verdict.describe()
    assert ddp.verdict.passed, ddp.verdict.describe()
    assert single.verdict.settings == ddp.verdict.settings
    assert abs(single.verdict.candidate_holdout - ddp.verdict.candidate_holdout) <= 0.03
    assert (single.report["world_size"], single.report["backend"]) == (1, None)
    assert (ddp.report["world_size"], ddp.report["backend"]) == (2, "gloo")
    assert ddp.report["new_labels"] == sorted(groups("clinc150")["home"]) and set(ddp.files) == set(
        single.files
    )
    stages = [p["stage"] for p in progress]
    assert stages[0] == "training" and "epoch" in stages and stages[-1] == "verdict"


def test_a_failing_worker_is_reported_with_its_error_not_a_hang(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-version"
    started = time.monotonic()
    with pytest.raises(TrainingFailed) as failure:
        run(TrainerProcess(processes=2, backend="gloo"), toy_job(str(missing)), timeout_s=90)
    assert failure.value.reason == "error"
    assert "FileNotFoundError" in failure.value.detail and str(missing) in failure.value.detail
    assert time.monotonic() - started < 60


def test_a_diverging_loss_stops_every_rank_and_is_reported_as_diverged() -> None:
    with pytest.raises(TrainingFailed) as failure:
        run(TrainerProcess(processes=2, backend="gloo"), toy_job(lr=1e30, clip_norm=0.0))
    assert (
        failure.value.reason == "diverged"
        and "loss is" in failure.value.detail
        and "2 ranks" in failure.value.detail
    )


def test_a_killed_launcher_is_a_crash_and_takes_its_workers_down() -> None:
    trainer = TrainerProcess(processes=2, backend="gloo")
    workers, error = asyncio.run(
        run_watching_workers(
            trainer, toy_job(epochs=10_000, patience=10_000), 120, kill_after_first_epoch=True
        )
    )
    assert (
        isinstance(error, TrainingFailed) and error.reason == "crashed" and "-9" in error.detail
    ), error
    assert len(workers) == 2 and trainer.pid is None
    assert_gone(workers)


def test_a_timeout_kills_torchrun_and_its_workers() -> None:
    trainer = TrainerProcess(processes=2, backend="gloo")
    workers, error = asyncio.run(
        run_watching_workers(trainer, toy_job(epochs=10_000, patience=10_000), 6)
    )
    assert isinstance(error, TrainingFailed) and error.reason == "timeout", error
    assert_gone(workers)
