"""What the benchmarks share: facts about the machine, argument types. Imports nothing
beyond the standard library (the daemon the benchmarks start is in ``bench.processes``)."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["ROOT", "cpu_model", "cpu_seconds", "exit_on_sigterm", "positive_int"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far
    (all its threads), from /proc; NaN if unknown."""
    if not pid:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a benchmark's finally
    blocks stop its processes and remove its temp dir."""

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
