"""Logging set-up: plain text for people, or one JSON object per line for log shippers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

__all__ = ["RepeatFilter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# faust, mode and aiokafka narrate every rebalance at
# INFO; they speak at WARNING unless DEBUG is asked.
CHATTY = ("faust", "mode", "aiokafka")


class RepeatFilter(logging.Filter):
    """Lets each message template through once per ``every_s`` seconds, with the count of the copies
    dropped since. Only templates that start with ``prefix`` and come from ``loggers`` (and their
    children; empty: any logger) are limited. asyncio logs "socket.accept() out
    of system resource" on every accept attempt while file descriptors are
    exhausted, and aiokafka logs each failed connect, metadata update and fetch
    about ten times a second while the cluster is unreachable: enough to fill a
    disk during an outage, and to bury the one line that says what is wrong."""

    def __init__(
        self,
        prefix: str = "",
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        loggers: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.prefix, self.every_s, self.clock, self.loggers = prefix, every_s, clock, loggers
        # (logger, template) -> (last let through, dropped since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if not template.startswith(self.prefix) or (
            self.loggers and not record.name.startswith(self.loggers)
        ):
            return True
        key = (record.name, template)
        last, dropped = self._seen.get(key, (-float("inf"), 0))
        now = self.clock()
        if now - last < self.every_s:
            self._seen[key] = (last, dropped + 1)
            return False
        if dropped:
            record.msg = f"{template} ({dropped} more in the last {now - last:.0f} s, not logged)"
        self._seen[key] = (now, 0)
        return True


_ACCEPT_FLOOD = RepeatFilter("socket.accept() out of system resource")
_KAFKA_CLIENT_REPEATS = RepeatFilter(loggers=("aiokafka",))


def setup_logging(level: str, log_format: str = "text") -> None:
    """(Re)configure the root logger; safe to call again at run time (SIGHUP)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # on the handler: logger filters do not see children's records
    handler.addFilter(_KAFKA_CLIENT_REPEATS)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
    if _ACCEPT_FLOOD not in logging.getLogger("asyncio").filters:
        logging.getLogger("asyncio").addFilter(_ACCEPT_FLOOD)
