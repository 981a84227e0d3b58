"""One fine-tune from start to verdict: verify the incumbent, build the job, train
and gate it in the child (``TrainerProcess``), and hand a candidate that passed to
the promotion. Every step's outcome goes in the run's record (the status route's
``last_run``) and the metrics; any failure leaves the serving model as it was."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any, Protocol

from models.finetune import FineTuneJob, FineTuneResult
from models.registry import Registry
from models.serving import ModelServer
from streams.monitor import Decision

from .config import LearningSettings
from .followups import FollowUpPolicy
from .job_builder import JobBuilder
from .learning_metrics import LearningMetrics
from .trainer import TrainerProcess, TrainingFailed

__all__ = ["FineTuneRunner", "Promote", "TimelineMark"]

log = logging.getLogger("driftd.learning")


class Promote(Protocol):
    """Publishes, swaps in and announces a candidate that
    passed the gate; returns its registry version."""

    async def __call__(
        self,
        result: FineTuneResult,
        incumbent: str | None,
        trigger: str,
        run: dict[str, Any],
    ) -> str: ...


class TimelineMark(Protocol):
    def __call__(self, kind: str, at: float, label: str) -> None: ...


class FineTuneRunner:
    def __init__(
        self,
        settings: LearningSettings,
        server: ModelServer,
        registry: Registry,
        jobs: JobBuilder,
        followups: FollowUpPolicy,
        metrics: LearningMetrics,
        clock: Callable[[], float],
        mark: TimelineMark,
        promote: Promote,
    ) -> None:
        self.settings = settings
        self.server = server
        self.registry = registry
        self.jobs = jobs
        # told what a run found: too little data, the gate's verdict, its end
        self.followups = followups
        self.metrics = metrics
        self.clock = clock
        self.mark = mark
        self.promote = promote
        self.trainer = TrainerProcess(
            settings.threads, settings.distributed_processes, settings.distributed_backend
        )
        self.last_run: dict[str, Any] | None = None
        # one entry per fine-tune, for the status route and tests
        self.history: list[dict[str, Any]] = []

    def reconfigure(self, settings: LearningSettings) -> None:
        """New [learning] settings for the next run; a running one keeps its child's."""
        self.settings = settings
        self.trainer.threads = settings.threads
        self.trainer.processes, self.trainer.backend = (
            settings.distributed_processes,
            settings.distributed_backend,
        )

    async def run(self, trigger: str, decision: Decision | None) -> None:
        started = time.monotonic()
        run: dict[str, Any] = {
            "trigger": trigger,
            "started_at": self.clock(),
            "incumbent": self.server.version,
            "evidence": decision.evidence if decision else None,
        }
        self.last_run = run
        try:
            await self._steps(trigger, run)
        except asyncio.CancelledError:
            run["result"] = "cancelled"
            raise
        except Exception as exc:
            log.exception("fine-tune failed unexpectedly; %s keeps serving", self.server.version)
            run.update(result="failed", reason="error", detail=repr(exc))
            self.metrics.results.labels("failed").inc()
            self.metrics.failures.labels("error").inc()
        finally:
            run["seconds"] = round(time.monotonic() - started, 2)
            self.metrics.duration.observe(time.monotonic() - started)
            self.metrics.running.set(0)
            self.history.append(run)
            self.followups.finished(trained=run.get("result") != "skipped")

    async def _steps(self, trigger: str, run: dict[str, Any]) -> None:
        incumbent = self.server.version
        # all its files: the swap hashed only what it serves, the warm start reads the rest
        if incumbent is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.registry.verify, incumbent)
        job, counts = await self.jobs.build(incumbent, trigger)
        run["data"] = counts
        if job is None:
            needed = self.jobs.min_examples(incumbent)
            log.warning(
                "fine-tune (%s) skipped: %d labelled examples, fewer than the %d "
                "it needs (%s); "
                "it starts once %d more labels arrived",
                trigger,
                counts["recent"],
                needed,
                self.jobs.min_examples_reason(incumbent),
                needed - counts["recent"],
            )
            run["result"] = "skipped"
            self.metrics.results.labels("skipped").inc()
            self.followups.skipped(trigger, needed - counts["recent"])
            return
        log.warning(
            "fine-tune (%s) started: %d training examples (%d recent + %d replay), "
            "holdout %d, "
            "replay check %d; incumbent %s",
            trigger,
            counts["train"],
            counts["train_recent"],
            counts["train_replay"],
            counts["holdout"],
            counts["replay_eval"],
            incumbent,
        )
        # The child writes the candidate's files here (next to the registry,
        # swept if we crash): only their paths come back, and publishing
        # streams them, so the model bytes never enter this heap.
        job.output_dir = str(self.registry.staging_dir())
        try:
            await self._train_judge_promote(job, incumbent, trigger, run)
        finally:
            shutil.rmtree(job.output_dir, ignore_errors=True)

    async def _train_judge_promote(
        self,
        job: FineTuneJob,
        incumbent: str | None,
        trigger: str,
        run: dict[str, Any],
    ) -> None:
        try:
            result = await self.trainer.run(job, self.settings.timeout_s, self._on_progress)
        except TrainingFailed as exc:
            log.error("fine-tune (%s) failed, %s keeps serving: %s", trigger, incumbent, exc)
            run.update(result="failed", reason=exc.reason, detail=exc.detail[:2000])
            self.metrics.results.labels("failed").inc()
            self.metrics.failures.labels(exc.reason).inc()
            return
        verdict = result.verdict
        run.update(gate=verdict.to_dict(), train=result.report)
        self.metrics.samples_per_s.set(result.report["samples_per_s"])
        self.metrics.gate_accuracy.labels("candidate").set(verdict.candidate_holdout)
        if verdict.incumbent_holdout is not None:
            self.metrics.gate_accuracy.labels("incumbent").set(verdict.incumbent_holdout)
        log.warning("gate (%s): %s", trigger, verdict.describe())
        if not verdict.passed:
            run["result"] = "gate_rejected"
            self.metrics.results.labels("gate_rejected").inc()
            self.mark("gate_rejected", self.clock(), trigger)
            self.followups.gate_rejected(trigger)
            return
        self.followups.gate_passed()
        version = await self.promote(result, incumbent, trigger, run)
        run.update(result="swapped", version=version)
        self.metrics.results.labels("swapped").inc()

    def _on_progress(self, update: dict[str, Any]) -> None:
        stage = update.get("stage")
        if stage == "epoch":
            self.metrics.progress.set(update["epoch"] / max(1, update["epochs"]))
            extra = ""
            if "val_loss" in update:
                extra = (
                    f", validation loss {update['val_loss']:.4f}, accuracy "
                    f"{update['val_accuracy']:.4f}"
                )
            log.info(
                "fine-tune epoch %d/%d: loss %.4f, %.0f samples/s%s",
                update["epoch"],
                update["epochs"],
                update["loss"],
                update["samples_per_s"],
                extra,
            )
        elif stage == "hygiene":
            removed = {k: v for k, v in update["removed"].items() if v}
            log.info(
                "fine-tune data hygiene: kept %d, removed %s, truncated %d",
                update["kept"],
                removed,
                update["truncated"],
            )
        elif stage == "pseudo_labels":
            log.info(
                "fine-tune pseudo-labels: %d of %d unlabelled utterances at confidence >= %s "
                "(calibrated on %d validation labels for precision %s)",
                update["used"],
                update["unlabelled"],
                update["threshold"],
                update["calibration_examples"],
                update["precision_wanted"],
            )
        elif stage in ("exporting", "gating"):
            log.info("fine-tune: %s", stage)
        if self.last_run is not None:
            self.last_run["progress"] = update
