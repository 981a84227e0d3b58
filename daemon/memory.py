"""Hands freed heap memory back to the operating system.

glibc's malloc keeps the pages of freed blocks mapped in its arenas, so a long-running process's
resident set stays at the high-water mark of its largest transient work (a fine-tune's training set
and result, two ONNX sessions side by side during a swap) even once that memory is free.
``malloc_trim(0)`` releases the free pages of every arena. Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

__all__ = ["trim_heap"]


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap() -> float | None:
    """Release free heap pages; returns the seconds
    it took, or None where malloc_trim is missing."""
    if _MALLOC_TRIM is None:
        return None
    started = time.perf_counter()
    _MALLOC_TRIM(0)
    return time.perf_counter() - started
