"""The replica link's decisions on real parts (learning loop, registry, ONNX
Runtime sessions); what it puts on the quality topic is captured at the
producer call. The broker round trip is tests/integration/test_replicas.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from daemon.cluster import (
    DECISION_MAX_AGE_S,
    QualityForwarder,
    ReplicaLink,
    ReplicaMetrics,
    TrainerRole,
    replica_id,
)
from daemon.config import load_settings
from daemon.followups import FineTuneState
from daemon.learning import LearningLoop
from models.finetune import FineTuneJob, run_fine_tune
from models.registry import Registry
from models.serving import ModelServer
from models.train import TrainSettings
from streams.monitor import Decision
from streams.tiers import StoredEvent
from streams.training_set import LabelledExample, merge_recent
from tests.stored_events import stored_event
from tests.toy_intents import examples


def stored(i: int, kind: str, **fields: Any) -> StoredEvent:
    return stored_event(i, kind, **{"ts": 1000.0 + i, **fields})


class Replica:
    """One replica's learning loop and link, with what it
    sends captured; ``owned`` are its input partitions."""

    def __init__(
        self,
        tmp_path: Path,
        role: str = "auto",
        server: ModelServer | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = load_settings(
            daemon={"data_dir": str(tmp_path)}, learning={"role": role, "canary_labels": 0}
        )
        self.server = server or ModelServer()
        self.registry = registry or Registry(tmp_path / "registry")
        self.owned: set[tuple[str, int]] = set()
        self.sent: list[dict[str, Any]] = []
        # as daemon/app.py wires them: the role and the forwarder first, then the loop, the link
        self.role = TrainerRole(self.settings, assignment=lambda: self.owned)
        replica, metrics = replica_id(), ReplicaMetrics(CollectorRegistry())
        forwarder = QualityForwarder(self.settings.topics.quality, replica, self._send, metrics)
        self.loop = LearningLoop(
            self.settings,
            store=None,
            server=self.server,
            registry=self.registry,
            metrics_registry=CollectorRegistry(),
            announce=None,
            swap_lock=asyncio.Lock(),
            is_trainer=self.role.is_trainer,
            forward=forwarder.forward,
        )
        self.link = ReplicaLink(
            self.settings,
            "127.0.0.1:1",
            {},
            self.loop,
            self.role,
            self.server,
            self.registry,
            asyncio.Lock(),
            replica=replica,
            metrics=metrics,
        )

    async def _send(self, topic: str, key: bytes, value: bytes) -> Any:
        assert topic == self.settings.topics.quality
        self.sent.append(json.loads(value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_under_auto_the_owner_of_input_partition_0_trains_and_the_role_follows_the_partition(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        replica = Replica(tmp_path)
        assert not replica.role.is_trainer()  # nothing assigned yet
        replica.owned = {(replica.settings.topics.input, 1), (replica.settings.topics.input, 2)}
        assert not replica.role.is_trainer()
        replica.owned.add((replica.settings.topics.input, 0))
        assert replica.role.is_trainer() and replica.loop.status()["trainer"]
        for role, expected in (("trainer", True), ("follower", False)):
            assert Replica(tmp_path / role, role).role.is_trainer() is expected
        follower = Replica(tmp_path / "f", "follower")
        started, message = follower.loop.request()
        assert not started and "not the trainer" in message

    asyncio.run(scenario())


def test_a_follower_forwards_decisions_and_labelled_examples_and_the_trainer_acts_on_them(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        follower, trainer = Replica(tmp_path / "f", "follower"), Replica(tmp_path / "t", "trainer")
        trainer.loop._start = lambda trigger, decision: starts.append((trigger, decision))  # type: ignore[method-assign]  # the trigger, not a run
        starts: list[tuple[str, Decision | None]] = []

        events = [
            stored(1, "label", ref_event_id="u1", intent="refund", ref_text="i want my money back"),
            # its text is unknown here: not an example
            stored(2, "label", ref_event_id="u2", intent="track"),
            stored(3, "utterance", text="where is it"),
        ]
        follower.loop.observe_batch(events, [])
        follower.loop._on_decision(
            Decision(time.time(), ("ewma",), {"ewma": {"ewma": 0.5, "reference": 0.9}}, 300)
        )
        await asyncio.sleep(0.05)
        kinds = [r["kind"] for r in follower.sent]
        assert kinds == ["examples", "decision"], kinds
        assert follower.sent[0]["examples"] == [["i want my money back", "refund", 1001.0, "u1"]]
        assert not starts and follower.loop.followups.state == "idle"

        for record in follower.sent:
            trainer.link._receive_quality(json.dumps(record).encode())
        assert trainer.loop.status()["peer_examples"] == 1
        assert [t for t, _ in starts] == ["decay"] and starts[0][1].signals == ("ewma",)

        stale = {**follower.sent[1], "at": time.time() - DECISION_MAX_AGE_S - 1}
        trainer.loop.followups.state = FineTuneState.IDLE
        trainer.loop.followups.finished_at = 0.0
        trainer.link._receive_quality(json.dumps(stale).encode())
        own = {**follower.sent[1], "replica": trainer.link.id}
        trainer.link._receive_quality(json.dumps(own).encode())
        trainer.link._receive_quality(b"{not json")  # logged and dropped
        assert len(starts) == 1, (
            "a stale decision, our own record and a malformed one start nothing"
        )

    asyncio.run(scenario())


def test_merge_recent_keeps_the_latest_label_per_utterance_in_the_window_oldest_first() -> None:
    own = [
        LabelledExample("a", "x", 10.0, "u1", "warm"),
        LabelledExample("b", "y", 20.0, "u2", "hot"),
    ]
    others = [
        LabelledExample("a", "z", 15.0, "u1", "replica"),
        LabelledExample("c", "y", 5.0, "u3", "replica"),
        LabelledExample("d", "x", 99.0, "u4", "replica"),
        LabelledExample("e", "x", 30.0, "u5", "replica"),
    ]
    merged = merge_recent(own, others, 8.0, 50.0)
    # u3 too old, u4 too new
    assert [(e.utterance_id, e.intent) for e in merged] == [("u1", "z"), ("u2", "y"), ("u5", "x")]
    assert [e.utterance_id for e in merge_recent(own, others, 8.0, 50.0, limit=2)] == ["u2", "u5"]


def test_a_replica_swaps_to_the_registrys_current_and_refuses_a_corrupt_one(tmp_path: Path) -> None:
    def version(seed: int) -> dict[str, bytes]:
        return run_fine_tune(
            FineTuneJob(
                train=examples(["refund", "track"], 120, seed),
                holdout=examples(["refund", "track"], 40, seed + 1),
                replay_eval=([], []),
                incumbent_dir=None,
                settings=TrainSettings(epochs=2, batch_size=32),
            )
        ).files

    registry = Registry(tmp_path / "registry")
    v1 = registry.publish(version(0), parent=None, info={}).version
    v2 = registry.publish(version(2), parent=v1, info={}).version
    v3 = registry.publish(version(4), parent=v2, info={}).version
    registry.set_current(v1)
    server = ModelServer()
    server.load_and_swap(registry, v1)

    async def scenario() -> None:
        replica = Replica(tmp_path, "follower", server=server, registry=registry)
        assert await replica.link.sync_current() is None  # already on CURRENT
        registry.set_current(v2)  # what another replica's promotion does
        assert await replica.link.sync_current() == v2 and server.version == v2
        registry.set_current(v3)
        (registry.root / v3 / "model.int8.onnx").write_bytes(b"corrupted")
        assert await replica.link.sync_current() is None and server.version == v2
        assert replica.link.metrics.sync_failures._value.get() == 1
        # not retried
        assert (
            await replica.link.sync_current() is None
            and replica.link.metrics.sync_failures._value.get() == 1
        )
        assert replica.link.metrics.syncs._value.get() == 1

    try:
        asyncio.run(scenario())
    finally:
        server.close(timeout=5)
