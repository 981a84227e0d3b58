"""The daemon as the benchmarks start it: kept apart from ``bench.common`` so that a benchmark
that only trains (``bench/train.py``) imports torch and numpy, not the Kafka client, the
store and the daemon (the GPU machines carry torch but not the daemon's dependencies)."""

from __future__ import annotations

from typing import Any

from daemon.broker import die_with_parent
from tests.integration.harness import DaemonProcess

__all__ = ["BenchDaemon"]


class BenchDaemon(DaemonProcess):
    """The test harness's daemon, started so that it dies
    with the bench even if the bench is SIGKILLed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, preexec_fn=die_with_parent, **kwargs)
