"""Rows of ids to one zero-padded int64 array: what
every featuriser hands the model and ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_ids"]


def pad_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """int64 [len(rows), longest row] (at least 1 wide), 0 after each row's ids."""
    width = max(1, max((len(r) for r in rows), default=1))
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids
