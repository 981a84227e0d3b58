"""Logging set-up: plain text for people, or one JSON object per line for log shippers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

__all__ = ["RepeatFilter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# faust, mode and aiokafka narrate every rebalance at INFO; they speak at WARNING unless DEBUG is asked.
CHATTY = ("faust", "mode", "aiokafka")


class RepeatFilter(logging.Filter):
    """Lets a message that starts with ``prefix`` through once per ``every_s`` seconds, with the count of the
    copies dropped since. asyncio logs "socket.accept() out of system resource" with a traceback on every
    accept attempt while file descriptors are exhausted: thousands a second, enough to fill a disk."""

    def __init__(self, prefix: str, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix, self.every_s, self.clock = prefix, every_s, clock
        self._last = -float("inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        now = self.clock()
        if now - self._last < self.every_s:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} more in the last {now - self._last:.0f} s, not logged)"
        self._last, self._dropped = now, 0
        return True


_ACCEPT_FLOOD = RepeatFilter("socket.accept() out of system resource")


def setup_logging(level: str, log_format: str = "text") -> None:
    """(Re)configure the root logger; safe to call again at run time (SIGHUP)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
    if _ACCEPT_FLOOD not in logging.getLogger("asyncio").filters:
        logging.getLogger("asyncio").addFilter(_ACCEPT_FLOOD)
