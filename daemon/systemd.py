"""The sd_notify protocol: READY, WATCHDOG, RELOADING and STOPPING messages to the service manager.

Eight lines of socket code rather than a dependency: the protocol is one datagram per message on the
AF_UNIX socket named by $NOTIFY_SOCKET (a leading "@" means the abstract namespace), and
the packages that wrap it are either unmaintained (sdnotify) or need libsystemd headers
to build (systemd-python). Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "reloading", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=..."``)
    in one datagram; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        return True
    # the manager went away or the socket is wrong: keep running, say so once per call
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp systemd wants for Type=notify-reload."""
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC,
    as sd_watchdog_enabled(3) advises; None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; no watchdog pings", usec)
        return None
    return value / 2e6 if value > 0 else None
