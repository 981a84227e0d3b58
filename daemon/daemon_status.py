"""What ``driftd status`` (GET /admin/v1/status) and /readyz report about the running daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from models.registry import Registry
from models.registry_mirror import MirroredRegistry
from models.serving import ModelServer
from streams.metrics import StreamMetrics

from .broker_probe import BrokerProbe
from .cluster import ReplicaLink
from .housekeeping import counter_total, metric_samples
from .learning import LearningLoop
from .services import StoreService

__all__ = ["DaemonStatus"]


class DaemonStatus:
    def __init__(
        self,
        assignment: Callable[[], set[Any]],
        store_service: StoreService,
        metrics: StreamMetrics,
        server: ModelServer,
        registry: Registry,
        learning: LearningLoop,
        replica_link: ReplicaLink,
        broker_probe: BrokerProbe,
        lag: Callable[[], dict[int, int]],
    ) -> None:
        self.assignment, self.store_service, self.metrics = assignment, store_service, metrics
        self.server, self.registry, self.learning = server, registry, learning
        self.replica_link, self.broker_probe, self.lag = replica_link, broker_probe, lag
        self.started_at = time.time()

    def readiness(self) -> dict[str, bool]:
        """/readyz's checks: ready when all are true."""
        opened = self.store_service.opened
        return {
            "store_open": opened,
            "consumer_assigned": bool(self.assignment()) if opened else False,
            "model_loaded": self.server.ready,
        }

    def report(self) -> dict[str, Any]:
        """Model, quality and detectors, tiers, lag, the last training."""
        model = self.server.model
        learning = self.learning.status()
        now, opened = time.time(), self.store_service.opened
        return {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 1),
            "model": None
            if model is None
            else {
                "version": model.version,
                "created_at": model.created_at,
                "age_s": None if model.created_at is None else round(now - model.created_at, 1),
                "intents": len(model.labels),
                "registry_current": self._registry_current(),
            },
            "quality": self._quality(learning.pop("monitor")),
            "tiers": self.store_service.store.sizes() if opened else None,
            "ingest": {
                "events": counter_total(self.metrics.events),
                "dead_lettered": counter_total(self.metrics.dlq),
                # sinks a batch waits for
                "blocked_on": [
                    sample.labels["sink"]
                    for sample in metric_samples(self.metrics.ingest_blocked)
                    if sample.value
                ],
            },
            "broker": self.broker_probe.status(),
            "consumer_lag": {str(p): lag for p, lag in sorted(self.lag().items())}
            if opened
            else {},
            "replica": self.replica_link.status(),
            "training": learning,
        }

    def _quality(self, monitor: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "ewma_accuracy",
            "reference_accuracy",
            "window_accuracy",
            "samples",
            "signals",
            "fired",
            "detectors",
            "triggers",
            "label_free",
            "decisions",
            "cooldown_remaining_s",
        )
        # with the thresholds live now (SIGHUP changes them)
        return {
            **{key: monitor[key] for key in keys},
            "config": self.learning.feed.monitor.config.to_dict(),
        }

    def _registry_current(self) -> str | None:
        if isinstance(self.registry, MirroredRegistry):
            # as last read off the event loop: an object-store request here would block it
            return self.replica_link.registry_current
        return self.registry.current()
