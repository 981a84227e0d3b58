"""The follow-up policy on its own: which fine-tune may
start when, as labels, decisions and run results arrive."""

from __future__ import annotations

import logging

import pytest

from daemon.config import load_settings
from daemon.followups import FineTuneState, FollowUpPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(serving: bool = True, **learning: object) -> tuple[FollowUpPolicy, Clock]:
    clock = Clock()
    settings = load_settings(
        learning={
            "cooldown_s": 30,
            "followup_labels": 100,
            "max_followups": 3,
            "followup_patience": 2,
            "followup_quiet_s": 60,
            "min_labelled": 300,
            **learning,
        }
    )
    return FollowUpPolicy(settings.learning, clock, serving=serving), clock


def trainer() -> bool:
    return True


def follower() -> bool:
    return False


def test_a_decay_starts_an_episode_unless_a_run_is_on_or_the_cooldown_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    followups, clock = policy()
    caplog.set_level(logging.INFO, "driftd.learning")
    assert followups.decay_confirmed() and followups.followups_left == 3
    followups.started()
    assert followups.state is FineTuneState.TRAINING and followups.state == "training"
    assert not followups.decay_confirmed()
    assert "decay confirmed while a fine-tune runs" in caplog.text
    followups.finished(trained=True)
    clock.now += 29
    assert not followups.decay_confirmed() and "inside learning.cooldown_s=30" in caplog.text
    clock.now += 2
    assert followups.decay_confirmed()


def test_follow_ups_start_every_followup_labels_labels_and_only_on_the_trainer() -> None:
    followups, _ = policy()
    followups.decay_confirmed()
    followups.started()
    followups.count_labels(99)
    followups.finished(trained=True)
    assert not followups.take_followup(trainer), "one label short"
    followups.count_labels()
    assert not followups.take_followup(follower)
    assert followups.take_followup(trainer) and followups.followups_left == 2
    followups.started()
    assert followups.labels_since_start == 0
    followups.count_labels(500)
    assert not followups.take_followup(trainer), "a run is on"


def test_consecutive_follow_up_rejections_end_the_episode_and_a_pass_resets_the_count() -> None:
    followups, _ = policy()
    followups.decay_confirmed()
    followups.gate_rejected("decay")  # only follow-ups count toward the patience
    followups.gate_rejected("followup")
    followups.gate_passed()
    followups.gate_rejected("followup")
    assert followups.followups_left == 3
    followups.gate_rejected("followup")
    assert followups.followups_left == 0
    followups.count_labels(1000)
    assert not followups.take_followup(trainer)


def test_a_quiet_stream_retrains_on_a_quarter_of_followup_labels_once_the_labels_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    followups, clock = policy()
    caplog.set_level(logging.INFO, "driftd.learning")
    followups.count_labels(50)
    clock.now += 61
    assert not followups.take_quiet_followup(trainer) and not followups.episode_labels_waiting(), (
        "no episode"
    )
    followups.decay_confirmed()
    followups.started()  # the episode's first run takes the 50 labels
    followups.finished(trained=True)
    followups.count_labels(24)
    clock.now += 61
    assert not followups.episode_labels_waiting() and not followups.take_quiet_followup(trainer), (
        "24 is under 100 // 4"
    )
    followups.count_labels(1)
    assert followups.episode_labels_waiting()
    clock.now += 59
    assert not followups.take_quiet_followup(trainer), "the last label came 59 s ago"
    clock.now += 1
    assert followups.take_quiet_followup(trainer) and followups.followups_left == 2
    assert "no label for 60 s; retraining on the 25 labels since the last fine-tune" in caplog.text


def test_with_no_model_the_first_one_waits_for_min_labelled_labels_stored_without_a_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    followups, _ = policy(serving=False)
    assert followups.awaiting_status() == {
        "trigger": "cold_start",
        "labels": 0,
        "needed": 300,
        "enabled": True,
    }
    # outcomes of a model served earlier: training data, but not toward the first model
    followups.count_labels(250)
    followups.count_labels(299, without_model=True)
    assert followups.labels_waiting() == 1 and followups.take_awaited(trainer) is None
    followups.count_labels(1, without_model=True)
    assert followups.take_awaited(follower) is None
    caplog.set_level(logging.WARNING, "driftd.learning")
    assert followups.take_awaited(trainer) == "cold_start"
    assert "no model serves and 300 labels arrived (learning.min_labelled = 300)" in caplog.text
    assert (
        followups.awaiting is None
        and followups.labels_waiting() == 0
        and followups.followups_left == 3
    )


def test_the_first_model_waits_while_learning_is_off_and_a_served_model_ends_the_wait() -> None:
    followups, _ = policy(serving=False, enabled=False)
    followups.count_labels(400, without_model=True)
    assert (
        followups.take_awaited(trainer) is None and followups.awaiting_status()["enabled"] is False
    )
    followups.serving_changed("v000001")
    assert followups.awaiting is None
    followups.serving_changed(None)
    assert followups.awaiting == ("cold_start", 300)


def test_a_skipped_automatic_run_waits_for_its_shortfall_without_cooldown_a_manual_one_not() -> (
    None
):
    followups, clock = policy()
    followups.started()
    followups.skipped("manual", 120)
    followups.finished(trained=False)
    assert followups.awaiting is None and followups.finished_at == 0.0, (
        "a skipped run trained nothing"
    )
    followups.started()
    followups.skipped("decay", 120)
    followups.finished(trained=False)
    followups.count_labels(119)
    assert followups.awaiting_status() == {
        "trigger": "decay",
        "labels": 119,
        "needed": 120,
        "enabled": True,
    }
    assert followups.take_awaited(trainer) is None
    followups.count_labels()
    assert followups.take_awaited(trainer) == "decay"

    followups.started()
    followups.finished(trained=True)  # a real run: the cooldown applies to the next wait that ends
    followups.skipped("followup", 10)
    followups.count_labels(10)
    assert followups.take_awaited(trainer) is None
    clock.now += 30
    assert followups.take_awaited(trainer) == "followup"


def test_a_failed_canary_ends_the_episode() -> None:
    followups, _ = policy()
    followups.decay_confirmed()
    followups.end_episode()
    followups.count_labels(1000)
    assert followups.followups_left == 0 and not followups.take_followup(trainer)
