"""Hot tier: the most recent events in memory, bounded by count and by age.

It is a write-through cache: an event enters hot only after the warm write that makes it durable,
so evicting it ("demotion to warm") loses nothing. One FIFO per priority, because priorities keep
events for different ages and a long-lived head must not block the eviction of short-lived ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from .policy import PRIORITIES, TierPolicy
from .record import EventKey, StoredEvent

__all__ = ["HotTier"]


class HotTier:
    def __init__(self, max_events: int, policy: TierPolicy) -> None:
        self.max_events = max_events
        self.policy = policy
        self._queues: dict[str, OrderedDict[EventKey, StoredEvent]] = {
            p: OrderedDict() for p in PRIORITIES
        }
        self._utterances: dict[str, StoredEvent] = {}  # event_id -> utterance, for label joins
        self.bytes = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, events: Iterable[StoredEvent]) -> int:
        """Insert durable events; returns how many were evicted to respect the count bound."""
        for event in events:
            if not self.policy.rule(event.priority).hot:
                continue
            queue = self._queues[event.priority]
            key = event.key
            if key in queue:
                continue
            queue[key] = event
            self._count += 1
            self.bytes += len(event.payload)
            if event.type == "utterance":
                self._utterances[event.event_id] = event
        evicted = 0
        while self._count > self.max_events:
            queues = [q for q in self._queues.values() if q]
            if len(queues) == 1:  # the common case, one priority: its oldest go, no comparing
                excess = self._count - self.max_events
                for _ in range(excess):
                    self._forget(queues[0].popitem(last=False)[1])
                return evicted + excess
            self._pop_oldest()
            evicted += 1
        return evicted

    def evict_expired(self, now: float) -> int:
        """Drop events older than their priority's hot age; returns how many left."""
        evicted = 0
        for priority, queue in self._queues.items():
            cutoff = now - self.policy.rule(priority).hot_max_age_s
            while queue and next(iter(queue.values())).ingested_at <= cutoff:
                self._forget(queue.popitem(last=False)[1])
                evicted += 1
        return evicted

    def utterance(self, event_id: str) -> StoredEvent | None:
        return self._utterances.get(event_id)

    def __iter__(self) -> Iterator[StoredEvent]:
        for queue in self._queues.values():
            yield from queue.values()

    def _pop_oldest(self) -> None:
        heads = [(next(iter(q.values())).ingested_at, p) for p, q in self._queues.items() if q]
        _, priority = min(heads)
        self._forget(self._queues[priority].popitem(last=False)[1])

    def _forget(self, event: StoredEvent) -> None:
        self._count -= 1
        self.bytes -= len(event.payload)
        if event.type == "utterance" and self._utterances.get(event.event_id) is event:
            del self._utterances[event.event_id]
