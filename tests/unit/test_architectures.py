"""Contract tests run on every registered architecture: it learns, exports
with parity, serves through the registry, round-trips its weights, grows
its label set, and fails loudly when training diverges. The encoder runs
on a tiny random BERT (tests/tiny_bert.py), every layer trained."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.architectures import (
    ARCHITECTURES,
    EncoderSource,
    get_architecture,
    load_weights,
    new_model_config,
    save_weights,
)
from models.export import PARITY_ATOL, build_version_files
from models.featurize import featurizer_from_json
from models.registry import Registry
from models.serving import LoadedModel
from models.train import TrainingDiverged, TrainSettings, accuracy, train_classifier
from tests.tiny_bert import TINY_BERT, write_tiny_bert
from tests.toy_intents import examples

PROBE = [
    "hello friend",
    "where is my parcel",
    "refund the phone please",
    "",
    "upgrade the plan now",
]
SMALL = {  # tiny configs: the contract, not the quality, is under test here
    "bag_of_ngrams": {"buckets": 4096, "dim": 16, "hidden": 32},
    "transformer": {"buckets": 4096, "max_len": 32, "dim": 32, "heads": 2, "layers": 1, "ffn": 64},
    # the checkpoint's network; a pretrained architecture's config comes from its checkpoint
    "encoder": TINY_BERT,
}
# a random tiny BERT learns from scratch here, far above a pretrained encoder's fine-tuning rate
LR = {"encoder": 3e-3}


_CHECKPOINTS: dict[str, Path] = {}  # architecture -> its tiny checkpoint, written once per module


@pytest.fixture(scope="module", autouse=True)
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> None:
    _CHECKPOINTS["encoder"] = write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def small_config(name: str):
    arch = get_architecture(name)
    return (
        new_model_config(name, EncoderSource(str(_CHECKPOINTS[name])))
        if arch.pretrained
        else arch.config(**SMALL[name])
    )


def contract_settings(name: str, **kwargs) -> TrainSettings:
    """Every layer trains: the tiny encoder is random, so a frozen one would test the head alone."""
    return TrainSettings(**{"trainable_layers": -1, **kwargs})


def train(name: str, intents: list[str], **kwargs):
    settings = kwargs.pop(
        "settings",
        contract_settings(name, epochs=25, lr=LR.get(name, get_architecture(name).lr * 2), seed=0),
    )
    texts, labels = examples(intents, 300, 0)
    return train_classifier(
        texts, labels, architecture=name, config=small_config(name), settings=settings, **kwargs
    )


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def trained(request):
    return request.param, train(request.param, ["greet", "refund", "track", "cancel"])


def test_every_architecture_has_a_small_config_here():
    assert set(SMALL) == set(ARCHITECTURES)


def test_it_learns_the_task(trained):
    _, result = trained
    texts, labels = examples(["greet", "refund", "track", "cancel"], 200, 99)
    assert accuracy(result.model, result.featurizer, result.labels, texts, labels) >= 0.95


def test_export_matches_torch_and_serves_through_the_registry(trained, tmp_path: Path):
    name, result = trained
    files, report = build_version_files(result.model, result.featurizer, result.labels, PROBE)
    assert report["architecture"] == name and report["fp32_parity_max_abs"] <= PARITY_ATOL
    assert featurizer_from_json(files["featurizer.json"].decode()) == result.featurizer
    registry = Registry(tmp_path / "registry")
    version = registry.publish(files, parent=None, info={}).version
    served = LoadedModel.load(registry, version)
    try:
        got = [p.intent for p in served.predict(PROBE)]
    finally:
        served.close()
    with torch.no_grad():
        want = [
            result.labels[i]
            for i in result.model(torch.from_numpy(result.featurizer.batch(PROBE))).argmax(1)
        ]
    assert got == want


def test_weights_round_trip_exactly(trained):
    _, result = trained
    ids = torch.from_numpy(result.featurizer.batch(PROBE))
    restored = load_weights(save_weights(result.model))
    assert type(restored) is type(result.model) and restored.config == result.model.config
    with torch.no_grad():
        assert torch.equal(restored(ids), result.model(ids))


def test_an_empty_text_gives_finite_logits(trained):
    _, result = trained
    with torch.no_grad():
        logits = result.model(torch.from_numpy(result.featurizer.batch(["", "!!!"])))
    assert torch.isfinite(logits).all()


def test_a_new_intent_is_learned_and_old_ones_kept_on_warm_start(trained):
    name, result = trained
    incumbent = load_weights(save_weights(result.model))
    old_ids = torch.from_numpy(result.featurizer.batch(PROBE))
    grown = load_weights(save_weights(result.model))
    grown.grow(grown.num_labels + 1)
    with torch.no_grad():  # growing alone changes no prediction
        assert torch.equal(grown(old_ids).argmax(1), incumbent(old_ids).argmax(1))
    five = ["greet", "refund", "track", "cancel", "upgrade"]
    texts, labels = examples(five, 300, 1)
    tuned = train_classifier(
        texts,
        labels,
        labels=result.labels,
        featurizer=result.featurizer,
        init=incumbent,
        settings=contract_settings(
            name, epochs=10, lr=LR.get(name, get_architecture(name).lr), seed=1
        ),
    )
    assert tuned.labels[: len(result.labels)] == result.labels and tuned.labels[-1] == "upgrade"
    test_texts, test_labels = examples(five, 200, 7)
    assert accuracy(tuned.model, tuned.featurizer, tuned.labels, test_texts, test_labels) >= 0.9


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_diverging_loss_raises_instead_of_returning_a_model(name: str):
    with pytest.raises(TrainingDiverged, match="loss is"):
        train(
            name,
            ["greet", "refund"],
            settings=contract_settings(name, epochs=3, lr=1e30, clip_norm=0),
        )


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_batch_is_its_texts_ids_padded_to_its_longest(name: str, monkeypatch):
    """Batches are cut from one padded table: each must still
    be exactly its texts' ids, as wide as its longest."""
    arch = get_architecture(name)
    texts = [
        "hi",
        "refund the phone please now",
        "where is my parcel",
        "a much longer question about the refund of my broken phone",
        "ok thanks",
    ] * 6
    intents = ["greet", "refund", "track", "refund", "greet"] * 6
    featurizer = arch.new_featurizer(small_config(name))
    known = {tuple(featurizer.features(t)) for t in texts}
    seen: list[torch.Tensor] = []
    forward = arch.model.forward
    monkeypatch.setattr(
        arch.model,
        "forward",
        lambda self, ids: (seen.append(ids.clone()) if self.training else None, forward(self, ids))[
            1
        ],
    )
    train_classifier(
        texts,
        intents,
        architecture=name,
        config=small_config(name),
        featurizer=featurizer,
        settings=contract_settings(name, epochs=2, batch_size=4),
    )
    assert len(seen) == 2 * math.ceil(len(texts) / 4)
    for ids in seen:
        assert ids.dtype == torch.int64
        # hashed ids are never 0: 0 is padding
        rows = [tuple(int(v) for v in row if v) for row in ids]
        assert all(row in known for row in rows)
        assert ids.shape[1] == max(len(row) for row in rows)


