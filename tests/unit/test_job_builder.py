"""The training-set builder on a real tiered store (SQLite warm tier): when there is
enough data, what goes into a fine-tune's job, and the examples other replicas sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon.config import load_settings
from daemon.job_builder import GATE_MIN_HOLDOUT, JobBuilder
from models.registry import Registry
from streams.tiers import TieredStore
from streams.training_set import LabelledExample
from tests.unit.test_tiers import Clock, event, label, make_store, run

NOW = 1_000_000.0 + 2000


def stored(tmp_path: Path, n: int) -> TieredStore:
    """n utterances, each labelled half a second after it, one intent of five each."""
    store = make_store(tmp_path, Clock())
    events = []
    for i in range(n):
        events += [
            event(2 * i, event_id=f"u{i}", text=f"utterance number {i}", ts=1_000_000.0 + i),
            label(2 * i + 1, f"u{i}", f"intent{i % 5}", ts=1_000_000.0 + i + 0.5),
        ]
    run(store.write(events))
    return store


def builder(tmp_path: Path, store: TieredStore | None, **learning: object) -> JobBuilder:
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)},
        learning={"replay_ratio": 0, "min_labelled": 100, "holdout_fraction": 0.1, **learning},
    )
    return JobBuilder(settings, store, Registry(tmp_path / "registry"), lambda: NOW)


def test_too_few_labelled_examples_build_no_job_and_an_incumbent_needs_enough_for_the_gates_holdout(
    tmp_path: Path,
) -> None:
    store = stored(tmp_path, 99)
    jobs = builder(tmp_path, store)
    try:
        assert asyncio.run(jobs.build(None, "decay")) == (None, {"recent": 99, "from_replicas": 0})
        assert (
            jobs.min_examples(None) == 100
            and jobs.min_examples_reason(None) == "learning.min_labelled"
        )
        # 50 held out at holdout_fraction 0.1
        assert jobs.min_examples("v000001") == GATE_MIN_HOLDOUT * 10
        reason = f"a holdout of {GATE_MIN_HOLDOUT} at learning.holdout_fraction = 0.1"
        assert jobs.min_examples_reason("v000001") == reason
        lenient = builder(tmp_path, store, min_labelled=600)
        assert lenient.min_examples("v000001") == 600
        assert lenient.min_examples_reason("v000001") == "learning.min_labelled"
    finally:
        store.close_now()


def test_a_job_holds_out_the_newest_labels_and_gates_a_follow_up_on_its_own_margin(
    tmp_path: Path,
) -> None:
    store = stored(tmp_path, 600)
    jobs = builder(tmp_path, store, gate_margin=0.02, followup_gate_margin=-0.03, holdout_span=1)
    try:
        first, counts = asyncio.run(jobs.build(None, "cold_start"))
        followup, _ = asyncio.run(jobs.build("v000001", "followup"))
    finally:
        store.close_now()
    assert first is not None and followup is not None
    assert counts == {
        "recent": 600,
        "from_replicas": 0,
        "replay_capped": 0,
        "train": 540,
        "train_recent": 540,
        "train_replay": 0,
        "holdout": 60,
        "replay_eval": 0,
        "unlabelled": 0,
    }
    assert first.holdout[0] == [f"utterance number {i}" for i in range(540, 600)]
    assert first.train[0][0] == "utterance number 0"
    assert first.train[1][:5] == ["intent0", "intent1", "intent2", "intent3", "intent4"]
    assert first.gate.margin == 0.02 and first.incumbent_dir is None
    assert first.gate.min_holdout == 1, "no incumbent: any model beats none"
    assert followup.gate.margin == -0.03 and followup.gate.min_holdout == GATE_MIN_HOLDOUT
    assert followup.incumbent_dir == str(tmp_path / "registry" / "v000001")
    assert first.hygiene is not None and first.pseudo is None and first.unlabelled == []


def test_other_replicas_examples_join_the_recent_data_bounded_by_max_examples(
    tmp_path: Path,
) -> None:
    store = stored(tmp_path, 120)
    jobs = builder(tmp_path, store, max_examples=150)
    peers = [
        LabelledExample(f"peer text {i}", "intent9", 1_000_000.0 + 500 + i, f"p{i}", "replica")
        for i in range(40)
    ]
    jobs.add_peer_examples(peers)
    try:
        job, counts = asyncio.run(jobs.build(None, "decay"))
    finally:
        store.close_now()
    assert job is not None and counts["recent"] == 150 and counts["from_replicas"] == 40
    assert "peer text 39" in job.holdout[0] + job.train[0]

    jobs.add_peer_examples(peers * 4)  # 200 more: the deque keeps the newest max_examples
    assert len(jobs.peer_examples) == 150
    jobs.reconfigure(load_settings(learning={"max_examples": 100}))
    assert len(jobs.peer_examples) == 100 and jobs.peer_examples.maxlen == 100
