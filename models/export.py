"""ONNX export (opset pinned), INT8 quantisation, and the files of one registry version.

Dynamic quantisation is the default. With calibration texts (recent events), static QDQ quantisation
is tried as well and kept only if it agrees better with FP32 on them. Every version carries a probe:
texts and the served model's logits at export time, which a loader re-checks before serving.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from .architectures import save_weights
from .base import IntentClassifier
from .featurize import Featurizer
from .probe import PROBE, encode_probe

__all__ = ["OPSET", "PARITY_ATOL", "SERVED_MODEL", "ExportError", "build_version_files", "cpu_session", "export_onnx", "quantize_int8"]

OPSET = 17
PARITY_ATOL = 1e-4  # FP32 ONNX vs torch, max abs logit difference
SERVED_MODEL = "model.int8.onnx"


class ExportError(RuntimeError):
    """The exported graph does not match the torch model."""


def cpu_session(model: bytes | str | Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # one thread: lowest latency for the small batches served here
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def export_onnx(model: IntentClassifier) -> bytes:
    model.eval()
    example = torch.ones((2, 8), dtype=torch.long)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=["ids"],
        output_names=["logits"],
        dynamic_axes={"ids": {0: "batch", 1: "length"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter: no onnxscript dependency, and a plain graph for this model
    )
    return buffer.getvalue()


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"ids": batch}


def _agreement(reference: np.ndarray, session: ort.InferenceSession, ids: np.ndarray) -> float:
    return float(np.mean(session.run(None, {"ids": ids})[0].argmax(1) == reference.argmax(1)))


def quantize_int8(fp32: bytes, calibration_ids: Sequence[np.ndarray] = ()) -> tuple[bytes, dict[str, Any]]:
    """INT8 model bytes and a report of how it was chosen."""
    with tempfile.TemporaryDirectory(prefix="driftd-quant-") as tmp:
        source, dynamic_path, static_path = Path(tmp, "fp32.onnx"), Path(tmp, "dynamic.onnx"), Path(tmp, "static.onnx")
        source.write_bytes(fp32)
        quantize_dynamic(source, dynamic_path, weight_type=QuantType.QInt8)
        chosen, report = dynamic_path, {"method": "dynamic"}
        if len(calibration_ids) >= 2:  # calibrate on all but the last batch, judge on that one
            quantize_static(
                source,
                static_path,
                _Calibration(list(calibration_ids[:-1])),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            )
            held_out = calibration_ids[-1]
            reference = cpu_session(fp32).run(None, {"ids": held_out})[0]
            dynamic_agree = _agreement(reference, cpu_session(dynamic_path), held_out)
            static_agree = _agreement(reference, cpu_session(static_path), held_out)
            report.update(dynamic_agreement=dynamic_agree, static_agreement=static_agree)
            if static_agree > dynamic_agree:
                chosen, report["method"] = static_path, "static"
        return chosen.read_bytes(), report


def build_version_files(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    probe_texts: Sequence[str],
    calibration_texts: Sequence[str] = (),
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Everything a registry version holds, plus an export report (parity, quantisation)."""
    if len(labels) != model.num_labels:
        raise ExportError(f"{len(labels)} labels for a model with {model.num_labels} outputs")
    fp32 = export_onnx(model)
    probe_ids = featurizer.batch(list(probe_texts))
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(probe_ids)).numpy()
    onnx_logits = cpu_session(fp32).run(None, {"ids": probe_ids})[0]
    parity = float(np.abs(torch_logits - onnx_logits).max())
    if parity > PARITY_ATOL:
        raise ExportError(f"FP32 ONNX differs from torch by {parity:.2e} (limit {PARITY_ATOL:.0e})")
    calibration = [featurizer.batch(list(calibration_texts[i : i + 64])) for i in range(0, len(calibration_texts), 64)]
    int8, quant_report = quantize_int8(fp32, calibration)
    served_logits = cpu_session(int8).run(None, {"ids": probe_ids})[0]
    files = {
        "model.onnx": fp32,
        SERVED_MODEL: int8,
        "labels.json": json.dumps(list(labels)).encode(),
        "featurizer.json": featurizer.to_json().encode(),
        "model.pt": save_weights(model),
        PROBE: encode_probe(probe_texts, served_logits),
    }
    report = {"architecture": model.architecture, "opset": OPSET, "fp32_parity_max_abs": parity, "int8_probe_top1_agreement": float(np.mean(served_logits.argmax(1) == onnx_logits.argmax(1))), "quantization": quant_report}
    return files, report
