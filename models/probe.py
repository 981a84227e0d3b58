"""The parity probe of a registry version (``probe.json``): texts,
their featurised ids, and the served model's logits on them.

The logits are stored as base64 of little-endian float32 with their shape, not as JSON numbers. A
load parses this file on every hot swap, in a thread beside the request path, and ``json.loads`` of
a 64 x 150 matrix of numbers is one C call that holds the GIL for 4-8 ms: every request waiting for
the GIL waits that long. A base64 string parses in microseconds, and float32 is what ONNX Runtime
returns, so nothing is rounded. The ids (int32, the same way) spare a load featurising all 64 texts,
about 1.5 ms of Python holding that same GIL; it featurises a few to check the featuriser still
gives them. Versions written before either (``"logits"`` as nested lists, no ``"ids"``) still read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["PROBE", "Probe", "decode_probe", "encode_probe"]

PROBE = "probe.json"
_MATRICES = {"float32-le": np.dtype("<f4"), "int32-le": np.dtype("<i4")}


class Probe(NamedTuple):
    texts: list[str]
    logits: np.ndarray  # float64, one row per text
    # int64 featurised texts, one row per text; None in probes written before them
    ids: np.ndarray | None


def encode_probe(texts: Sequence[str], logits: np.ndarray, ids: np.ndarray | None = None) -> bytes:
    """``probe.json`` for ``texts``, their logits and (optionally) their ids, one row per text."""
    body = {
        "texts": list(texts),
        "logits": _encode_matrix("logits", logits, "float32-le", len(texts)),
    }
    if ids is not None:
        body["ids"] = _encode_matrix("ids", ids, "int32-le", len(texts))
    return json.dumps(body).encode()


def decode_probe(data: bytes) -> Probe:
    """The probe in ``probe.json``; ValueError saying what is wrong with it."""
    try:
        probe = json.loads(data)
        texts, logits = probe["texts"], probe["logits"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"not {{texts, logits}} ({exc})") from exc
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("no texts: parity cannot be checked")
    ids = (
        None
        if probe.get("ids") is None
        else _decode_matrix("ids", probe["ids"], "int32-le").astype(np.int64)
    )
    if ids is not None and ids.shape[0] != len(texts):
        raise ValueError(f"ids have {ids.shape[0]} rows for {len(texts)} texts")
    if isinstance(logits, dict):
        return Probe(texts, _decode_matrix("logits", logits, "float32-le").astype(np.float64), ids)
    try:  # the format before binary logits: a list of rows of numbers
        return Probe(texts, np.asarray(logits, dtype=np.float64), ids)
    except (ValueError, TypeError) as exc:  # ragged rows or non-numbers
        raise ValueError(f"logits are not a numeric matrix ({exc})") from exc


def _encode_matrix(
    what: str, values: np.ndarray, kind: str, rows: int
) -> dict[str, str | list[int]]:
    matrix = np.ascontiguousarray(values, dtype=_MATRICES[kind])
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise ValueError(
            f"{what} of shape {matrix.shape} for {rows} texts: expected one row per text"
        )
    return {
        "dtype": kind,
        "shape": list(matrix.shape),
        "base64": base64.b64encode(matrix.tobytes()).decode("ascii"),
    }


def _decode_matrix(what: str, stored: object, kind: str) -> np.ndarray:
    if not isinstance(stored, dict) or stored.get("dtype") != kind:
        raise ValueError(
            f"{what} dtype "
            f"{stored.get('dtype') if isinstance(stored, dict) else stored!r} is "
            f"not {kind!r}"
        )
    shape = stored.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise ValueError(f"{what} shape {shape!r} is not [rows, columns]")
    try:
        raw = base64.b64decode(stored.get("base64", ""), validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"{what} are not valid base64 ({exc})") from exc
    dtype = _MATRICES[kind]
    if len(raw) != shape[0] * shape[1] * dtype.itemsize:
        raise ValueError(
            f"{what} hold {len(raw)} bytes, not the {shape[0]} x {shape[1]} "
            f"{dtype.name} values of their shape"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
