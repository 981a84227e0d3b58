"""Hot-swap loads run on one dedicated thread whose nice value is raised, and only that thread's."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from daemon.model_loader import LOADER_NICE, model_loader


def _who_am_i() -> tuple[str, int, int]:
    tid = threading.get_native_id()
    return threading.current_thread().name, tid, os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_loads_run_on_one_thread_at_a_lower_priority_and_the_rest_of_the_process_keeps_its_own():
    main_tid = threading.get_native_id()
    main_nice = os.getpriority(os.PRIO_PROCESS, main_tid)
    name, tid, nice = model_loader().submit(_who_am_i).result(timeout=10)
    assert name.startswith("driftd-model-load")
    assert tid != main_tid
    assert nice == min(19, main_nice + LOADER_NICE)
    # the event loop's thread is untouched
    assert os.getpriority(os.PRIO_PROCESS, main_tid) == main_nice
    # the same single thread every time
    assert model_loader().submit(_who_am_i).result(timeout=10)[1] == tid
