"""Promotion: publish a candidate to the registry, swap it in (load, hot swap, CURRENT), announce
it on ``topics.model_updates``; and rollback, the same swap back to a previous version."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from models.finetune import FineTuneResult
from models.gate import GateVerdict
from models.registry import Registry
from models.serving import ModelServer
from streams.jsonsafe import json_safe

from .learning_metrics import LearningMetrics
from .model_loader import model_loader

__all__ = ["Announce", "Promoter"]

log = logging.getLogger("driftd.learning")
# Sends (key, value) on topics.model_updates; the awaitable
# it returns resolves once the broker has the record.
Announce = Callable[[bytes, bytes], Awaitable[Any]]


class Promoter:
    def __init__(
        self,
        server: ModelServer,
        registry: Registry,
        swap_lock: asyncio.Lock,
        announce: Announce,
        topic: str,
        metrics: LearningMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.server = server
        self.registry = registry
        self.swap_lock = swap_lock  # shared with the admin API's activations: one swap at a time
        self.announce = announce
        self.topic = topic
        self.metrics = metrics
        self.clock = clock

    async def publish(
        self, result: FineTuneResult, incumbent: str | None, trigger: str, run: dict[str, Any]
    ) -> str:
        """A registry version of the candidate, the incumbent its
        parent, the run's data, gate and training its info."""
        info = {
            "source": "fine-tune",
            "trigger": trigger,
            "data": run["data"],
            "gate": result.verdict.to_dict(),
            "train": result.report,
            "decay_evidence": run.get("evidence"),
        }
        publish = functools.partial(
            self.registry.publish, result.files, parent=incumbent, info=json_safe(info)
        )
        manifest = await asyncio.get_running_loop().run_in_executor(None, publish)
        return manifest.version

    async def swap(self, version: str) -> None:
        """Serve ``version`` and make it CURRENT; raises (and
        the old one keeps serving) when it does not load."""
        loop = asyncio.get_running_loop()
        async with self.swap_lock:
            await loop.run_in_executor(
                model_loader(), self.server.load_and_swap, self.registry, version
            )
            # The load hashed what it serves.
            await loop.run_in_executor(
                None, lambda: self.registry.set_current(version, hash_only=())
            )

    async def announce_swap(
        self, version: str, parent: str | None, trigger: str, verdict: GateVerdict
    ) -> None:
        """Tell the other replicas (and anyone listening) that ``version`` serves now."""
        update = {
            "event": "model_promoted",
            "version": version,
            "parent": parent,
            "trigger": trigger,
            "gate": verdict.to_dict(),
            "at": self.clock(),
        }
        try:
            await (await self.announce(b"driftd", json.dumps(json_safe(update)).encode()))
        except Exception as exc:  # noqa: BLE001 - the swap happened; a missed announcement is logged, not fatal
            log.error("could not announce %s on %s: %s", version, self.topic, exc)
        log.warning(
            "swapped to %s (parent %s, %s): %s", version, parent, trigger, verdict.describe()
        )

    async def rollback(self, previous: str, failed: str) -> bool:
        """Swap ``previous`` back in after ``failed``'s
        canary; False (logged) when that swap fails."""
        try:
            await self.swap(previous)
        except Exception:
            log.exception("rollback to %s failed; %s keeps serving", previous, failed)
            return False
        self.metrics.rollbacks.inc()
        self.metrics.results.labels("rolled_back").inc()
        return True
