"""Replicas of one consumer group working as one: a
single trainer, and every replica on the same model.

Kafka's group protocol already splits the input partitions among the
replicas (faust's consumer), and each replica stores and serves what
it consumes. What they must share beyond that travels on two topics:

- ``topics.quality``: a replica that does not train
  forwards its decay decisions and the labelled examples
  of its partitions; the trainer acts on those decisions
  as on its own and trains on those examples too.
- ``topics.model_updates``: the trainer announces
  each promoted version (``daemon.learning``). A record
  there makes every replica swap to the registry's CURRENT (verified on load:
  checksums, parity probe). CURRENT is also checked every ``models.sync_interval_s``,
  so a missed record, or a replica that was down or started late, still catches up.
  The registry must be shared storage for this (docs/scaling.md).

The trainer is the replica with ``learning.role = "trainer"``, or under ``"auto"`` whichever owns
partition 0 of the input topic, so the role moves with that partition on
failover (and a lone replica always trains). A new trainer reads the quality
topic from its start to rebuild the other partitions' examples (bounded by
``learning.max_examples``; set the topic's retention to ``learning.window_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.background import BackgroundTasks
from models.registry import Registry
from models.serving import ModelServer
from streams.jsonsafe import json_safe
from streams.monitor import Decision
from streams.training_set import LabelledExample

from .config import LearningSettings, Settings
from .model_loader import model_loader
from .producer import Send

__all__ = [
    "DECISION_MAX_AGE_S",
    "QualityForwarder",
    "ReplicaLink",
    "ReplicaMetrics",
    "TrainerRole",
    "replica_id",
]

log = logging.getLogger("driftd.cluster")

# a forwarded decision older than this (a new trainer rereading the topic) is history, not a trigger
DECISION_MAX_AGE_S = 300.0
_EXAMPLES_PER_RECORD = 500  # keeps a record far below Kafka's 1 MB default

# the ingest consumer's (topic, partition)s: faust's TPs are such tuples
Assignment = Callable[[], AbstractSet[tuple[str, int]]]


class PeerLearning(Protocol):
    """What the trainer's learning loop takes from the other replicas (daemon.learning)."""

    def add_peer_examples(self, examples: Sequence[LabelledExample]) -> None: ...

    def receive_decision(self, decision: Decision) -> None: ...


