"""trim_heap hands freed heap pages back to the OS
(glibc), in a fresh interpreter so the heap is known."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from daemon.memory import trim_heap

PROGRAM = r"""
import json
from daemon.memory import trim_heap
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
# 200 MB in malloc'd blocks below the mmap threshold
chunks = [bytearray(4000) for _ in range(50_000)]
pin = bytearray(4000)  # above them on the heap: the heap top cannot simply shrink past it
before_free = rss_mb()
del chunks
freed = rss_mb()
seconds = trim_heap()
report = {"before_free": before_free, "freed": freed, "trimmed": rss_mb(), "seconds": seconds}
print(json.dumps(report))
"""


@pytest.mark.skipif(trim_heap() is None, reason="no glibc malloc_trim here")
def test_freed_heap_stays_resident_until_trimmed_then_goes_back_to_the_os():
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", PROGRAM], check=True, capture_output=True, text=True
        ).stdout
    )
    # most of the 200 MB freed comes back only with the trim
    assert out["freed"] - out["trimmed"] >= 150, out
    assert out["seconds"] >= 0
