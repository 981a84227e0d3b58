"""The examples a fine-tune keeps out of training: spread
over the newest stretch, stable as examples arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import load_settings
from daemon.learning import LearningLoop
from models.finetune import _split_validation
from models.registry import Registry
from models.serving import ModelServer
from models.withhold import newest_spread
from tests.unit.test_tiers import Clock, event, label, make_store, run

KEYS = [f"event-{i}" for i in range(4000)]


def test_span_one_is_the_newest_block() -> None:
    assert newest_spread(KEYS[:100], 0.1, 1, salt="holdout") == list(range(90, 100))
    assert newest_spread(KEYS[:5], 0.1, 1, salt="holdout") == [4]  # never empty


@pytest.mark.parametrize("span", [2, 4, 8])
def test_a_spread_share_has_about_the_size_and_stays_in_the_newest_stretch(span: int) -> None:
    picked = newest_spread(KEYS, 0.1, span, salt="holdout")
    assert picked == sorted(set(picked))
    assert abs(len(picked) - 400) < 60, len(picked)
    assert min(picked) >= 4000 - 400 * span  # recent: within the newest fraction x span
    # the last 250 arrivals: only about 1 in span of them is kept out
    newest_round = range(3750, 4000)
    assert abs(sum(i in newest_round for i in picked) / 250 - 1 / span) < 0.1


def test_an_example_trained_on_never_returns_to_a_later_holdout() -> None:
    earlier = set(newest_spread(KEYS[:3000], 0.1, 4, salt="holdout"))
    trained = set(range(3000)) - earlier
    later = set(newest_spread(KEYS, 0.1, 4, salt="holdout"))
    assert later and not later & trained
    # Held out then and still in the newest stretch now:
    # still held out (membership is by key, not position).
    assert {i for i in earlier if i >= 4000 - 1600} <= later


def test_salts_draw_independently() -> None:
    holdout = set(newest_spread(KEYS, 0.1, 4, salt="holdout"))
    validation = set(newest_spread(KEYS, 0.1, 4, salt="validation"))
    assert holdout and validation and len(holdout & validation) < len(holdout) / 2


@pytest.mark.parametrize(("fraction", "span"), [(1.0, 4), (-0.1, 4), (0.1, 0)])
def test_bad_arguments_are_refused(fraction: float, span: int) -> None:
    with pytest.raises(ValueError):
        newest_spread(KEYS, fraction, span, salt="holdout")


def test_the_warm_start_validation_split_is_spread_over_the_newest_examples() -> None:
    texts = [f"text {i}" for i in range(2000)]
    intents = [f"intent {i % 7}" for i in range(2000)]
    (train, train_intents), val = _split_validation(
        texts, intents, 0.05, seed=0, newest=True, span=4
    )
    assert val is not None and len(train) + len(val[0]) == 2000 and not set(train) & set(val[0])
    positions = [int(t.split()[1]) for t in val[0]]
    assert min(positions) >= 2000 - 400 and 60 < len(positions) < 140
    # order kept
    assert train == [t for t in texts if t not in set(val[0])] and train_intents == [
        f"intent {int(t.split()[1]) % 7}" for t in train
    ]
    (_, _), block = _split_validation(texts, intents, 0.05, seed=0, newest=True, span=1)
    assert block is not None and block[0] == texts[1900:]


@pytest.mark.parametrize("span", [1, 4])
def test_the_learning_loop_holds_out_a_spread_of_the_newest_labels(
    tmp_path: Path, span: int
) -> None:
    store = make_store(tmp_path, Clock())
    events = []
    for i in range(1000):
        events += [
            event(2 * i, event_id=f"u{i}", text=f"utterance number {i}", ts=1_000_000.0 + i),
            label(2 * i + 1, f"u{i}", f"intent{i % 5}", ts=1_000_000.0 + i + 0.5),
        ]
    run(store.write(events))
    settings = load_settings(
        daemon={"data_dir": str(tmp_path)},
        learning={"replay_ratio": 0, "holdout_fraction": 0.1, "holdout_span": span},
    )
    loop = LearningLoop(
        settings,
        store=store,
        server=ModelServer(),
        registry=Registry(tmp_path / "registry"),
        metrics_registry=CollectorRegistry(),
        announce=None,
        swap_lock=None,
        clock=lambda: 1_000_000.0 + 2000,
    )
    job, counts = asyncio.run(loop._build_job(None, "manual"))
    store.close_now()
    assert job is not None and job.withhold_span == span
    held = sorted(int(text.split()[-1]) for text in job.holdout[0])
    assert (
        counts["holdout"] == len(held)
        and not set(job.holdout[0]) & set(job.train[0])
        and len(held) + len(job.train[0]) == 1000
    )
    if span == 1:
        assert held == list(range(900, 1000))  # the newest block
    else:
        assert min(held) >= 1000 - 100 * span and 60 < len(held) < 140
        newest_hundred = [i for i in held if i >= 900]
        assert 5 < len(newest_hundred) < 50  # about a quarter of the newest labels, not all of them