def replica_id() -> str:
    """Names this process in forwarded records and logs: host, pid and
    a random tag (containers are often all pid 1, and a restarted
    replica must not take its predecessor's records for its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.trainer = Gauge(
            "driftd_replica_trainer",
            "1 while this replica is the group's trainer (learning.role).",
            registry=registry,
        )
        self.forwarded = Counter(
            "driftd_replica_forwarded_total",
            "Records this replica forwarded to the trainer on topics.quality, by "
            "kind (decision, examples).",
            ["kind"],
            registry=registry,
        )
        self.received = Counter(
            "driftd_replica_received_total",
            "Decisions and labelled examples the trainer took from other replicas, by kind.",
            ["kind"],
            registry=registry,
        )
        self.syncs = Counter(
            "driftd_model_syncs_total",
            "Swaps to the registry's CURRENT made by another replica "
            "(model-updates or the periodic check).",
            registry=registry,
        )
        self.sync_failures = Counter(
            "driftd_model_sync_failures_total",
            "CURRENT versions this replica could not load (corrupt or unreadable); "
            "it kept serving its version.",
            registry=registry,
        )


class TrainerRole:
    """Whether this replica is the group's trainer: ``learning.role``, or under ``"auto"``
    whether it owns partition 0 of the input topic (``assignment``: the ingest consumer's)."""

    def __init__(self, settings: Settings, assignment: Assignment) -> None:
        self.input_topic = settings.topics.input
        self.learning = settings.learning
        self._assignment = assignment

    def reconfigure(self, settings: LearningSettings) -> None:
        """SIGHUP: the new ``learning.role`` takes effect at the next question."""
        self.learning = settings

    def is_trainer(self) -> bool:
        if self.learning.role != "auto":
            return self.learning.role == "trainer"
        return 0 in self.input_partitions()

    def input_partitions(self) -> list[int]:
        try:
            assigned = self._assignment()
        except Exception:  # noqa: BLE001 - the consumer is not up yet: no partition, no role
            return []
        return sorted(p for t, p in assigned if t == self.input_topic)

    def status(self, replica: str) -> dict[str, Any]:
        return {
            "id": replica,
            "role": self.learning.role,
            "trainer": self.is_trainer(),
            "input_partitions": self.input_partitions(),
        }


class QualityForwarder:
    """A follower's side of ``topics.quality``: its decay decisions
    and labelled examples, as records for the trainer."""

    def __init__(self, topic: str, replica: str, send: Send, metrics: ReplicaMetrics) -> None:
        self.topic, self.replica = topic, replica
        self._send = send
        self.metrics = metrics
        self._background = BackgroundTasks()  # the quality records being published

    def forward(self, kind: str, payload: Any) -> None:
        """Called in the event loop by the learning loop; the
        send runs as a task (a lost record is logged)."""
        if kind == "decision":
            decision: Decision = payload
            records = [
                {
                    "kind": "decision",
                    "replica": self.replica,
                    "at": decision.at,
                    "signals": list(decision.signals),
                    "evidence": json_safe(decision.evidence),
                    "labelled_samples": decision.labelled_samples,
                }
            ]
        else:
            examples: list[LabelledExample] = payload
            records = [
                {
                    "kind": "examples",
                    "replica": self.replica,
                    "examples": [
                        [e.text, e.intent, e.ts, e.utterance_id]
                        for e in examples[i : i + _EXAMPLES_PER_RECORD]
                    ],
                }
                for i in range(0, len(examples), _EXAMPLES_PER_RECORD)
            ]
        for record in records:
            self._background.spawn(self._publish(kind, json.dumps(record).encode()))

    async def _publish(self, kind: str, value: bytes) -> None:
        try:
            await (await self._send(self.topic, self.replica.encode(), value))
            self.metrics.forwarded.labels(kind).inc()
        except Exception as exc:  # noqa: BLE001 - the trainer misses one record; this replica goes on
            log.error("could not forward a %s record on %s: %s", kind, self.topic, exc)


class ReplicaLink(mode.Service):
    """Feeds the trainer what the followers forward, and
    keeps this replica on the registry's CURRENT."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        kafka_options: dict[str, Any],
        learning: PeerLearning,
        role: TrainerRole,
        server: ModelServer,
        registry: Registry,
        swap_lock: asyncio.Lock,
        replica: str,
        metrics: ReplicaMetrics,
        **kwargs: Any,
    ) -> None:
        """``replica``: this process's id (``replica_id``), as its ``QualityForwarder`` signs."""
        super().__init__(**kwargs)
        self.settings, self.bootstrap, self.kafka_options = settings, bootstrap, kafka_options
        self.learning, self.role, self.server, self.registry, self.swap_lock = (
            learning,
            role,
            server,
            registry,
            swap_lock,
        )
        self.metrics = metrics
        self.id = replica
        self._quality = TopicPartition(settings.topics.quality, 0)
        self._updates = TopicPartition(settings.topics.model_updates, 0)
        self._consumer: AIOKafkaConsumer | None = None
        self._was_trainer: bool | None = None
        # a CURRENT that failed to load: not retried until CURRENT changes
        self._refused: str | None = None
        # CURRENT as last read by the sync (for the status route)
        self.registry_current: str | None = None
        self._sync_now = asyncio.Event()

    def status(self) -> dict[str, Any]:
        return self.role.status(self.id)

    # -- the trainer's side of topics.quality -------------------------------------------------

    def _receive_quality(self, value: bytes) -> None:
        try:
            record = json.loads(value)
            if record.get("replica") == self.id:
                # our own, from before we trained: already in our store or already decided here
                return
            if record["kind"] == "examples":
                examples = [
                    LabelledExample(str(text), str(intent), float(ts), str(ref), "replica")
                    for text, intent, ts, ref in record["examples"]
                ]
                self.learning.add_peer_examples(examples)
                self.metrics.received.labels("examples").inc(len(examples))
            elif record["kind"] == "decision":
                if time.time() - float(record["at"]) > DECISION_MAX_AGE_S:
                    return
                decision = Decision(
                    float(record["at"]),
                    tuple(record["signals"]),
                    dict(record.get("evidence") or {}),
                    int(record.get("labelled_samples", 0)),
                )
                log.warning(
                    "decay decision from replica %s: %s", record["replica"], decision.describe()
                )
                self.metrics.received.labels("decision").inc()
                self.learning.receive_decision(decision)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the link
            log.error("ignored a malformed record on %s: %s", self.settings.topics.quality, exc)

    # -- model sync
    # ------------------------------------------------------------------------------------

    async def sync_current(self) -> str | None:
        """Swap to the registry's CURRENT if it is not
        what serves; returns the version swapped to."""
        if self.server.version is None:
            # the model service's first load (or bootstrap) is still running: it owns that
            return None
        loop = asyncio.get_running_loop()
        # CURRENT read under the lock: never undoes a promotion in progress here
        async with self.swap_lock:
            current = self.registry_current = await loop.run_in_executor(
                None, self.registry.current
            )
            if current is None or current == self.server.version or current == self._refused:
                return None
            try:
                await loop.run_in_executor(
                    model_loader(), self.server.load_and_swap, self.registry, current
                )
            except Exception as exc:  # noqa: BLE001 - a bad version is refused, the one serving stays
                self._refused = current
                self.metrics.sync_failures.inc()
                log.error(
                    "CURRENT is %s but it could not be loaded; %s keeps serving: %s",
                    current,
                    self.server.version,
                    exc,
                )
                return None
        self._refused = None
        self.metrics.syncs.inc()
        log.warning("now serving %s, the registry's CURRENT (set by another replica)", current)
        return current

    # -- the service
    # ---------------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.add_future(self._consume())
        self.add_future(self._sync_periodically())  # also catches up when the broker is away

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        """The group-less consumer of both topics, from their ends; retried while the broker is away
        (the daemon starts and serves without it, as the ingest consumer waits for it)."""
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                **self.kafka_options,
            )
            try:
                await consumer.start()
                consumer.assign([self._quality, self._updates])
                # the quality history is read only by a trainer (below)
                await consumer.seek_to_end(self._quality, self._updates)
                consumer.pause(self._quality)
                return consumer
            except Exception as exc:  # noqa: BLE001 - logged; the sync retries on its next turn
                await consumer.stop()
                log.warning("replica link: cannot reach the broker (%s); retrying in 2 s", exc)
                await asyncio.sleep(2)

    async def _consume(self) -> None:
        self._consumer = await self._connect()
        while not self.should_stop:
            await self._follow_role()
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            except Exception as exc:  # noqa: BLE001 - the broker is away: retry, as the ingest consumer does
                log.warning("replica link: %s; retrying", exc)
                await asyncio.sleep(1)
                continue
            for tp, records in batches.items():
                if tp == self._updates:
                    self._sync_now.set()
                else:
                    for record in records:
                        self._receive_quality(record.value)

    async def _follow_role(self) -> None:
        assert self._consumer is not None
        trainer = self.role.is_trainer()
        if trainer == self._was_trainer:
            return
        self._was_trainer = trainer
        self.metrics.trainer.set(1 if trainer else 0)
        if trainer:
            log.warning(
                "this replica is the trainer (learning.role = %s): reading %s from its start",
                self.role.learning.role,
                self.settings.topics.quality,
            )
            await self._consumer.seek_to_beginning(self._quality)
            self._consumer.resume(self._quality)
        else:
            log.info(
                "this replica is not the trainer: it forwards decisions and "
                "labelled examples on %s",
                self.settings.topics.quality,
            )
            self._consumer.pause(self._quality)

    async def _sync_periodically(self) -> None:
        interval = self.settings.models.sync_interval_s
        while not self.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._sync_now.wait(), timeout=interval if interval > 0 else None
                )
            self._sync_now.clear()
            try:
                await self.sync_current()
            except Exception:
                log.exception("could not check the registry's CURRENT")
