"""The parity probe of a registry version (``probe.json``): texts and the served model's logits on them.

The logits are stored as base64 of little-endian float32 with their shape, not as JSON numbers. A load
parses this file on every hot swap, in a thread beside the request path, and ``json.loads`` of a
64 x 150 matrix of numbers is one C call that holds the GIL for 4-8 ms: every request waiting for the
GIL waits that long. A base64 string parses in microseconds, and float32 is what ONNX Runtime returns, so
nothing is rounded. Versions written before this format (``"logits"`` as nested lists) still read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

import numpy as np

__all__ = ["PROBE", "decode_probe", "encode_probe"]

PROBE = "probe.json"
_DTYPE = np.dtype("<f4")


def encode_probe(texts: Sequence[str], logits: np.ndarray) -> bytes:
    """``probe.json`` for ``texts`` and their logits (one row per text)."""
    matrix = np.ascontiguousarray(logits, dtype=_DTYPE)
    if matrix.ndim != 2 or matrix.shape[0] != len(texts):
        raise ValueError(f"logits of shape {matrix.shape} for {len(texts)} texts: expected one row per text")
    body = {"texts": list(texts), "logits": {"dtype": "float32-le", "shape": list(matrix.shape), "base64": base64.b64encode(matrix.tobytes()).decode("ascii")}}
    return json.dumps(body).encode()


def decode_probe(data: bytes) -> tuple[list[str], np.ndarray]:
    """(texts, float64 logits) from ``probe.json``; ValueError saying what is wrong with it."""
    try:
        probe = json.loads(data)
        texts, logits = probe["texts"], probe["logits"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"not {{texts, logits}} ({exc})") from exc
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("no texts: parity cannot be checked")
    if isinstance(logits, dict):
        return texts, _decode_binary(logits)
    try:  # the format before binary logits: a list of rows of numbers
        return texts, np.asarray(logits, dtype=np.float64)
    except (ValueError, TypeError) as exc:  # ragged rows or non-numbers
        raise ValueError(f"logits are not a numeric matrix ({exc})") from exc


def _decode_binary(logits: dict) -> np.ndarray:
    if logits.get("dtype") != "float32-le":
        raise ValueError(f"logits dtype {logits.get('dtype')!r} is not 'float32-le'")
    shape = logits.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"logits shape {shape!r} is not [rows, columns]")
    try:
        raw = base64.b64decode(logits.get("base64", ""), validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"logits are not valid base64 ({exc})") from exc
    if len(raw) != shape[0] * shape[1] * _DTYPE.itemsize:
        raise ValueError(f"logits hold {len(raw)} bytes, not the {shape[0]} x {shape[1]} float32 values of their shape")
    return np.frombuffer(raw, dtype=_DTYPE).reshape(shape).astype(np.float64)
