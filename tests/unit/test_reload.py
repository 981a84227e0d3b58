"""SIGHUP reload: which settings change at run time,
and a monitor retuned without losing its state."""

from __future__ import annotations

import pytest

from daemon.config import load_settings
from daemon.reload import diff_settings
from streams.monitor import DecayMonitor, MonitorConfig
from tests.unit.test_monitor_policy import FAST, Clock, Traffic


def test_diff_separates_run_time_settings_from_those_needing_a_restart():
    old = load_settings(None)
    new = load_settings(
        None,
        monitor={"ewma_relative_drop": 0.2},
        learning={"cooldown_s": 5.0},
        daemon={"log_level": "DEBUG"},
        kafka={"embedded_port": 29092},
    )
    diff = diff_settings(old, new)
    assert diff.runtime == {
        "monitor.ewma_relative_drop": (0.1, 0.2),
        "learning.cooldown_s": (30.0, 5.0),
        "daemon.log_level": ("INFO", "DEBUG"),
    }
    assert diff.needs_restart == ["kafka.embedded_port"]
    assert "monitor.ewma_relative_drop 0.1 -> 0.2" in diff.describe()
    assert diff_settings(old, load_settings(None)).changed == {}


def test_a_changed_secret_is_reported_by_name_only():
    old = load_settings(None, web={"admin_token": "first-secret-value"})
    new = load_settings(None, web={"admin_token": "second-secret-value"})
    diff = diff_settings(old, new)
    assert diff.needs_restart == ["web.admin_token"]
    assert "secret-value" not in diff.describe()


# A longer EWMA memory than FAST's, so that noise stays far from the lines these tests draw.
STEADY = FAST | {"ewma_alpha": 0.01}


def _drifted_monitor(clock: Clock) -> tuple[DecayMonitor, Traffic]:
    monitor = DecayMonitor(MonitorConfig(**STEADY), clock=clock)
    traffic = Traffic(monitor, clock)
    assert traffic.run(300, error=0.10) == []  # warmed up: reference ~0.9
    return monitor, traffic


def test_a_lower_threshold_fires_on_the_state_kept_across_the_retune():
    clock = Clock()
    monitor, traffic = _drifted_monitor(clock)
    # Accuracy 0.9 -> 0.75, a ~17% relative drop: below a 10% line soon, not below a 30% line.
    strict = MonitorConfig(**STEADY).replace(ewma_relative_drop=0.30)
    monitor.reconfigure(strict)
    assert traffic.run(400, error=0.25) == []
    ewma = monitor.detectors["ewma"]
    reference, level, seen = ewma.reference, ewma.ewma, ewma.n_seen
    assert reference is not None and 0.85 < reference < 0.95 and level < reference * 0.9

    restarted = monitor.reconfigure(strict.replace(ewma_relative_drop=0.10))
    assert restarted == []
    ewma = monitor.detectors["ewma"]
    # state kept, threshold new
    assert (ewma.reference, ewma.ewma, ewma.n_seen, ewma.relative_drop) == (
        reference,
        level,
        seen,
        0.10,
    )
    decisions = traffic.run(50, error=0.25)
    # fires at once: no new warm-up
    assert len(decisions) == 1 and decisions[0][1].signals == ("ewma",)


def test_changing_a_river_detector_parameter_restarts_only_that_detector():
    clock = Clock()
    monitor, _ = _drifted_monitor(clock)
    adwin_seen = monitor.detectors["adwin"].n_seen
    ph_seen = monitor.detectors["page_hinkley"].n_seen
    restarted = monitor.reconfigure(monitor.config.replace(page_hinkley_threshold=80.0))
    assert restarted == ["page_hinkley"]
    assert monitor.detectors["page_hinkley"].n_seen == 0 and ph_seen == 300
    assert monitor.detectors["adwin"].n_seen == adwin_seen == 300
    assert monitor.detectors["page_hinkley"].evidence()["threshold"] == 80.0


def test_a_smaller_window_keeps_the_newest_outcomes_and_policy_fields_apply():
    clock = Clock()
    monitor, _ = _drifted_monitor(clock)
    newest = [correct for _, correct in list(monitor.window._items)[-100:]]
    monitor.reconfigure(
        monitor.config.replace(window_size=100, cooldown_s=5.0, signals=("ewma", "adwin"))
    )
    assert monitor.window.count == 100
    assert monitor.window.accuracy == pytest.approx(sum(newest) / 100)
    assert monitor.config.cooldown_s == 5.0 and monitor.snapshot()["signals"] == ["ewma", "adwin"]


def test_an_invalid_new_value_is_refused_and_the_monitor_is_unchanged():
    clock = Clock()
    monitor, _ = _drifted_monitor(clock)
    config, ewma = monitor.config, monitor.detectors["ewma"]
    with pytest.raises(ValueError):
        monitor.reconfigure(MonitorConfig(**FAST).replace(ewma_alpha=0.05, min_samples=-1))
    assert monitor.config is config and monitor.detectors["ewma"] is ewma
