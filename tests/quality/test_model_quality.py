"""The default model on real data: accuracy, ONNX parity, and what INT8 quantisation costs.

One training run on the CLINC150 train split (about 30 s on
one core), shared by the module's tests on every worker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.export import (
    PARITY_ATOL,
    SERVED_MODEL,
    SERVED_WEIGHTS,
    build_version_files,
    cpu_session,
)
from models.train import TrainSettings, train_classifier
from streams.datasets import load_examples


def train_and_export() -> dict[str, Any]:
    train, val, test = (load_examples("clinc150", split) for split in ("train", "val", "test"))
    result = train_classifier(
        [e.text for e in train],
        [e.intent for e in train],
        val=([e.text for e in val], [e.intent for e in val]),
        settings=TrainSettings(epochs=12, batch_size=256),
    )
    files, report = build_version_files(
        result.model,
        result.featurizer,
        result.labels,
        [e.text for e in val[:64]],
        calibration_texts=[e.text for e in val[:1024]],
    )
    ids = result.featurizer.batch([e.text for e in test])
    truth = np.array([result.labels.index(e.intent) for e in test])
    with torch.no_grad():
        torch_logits = result.model(torch.from_numpy(ids)).numpy()
    fp32 = cpu_session(files["model.onnx"]).run(None, {"ids": ids})[0]
    # the INT8 graph and its weights file, loaded as a registry stores them
    with tempfile.TemporaryDirectory() as served:
        for name in (SERVED_MODEL, SERVED_WEIGHTS):
            (Path(served) / name).write_bytes(files[name])
        int8 = cpu_session(Path(served) / SERVED_MODEL).run(None, {"ids": ids})[0]
    return {
        "result": result,
        "report": report,
        "truth": truth,
        "torch": torch_logits,
        "fp32": fp32,
        "int8": int8,
    }


@pytest.fixture
def clinc(
    shared_across_workers: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]],
) -> dict[str, Any]:
    return shared_across_workers("clinc150-default-model", train_and_export)


def test_default_model_reaches_90_percent_on_the_clinc150_in_scope_test_split(clinc):
    accuracy = float(np.mean(clinc["torch"].argmax(1) == clinc["truth"]))
    print(
        f"CLINC150 in-scope test accuracy: {accuracy:.4f} "
        f"({clinc['result'].epochs_run} epochs, {clinc['result'].seconds:.1f}s)"
    )
    assert len(clinc["truth"]) == 4500
    assert accuracy >= 0.90


def test_fp32_onnx_matches_torch_within_1e_4(clinc):
    difference = float(np.abs(clinc["torch"] - clinc["fp32"]).max())
    print(f"max |torch - FP32 ONNX| logit difference over 4,500 texts: {difference:.2e}")
    assert difference <= PARITY_ATOL
    assert clinc["report"]["fp32_parity_max_abs"] <= PARITY_ATOL


def test_int8_agrees_with_fp32_and_costs_under_one_point(clinc):
    agreement = float(np.mean(clinc["int8"].argmax(1) == clinc["fp32"].argmax(1)))
    fp32_acc = float(np.mean(clinc["fp32"].argmax(1) == clinc["truth"]))
    int8_acc = float(np.mean(clinc["int8"].argmax(1) == clinc["truth"]))
    print(
        f"INT8 top-1 agreement with FP32: {agreement:.4f}; accuracy FP32 "
        f"{fp32_acc:.4f}, INT8 {int8_acc:.4f} ({clinc['report']['quantization']})"
    )
    assert agreement >= 0.99
    assert abs(fp32_acc - int8_acc) <= 0.01


def test_new_intents_can_be_added_without_losing_the_old_ones(clinc):
    result = clinc["result"]
    before = result.model(
        torch.from_numpy(result.featurizer.batch(["what is my balance", "book a flight to paris"]))
    ).argmax(1)
    result_model_copy = type(result.model)(result.model.config, result.model.num_labels)
    result_model_copy.load_state_dict(result.model.state_dict())
    result_model_copy.eval()
    result_model_copy.grow(result.model.num_labels + 3)
    with torch.no_grad():
        after = result_model_copy(
            torch.from_numpy(
                result.featurizer.batch(["what is my balance", "book a flight to paris"])
            )
        ).argmax(1)
    assert torch.equal(before, after)
    assert result_model_copy.num_labels == result.model.num_labels + 3
