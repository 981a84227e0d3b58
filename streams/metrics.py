"""Prometheus metrics of the streams room. One instance per daemon, on the registry it is given.

Labels are bounded: event types, rejection reasons, tiers and partitions, never per-event values.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .schema import RECORD_REJECTION_REASONS, REJECTION_REASONS

__all__ = ["INGEST_SINKS", "StreamMetrics", "observe_all"]

# where a batch must land before its offsets may be committed
INGEST_SINKS = ("warm", "dlq", "predictions")


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, one increment per bucket rather than per value:
    ingest observes every event. prometheus-client (pinned) has no bulk call, so this uses its
    ``_upper_bounds``, ``_buckets`` (each value counts in its first bucket that holds it; the
    exposition makes them cumulative) and ``_sum``; tests/unit/test_stream_metrics.py checks
    the result against ``observe``."""
    bounds = histogram._upper_bounds
    tally: Tally[int] = Tally()
    total = 0.0
    for value in values:
        tally[bisect_left(bounds, value)] += 1
        total += value
    for bucket, count in tally.items():
        histogram._buckets[bucket].inc(count)
    histogram._sum.inc(total)


class StreamMetrics:
    """The room's metrics, declared by concern; every known label series exists from the start."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._declare_events(registry)
        self._declare_tiers(registry)
        self._declare_ingest_health(registry)
        self._declare_predictions(registry)
        self._create_known_series()

    def _declare_events(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "driftd_events_total",
            "Valid events received and stored, by event type (a redelivery counts "
            "again; see driftd_events_redelivered_total).",
            ["type"],
            registry=registry,
        )
        self.duplicates = Counter(
            "driftd_events_redelivered_total",
            "Records received again (same topic/partition/offset) and stored nothing.",
            registry=registry,
        )
        self.dlq = Counter(
            "driftd_dlq_total",
            "Malformed records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )

    def _declare_tiers(self, registry: CollectorRegistry) -> None:
        self.tier_events = Gauge(
            "driftd_tier_events", "Events held per tier.", ["tier"], registry=registry
        )
        self.hot_bytes = Gauge(
            "driftd_hot_tier_bytes", "Payload bytes held by the hot tier.", registry=registry
        )
        self.demotions = Counter(
            "driftd_demotions_total",
            "Events moved from one tier to the next.",
            ["source", "target"],
            registry=registry,
        )
        self.cold_files = Gauge(
            "driftd_cold_files", "Parquet files in the cold tier.", registry=registry
        )
        self.retention_deleted = Counter(
            "driftd_cold_retention_deleted_total",
            "Events deleted from cold at the end of their retention.",
            registry=registry,
        )

    def _declare_ingest_health(self, registry: CollectorRegistry) -> None:
        self.store_errors = Counter(
            "driftd_store_errors_total",
            "Failed writes to warm, the DLQ or the predictions topic (retried; "
            "consumption pauses meanwhile), and failed demotions to cold "
            "(retried at the next maintenance; the events stay in warm).",
            ["sink"],
            registry=registry,
        )
        self.ingest_blocked = Gauge(
            "driftd_ingest_blocked",
            "1 while ingest waits for a failing sink (full or unwritable store, "
            "unreachable broker): nothing is consumed or committed.",
            ["sink"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "driftd_consumer_lag",
            "Records behind the partition's high watermark, per assigned partition.",
            ["partition"],
            registry=registry,
        )
        self.ingest_latency = Histogram(
            "driftd_ingest_latency_seconds",
            "From the record's Kafka timestamp to its durable storage in warm.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.batch_size = Histogram(
            "driftd_ingest_batch_events",
            "Records per ingest batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )

    def _declare_predictions(self, registry: CollectorRegistry) -> None:
        self.predictions = Counter(
            "driftd_predictions_total",
            "Utterances predicted in the stream and published on the predictions topic.",
            registry=registry,
        )
        self.predictions_skipped = Counter(
            "driftd_predictions_skipped_total",
            "Utterances stored without a prediction because no model was loaded yet.",
            registry=registry,
        )

    def _create_known_series(self) -> None:
        # Every known series exists from the start, so rates and alerts see 0 rather than nothing.
        for kind in ("utterance", "feedback", "label"):
            self.events.labels(kind)
        for reason in REJECTION_REASONS + RECORD_REJECTION_REASONS:
            self.dlq.labels(reason)
        for tier in ("hot", "warm", "cold"):
            self.tier_events.labels(tier)
        for source, target in (("hot", "warm"), ("warm", "cold")):
            self.demotions.labels(source, target)
        for sink in INGEST_SINKS:
            self.store_errors.labels(sink)
            self.ingest_blocked.labels(sink)
        self.store_errors.labels("cold")
