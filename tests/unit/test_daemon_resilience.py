"""The daemon process's own guards: timers that survive their errors, and the open-file limit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from daemon.housekeeping import guarded_timer
from tests.integration.harness import REPO


def test_open_file_limit_is_raised_towards_the_hard_limit():
    # In a child, so this test process keeps its own limits; a hard limit can only go down, so last.
    code = textwrap.dedent(
        """
        import resource
        from daemon.app import raise_open_file_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, 8192))
        print(raise_open_file_limit(1024), resource.getrlimit(resource.RLIMIT_NOFILE))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
        print(raise_open_file_limit(65536), resource.getrlimit(resource.RLIMIT_NOFILE))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        print(raise_open_file_limit(65536), resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out == ["(2048, 2048) (2048, 8192)", "(256, 4096) (4096, 4096)", "(256, 256) (256, 256)"]


class _Timers:
    """Records what ``app.timer`` would schedule; the
    guard around the body is what is under test."""

    def __init__(self) -> None:
        self.registered: dict[str, tuple[float, object]] = {}

    def timer(self, interval: float, name: str):
        return lambda fn: self.registered.setdefault(name, (interval, fn))[1]


def test_a_failing_timer_body_is_logged_once_a_minute_and_never_raises(caplog):
    ticks = []

    async def flaky() -> None:
        ticks.append(1)
        if len(ticks) <= 3:
            raise OSError(24, "Too many open files")

    app = _Timers()
    guarded = guarded_timer(app, 10.0, "driftd.test")(flaky)
    assert app.registered["driftd.test"] == (10.0, guarded) and guarded.__name__ == "flaky"
    for _ in range(5):
        asyncio.run(guarded())  # raises nothing, although the body did three times
    assert len(ticks) == 5
    failures = [r for r in caplog.records if "timer driftd.test failed" in r.getMessage()]
    assert len(failures) == 1 and "Too many open files" in caplog.text
