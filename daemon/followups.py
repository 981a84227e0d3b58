"""When a fine-tune starts on its own: after a decay decision, its follow-ups
as labels accumulate, the first model once enough labels arrived, and a
run that was skipped for too little data once its shortfall arrived.

The policy only decides and counts; the learning loop starts the runs it allows. One decay
episode allows ``learning.max_followups`` follow-ups, each once ``followup_labels`` labels
came after the last fine-tune took its data (or, with ``followup_quiet_s``, once the
stream fell quiet), until ``followup_patience`` consecutive gate rejections or a failed
canary end it. ``learning.cooldown_s`` spaces automatic runs after one that trained.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

from .config import LearningSettings

__all__ = ["FineTuneState", "FollowUpPolicy"]

log = logging.getLogger("driftd.learning")


class FineTuneState(enum.StrEnum):
    """Whether a fine-tune runs; the value is what the status route reports."""

    IDLE = "idle"
    TRAINING = "training"


class FollowUpPolicy:
    def __init__(
        self, settings: LearningSettings, clock: Callable[[], float], serving: bool
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.state = FineTuneState.IDLE
        # when the last fine-tune that trained ended (a skipped one does not count)
        self.finished_at = 0.0
        self.followups_left = 0
        self.rejections = 0  # consecutive gate rejections of the episode's follow-ups
        # labelled outcomes and examples since the last fine-tune took its data
        self.labels_since_start = 0
        # labelled examples stored while no model served, since the last start
        self.labels_without_model = 0
        self.last_label_at = 0.0
        # A fine-tune that needs more labels first: (trigger, labels
        # since the last start it waits for). Set for the first model
        # (no model serves) and after a run skipped for too little data.
        self.awaiting: tuple[str, int] | None = (
            None if serving else ("cold_start", settings.min_labelled)
        )

    def reconfigure(self, settings: LearningSettings) -> None:
        self.settings = settings

    # -- what it counts
    # ------------------------------------------------------------------------------

    def count_labels(self, n: int = 1, *, without_model: bool = False) -> None:
        """``n`` new labels (training data, whichever version
        they judged); ``without_model``: none serves."""
        self.labels_since_start += n
        if without_model:
            self.labels_without_model += n
        self.last_label_at = self.clock()

    def serving_changed(self, version: str | None) -> None:
        if version is None:
            self.awaiting = ("cold_start", self.settings.min_labelled)
        elif self.awaiting is not None and self.awaiting[0] == "cold_start":
            self.awaiting = None  # a model serves now (activated, synced or trained)

    # -- what it allows: each True (or trigger) means
    # the caller starts that fine-tune now -------------

    def decay_confirmed(self) -> bool:
        """A decay decision on the trainer: starts a new
        episode unless a run is on or the cooldown lasts."""
        since = self.clock() - self.finished_at
        if self.state != FineTuneState.IDLE:
            log.info("decay confirmed while a fine-tune runs; it will be judged on newer data")
            return False
        if since < self.settings.cooldown_s:
            log.info(
                "decay confirmed %.0fs after the last fine-tune, inside "
                "learning.cooldown_s=%.0f: "
                "not retraining yet",
                since,
                self.settings.cooldown_s,
            )
            return False
        self._new_episode()
        return True

    def take_followup(self, is_trainer: Callable[[], bool]) -> bool:
        """Retrain once ``followup_labels`` labels arrived
        after the last fine-tune took its data."""
        enough = self.labels_since_start >= self.settings.followup_labels
        if self.followups_left > 0 and enough and self.state == FineTuneState.IDLE and is_trainer():
            self.followups_left -= 1
            return True
        return False

    def take_quiet_followup(self, is_trainer: Callable[[], bool]) -> bool:
        """When the labels stop, learn the episode's last ones instead of leaving them unlearned."""
        quiet = self.clock() - self.last_label_at
        quiet_enough = quiet >= self.settings.followup_quiet_s
        if (
            self.state == FineTuneState.IDLE
            and is_trainer()
            and self.episode_labels_waiting()
            and quiet_enough
        ):
            log.info(
                "no label for %.0f s; retraining on the %d labels since the last fine-tune",
                quiet,
                self.labels_since_start,
            )
            self.followups_left -= 1
            return True
        return False

    def take_awaited(self, is_trainer: Callable[[], bool]) -> str | None:
        """The trigger of the fine-tune that waited for labels (the first model,
        or one skipped for too little data) once they arrived, learning is
        on, this replica trains and the cooldown is over; else None."""
        if self.awaiting is None:
            return None
        trigger, needed = self.awaiting
        have = self.awaited_labels(trigger)
        if (
            have < needed
            or self.state != FineTuneState.IDLE
            or not is_trainer()
            or not self.settings.enabled
        ):
            return None
        if self.clock() - self.finished_at < self.settings.cooldown_s:
            return None
        if trigger == "cold_start":
            log.warning(
                "no model serves and %d labels arrived (learning.min_labelled = "
                "%d): training the first model",
                have,
                self.settings.min_labelled,
            )
            self._new_episode()
        self.awaiting = None
        return trigger

    def _new_episode(self) -> None:
        self.followups_left = (
            self.settings.max_followups if self.settings.followup_labels > 0 else 0
        )
        self.rejections = 0

    # -- what a run tells it
    # ---------------------------------------------------------------------------

    def started(self) -> None:
        self.state = FineTuneState.TRAINING
        self.labels_since_start = 0
        self.labels_without_model = 0

    def finished(self, trained: bool) -> None:
        if trained:  # the cooldown spaces trainings; a skipped run trained nothing
            self.finished_at = self.clock()
        self.state = FineTuneState.IDLE

    def skipped(self, trigger: str, shortfall: int) -> None:
        """Too little data: an automatic run waits for
        ``shortfall`` more labels (a manual one is not retried)."""
        if trigger != "manual":
            self.awaiting = (trigger, shortfall)

    def gate_rejected(self, trigger: str) -> None:
        if trigger == "followup":
            self.rejections += 1
            if self.rejections >= self.settings.followup_patience:
                self.followups_left = 0  # no longer improving: recovered as far as the data allows

    def gate_passed(self) -> None:
        self.rejections = 0

    def end_episode(self) -> None:
        """No more follow-ups (a failed canary: the episode's latest model was rolled back)."""
        self.followups_left = 0

    # -- what it reports
    # -------------------------------------------------------------------------------

    def awaited_labels(self, trigger: str) -> int:
        return self.labels_without_model if trigger == "cold_start" else self.labels_since_start

    def labels_waiting(self) -> int:
        """The awaited run's shortfall (the
        ``driftd_finetune_labels_waiting`` gauge); 0 when none waits."""
        if self.awaiting is None:
            return 0
        trigger, needed = self.awaiting
        return max(0, needed - self.awaited_labels(trigger))

    def episode_labels_waiting(self) -> bool:
        """A decay episode still has follow-ups, and enough labels (a quarter of
        ``followup_labels``) came since the last one for a quiet-stream retrain."""
        enough = self.labels_since_start >= max(1, self.settings.followup_labels // 4)
        return self.settings.followup_quiet_s > 0 and self.followups_left > 0 and enough

    def snapshot(self) -> dict[str, Any]:
        """The policy's part of the learning loop's status."""
        return {
            "state": self.state.value,
            "followups_left": self.followups_left,
            "labels_since_start": self.labels_since_start,
            "followup_pending": self.episode_labels_waiting(),
            "awaiting": self.awaiting_status(),
        }

    def awaiting_status(self) -> dict[str, Any] | None:
        if self.awaiting is None:
            return None
        trigger, needed = self.awaiting
        have = self.awaited_labels(trigger)
        return {
            "trigger": trigger,
            "labels": have,
            "needed": needed,
            "enabled": self.settings.enabled,
        }
