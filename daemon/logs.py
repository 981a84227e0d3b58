"""Logging set-up: plain text for people, or one JSON object per line for log shippers."""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

__all__ = ["setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# faust, mode and aiokafka narrate every rebalance at INFO; they speak at WARNING unless DEBUG is asked.
CHATTY = ("faust", "mode", "aiokafka")


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
