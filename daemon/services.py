"""The daemon's own mode services, started and stopped with the faust app (daemon.app):
the tiered store's opening, the learning loop's stop, and the process's lifecycle signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mode

from streams.tiers import TieredStore

from . import systemd
from .config import Settings
from .learning import LearningLoop

__all__ = ["LearningService", "LifecycleService", "StoreService", "fresh_log_ends"]

log = logging.getLogger("driftd")


def fresh_log_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """Log ends known for certain at start: an embedded broker on memory storage was
    started empty by this process, so every input partition's log begins again at
    offset 0 and any offset stored before belongs to a log that is gone
    (TieredStore.open retires it). Anything else: unknown, nothing retired. (Asking the
    broker would be no substitute: Tansu reports a partition's end at its last batch.)"""
    if not (settings.kafka.embedded and settings.kafka.embedded_storage.startswith("memory://")):
        return {}
    return {
        (settings.topics.input, partition): 0 for partition in range(settings.topics.partitions)
    }


class StoreService(mode.Service):
    """Opens the tiered store as the app starts; ``opened`` says whether it is open yet."""

    def __init__(self, store: TieredStore, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store, self.settings = store, settings
        self.opened = False

    async def on_start(self) -> None:
        s, store = self.settings, self.store
        suffix = time.strftime("@retired-%Y%m%dT%H%M%SZ", time.gmtime())
        await store.open(fresh_log_ends(s), retired_suffix=suffix)
        for (topic, partition), (highest, _) in sorted(store.retired.items()):
            log.warning(
                "the embedded broker keeps nothing across its restart "
                "(kafka.embedded_storage = %s): the events stored from "
                "its previous log of %s partition %d (offsets up to "
                "%d) are kept under topic %r, and the new records that "
                "reuse those offsets are stored as new events",
                s.kafka.embedded_storage,
                topic,
                partition,
                highest,
                f"{topic}{suffix}",
            )
        self.opened = True
        log.info(
            "tiers open: hot max %d events, warm %s (%d events), cold %s (%d events)",
            s.tiers.hot_max_events,
            s.warm_path,
            store.warm.count,
            s.cold_url,
            store.warm.cold_rows,
        )


class LearningService(mode.Service):
    """At the stop: kills a running fine-tune child (the serving
    model is untouched) and saves the outcome timeline."""

    def __init__(self, learning: LearningLoop, timeline_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.learning, self.timeline_path = learning, timeline_path

    async def on_stop(self) -> None:
        await self.learning.stop()
        self.learning.save_timeline(self.timeline_path)


class LifecycleService(mode.Service):
    """SIGHUP to reload, systemd's watchdog pings, and STOPPING=1 as the graceful stop begins."""

    def __init__(self, reload: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reload = reload  # daemon.app.Daemon.reload
        self.watchdog_s = systemd.watchdog_interval_s()

    async def on_start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        if self.watchdog_s is not None:
            self.add_future(self._watchdog(self.watchdog_s))

    async def _watchdog(self, interval_s: float) -> None:
        # Pinged from the event loop, so a loop blocked for
        # longer than WatchdogSec gets the process restarted.
        while not self.should_stop:
            systemd.notify("WATCHDOG=1")
            await self.sleep(interval_s)

    async def on_stop(self) -> None:
        systemd.notify("STOPPING=1")
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
