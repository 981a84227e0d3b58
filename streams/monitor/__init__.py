"""Online evaluation and decay detection: predictions joined with labels, error-stream detectors,
label-free signals, and the policy that turns them into a decision to retrain.

Pure logic fed by the caller (the daemon's stream loop); nothing here reads Kafka or touches models.
Names are imported on first use (PEP 562), so ``streams.monitor.config`` (the settings, pydantic
only) loads without the detectors' river and numpy: the daemon's config must stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import MonitorConfig, SignalName
    from .detectors import (
        DETECTORS,
        ErrorDetector,
        EwmaDecayDetector,
        RiverDetector,
        make_detector,
    )
    from .metrics import JOIN_RESULTS, MonitorMetrics
    from .outcomes import AccuracyWindow, Outcome, OutcomeJoiner
    from .policy import ALL_SIGNALS, SIGNALS, DecayMonitor, Decision
    from .signals import LABEL_FREE_SIGNALS, LabelFreeSignals
    from .triggers import POOR_QUALITY_TRIGGERS, AccuracyFloor, UnknownIntentTrigger

# exported name -> the submodule that defines it
_HOMES = {
    "MonitorConfig": "config",
    "SignalName": "config",
    "DETECTORS": "detectors",
    "ErrorDetector": "detectors",
    "EwmaDecayDetector": "detectors",
    "RiverDetector": "detectors",
    "make_detector": "detectors",
    "JOIN_RESULTS": "metrics",
    "MonitorMetrics": "metrics",
    "AccuracyWindow": "outcomes",
    "Outcome": "outcomes",
    "OutcomeJoiner": "outcomes",
    "ALL_SIGNALS": "policy",
    "SIGNALS": "policy",
    "DecayMonitor": "policy",
    "Decision": "policy",
    "LABEL_FREE_SIGNALS": "signals",
    "LabelFreeSignals": "signals",
    "POOR_QUALITY_TRIGGERS": "triggers",
    "AccuracyFloor": "triggers",
    "UnknownIntentTrigger": "triggers",
}

__all__ = [
    "ALL_SIGNALS",
    "DETECTORS",
    "JOIN_RESULTS",
    "LABEL_FREE_SIGNALS",
    "POOR_QUALITY_TRIGGERS",
    "SIGNALS",
    "AccuracyFloor",
    "AccuracyWindow",
    "DecayMonitor",
    "Decision",
    "ErrorDetector",
    "EwmaDecayDetector",
    "LabelFreeSignals",
    "MonitorConfig",
    "MonitorMetrics",
    "Outcome",
    "OutcomeJoiner",
    "RiverDetector",
    "SignalName",
    "UnknownIntentTrigger",
    "make_detector",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
