"""Publishes labelling requests: the predictions most worth a human label (streams.labeling), on
``topics.labeling_requests``, for ``driftd labels export`` to hand to Label Studio.

Runs in the ingest hook (the event loop): one ``offer`` per predicted
utterance, which is cheap unless it picks (then a MinHash and one send, as
a task). Off unless ``labeling.enabled``; its metrics exist either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from daemon.background import BackgroundTasks
from streams.labeling import SKIP_REASONS, LabelingSampler
from streams.tiers import StoredEvent

from .config import Settings

__all__ = ["LabelingRequests"]

log = logging.getLogger("driftd.labeling")


class LabelingRequests:
    def __init__(
        self,
        settings: Settings,
        send: Callable[[str, bytes, bytes], Any],
        registry: CollectorRegistry,
    ) -> None:
        cfg = settings.labeling
        self.topic = settings.topics.labeling_requests
        self._send = send
        self._background = BackgroundTasks()  # the requests being published
        self.sampler = (
            LabelingSampler(
                cfg.strategy,
                cfg.budget_per_hour,
                cfg.min_score,
                cfg.diversity_threshold,
                cfg.window,
                percentile=cfg.percentile,
            )
            if cfg.enabled
            else None
        )
        self.offers = Counter(
            "driftd_labeling_offers_total",
            "Predictions considered for a labelling request, by result: "
            "picked, or the reason it was skipped.",
            ["result"],
            registry=registry,
        )
        for result in ("picked", *SKIP_REASONS):
            self.offers.labels(result)
        self.failures = Counter(
            "driftd_labeling_publish_failures_total",
            "Labelling requests that could not be published.",
            registry=registry,
        )

    def observe(self, predicted: Sequence[tuple[StoredEvent, dict[str, Any]]]) -> None:
        if self.sampler is None:
            return
        for event, prediction in predicted:
            before = dict(self.sampler.counts)
            try:
                request = self.sampler.offer(
                    event.event_id,
                    event.conversation_id,
                    event.text or "",
                    prediction["model_version"],
                    [(t["intent"], t["confidence"]) for t in prediction["top_k"]],
                    turn=event.turn,
                )
            except ValueError as exc:  # a prediction it cannot score: never a reason to stop ingest
                log.debug("no labelling offer for %s: %s", event.event_id, exc)
                continue
            for result in ("picked", *SKIP_REASONS):
                if self.sampler.counts[result] != before.get(result, 0):
                    self.offers.labels(result).inc()
            if request is not None:
                self._background.spawn(
                    self._publish(event.conversation_id.encode(), json.dumps(request).encode())
                )

    async def _publish(self, key: bytes, value: bytes) -> None:
        try:
            await (await self._send(self.topic, key, value))
        except Exception as exc:  # noqa: BLE001 - one lost request costs one label, not the daemon
            self.failures.inc()
            log.error("could not publish a labelling request on %s: %s", self.topic, exc)
