"""The daemon as the benchmarks start it: kept apart from ``bench.common`` so that a benchmark
that only trains (``bench/train.py``) imports torch and numpy, not the Kafka client, the
store and the daemon (the GPU machines carry torch but not the daemon's dependencies)."""

from __future__ import annotations

import subprocess
import sys

from bench.common import ROOT
from daemon.broker import die_with_parent
from tests.integration.harness import DaemonProcess

__all__ = ["BenchDaemon"]


class BenchDaemon(DaemonProcess):
    """The test harness's daemon, started so that it dies
    with the bench even if the bench is SIGKILLed."""

    def start(self) -> BenchDaemon:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        return self
