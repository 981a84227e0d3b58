"""The learning loop's Prometheus metrics: fine-tune runs,
their outcomes and failures, progress, gate and canary."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .trainer import FAILURE_REASONS

__all__ = ["FINETUNE_RESULTS", "TRIGGERS", "LearningMetrics"]

FINETUNE_RESULTS = ("swapped", "gate_rejected", "failed", "skipped", "rolled_back")
# cold_start: no model serves and enough labels arrived
TRIGGERS = ("decay", "followup", "manual", "cold_start")


class LearningMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "driftd_finetune_runs_total",
            "Fine-tunes by trigger (decay, followup, manual, cold_start).",
            ["trigger"],
            registry=registry,
        )
        self.results = Counter(
            "driftd_finetune_results_total",
            "Fine-tune outcomes: swapped, gate_rejected, failed, skipped (too little data).",
            ["result"],
            registry=registry,
        )
        self.failures = Counter(
            "driftd_finetune_failures_total",
            "Failed fine-tunes by reason (diverged, crashed, timeout, error); "
            "the incumbent kept serving.",
            ["reason"],
            registry=registry,
        )
        self.running = Gauge(
            "driftd_finetune_running", "1 while a fine-tune child runs.", registry=registry
        )
        self.progress = Gauge(
            "driftd_finetune_progress_ratio",
            "Epochs done / planned of the running fine-tune.",
            registry=registry,
        )
        self.duration = Histogram(
            "driftd_finetune_duration_seconds",
            "Wall time of a fine-tune, from the data query to the verdict.",
            buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.samples_per_s = Gauge(
            "driftd_finetune_samples_per_second",
            "Training throughput of the last fine-tune.",
            registry=registry,
        )
        self.gate_accuracy = Gauge(
            "driftd_gate_holdout_accuracy",
            "Holdout accuracy in the last gate, by model (candidate, incumbent).",
            ["model"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "driftd_canary_rollbacks_total",
            "Automatic rollbacks after a failed canary.",
            registry=registry,
        )
        self.labels_waiting = Gauge(
            "driftd_finetune_labels_waiting",
            "Labels a fine-tune is waiting for: the first model's (no model "
            "serves) or the shortfall of one skipped"
            " for too little data; 0 when none waits.",
            registry=registry,
        )
        self._expose_every_label()

    def _expose_every_label(self) -> None:
        """Each trigger, result and reason is exported from the start, at 0, so rates and
        alerts see the series before its first increment."""
        for trigger in TRIGGERS:
            self.runs.labels(trigger)
        for result in FINETUNE_RESULTS:
            self.results.labels(result)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
