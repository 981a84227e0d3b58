"""The learning loop's promotion and canary on real parts (registry, ONNX Runtime sessions,
a fine-tune run in process): a promoted version is published, announced and served; one
that does worse than its predecessor over the canary window is rolled back automatically."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.config import load_settings
from daemon.learning import LearningLoop
from models.finetune import FineTuneJob, run_fine_tune
from models.hygiene import HygieneSettings
from models.registry import Registry
from models.serving import ModelServer
from models.train import TrainSettings
from streams.datasets import load_examples
from tests.stored_events import stored_event as event
from tests.toy_intents import examples


def pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    return examples(["refund", "track", "cancel"], n, seed)


def feed(loop: LearningLoop, start: int, n: int, version: str, correct: bool) -> None:
    """n utterances predicted by ``version`` and their labels, right or wrong."""
    utterances = [event(start + i, "utterance", text="where is my parcel") for i in range(n)]
    predicted = [
        (u, {"intent": "track", "confidence": 0.9, "model_version": version}) for u in utterances
    ]
    labels = [
        event(start + i, "label", ref_event_id=u.event_id, intent="track" if correct else "refund")
        for i, u in enumerate(utterances)
    ]
    loop.observe_batch(utterances, predicted)
    loop.observe_batch(labels, [])


def test_promotion_is_published_announced_served_and_a_failing_canary_rolls_back(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)},
        learning={"canary_labels": 100, "canary_margin": 0.05, "followup_labels": 0},
    )
    registry = Registry(tmp_path / "registry")
    seed = run_fine_tune(
        FineTuneJob(
            train=pairs(300, 0),
            holdout=pairs(60, 1),
            replay_eval=([], []),
            incumbent_dir=None,
            settings=TrainSettings(epochs=5, batch_size=32),
        )
    )
    v1 = registry.publish(seed.files, parent=None, info={}).version
    registry.set_current(v1)
    server = ModelServer()
    server.load_and_swap(registry, v1)
    announced: list[dict] = []

    async def announce(key: bytes, value: bytes):
        announced.append(json.loads(value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def scenario() -> None:
        loop = LearningLoop(
            settings,
            store=None,
            server=server,
            registry=registry,
            metrics_registry=CollectorRegistry(),
            announce=announce,
            swap_lock=asyncio.Lock(),
        )
        # v1 was right on its last outcomes: the canary's baseline is 1.0
        feed(loop, 0, 200, v1, correct=True)
        candidate = run_fine_tune(
            FineTuneJob(
                train=pairs(300, 2),
                holdout=pairs(60, 3),
                replay_eval=([], []),
                incumbent_dir=str(registry.root / v1),
                settings=TrainSettings(epochs=2, batch_size=32),
            )
        )
        v2 = await loop._promote(candidate, v1, "manual", {"data": {}})
        assert (
            server.version == v2 and registry.current() == v2 and registry.verify(v2).parent == v1
        )
        assert announced and announced[-1]["version"] == v2 and announced[-1]["parent"] == v1
        feed(loop, 1000, 60, v2, correct=False)  # not yet the canary's 100 outcomes: no verdict
        await asyncio.sleep(0.1)
        assert server.version == v2
        feed(loop, 2000, 40, v2, correct=False)  # 0% over 100 against 100% before: roll back
        for _ in range(100):
            await asyncio.sleep(0.05)
            if loop.metrics.rollbacks._value.get() == 1:  # counted last: after the swap and CURRENT
                break
        assert server.version == v1 and registry.current() == v1
        assert loop.metrics.rollbacks._value.get() == 1
        assert any(m.kind == "rollback" for m in loop.feed.timeline.marks)

    asyncio.run(scenario())
    server.close(timeout=5)


def test_a_quiet_stream_gets_the_episodes_last_labels_learned(tmp_path: Path) -> None:
    """Fewer than followup_labels after the last fine-tune,
    then silence: one more follow-up, only once quiet."""
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)},
        learning={"followup_labels": 1000, "followup_quiet_s": 60, "canary_labels": 0},
    )
    now = [1000.0]
    loop = LearningLoop(
        settings,
        store=None,
        server=ModelServer(),
        registry=Registry(tmp_path / "registry"),
        metrics_registry=CollectorRegistry(),
        announce=None,
        swap_lock=None,
        clock=lambda: now[0],
    )
    started: list[str] = []
    loop._start = lambda trigger, decision: started.append(trigger)  # type: ignore[method-assign]  # the trigger, not a real run
    feed(loop, 0, 300, "v1", correct=True)
    loop.settle()
    assert not started, "no decay episode: nothing to follow up"

    loop.followups.followups_left = 2  # what a decay decision leaves behind
    feed(loop, 1000, 200, "v1", correct=True)
    loop.followups.labels_since_start = 200  # the last fine-tune took its data before these
    now[0] += 61
    loop.settle()
    assert not started, "200 labels are under a quarter of followup_labels"
    feed(loop, 2000, 100, "v1", correct=True)
    assert loop.status()["followup_pending"]
    now[0] += 59
    loop.settle()
    assert not started, "labels arrived 59 s ago: the stream is not quiet yet"
    now[0] += 2
    loop.settle()
    assert started == ["followup"] and loop.followups.followups_left == 1


def test_injected_duplicates_conflicts_and_leaks_are_removed_before_training_and_recorded(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)}, learning={"canary_labels": 0, "followup_labels": 0}
    )
    registry = Registry(tmp_path / "registry")
    wanted = {"transfer", "balance", "bill_due"}
    # real, distinct utterances
    train = [e for e in load_examples("clinc150", "train") if e.intent in wanted]
    texts, intents = [e.text for e in train], [e.intent for e in train]
    # 4 copies, 1 kept
    junk_texts = ["I want to TRANSFER 500 dollars to savings now"] * 3 + [
        "i want to transfer 500 dollars  to savings now\x00"
    ]
    junk_intents = ["transfer"] * 4
    # 3 x balance vs 1 x bill_due
    junk_texts += ["what is my balance and when is my bill due"] * 3 + [
        "What is my balance and when is my bill due"
    ]
    junk_intents += ["balance", "balance", "balance", "bill_due"]
    test = [e for e in load_examples("clinc150", "test") if e.intent in wanted]
    holdout = ([e.text for e in test], [e.intent for e in test])
    leaked = holdout[0][0]
    job = FineTuneJob(
        train=(texts + junk_texts + [leaked], intents + junk_intents + [holdout[1][0]]),
        holdout=holdout,
        replay_eval=([], []),
        # what the daemon sets
        incumbent_dir=None,
        settings=TrainSettings(epochs=2, batch_size=32),
        hygiene=HygieneSettings(),
    )
    result = run_fine_tune(job)

    async def promote() -> str:
        loop = LearningLoop(
            settings,
            store=None,
            server=ModelServer(),
            registry=registry,
            metrics_registry=CollectorRegistry(),
            announce=lambda key, value: _done(),
            swap_lock=asyncio.Lock(),
        )
        return await loop._promote(result, None, "manual", {"data": {}})

    async def _done():
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    version = asyncio.run(promote())
    hygiene = registry.verify(version).info["train"]["hygiene"]
    removed = hygiene["removed"]
    assert removed["holdout_leak"] == 1 and hygiene["samples"]["holdout_leak"] == [leaked]
    assert removed["conflict"] == 1 and hygiene["samples"]["conflict"] == [
        "What is my balance and when is my bill due"
    ]
    # the surplus transfer copies, and balance's after the conflict
    assert removed["exact_duplicate"] == 3 + 2
    assert removed["near_duplicate"] <= 2 and removed["empty"] == 0  # the real utterances are kept
    assert (
        hygiene["kept"]
        == len(texts) + 2 - removed["near_duplicate"]
        == result.report["train_examples"] + result.report["validation_examples"]
    )


def test_the_replay_sample_is_capped_per_intent() -> None:
    from daemon.learning import _cap_replay
    from streams.training_set import LabelledExample

    replay = [
        LabelledExample(f"t{i}", intent, float(i), f"u{i}", "cold")
        for i, intent in enumerate(["a"] * 30 + ["b"] * 2 + ["c"])
    ]
    capped, removed = _cap_replay(replay, 1.0)  # fair share 33 / 3 = 11
    assert removed == 19 and [e.intent for e in capped].count("a") == 11 and len(capped) == 14
    assert _cap_replay(replay, 3.0)[1] == 0  # 3 x 11 = 33: nothing over the cap


def test_a_fine_tune_refuses_to_warm_start_from_an_incumbent_whose_training_files_changed(
    tmp_path: Path,
) -> None:
    """A swap hashes only the files it serves; the fine-tune
    hashes the rest (model.pt) before reading them."""
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)}, learning={"canary_labels": 0, "followup_labels": 0}
    )
    registry = Registry(tmp_path / "registry")
    seed = run_fine_tune(
        FineTuneJob(
            train=pairs(300, 0),
            holdout=pairs(60, 1),
            replay_eval=([], []),
            incumbent_dir=None,
            settings=TrainSettings(epochs=2, batch_size=32),
        )
    )
    v1 = registry.publish(seed.files, parent=None, info={}).version
    server = ModelServer()
    server.load_and_swap(registry, v1)
    weights = registry.path(v1, "model.pt")
    weights.write_bytes(weights.read_bytes()[::-1])  # same size: only a hash tells
    server.load_and_swap(registry, v1)  # still serves: the served files are intact
    registry.set_current(v1, hash_only=())

    async def fine_tune() -> None:
        loop = LearningLoop(
            settings,
            store=None,
            server=server,
            registry=registry,
            metrics_registry=CollectorRegistry(),
            announce=None,
            swap_lock=asyncio.Lock(),
        )
        # store=None: reaching the data query would fail differently
        await loop._fine_tune("manual", None)
        run = loop.runner.history[-1]
        assert run["result"] == "failed" and "model.pt has sha256" in run["detail"], run
        assert loop.metrics.failures.labels("error")._value.get() == 1

    asyncio.run(fine_tune())
    assert server.version == v1
    server.close(timeout=5)
