"""The thread that loads model versions for hot swaps,
at a lower CPU priority than the request path.

A load (hashing, session build, parity probe) is about 7 ms of CPU (20 ms when this was
measured). When the cores are busy, for instance with clients on the same machine, that work
competes with the event loop that answers requests, and each swap shows up in the latency
tail. On Linux a thread has its own nice value, so the loading thread runs at +10: the
scheduler then prefers the event loop, and a load takes a little longer in wall time. Measured
with alternating steady and swap phases under bench/serve.py's load (5 swaps/s, 8 clients, 2
cores): median p99 ratio during swaps / steady 1.55 at the same priority, 1.42 at +10.

One thread: swaps are serialised by the daemon's swap lock anyway, and loads stay out of the default
executor that the store and the registry use.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["LOADER_NICE", "model_loader"]

log = logging.getLogger(__name__)

LOADER_NICE = 10  # added to the process's nice value; only the loading thread is affected

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    # elsewhere setpriority(PRIO_PROCESS, ...) would take the whole process
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOADER_NICE)
        )
    except OSError as exc:  # a sandbox without the syscall: loads just run at the normal priority
        log.debug("could not lower the model loader's priority: %s", exc)


def model_loader() -> ThreadPoolExecutor:
    """The process's model-loading executor (one thread, created on first use)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="driftd-model-load", initializer=_lower_priority
            )
        return _executor
