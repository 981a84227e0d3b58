"""IngestAgent.handle against a real TieredStore:
decoding, pseudonymisation, and retry instead of loss."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from prometheus_client import CollectorRegistry

from streams.ingest import IngestAgent, RawRecord, UserIdPolicy
from streams.metrics import StreamMetrics
from streams.schema import Rejection
from streams.tiers import TieredStore, TierPolicy


class FlakyStore(TieredStore):
    """A real store whose first ``failures`` writes fail, as a full or unwritable disk would."""

    def __init__(self, *args, failures: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    async def write(self, events):
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await super().write(events)


def record(offset: int, value: dict | bytes) -> RawRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord("conversations", 0, offset, b"k", raw, 1_700_000_000.0)


def utterance(i: int, **extra) -> dict:
    return {
        "event_id": f"u{i}",
        "type": "utterance",
        "conversation_id": "c",
        "turn": 0,
        "ts": 1.0,
        "text": f"hello {i}",
        **extra,
    }


def make_agent(
    tmp_path,
    *,
    store_failures: int = 0,
    dlq_failures: int = 0,
    users: UserIdPolicy | None = None,
    **options,
):
    metrics = StreamMetrics(CollectorRegistry())
    store = FlakyStore(
        tmp_path / "warm.sqlite3",
        str(tmp_path / "cold"),
        TierPolicy(60, 3600),
        100,
        metrics=metrics,
        failures=store_failures,
    )
    asyncio.run(store.open())
    delivered: list[tuple[bytes, str]] = []
    attempts = {"dlq": dlq_failures}

    async def dead_letter(rec: RawRecord, why: Rejection):
        future = asyncio.get_running_loop().create_future()
        if attempts["dlq"]:
            attempts["dlq"] -= 1
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            delivered.append((rec.value, why.reason))
            future.set_result(None)
        return future

    agent = IngestAgent(
        store,
        dead_letter,
        metrics,
        users=users or UserIdPolicy(),
        retry_initial_s=0.01,
        retry_max_s=0.02,
        **options,
    )
    return agent, store, metrics, delivered


def store_errors(metrics: StreamMetrics, sink: str) -> float:
    (family,) = metrics.store_errors.collect()
    return next(
        s.value
        for s in family.samples
        if s.name == "driftd_store_errors_total" and s.labels == {"sink": sink}
    )


def prediction_sink():
    """A predictions sink that records (partition, [(key, value)]) per call."""
    calls: list[tuple[int, list[tuple[bytes, bytes]]]] = []

    async def publish(partition, records):
        calls.append((partition, list(records)))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    return publish, calls


def test_predictions_go_out_per_input_partition_in_offset_order(tmp_path):
    publish, calls = prediction_sink()

    def predict(texts):
        return [{"intent": t, "confidence": 0.9, "top_k": [], "model_version": "v1"} for t in texts]

    agent, *_ = make_agent(tmp_path, predict=predict, publish_prediction=publish)
    records = [
        RawRecord("conversations", i % 3, i, b"k", json.dumps(utterance(i)).encode(), 1.0)
        for i in range(12)
    ]
    asyncio.run(agent.handle(records))
    assert sorted(partition for partition, _ in calls) == [0, 1, 2]  # one call each
    for partition, published in calls:
        intents = [json.loads(value)["intent"] for _, value in published]
        assert intents == [f"hello {i}" for i in range(partition, 12, 3)]


def test_a_failing_model_leaves_the_batch_stored_and_unpredicted(tmp_path, caplog):
    publish, calls = prediction_sink()

    def predict(texts):
        raise RuntimeError("the session broke")

    agent, store, metrics, _ = make_agent(tmp_path, predict=predict, publish_prediction=publish)
    stored, rejected = asyncio.run(agent.handle([record(0, utterance(0)), record(1, utterance(1))]))
    assert (stored, rejected) == (2, 0) and store.warm.count == 2 and calls == []
    (family,) = metrics.predictions_skipped.collect()
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [2]
    assert "the session broke" in caplog.text


def test_failed_writes_are_retried_until_stored_and_counted(tmp_path):
    agent, store, metrics, delivered = make_agent(tmp_path, store_failures=2, dlq_failures=1)
    stored, rejected = asyncio.run(
        agent.handle([record(0, utterance(0)), record(1, b"{oops"), record(2, utterance(2))])
    )
    assert (stored, rejected) == (2, 1)
    assert store.warm.count == 2 and delivered == [(b"{oops", "not_json")]
    assert store_errors(metrics, "warm") == 2
    assert store_errors(metrics, "dlq") == 1
    assert agent.next_offsets == {("conversations", 0): 3}


def test_user_ids_are_pseudonymised_before_storage(tmp_path):
    agent, store, _, _ = make_agent(tmp_path, users=UserIdPolicy("pseudonymised", b"salt"))
    asyncio.run(agent.handle([record(0, utterance(0, user_id="alice@example.com"))]))
    (stored,) = list(store.hot)
    assert stored.user_ref and stored.user_ref != "alice@example.com"
    assert (
        b"alice" not in stored.payload and json.loads(stored.payload)["user_id"] == stored.user_ref
    )
    # stable: joins still work
    assert UserIdPolicy("pseudonymised", b"salt").apply("alice@example.com") == stored.user_ref
    assert UserIdPolicy("drop").apply("alice@example.com") is None