def test_a_loss_read_back_every_few_batches_still_stops_a_diverging_run():
    """CUDA's way (the loss is read back once per several batches, not after each), run on CPU."""
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at epoch 1, batches 1-4"):
        train(
            "bag_of_ngrams",
            ["greet", "refund"],
            settings=TrainSettings(
                epochs=3, lr=1e30, clip_norm=0, batch_size=8, loss_check_every=4
            ),
        )


def test_a_loss_read_back_every_few_batches_reports_the_same_epoch_loss():
    """The epoch loss reported to progress is the same sum whichever way it was read back."""
    reports: dict[int, list[float]] = {}
    for every in (1, 3):
        reports[every] = []
        train(
            "bag_of_ngrams",
            ["greet", "refund"],
            settings=TrainSettings(epochs=2, batch_size=8, loss_check_every=every),
            progress=lambda r, k=every: reports[k].append(r["loss"]),
        )
    assert len(reports[1]) == 2 and reports[1] == pytest.approx(reports[3], rel=1e-5)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_mixed_precision_path_trains_on_cpu(name: str):
    """bf16 autocast is the CUDA path's code; on CPU it
    runs the same loop, so a CPU-only CI covers it."""
    result = train(
        name,
        ["greet", "refund", "track"],
        settings=contract_settings(
            name, epochs=15, lr=LR.get(name, get_architecture(name).lr * 2), precision="bf16"
        ),
    )
    assert result.precision == "bf16"
    texts, labels = examples(["greet", "refund", "track"], 100, 5)
    assert accuracy(result.model, result.featurizer, result.labels, texts, labels) >= 0.9
    # AMP keeps fp32 master weights
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_warmup_then_cosine_schedule():
    from models.train import _lr_factor

    factors = [_lr_factor(s, 100, 10, 0.05) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))  # never rises after warm-up
    assert factors[-1] == pytest.approx(0.05, abs=0.01) and not any(math.isnan(f) for f in factors)
    assert np.isclose(_lr_factor(55, 100, 10, 0.0), 0.5)
