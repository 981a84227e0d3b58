"""Online evaluation and decay detection: predictions joined with labels, error-stream detectors,
label-free signals, and the policy that turns them into a decision to retrain.

Pure logic fed by the caller (the daemon's stream loop); nothing here reads Kafka or touches models.
"""

from .detectors import DETECTORS, ErrorDetector, EwmaDecayDetector, RiverDetector, make_detector
from .metrics import JOIN_RESULTS, MonitorMetrics
from .outcomes import AccuracyWindow, Outcome, OutcomeJoiner
from .policy import ALL_SIGNALS, SIGNALS, DecayMonitor, Decision, MonitorConfig
from .signals import LABEL_FREE_SIGNALS, LabelFreeSignals
from .triggers import POOR_QUALITY_TRIGGERS, AccuracyFloor, UnknownIntentTrigger

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
    "UnknownIntentTrigger",
    "make_detector",
]
