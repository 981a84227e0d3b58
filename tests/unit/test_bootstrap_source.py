"""What the daemon's first model trains on (models.bootstrap_source),
the stratified holdout of `driftd train`, and a daemon with an
empty registry waiting for a CURRENT (daemon/model_service.py)."""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_settings
from daemon.model_service import ModelService, bootstrap_source, stratified_holdout, train_version
from models.registry import Registry
from models.serving import ModelServer
from streams.datasets import DATASETS
from tests.toy_intents import examples

TOY_INTENTS = ["greet", "bye", "refund", "track"]


# --- settings ------------------------------------------------------------------------------------


def test_an_empty_source_means_the_demo_dataset_with_the_embedded_broker_only() -> None:
    assert bootstrap_source(load_settings(None)) == "clinc150"
    assert (
        bootstrap_source(load_settings(None, models={"bootstrap_dataset": "banking77"}))
        == "banking77"
    )
    assert bootstrap_source(load_settings(None, kafka={"bootstrap": "kafka1:9092"})) is None
    assert (
        bootstrap_source(
            load_settings(
                None, kafka={"bootstrap": "kafka1:9092"}, models={"bootstrap_source": "snips"}
            )
        )
        == "snips"
    )
    mine = load_settings(
        None, kafka={"bootstrap": "kafka1:9092"}, models={"bootstrap_source": "/data/mine.csv"}
    )
    assert bootstrap_source(mine) == "/data/mine.csv"
    assert (
        bootstrap_source(
            load_settings(None, models={"bootstrap": False, "bootstrap_source": "snips"})
        )
        is None
    )


@pytest.mark.parametrize(
    "value", ["", *DATASETS, "intents.csv", "/srv/x.jsonl.gz", "s3://bucket/intents.parquet"]
)
def test_accepted_sources(value: str) -> None:
    assert load_settings(None, models={"bootstrap_source": value}).models.bootstrap_source == value


@pytest.mark.parametrize("value", ["clinc", "intents.txt", "nowhere://bucket/a.csv"])
def test_a_bad_source_names_the_key_and_what_was_expected(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, models={"bootstrap_source": value})
    message = str(caught.value)
    assert (
        f"models.bootstrap_source = {value!r} is invalid" in message
        and "DRIFTD_MODELS__BOOTSTRAP_SOURCE" in message
    )
    if "://" not in value:
        assert (
            "expected a shipped dataset name (clinc150, banking77, snips" in message
            and ".csv, .jsonl or .parquet file" in message
        )


def test_dataset_names_are_checked_against_the_shipped_list() -> None:
    for key in ("models.bootstrap_dataset", "replay.dataset"):
        section, name = key.split(".")
        assert (
            getattr(getattr(load_settings(None, **{section: {name: DATASETS[-1]}}), section), name)
            == DATASETS[-1]
        )
        with pytest.raises(
            ConfigError,
            match=rf"{key} = 'clinc' is invalid: value error, unknown dataset; expected "
            r"one of clinc150",
        ):
            load_settings(None, **{section: {name: "clinc"}})


# --- the holdout ---------------------------------------------------------------------------------


def test_the_holdout_takes_a_share_of_every_intent_and_leaves_each_one_in_training() -> None:
    intents = ["a"] * 100 + ["b"] * 20 + ["c"] * 3 + ["d"]
    train, holdout = stratified_holdout(intents, 0.1, seed=3)
    assert sorted(train + holdout) == list(range(len(intents)))
    assert Counter(intents[i] for i in holdout) == Counter({"a": 10, "b": 2})
    assert {intents[i] for i in train} == {"a", "b", "c", "d"}
    assert stratified_holdout(intents, 0.1, seed=3) == (train, holdout)
    assert stratified_holdout(intents, 0.1, seed=4) != (train, holdout)
    assert stratified_holdout(intents, 0.0) == (list(range(len(intents))), [])


# --- the model service ---------------------------------------------------------------------------


