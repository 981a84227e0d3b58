"""The daemon's timers: tier maintenance, the consumer-lag gauge, outcome expiry and the
timeline, the heap trim and the stats log line; each one guarded (``guarded_timer``)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.samples import Sample

from streams.ingest import IngestAgent
from streams.metrics import StreamMetrics
from streams.tiers import TieredStore

from .config import Settings
from .learning import LearningLoop
from .memory import trim_heap
from .services import StoreService

__all__ = ["Housekeeping", "consumer_lag", "counter_total", "guarded_timer", "metric_samples"]

log = logging.getLogger("driftd")


def guarded_timer(
    app: faust.App, interval: float, name: str
) -> Callable[[Callable[[], Awaitable[None]]], Any]:
    """``app.timer`` whose body never takes the daemon down: faust stops the whole worker
    when a timer raises (a full disk, no file descriptor left), so the error is logged
    (a repeat of the same error once a minute at most) and the next tick tries again."""

    def register(body: Callable[[], Awaitable[None]]) -> Any:
        last_logged: list[Any] = [-math.inf, None]  # when, and which error

        async def guarded() -> None:
            try:
                await body()
            except Exception as exc:
                # not the path: it changes per attempt
                error = (type(exc).__name__, getattr(exc, "errno", None) or str(exc)[:100])
                if error != last_logged[1] or time.monotonic() - last_logged[0] >= 60:
                    last_logged[:] = [time.monotonic(), error]
                    log.exception("timer %s failed; it runs again in %g s", name, interval)

        guarded.__name__ = guarded.__qualname__ = body.__name__
        return app.timer(interval, name=name)(guarded)

    return register


def metric_samples(metric: MetricWrapperBase) -> list[Sample]:
    return [sample for family in metric.collect() for sample in family.samples]


def counter_total(counter: MetricWrapperBase) -> float:
    """A counter's total over all its labels."""
    return float(sum(s.value for s in metric_samples(counter) if s.name.endswith("_total")))


def consumer_lag(consumer: Any, ingest: IngestAgent) -> dict[int, int]:
    """Records behind the high watermark, per assigned
    input partition (known once a fetch saw it)."""
    lags: dict[int, int] = {}
    if consumer is None:
        return lags
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        position = ingest.next_offsets.get((tp.topic, tp.partition))
        lags[tp.partition] = max(0, highwater - position if position is not None else highwater)
    return lags


class Housekeeping:
    def __init__(
        self,
        settings: Settings,
        store_service: StoreService,
        metrics: StreamMetrics,
        learning: LearningLoop,
        lag: Callable[[], dict[int, int]],
        timeline_path: Path,
    ) -> None:
        self.settings, self.store_service, self.metrics = settings, store_service, metrics
        self.learning, self.lag, self.timeline_path = learning, lag, timeline_path
        self._last_stats = {"events": 0.0, "dlq": 0.0}

    def register(self, app: faust.App) -> None:
        s = self.settings
        guarded_timer(app, s.tiers.maintenance_interval_s, "driftd.tiers.maintain")(
            self.maintain_tiers
        )
        guarded_timer(app, 1.0, "driftd.consumer_lag")(self.update_lag)
        guarded_timer(app, 10.0, "driftd.outcomes.expire")(self.expire_outcomes)
        if s.daemon.trim_interval_s > 0:
            guarded_timer(app, s.daemon.trim_interval_s, "driftd.memory.trim")(self.trim_memory)
        guarded_timer(app, s.daemon.stats_interval_s, "driftd.stats")(self.log_stats)

    async def maintain_tiers(self) -> None:
        if self.store_service.opened:
            moved = await self.store_service.store.maintain()
            if moved["warm_to_cold"] or moved["cold_deleted"]:
                log.info(
                    "tiers: %d warm->cold, %d deleted by cold retention",
                    moved["warm_to_cold"],
                    moved["cold_deleted"],
                )

    async def update_lag(self) -> None:
        for partition, lag in self.lag().items():
            self.metrics.consumer_lag.labels(str(partition)).set(lag)

    async def expire_outcomes(self) -> None:
        # predictions never labelled, labels never matched: bounded by the horizon
        self.learning.feed.joiner.expire()
        self.learning.settle()  # a quiet stream still gets its episode's last labels learned
        # small (bounded points); survives a crash for the post-mortem
        self.learning.save_timeline(self.timeline_path)

    async def trim_memory(self) -> None:
        seconds = await asyncio.get_running_loop().run_in_executor(None, trim_heap)
        if seconds is not None and seconds > 0.05:
            log.debug("malloc_trim took %.3f s", seconds)

    async def log_stats(self) -> None:
        if not self.store_service.opened:
            return
        events, dlq = counter_total(self.metrics.events), counter_total(self.metrics.dlq)
        store: TieredStore = self.store_service.store
        sizes, last = store.sizes(), self._last_stats
        log.info(
            "ingest: %d events stored (+%d), %d dead-lettered (+%d) | "
            "tiers: hot=%d warm=%d cold=%d",
            events,
            events - last["events"],
            dlq,
            dlq - last["dlq"],
            sizes["hot"],
            sizes["warm"],
            sizes["cold"],
        )
        last.update(events=events, dlq=dlq)
