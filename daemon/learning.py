"""The learning loop: outcomes -> decay decision -> fine-tune (child) -> gate -> register -> announce -> swap -> canary.

``LearningLoop.observe_batch`` is called by ingest after each stored batch, with the predictions it
made. It joins labels and feedback to the predictions they refer to (``OutcomeJoiner``), feeds the
outcomes of the serving version and every prediction to the ``DecayMonitor``, and when the policy
confirms decay (or an operator asks) starts at most one fine-tune, in a child process
(``TrainerProcess``), on the recent labelled events plus a replay sample from cold.

A candidate that passes the gate is published to the registry, announced on ``model-updates``,
and hot-swapped; the detectors then restart on the new model. After a decay, follow-up retrains run
each time ``followup_labels`` new labels have arrived, while each one passes the gate: the first
fine-tune sees few examples of what changed, the follow-ups catch up as labels accumulate. A canary
watches the first ``canary_labels`` outcomes of a new version and rolls back to the previous one if
it does worse than that one did. Any failure (diverged loss, crash, timeout, rejection) leaves the
serving model as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.finetune import FineTuneJob, FineTuneResult
from models.gate import GateSettings
from models.hygiene import HygieneSettings, cap_per_class
from models.pseudo import PseudoLabelSettings
from models.registry import Registry
from models.serving import ModelServer
from models.train import TrainSettings
from models.withhold import newest_spread
from streams.jsonsafe import json_safe
from streams.monitor import DecayMonitor, Decision, MonitorMetrics, Outcome, OutcomeJoiner
from streams.tiers import StoredEvent, TieredStore
from streams.training_set import LabelledExample, labelled_examples, merge_recent, query_recent, query_replay, query_unlabelled

from .config import Settings
from .model_loader import model_loader
from .model_service import encoder_source
from .timeline import TimelineRecorder
from .trainer import FAILURE_REASONS, TrainerProcess, TrainingFailed

__all__ = ["LearningLoop", "LearningMetrics"]

log = logging.getLogger("driftd.learning")
Announce = Callable[[bytes, bytes], Awaitable[Any]]
_GATE_MIN_HOLDOUT = GateSettings().min_holdout
FINETUNE_RESULTS = ("swapped", "gate_rejected", "failed", "skipped", "rolled_back")
TRIGGERS = ("decay", "followup", "manual", "cold_start")  # cold_start: no model serves and enough labels arrived


class LearningMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("driftd_finetune_runs_total", "Fine-tunes by trigger (decay, followup, manual, cold_start).", ["trigger"], registry=registry)
        self.results = Counter("driftd_finetune_results_total", "Fine-tune outcomes: swapped, gate_rejected, failed, skipped (too little data).", ["result"], registry=registry)
        self.failures = Counter("driftd_finetune_failures_total", "Failed fine-tunes by reason (diverged, crashed, timeout, error); the incumbent kept serving.", ["reason"], registry=registry)
        self.running = Gauge("driftd_finetune_running", "1 while a fine-tune child runs.", registry=registry)
        self.progress = Gauge("driftd_finetune_progress_ratio", "Epochs done / planned of the running fine-tune.", registry=registry)
        self.duration = Histogram("driftd_finetune_duration_seconds", "Wall time of a fine-tune, from the data query to the verdict.", buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1800), registry=registry)
        self.samples_per_s = Gauge("driftd_finetune_samples_per_second", "Training throughput of the last fine-tune.", registry=registry)
        self.gate_accuracy = Gauge("driftd_gate_holdout_accuracy", "Holdout accuracy in the last gate, by model (candidate, incumbent).", ["model"], registry=registry)
        self.rollbacks = Counter("driftd_canary_rollbacks_total", "Automatic rollbacks after a failed canary.", registry=registry)
        self.labels_waiting = Gauge(
            "driftd_finetune_labels_waiting",
            "Labels a fine-tune is waiting for: the first model's (no model serves) or the shortfall of one skipped for too little data; 0 when none waits.",
            registry=registry,
        )
        for trigger in TRIGGERS:
            self.runs.labels(trigger)
        for result in FINETUNE_RESULTS:
            self.results.labels(result)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)


class LearningLoop:
    def __init__(
        self,
        settings: Settings,
        store: TieredStore,
        server: ModelServer,
        registry: Registry,
        metrics_registry: CollectorRegistry,
        announce: Announce,
        swap_lock: asyncio.Lock,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.learning = settings.learning
        self.store = store
        self.server = server
        self.registry = registry
        self.announce = announce
        self.swap_lock = swap_lock
        self.clock = clock
        self.metrics = LearningMetrics(metrics_registry)
        self.monitor_metrics = MonitorMetrics(metrics_registry)
        self.monitor = DecayMonitor(settings.monitor.to_config(), self.monitor_metrics, clock=clock)
        self.joiner = OutcomeJoiner(horizon_s=settings.monitor.label_horizon_s, clock=clock)
        self.timeline = TimelineRecorder(window=200)
        self.trainer = TrainerProcess(self.learning.threads, self.learning.distributed_processes, self.learning.distributed_backend)
        self.state = "idle"
        self.last_decision: Decision | None = None
        self.last_run: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []  # one entry per fine-tune, for the status route and tests
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._finished_at = 0.0
        self._followups_left = 0
        self._followup_rejections = 0
        self._labels_since_swap = 0
        self._labels_since_start = 0  # labelled outcomes since the last fine-tune took its data
        self._last_label_at = 0.0
        self._monitored_version: str | None = None
        self._recent_correct: deque[bool] = deque(maxlen=max(1, self.learning.canary_labels))
        self._canary: dict[str, Any] | None = None
        self._outcomes = 0
        # A fine-tune that needs more labels first: (trigger, labels since the last start it waits for).
        # Set for the first model (no model serves) and after a run skipped for too little data.
        self._awaiting: tuple[str, int] | None = None
        self._labels_without_model = 0  # labelled examples stored while no model served, since the last start
        if server.version is None:
            self._awaiting = ("cold_start", self.learning.min_labelled)
        # Replicas (daemon.cluster): whether this one trains, how a follower forwards its decisions and
        # labelled examples to the trainer, and the examples the trainer got from the others' partitions.
        self.is_trainer: Callable[[], bool] = lambda: True
        self.forward: Callable[[str, Any], None] | None = None
        self._peer_examples: deque[LabelledExample] = deque(maxlen=self.learning.max_examples)

    # -- the ingest hook ---------------------------------------------------------------------------

    def observe_batch(self, events: Sequence[StoredEvent], predicted: Sequence[tuple[StoredEvent, dict[str, Any]]]) -> None:
        """Called once per stored batch, in the event loop: cheap dictionary and detector updates only."""
        self._follow_serving_version()
        if self.server.version is None and (examples := labelled_examples(events)):
            # No model, so no outcome: count the labels themselves, for the first model and its follow-ups.
            self._labels_without_model += len(examples)
            self._labels_since_start += len(examples)
            self._last_label_at = self.clock()
        for event, prediction in predicted:
            decision = self.monitor.observe_prediction(prediction["confidence"], prediction["intent"])
            if decision is not None:
                self._on_decision(decision)
            outcome = self.joiner.record_prediction(event.event_id, prediction["intent"], prediction["confidence"], prediction["model_version"], event.ts)
            if outcome is not None:
                self._on_outcome(outcome)
        for event in events:
            if event.type in ("label", "feedback") and event.ref_event_id:
                outcome = self.joiner.record_label(event.ref_event_id, intent=event.intent, correct=event.correct, ts=event.ts)
                if outcome is not None:
                    self._on_outcome(outcome)
        self.monitor_metrics.sync_joiner(self.joiner.counts)
        if self.forward is not None and not self.is_trainer() and (examples := labelled_examples(events)):
            self.forward("examples", examples)  # the trainer learns from every replica's partitions
        self._maybe_start_awaited()

    def add_peer_examples(self, examples: Sequence[LabelledExample]) -> None:
        """Labelled examples another replica stored (the trainer only): training data, and follow-up progress."""
        self._peer_examples.extend(examples)
        self._labels_since_start += len(examples)
        if self.server.version is None:
            self._labels_without_model += len(examples)
        self._last_label_at = self.clock()
        self._maybe_followup()
        self._maybe_start_awaited()

    def receive_decision(self, decision: Decision) -> None:
        """A decay decision another replica forwarded: the trainer acts on it as on its own."""
        self._on_decision(decision)

    def _follow_serving_version(self) -> None:
        """A version swapped in by anyone (admin API, rollback, this loop) restarts the detectors."""
        version = self.server.version
        if version != self._monitored_version:
            self._monitored_version = version
            model = self.server.model
            self.monitor.reset(model_version=version, labels=None if model is None else model.labels)
            self._recent_correct.clear()
            if version is None:
                self._awaiting = ("cold_start", self.learning.min_labelled)
            elif self._awaiting is not None and self._awaiting[0] == "cold_start":
                self._awaiting = None  # a model serves now (activated, synced or trained)

    def _on_outcome(self, outcome: Outcome) -> None:
        self._outcomes += 1
        self._labels_since_start += 1  # new training data, whichever version it judged
        self._last_label_at = self.clock()
        self.timeline.add_outcome(outcome.correct, self._outcomes, outcome.labelled_at, outcome.model_version)
        if outcome.model_version != self._monitored_version:
            return  # a prediction of a replaced version says nothing about the one serving now
        self._recent_correct.append(outcome.correct)
        self._labels_since_swap += 1
        decision = self.monitor.observe_outcome(outcome)
        if decision is not None:
            self._on_decision(decision)
        if self._canary is not None:
            self._canary_step(outcome)
        self._maybe_followup()

    def _maybe_followup(self) -> None:
        """Retrain once ``followup_labels`` labels arrived after the last fine-tune took its data."""
        if self._followups_left > 0 and self._labels_since_start >= self.learning.followup_labels and self.state == "idle" and self.is_trainer():
            self._followups_left -= 1
            self._start("followup", None)

    def _maybe_start_awaited(self) -> None:
        """Start the fine-tune that waits for labels (the first model, or one skipped for too little data)."""
        awaiting = self._awaiting
        if awaiting is None:
            self.metrics.labels_waiting.set(0)
            return
        trigger, needed = awaiting
        have = self._awaited_labels(trigger)
        self.metrics.labels_waiting.set(max(0, needed - have))
        if have < needed or self.state != "idle" or not self.is_trainer() or not self.learning.enabled:
            return
        if self.clock() - self._finished_at < self.learning.cooldown_s:
            return
        if trigger == "cold_start":
            log.warning("no model serves and %d labels arrived (learning.min_labelled = %d): training the first model", have, self.learning.min_labelled)
            self._followups_left = self.learning.max_followups if self.learning.followup_labels > 0 else 0
            self._followup_rejections = 0
        self._awaiting = None
        self.metrics.labels_waiting.set(0)
        self._start(trigger, None)

    def _awaited_labels(self, trigger: str) -> int:
        return self._labels_without_model if trigger == "cold_start" else self._labels_since_start

    def _episode_labels_waiting(self) -> bool:
        """A decay episode still has follow-ups, and enough labels came since the last one for a quiet-stream retrain."""
        return self.learning.followup_quiet_s > 0 and self._followups_left > 0 and self._labels_since_start >= max(1, self.learning.followup_labels // 4)

    def settle(self) -> None:
        """Timer hook: when the labels stop, learn the episode's last ones instead of leaving them unlearned, and
        start a waiting run whose labels came during the cooldown (no new label would start it otherwise)."""
        self._maybe_start_awaited()
        if self.state == "idle" and self.is_trainer() and self._episode_labels_waiting() and self.clock() - self._last_label_at >= self.learning.followup_quiet_s:
            log.info("no label for %.0f s; retraining on the %d labels since the last fine-tune", self.clock() - self._last_label_at, self._labels_since_start)
            self._followups_left -= 1
            self._start("followup", None)

    def _on_decision(self, decision: Decision) -> None:
        self.last_decision = decision
        self.timeline.mark("detection", self._outcomes, decision.at, ",".join(decision.signals))
        if not self.learning.enabled:
            log.warning("decay confirmed, learning.enabled is off: no fine-tune (%s)", decision.describe())
            return
        if not self.is_trainer():
            if self.forward is not None:
                log.warning("decay confirmed, forwarded to the trainer replica: %s", decision.describe())
                self.forward("decision", decision)
            return
        since = self.clock() - self._finished_at
        if self.state != "idle":
            log.info("decay confirmed while a fine-tune runs; it will be judged on newer data")
            return
        if since < self.learning.cooldown_s:
            log.info("decay confirmed %.0fs after the last fine-tune, inside learning.cooldown_s=%.0f: not retraining yet", since, self.learning.cooldown_s)
            return
        self._followups_left = self.learning.max_followups if self.learning.followup_labels > 0 else 0
        self._followup_rejections = 0
        self._start("decay", decision)

    # -- triggering --------------------------------------------------------------------------------

    def request(self, trigger: str = "manual") -> tuple[bool, str]:
        """Manual trigger (admin API, CLI): starts unless one runs already; ignores the cooldown."""
        if self.state != "idle":
            return False, f"a fine-tune is already running (pid {self.trainer.pid})"
        if not self.is_trainer():
            return False, f"this replica is not the trainer (learning.role = {self.learning.role}): ask the trainer replica"
        self._start(trigger, None)
        return True, "fine-tune started"

    def _start(self, trigger: str, decision: Decision | None) -> None:
        self.state = "training"
        self._labels_since_start = 0
        self._labels_without_model = 0
        self.metrics.runs.labels(trigger).inc()
        self.metrics.running.set(1)
        self.metrics.progress.set(0)
        self.timeline.mark("training_started", self._outcomes, self.clock(), trigger)
        self._task = asyncio.get_running_loop().create_task(self._fine_tune(trigger, decision), name=f"driftd-finetune-{trigger}")

    async def _fine_tune(self, trigger: str, decision: Decision | None) -> None:
        started = time.monotonic()
        run: dict[str, Any] = {"trigger": trigger, "started_at": self.clock(), "incumbent": self.server.version, "evidence": decision.evidence if decision else None}
        self.last_run = run
        try:
            await self._fine_tune_steps(trigger, run)
        except asyncio.CancelledError:
            run["result"] = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - nothing a fine-tune does may take the daemon down
            log.exception("fine-tune failed unexpectedly; %s keeps serving", self.server.version)
            run.update(result="failed", reason="error", detail=repr(exc))
            self.metrics.results.labels("failed").inc()
            self.metrics.failures.labels("error").inc()
        finally:
            run["seconds"] = round(time.monotonic() - started, 2)
            self.metrics.duration.observe(time.monotonic() - started)
            self.metrics.running.set(0)
            self.history.append(run)
            if run.get("result") != "skipped":  # the cooldown spaces trainings; a skipped run trained nothing
                self._finished_at = self.clock()
            self.state = "idle"
            if trigger != "manual" and not self._stopping:
                self._maybe_followup()  # labels that arrived while it trained may already warrant the next one

    async def _fine_tune_steps(self, trigger: str, run: dict[str, Any]) -> None:
        incumbent = self.server.version
        if incumbent is not None:  # every file hashed: its swap hashed only what it serves, the warm start reads the rest
            await asyncio.get_running_loop().run_in_executor(None, self.registry.verify, incumbent)
        job, counts = await self._build_job(incumbent, trigger)
        run["data"] = counts
        if job is None:
            needed = self._min_examples(incumbent)
            log.warning("fine-tune (%s) skipped: %d labelled examples, fewer than the %d it needs (%s); it starts once %d more labels arrived",
                        trigger, counts["recent"], needed, self._min_examples_reason(incumbent), needed - counts["recent"])
            run["result"] = "skipped"
            self.metrics.results.labels("skipped").inc()
            if trigger != "manual":
                self._awaiting = (trigger, needed - counts["recent"])
            return
        log.warning("fine-tune (%s) started: %d training examples (%d recent + %d replay), holdout %d, replay check %d; incumbent %s",
                    trigger, counts["train"], counts["train_recent"], counts["train_replay"], counts["holdout"], counts["replay_eval"], incumbent)
        # The child writes the candidate's files here (next to the registry, swept if we crash): only
        # their paths come back, and publishing streams them, so the model bytes never enter this heap.
        job.output_dir = str(self.registry.staging_dir())
        try:
            await self._train_judge_promote(job, incumbent, trigger, run)
        finally:
            shutil.rmtree(job.output_dir, ignore_errors=True)

    async def _train_judge_promote(self, job: FineTuneJob, incumbent: str | None, trigger: str, run: dict[str, Any]) -> None:
        try:
            result = await self.trainer.run(job, self.learning.timeout_s, self._on_progress)
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
            self.timeline.mark("gate_rejected", self._outcomes, self.clock(), trigger)
            if trigger == "followup":
                self._followup_rejections += 1
                if self._followup_rejections >= self.learning.followup_patience:
                    self._followups_left = 0  # no longer improving: recovered as far as the data allows
            return
        self._followup_rejections = 0
        version = await self._promote(result, incumbent, trigger, run)
        run.update(result="swapped", version=version)
        self.metrics.results.labels("swapped").inc()

    def _on_progress(self, update: dict[str, Any]) -> None:
        stage = update.get("stage")
        if stage == "epoch":
            self.metrics.progress.set(update["epoch"] / max(1, update["epochs"]))
            extra = f", validation loss {update['val_loss']:.4f}, accuracy {update['val_accuracy']:.4f}" if "val_loss" in update else ""
            log.info("fine-tune epoch %d/%d: loss %.4f, %.0f samples/s%s", update["epoch"], update["epochs"], update["loss"], update["samples_per_s"], extra)
        elif stage == "hygiene":
            log.info("fine-tune data hygiene: kept %d, removed %s, truncated %d", update["kept"], {k: v for k, v in update["removed"].items() if v}, update["truncated"])
        elif stage == "pseudo_labels":
            log.info("fine-tune pseudo-labels: %d of %d unlabelled utterances at confidence >= %s (calibrated on %d validation labels for precision %s)",
                     update["used"], update["unlabelled"], update["threshold"], update["calibration_examples"], update["precision_wanted"])
        elif stage in ("exporting", "gating"):
            log.info("fine-tune: %s", stage)
        if self.last_run is not None:
            self.last_run["progress"] = update

    # -- data ----------------------------------------------------------------------------------------

    async def _build_job(self, incumbent: str | None, trigger: str) -> tuple[FineTuneJob | None, dict[str, int]]:
        cfg = self.learning
        now = self.clock()
        recent = await query_recent(self.store, now - cfg.window_s, now + 366 * 86400, cfg.max_examples)
        if self._peer_examples:  # the other replicas' partitions
            recent = merge_recent(recent, self._peer_examples, now - cfg.window_s, now + 366 * 86400, cfg.max_examples)
        counts = {"recent": len(recent), "from_replicas": sum(1 for e in recent if e.source == "replica")}
        if len(recent) < self._min_examples(incumbent):
            return None, counts
        held = newest_spread([e.utterance_id for e in recent], cfg.holdout_fraction, cfg.holdout_span, salt="holdout")  # ascending
        holdout = [recent[i] for i in held]
        kept_out = set(held)
        train_recent = [e for i, e in enumerate(recent) if i not in kept_out]
        replay: list[LabelledExample] = []
        if cfg.replay_ratio > 0:
            replay = await query_replay(self.store, int(len(train_recent) * cfg.replay_ratio), int(now), {e.utterance_id for e in recent}, cfg.replay_scan_rows)
        n_eval = int(len(replay) * cfg.replay_eval_fraction)
        replay_eval, replay_train = replay[:n_eval], replay[n_eval:]
        replay_train, counts["replay_capped"] = _cap_replay(replay_train, cfg.replay_class_cap)
        train = replay_train + train_recent  # oldest first: the fine-tune validates on the newest
        unlabelled: list[str] = []
        if cfg.pseudo_labels:  # candidates only: the child keeps those its calibrated threshold allows
            unlabelled = await query_unlabelled(self.store, now - cfg.window_s, now + 366 * 86400, int(len(train_recent) * cfg.pseudo_label_ratio), {e.utterance_id for e in recent})
        counts.update(train=len(train), train_recent=len(train_recent), train_replay=len(replay_train), holdout=len(holdout), replay_eval=len(replay_eval), unlabelled=len(unlabelled))
        settings = TrainSettings(
            epochs=cfg.epochs, head_epochs=cfg.encoder_head_epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=int(now) % 10_000, patience=cfg.patience,
            warmup_ratio=cfg.warmup_ratio, accumulation_steps=cfg.accumulation_steps, clip_norm=cfg.clip_norm,
            device=cfg.device, precision=cfg.precision, curriculum=cfg.curriculum,
            trainable_layers=cfg.encoder_trainable_layers, cache_dir=str(self.settings.embedding_cache_dir),
        )
        # A follow-up's incumbent is the previous candidate of the same episode, trained on a subset of this
        # one's data: the candidate need only not be worse beyond holdout noise (a tie or a few examples'
        # deficit on a few hundred labels would otherwise leave the episode's last labels unlearned).
        margin = cfg.followup_gate_margin if trigger == "followup" else cfg.gate_margin
        # With no incumbent any model beats none: the holdout is reported, not required to be large.
        min_holdout = _GATE_MIN_HOLDOUT if incumbent else 1
        gate = GateSettings(margin, cfg.forgetting_epsilon, cfg.latency_ratio, cfg.latency_budget_ms, min_holdout)
        job = FineTuneJob(
            train=([e.text for e in train], [e.intent for e in train]),
            holdout=([e.text for e in holdout], [e.intent for e in holdout]),
            replay_eval=([e.text for e in replay_eval], [e.intent for e in replay_eval]),
            incumbent_dir=str(self.registry.root / incumbent) if incumbent else None,
            settings=settings, gate=gate, architecture=self.settings.models.architecture, encoder=encoder_source(self.settings), seed=int(now) % 10_000, val_fraction=cfg.validation_fraction, withhold_span=cfg.holdout_span,
            hygiene=HygieneSettings(
                max_chars=self.settings.models.max_text_chars, near_duplicate_threshold=cfg.near_duplicate_threshold, conflicts=cfg.label_conflicts,
            ) if cfg.hygiene else None,
            unlabelled=unlabelled,
            pseudo=PseudoLabelSettings(cfg.pseudo_label_weight, cfg.pseudo_label_precision, cfg.pseudo_label_ratio) if cfg.pseudo_labels else None,
        )
        return job, counts

    def _min_examples(self, incumbent: str | None) -> int:
        """Labelled examples a fine-tune starts with: learning.min_labelled, and against an incumbent enough
        for a holdout the gate accepts (a run that cannot pass the gate is not worth its CPU)."""
        if incumbent is None:
            return self.learning.min_labelled
        return max(self.learning.min_labelled, math.ceil(_GATE_MIN_HOLDOUT / self.learning.holdout_fraction))

    def _min_examples_reason(self, incumbent: str | None) -> str:
        if self._min_examples(incumbent) == self.learning.min_labelled:
            return "learning.min_labelled"
        return f"a holdout of {_GATE_MIN_HOLDOUT} at learning.holdout_fraction = {self.learning.holdout_fraction}"

    # -- promotion, canary, rollback -----------------------------------------------------------------

    async def _promote(self, result: FineTuneResult, incumbent: str | None, trigger: str, run: dict[str, Any]) -> str:
        loop = asyncio.get_running_loop()
        info = {"source": "fine-tune", "trigger": trigger, "data": run["data"], "gate": result.verdict.to_dict(), "train": result.report, "decay_evidence": run.get("evidence")}
        manifest = await loop.run_in_executor(None, lambda: self.registry.publish(result.files, parent=incumbent, info=json_safe(info)))
        baseline = float(np.mean(self._recent_correct)) if self._recent_correct else None
        async with self.swap_lock:
            await loop.run_in_executor(model_loader(), self.server.load_and_swap, self.registry, manifest.version)
            await loop.run_in_executor(None, lambda: self.registry.set_current(manifest.version, hash_only=()))  # the load hashed what it serves
        self._labels_since_swap = 0
        self._follow_serving_version()
        if self.learning.canary_labels > 0 and incumbent is not None and baseline is not None:
            self._canary = {"version": manifest.version, "previous": incumbent, "baseline": baseline, "correct": 0, "n": 0}
        self.timeline.mark("swap", self._outcomes, self.clock(), manifest.version)
        update = {"event": "model_promoted", "version": manifest.version, "parent": incumbent, "trigger": trigger, "gate": result.verdict.to_dict(), "at": self.clock()}
        try:
            await (await self.announce(b"driftd", json.dumps(json_safe(update)).encode()))
        except Exception as exc:  # noqa: BLE001 - the swap happened; a missed announcement is logged, not fatal
            log.error("could not announce %s on %s: %s", manifest.version, self.settings.topics.model_updates, exc)
        log.warning("swapped to %s (parent %s, %s): %s", manifest.version, incumbent, trigger, result.verdict.describe())
        return manifest.version

    def _canary_step(self, outcome: Outcome) -> None:
        canary = self._canary
        assert canary is not None
        if outcome.model_version != canary["version"]:
            return
        canary["n"] += 1
        canary["correct"] += int(outcome.correct)
        if canary["n"] < self.learning.canary_labels:
            return
        self._canary = None
        accuracy = canary["correct"] / canary["n"]
        if accuracy >= canary["baseline"] - self.learning.canary_margin:
            log.info("canary passed: %s at %.4f over %d outcomes (previous model %.4f)", canary["version"], accuracy, canary["n"], canary["baseline"])
            return
        log.error("canary failed: %s at %.4f over %d outcomes, previous %s had %.4f: rolling back", canary["version"], accuracy, canary["n"], canary["previous"], canary["baseline"])
        self._followups_left = 0
        asyncio.get_running_loop().create_task(self._rollback(canary["previous"], canary["version"]))

    async def _rollback(self, previous: str, failed: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.swap_lock:
                await loop.run_in_executor(model_loader(), self.server.load_and_swap, self.registry, previous)
                await loop.run_in_executor(None, lambda: self.registry.set_current(previous, hash_only=()))
        except Exception:  # noqa: BLE001
            log.exception("rollback to %s failed; %s keeps serving", previous, failed)
            return
        self.metrics.rollbacks.inc()
        self.metrics.results.labels("rolled_back").inc()
        self.timeline.mark("rollback", self._outcomes, self.clock(), previous)
        self._follow_serving_version()

    # -- status ----------------------------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> list[str]:
        """Take new [monitor] and [learning] settings at run time (SIGHUP); a running fine-tune keeps the
        settings it started with. Returns the detectors that had to restart (see DecayMonitor.reconfigure)."""
        restarted = self.monitor.reconfigure(settings.monitor.to_config())  # raises before changing anything
        self.settings = settings
        self.learning = settings.learning
        self.joiner.horizon_s = settings.monitor.label_horizon_s
        self.trainer.threads = self.learning.threads
        self.trainer.processes, self.trainer.backend = self.learning.distributed_processes, self.learning.distributed_backend
        if self._recent_correct.maxlen != max(1, self.learning.canary_labels):
            self._recent_correct = deque(self._recent_correct, maxlen=max(1, self.learning.canary_labels))
        if self._peer_examples.maxlen != self.learning.max_examples:
            self._peer_examples = deque(self._peer_examples, maxlen=self.learning.max_examples)
        return restarted

    def status(self) -> dict[str, Any]:
        return json_safe({
            "state": self.state,
            "pid": self.trainer.pid,
            "serving": self.server.version,
            "trainer": self.is_trainer(),
            "peer_examples": len(self._peer_examples),
            "followups_left": self._followups_left,
            "labels_since_start": self._labels_since_start,
            "followup_pending": self._episode_labels_waiting(),
            "labels_since_swap": self._labels_since_swap,
            "awaiting": None if self._awaiting is None else {
                "trigger": self._awaiting[0], "labels": self._awaited_labels(self._awaiting[0]), "needed": self._awaiting[1], "enabled": self.learning.enabled,
            },
            "canary": self._canary,
            "monitor": self.monitor.snapshot(),
            "joiner": self.joiner.counts,
            "last_decision": None if self.last_decision is None else {"at": self.last_decision.at, "signals": list(self.last_decision.signals), "describe": self.last_decision.describe()},
            "last_run": self.last_run,
            "runs": len(self.history),
        })

    def save_timeline(self, path: Path) -> None:
        """The outcome timeline as JSON (``daemon.timeline.render_png`` draws it; the demo adds the drift onset)."""
        self.timeline.save_json(path)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


def _cap_replay(replay: list[LabelledExample], cap: float) -> tuple[list[LabelledExample], int]:
    """At most ``cap`` times the fair share per intent in the replay sample (oldest-first order kept)."""
    intents = {e.intent for e in replay}
    if not replay or len(intents) < 2:
        return replay, 0
    kept = cap_per_class([e.intent for e in replay], min(1.0, cap / len(intents)))
    return [replay[i] for i in kept], len(replay) - len(kept)