def run_service(
    settings,
    registry: Registry,
    during=None,
    until=lambda server: server.version is not None,
    timeout_s: float = 60,
) -> ModelServer:
    """Start a ModelService, run ``during(registry)`` in
    a thread, wait for ``until(server)``, stop it."""
    server = ModelServer()

    async def scenario() -> None:
        service = ModelService(settings, server, registry)
        await service.start()
        try:
            if during is not None:
                await asyncio.get_running_loop().run_in_executor(None, during, registry)
            deadline = time.monotonic() + timeout_s
            while not until(server) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await service.stop()

    asyncio.run(scenario())
    return server


def test_an_empty_registry_against_a_real_cluster_serves_nothing_until_a_version_is_made_current(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = {"registry_dir": str(tmp_path / "registry"), "sync_interval_s": 0.2}
    settings = load_settings(None, kafka={"bootstrap": "kafka1:9092"}, models=models)
    registry = Registry(settings.registry_dir)
    texts, intents = examples(TOY_INTENTS, 400, seed=1)
    published: list[str] = []

    def driftd_train(reg: Registry) -> None:
        time.sleep(0.5)  # the service has looked and found nothing
        trained = train_version(
            texts,
            intents,
            reg,
            architecture="bag_of_ngrams",
            info={"source": "test"},
            holdout_fraction=0.1,
        )
        assert trained.holdout_examples == 40 and trained.train_examples == 360
        assert trained.holdout_accuracy is not None and trained.holdout_accuracy > 0.9
        assert trained.manifest.info["holdout_accuracy"] == trained.holdout_accuracy
        assert reg.current() is None  # publishing never moves CURRENT
        reg.set_current(trained.manifest.version)
        published.append(trained.manifest.version)

    with caplog.at_level(logging.INFO, logger="driftd.models"):
        server = run_service(settings, registry, driftd_train)
    assert published and server.version == published[0]
    assert server.predict(["where is my parcel"], top_k=1)[0].intent == "track"
    waiting = [r.getMessage() for r in caplog.records if "no model serves" in r.getMessage()]
    assert len(waiting) == 1, caplog.text
    for part in (
        "kafka.bootstrap is not the embedded broker",
        "driftd train --from FILE",
        "models.bootstrap_source",
    ):
        assert part in waiting[0]
    assert registry.versions() == published  # nothing trained on the demo dataset


def test_a_bootstrap_source_file_trains_the_first_model_and_a_bad_one_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts, intents = examples(TOY_INTENTS, 300, seed=2)
    good = tmp_path / "mine.csv"
    with open(good, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(
            [("utterance", "label"), *zip(texts, intents, strict=False), ("", "greet")]
        )
    settings = load_settings(
        None,
        kafka={"bootstrap": "kafka1:9092"},
        models={
            "registry_dir": str(tmp_path / "a"),
            "bootstrap_source": str(good),
            "bootstrap_text_column": "utterance",
            "bootstrap_intent_column": "label",
        },
    )
    registry = Registry(settings.registry_dir)
    with caplog.at_level(logging.INFO, logger="driftd.models"):
        server = run_service(settings, registry)
    assert server.version == registry.current() == "v000001"
    assert registry.verify("v000001").info["file"] == str(good)
    assert "skipped 1 rows with an empty text or intent" in caplog.text

    caplog.clear()
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,intent\ncafé,order\n".encode("latin-1"))
    settings = load_settings(
        None,
        models={
            "registry_dir": str(tmp_path / "b"),
            "bootstrap_source": str(bad),
            "sync_interval_s": 0.2,
        },
    )
    with caplog.at_level(logging.INFO, logger="driftd.models"):
        server = run_service(
            settings,
            Registry(settings.registry_dir),
            until=lambda s: "not UTF-8" in caplog.text,
            timeout_s=20,
        )
    assert server.version is None
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith(
        f"models.bootstrap_source: {bad} is not UTF-8 text: byte 0xe9 on line 2"
    )
    assert line.exc_info is None  # one line, no traceback
