"""TieredStore: routes events into hot, warm and cold, and moves them down by age.

Writes go to warm first (durable), then into hot; hot evicts by count and age; warm demotes to
cold by age per priority rule; cold deletes after its retention. Every disk operation runs on one
writer thread, so SQLite sees a single connection user and the event loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..metrics import StreamMetrics
from .cold import ColdStore
from .hot import HotTier
from .policy import TierPolicy
from .record import StoredEvent
from .warm import WarmStore

__all__ = ["TieredStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class TieredStore:
    def __init__(
        self,
        warm_path: Path,
        cold_url: str,
        policy: TierPolicy,
        hot_max_events: int,
        *,
        warm_synchronous: str = "FULL",
        demotion_batch: int = 50_000,
        cold_retention_s: float | None = None,
        redelivery_horizon_s: float = 86400.0,
        cold_storage_options: dict[str, Any] | None = None,
        metrics: StreamMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.hot = HotTier(hot_max_events, policy)
        self.metrics = metrics
        # partitions retired at open (reset logs)
        self.retired: dict[tuple[str, int], tuple[int, int]] = {}
        self.clock = clock
        self.demotion_batch = demotion_batch
        self.cold_retention_s = cold_retention_s
        self.redelivery_horizon_s = redelivery_horizon_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftd-store")
        self._warm_path = warm_path
        self._warm_synchronous = warm_synchronous
        self._cold_url = cold_url
        self._cold_storage_options = cold_storage_options
        self.warm: WarmStore
        self.cold: ColdStore

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(
        self, log_ends: dict[tuple[str, int], int] | None = None, retired_suffix: str = "@retired"
    ) -> TieredStore:
        """Open warm and cold. With ``log_ends`` (where each partition's log ends on the
        broker now), first retire the partitions whose log was reset
        (``retire_reset_logs``), in the same step, so that no write can come in between."""
        self.retired = await self.run(self._open, log_ends or {}, retired_suffix)
        self._publish_sizes()
        return self

    def _open(
        self, log_ends: dict[tuple[str, int], int], retired_suffix: str
    ) -> dict[tuple[str, int], tuple[int, int]]:
        self.warm = WarmStore(self._warm_path, self._warm_synchronous)
        self.cold = ColdStore(self._cold_url, self._cold_storage_options)
        orphans = self.cold.remove_orphans({path for path, _, _ in self.warm.cold_files()})
        if orphans:
            log.warning(
                "removed %d cold file(s) written before a crash but never "
                "committed; their events are still in warm",
                len(orphans),
            )
        return self._retire_reset_logs(log_ends, retired_suffix)

    def _retire_reset_logs(
        self, log_ends: dict[tuple[str, int], int], retired_suffix: str
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Compare what is stored with where each partition's log ends now. A log that ends
        at or below an offset already stored was reset (an in-memory broker restarted, a
        topic deleted and created again): new records will reuse those offsets, and keyed
        by (topic, partition, offset) they would be dropped as redeliveries. Such a
        partition's stored rows are retired (``WarmStore.retire_partition``). Returns
        {(topic, partition): (highest offset stored, log end)} for each retired partition."""
        retired = {}
        for topic in {topic for topic, _ in log_ends}:
            for partition, highest in self.warm.highest_offsets(topic).items():
                end = log_ends.get((topic, partition))
                if end is not None and end <= highest:
                    self.warm.retire_partition(topic, partition, f"{topic}{retired_suffix}")
                    retired[(topic, partition)] = (highest, end)
        return retired

    def close_now(self) -> None:
        """Close from outside the event loop (after the
        worker stopped), once the writes in flight finish."""
        self._executor.submit(self.warm.close).result()
        self._executor.shutdown(wait=True)

    # -- ingest ----------------------------------------------------------------------------------

    async def write(self, events: Sequence[StoredEvent]) -> int:
        """Store a batch: durable in warm when this
        returns, then cached in hot. Returns new rows."""
        if not events:
            return 0
        self._fill_ref_text_from_memory(events)
        demote_after = [
            e.ingested_at + self.policy.rule(e.priority).warm_retention_s for e in events
        ]
        inserted, already_cold = await self.run(self._write_warm, events, demote_after)
        evicted = self.hot.add(
            [e for e in events if e.key not in already_cold] if already_cold else events
        )
        if self.metrics:
            if evicted:
                self.metrics.demotions.labels("hot", "warm").inc(evicted)
            self._publish_sizes()
        return inserted

    def _fill_ref_text_from_memory(self, events: Sequence[StoredEvent]) -> None:
        in_batch = {e.event_id: e.text for e in events if e.type == "utterance"}
        for event in events:
            if event.ref_event_id and event.ref_text is None:
                cached = in_batch.get(event.ref_event_id) or getattr(
                    self.hot.utterance(event.ref_event_id), "text", None
                )
                event.ref_text = cached

    def _write_warm(
        self, events: Sequence[StoredEvent], demote_after: Sequence[float]
    ) -> tuple[int, set[tuple[str, int, int]]]:
        unresolved = [e for e in events if e.ref_event_id and e.ref_text is None]
        if unresolved:
            texts = self.warm.utterance_texts(e.ref_event_id for e in unresolved if e.ref_event_id)
            for event in unresolved:
                event.ref_text = texts.get(event.ref_event_id or "")
        inserted = self.warm.write(events, demote_after)
        # Only a redelivery stores fewer rows than it
        # got; hot must not cache what already left warm.
        already_cold = self.warm.demoted_among(events) if inserted < len(events) else set()
        return inserted, already_cold

    # -- ageing ----------------------------------------------------------------------------------

    async def maintain(self) -> dict[str, int]:
        """Evict expired hot events, demote aged warm events to cold, apply cold retention."""
        now = self.clock()
        moved = {"hot_to_warm": self.hot.evict_expired(now)}
        if self.metrics:
            self.metrics.demotions.labels("hot", "warm").inc(moved["hot_to_warm"])
        try:
            moved["warm_to_cold"], moved["cold_deleted"] = await self.run(self._age_disk_tiers, now)
        except Exception:
            # Cold unwritable or full: the events stay in warm (a demotion
            # commits only after its file is written) and the next
            # maintenance tries again. Counted here, logged by the caller.
            if self.metrics:
                self.metrics.store_errors.labels("cold").inc()
            raise
        if self.metrics:
            self.metrics.demotions.labels("warm", "cold").inc(moved["warm_to_cold"])
            self.metrics.retention_deleted.inc(moved["cold_deleted"])
            self._publish_sizes()
        return moved

    def _age_disk_tiers(self, now: float) -> tuple[int, int]:
        demoted = 0
        while due := self.warm.due_for_demotion(now, self.demotion_batch):
            path = self.cold.write(due)
            self.warm.commit_demotion(due, path, now)
            demoted += len(due)
        self.warm.forget_demoted_before(now - self.redelivery_horizon_s)
        deleted = 0
        if self.cold_retention_s is not None:
            for path, rows, max_ingested_at in self.warm.cold_files():
                if max_ingested_at <= now - self.cold_retention_s:
                    # unindex first: a crash leaves an orphan, never a dangling entry
                    self.warm.forget_cold_file(path, rows)
                    self.cold.delete(path)
                    deleted += rows
        return demoted, deleted

    # -- sizes -----------------------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        return {"hot": len(self.hot), "warm": self.warm.count, "cold": self.warm.cold_rows}

    def _publish_sizes(self) -> None:
        if not self.metrics:
            return
        for tier, count in self.sizes().items():
            self.metrics.tier_events.labels(tier).set(count)
        self.metrics.cold_files.set(self.warm.cold_files_count)
        self.metrics.hot_bytes.set(self.hot.bytes)
