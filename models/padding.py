"""Rows of ids to one zero-padded int64 array: what
every featuriser hands the model and ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

__all__ = ["pad_ids"]


def pad_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """int64 [len(rows), longest row] (at least 1 wide), 0 after each row's ids."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = max(1, int(lengths.max(initial=1)))
    ids = np.zeros((len(rows), width), dtype=np.int64)
    # row-major: the mask's True cells are the rows' ids in order, filled in one assignment
    ids[np.arange(width) < lengths[:, None]] = np.fromiter(
        chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())
    )
    return ids
