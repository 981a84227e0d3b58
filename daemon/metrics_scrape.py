"""Reading a running daemon's /metrics from outside it: the
demo's driver, the integration tests and the benches."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["family_total", "scrape", "wait_for"]


def scrape(url: str) -> dict[str, float]:
    """Prometheus text from ``url`` as {"name{label=value,...}": value}."""
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def family_total(samples: dict[str, float], name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in a ``scrape`` result."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def wait_for(
    predicate: Callable[[], object], timeout_s: float, what: str, proc: subprocess.Popen[bytes]
) -> None:
    """Poll ``predicate`` until it holds; fail if ``proc``
    exits first. HTTP errors count as 'not yet'."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the daemon exited with code {proc.returncode} while waiting for {what}"
            )
        try:
            if predicate():
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
