"""The learning loop: outcomes -> decay decision -> fine-tune
(child) -> gate -> register -> announce -> swap -> canary.

``LearningLoop.observe_batch`` is called by ingest after each stored batch, with the predictions it
made. It joins labels and feedback to the predictions they refer to and feeds the decay monitor
(``OutcomeFeed``); when the policy confirms decay (or an operator asks) it starts
at most one fine-tune (``FineTuneRunner``: a child process, ``TrainerProcess``),
on the recent labelled events plus a replay sample from cold (``JobBuilder``).

A candidate that passes the gate is published to the registry, announced on ``model-updates``,
and hot-swapped (``Promoter``); the detectors then restart on the new model. After a decay,
follow-up retrains run each time ``followup_labels`` new labels have arrived, while each one
passes the gate (``FollowUpPolicy``): the first fine-tune sees few examples of what changed,
the follow-ups catch up as labels accumulate. A ``Canary`` watches the first ``canary_labels``
outcomes of a new version and rolls back to the previous one if it does worse than that one
did. Any failure (diverged loss, crash, timeout, rejection) leaves the serving model as it was.

This class only composes those parts: it builds them from its arguments and passes what one part
decides to the part that acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from models.finetune import FineTuneJob, FineTuneResult
from models.registry import Registry
from models.serving import ModelServer
from streams.jsonsafe import json_safe
from streams.monitor import Decision, MonitorMetrics, Outcome
from streams.tiers import StoredEvent, TieredStore
from streams.training_set import LabelledExample, labelled_examples

from .canary import Canary
from .config import Settings
from .finetune_run import FineTuneRunner
from .followups import FineTuneState, FollowUpPolicy
from .job_builder import JobBuilder
from .job_builder import cap_replay as _cap_replay  # noqa: F401 - its older home: tests import it from here
from .learning_metrics import LearningMetrics
from .outcome_feed import OutcomeFeed
from .promoter import Announce, Promoter

__all__ = ["Forward", "LearningLoop", "LearningMetrics"]

log = logging.getLogger("driftd.learning")


class Forward(Protocol):
    """A follower's way to the trainer replica: ("decision",
    Decision) or ("examples", list[LabelledExample])."""

    def __call__(self, kind: str, payload: Any) -> None: ...


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
        is_trainer: Callable[[], bool] = lambda: True,
        forward: Forward | None = None,
    ) -> None:
        """``is_trainer`` and ``forward``: replicas (daemon.cluster), whether
        this one trains and how a follower forwards its decisions and labelled
        examples to the trainer; a lone daemon trains and forwards nothing."""
        self.settings = settings
        self.learning = settings.learning
        self.server = server
        self.clock = clock
        self.is_trainer = is_trainer
        self.forward = forward
        self.metrics = LearningMetrics(metrics_registry)
        self.followups = FollowUpPolicy(self.learning, clock, serving=server.version is not None)
        self.feed = OutcomeFeed(
            settings.monitor,
            MonitorMetrics(metrics_registry),
            clock,
            on_decision=self._on_decision,
            on_labelled=self.followups.count_labels,
            on_serving_outcome=self._on_serving_outcome,
        )
        self.canary = Canary(self.learning)
        self.jobs = JobBuilder(settings, store, registry, clock)
        self.promoter = Promoter(
            server,
            registry,
            swap_lock,
            announce,
            settings.topics.model_updates,
            self.metrics,
            clock,
        )
        self.runner = FineTuneRunner(
            self.learning,
            server,
            registry,
            self.jobs,
            self.followups,
            self.metrics,
            clock,
            mark=self.feed.mark,
            promote=self._promote,
        )
        self.last_decision: Decision | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- the ingest hook and the replicas ----------------------------------------------------

    def observe_batch(
        self,
        events: Sequence[StoredEvent],
        predicted: Sequence[tuple[StoredEvent, dict[str, Any]]],
    ) -> None:
        """Called once per stored batch, in the event loop:
        cheap dictionary and detector updates only."""
        self._follow_serving_version()
        if self.server.version is None and (examples := labelled_examples(events)):
            # No model, so no outcome: count the labels
            # themselves, for the first model and its follow-ups.
            self.followups.count_labels(len(examples), without_model=True)
        self.feed.observe(events, predicted)
        if (
            self.forward is not None
            and not self.is_trainer()
            and (examples := labelled_examples(events))
        ):
            self.forward("examples", examples)  # the trainer learns from every replica's partitions
        self._maybe_start_awaited()

    def add_peer_examples(self, examples: Sequence[LabelledExample]) -> None:
        """Labelled examples another replica stored (the trainer
        only): training data, and follow-up progress."""
        self.jobs.add_peer_examples(examples)
        self.followups.count_labels(len(examples), without_model=self.server.version is None)
        self._maybe_followup()
        self._maybe_start_awaited()

    def receive_decision(self, decision: Decision) -> None:
        """A decay decision another replica forwarded: the trainer acts on it as on its own."""
        self._on_decision(decision)

    def _follow_serving_version(self) -> None:
        """A version swapped in by anyone (admin API,
        rollback, this loop) restarts the detectors."""
        version = self.server.version
        if version == self.feed.version:
            return
        model = self.server.model
        self.feed.follow(version, None if model is None else model.labels)
        self.canary.version_changed()
        self.followups.serving_changed(version)

    def _on_serving_outcome(self, outcome: Outcome) -> None:
        if (failed := self.canary.observe(outcome)) is not None:
            self.followups.end_episode()
            asyncio.get_running_loop().create_task(self._rollback(failed.previous, failed.version))
        self._maybe_followup()

    def _on_decision(self, decision: Decision) -> None:
        self.last_decision = decision
        self.feed.mark("detection", decision.at, ",".join(decision.signals))
        if not self.learning.enabled:
            log.warning(
                "decay confirmed, learning.enabled is off: no fine-tune (%s)", decision.describe()
            )
            return
        if not self.is_trainer():
            if self.forward is not None:
                log.warning(
                    "decay confirmed, forwarded to the trainer replica: %s", decision.describe()
                )
                self.forward("decision", decision)
            return
        if self.followups.decay_confirmed():
            self._start("decay", decision)

    # -- triggering --------------------------------------------------------------------------------

    def _maybe_followup(self) -> None:
        if self.followups.take_followup(self.is_trainer):
            self._start("followup", None)

    def _maybe_start_awaited(self) -> None:
        trigger = self.followups.take_awaited(self.is_trainer)
        self.metrics.labels_waiting.set(self.followups.labels_waiting())
        if trigger is not None:
            self._start(trigger, None)

    def settle(self) -> None:
        """Timer hook: when the labels stop, learn the episode's last ones instead
        of leaving them unlearned, and start a waiting run whose labels came
        during the cooldown (no new label would start it otherwise)."""
        self._maybe_start_awaited()
        if self.followups.take_quiet_followup(self.is_trainer):
            self._start("followup", None)

    def request(self, trigger: str = "manual") -> tuple[bool, str]:
        """Manual trigger (admin API, CLI): starts unless one runs already; ignores the cooldown."""
        if self.followups.state != FineTuneState.IDLE:
            return False, f"a fine-tune is already running (pid {self.runner.trainer.pid})"
        if not self.is_trainer():
            role = self.learning.role
            return False, (
                f"this replica is not the trainer (learning.role = {role}): ask the trainer replica"
            )
        self._start(trigger, None)
        return True, "fine-tune started"

    def _start(self, trigger: str, decision: Decision | None) -> None:
        self.followups.started()
        self.metrics.runs.labels(trigger).inc()
        self.metrics.running.set(1)
        self.metrics.progress.set(0)
        self.feed.mark("training_started", self.clock(), trigger)
        run = self._fine_tune(trigger, decision)
        self._task = asyncio.get_running_loop().create_task(run, name=f"driftd-finetune-{trigger}")

    async def _fine_tune(self, trigger: str, decision: Decision | None) -> None:
        try:
            await self.runner.run(trigger, decision)
        finally:
            if trigger != "manual" and not self._stopping:
                # labels that arrived while it trained may already warrant the next one
                self._maybe_followup()

    async def _build_job(
        self, incumbent: str | None, trigger: str
    ) -> tuple[FineTuneJob | None, dict[str, int]]:
        return await self.jobs.build(incumbent, trigger)

    # -- promotion, canary, rollback -----------------------------------------------------------

    async def _promote(
        self, result: FineTuneResult, incumbent: str | None, trigger: str, run: dict[str, Any]
    ) -> str:
        version = await self.promoter.publish(result, incumbent, trigger, run)
        # the incumbent's last outcomes, before the swap restarts the count
        baseline = self.canary.baseline()
        await self.promoter.swap(version)
        self.feed.swapped()
        self._follow_serving_version()
        self.canary.start(version, incumbent, baseline)
        self.feed.mark("swap", self.clock(), version)
        await self.promoter.announce_swap(version, incumbent, trigger, result.verdict)
        return version

    async def _rollback(self, previous: str, failed: str) -> None:
        if await self.promoter.rollback(previous, failed):
            self.feed.mark("rollback", self.clock(), previous)
            self._follow_serving_version()

    # -- settings and status -------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> list[str]:
        """Take new [monitor] and [learning] settings at run time (SIGHUP);
        a running fine-tune keeps the settings it started with. Returns
        the detectors that had to restart (see DecayMonitor.reconfigure)."""
        restarted = self.feed.reconfigure(settings.monitor)  # raises before changing anything
        self.settings = settings
        self.learning = settings.learning
        self.followups.reconfigure(self.learning)
        self.canary.reconfigure(self.learning)
        self.jobs.reconfigure(settings)
        self.runner.reconfigure(self.learning)
        return restarted

    def status(self) -> dict[str, Any]:
        """What the admin route /admin/v1/learning and ``driftd status`` show."""
        status: dict[str, Any] = json_safe(
            {
                **self.followups.snapshot(),
                "pid": self.runner.trainer.pid,
                "serving": self.server.version,
                "trainer": self.is_trainer(),
                "peer_examples": len(self.jobs.peer_examples),
                "labels_since_swap": self.feed.labels_since_swap,
                "canary": self.canary.snapshot(),
                "monitor": self.feed.monitor.snapshot(),
                "joiner": self.feed.joiner.counts,
                "last_decision": _decision_summary(self.last_decision),
                "last_run": self.runner.last_run,
                "runs": len(self.runner.history),
            }
        )
        return status

    def save_timeline(self, path: Path) -> None:
        """The outcome timeline as JSON (``daemon.timeline.render_png``
        draws it; the demo adds the drift onset)."""
        self.feed.timeline.save_json(path)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _decision_summary(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {"at": decision.at, "signals": list(decision.signals), "describe": decision.describe()}
