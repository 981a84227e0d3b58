"""wrk as a load generator: a C client in its own process, so that the
figures are the server's latency and not the Python client threads'
own GIL queueing (on 2 cores, 8 Python client threads take a core).

``wrk_load(port, bodies, connections, seconds, driver)`` runs wrk with a Lua script that POSTs
the bodies round-robin to /v1/predict over keep-alive connections, while ``driver(deadline)``
(the swapper) runs in the calling thread, and returns p50/p99, requests/s and errors parsed
from wrk's --latency report. wrk comes from Debian (`bash scripts/debian-packages.sh wrk:wrk`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["wrk_available", "wrk_load"]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _lua(bodies: Sequence[bytes]) -> str:
    quoted = ",\n".join(
        '"' + b.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"' for b in bodies
    )
    return (
        "local bodies = {\n" + quoted + "\n}\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #bodies + 1\n"
        '  return wrk.format("POST", "/v1/predict", headers, bodies[i])\n'
        "end\n"
    )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNITS[unit]


def parse_report(out: str) -> dict[str, Any]:
    """p50/p99 (ms), requests/s, non-2xx and socket errors from ``wrk --latency`` output."""
    pct = {
        m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M)
    }
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "p50": pct["50"],
        "p99": pct["99"],
        "rps": rps,
        "failed": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(int(g) for g in sockets.groups()) if sockets else 0),
    }


def wrk_load(
    port: int,
    bodies: Sequence[bytes],
    connections: int,
    seconds: float,
    driver: Callable[[float], Any] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="driftd-wrk-") as tmp:
        script = Path(tmp) / "predict.lua"
        script.write_text(_lua(bodies[:1000]))
        cmd = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ]
        result: dict[str, Any] = {}
        run = threading.Thread(
            target=lambda: result.update(
                proc=subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
            )
        )
        run.start()
        time.sleep(0.2)  # wrk connects before the driver starts
        driven = driver(time.perf_counter() + seconds - 0.4) if driver is not None else None
        run.join()
    proc = result["proc"]
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return {**parse_report(proc.stdout), "driven": driven}
