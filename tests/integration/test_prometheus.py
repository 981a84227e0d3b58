"""A real Prometheus scraping a real daemon, with the
shipped alert rules (only their durations shortened)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.broker import free_port
from tests.integration.harness import DaemonProcess, produce, unique, valid_event
from tests.promtools import (
    ALERTS,
    PROMETHEUS_CONFIG,
    dashboard_exprs,
    grafana_to_promql,
    require_binary,
)

# every range window of the rules: a few scrapes at 1 s, so rates react within seconds
WINDOW = "30s"


def fast_rules(path: Path) -> Path:
    """alerts.yml with `for:` at 1s and range windows at
    WINDOW; the expressions are otherwise the shipped ones."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "1s"
            rule["expr"] = re.sub(r"\[\d+[smhdwy]\]", f"[{WINDOW}]", rule["expr"])
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def fast_config(path: Path, rules: Path, target: str) -> Path:
    """The example prometheus.yml, pointed at ``target`` and
    the fast rules, scraping and evaluating every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(rules)]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "driftd"]
    job["static_configs"] = [{"targets": [target]}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """A ``prometheus`` server process on 127.0.0.1 with its own config and TSDB."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = fast_config(
            workdir / "prometheus.yml", fast_rules(workdir / "alerts.yml"), target
        )
        self.log_path = workdir / "prometheus.log"
        self.cmd = [
            binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}" + (
            f"?{urllib.parse.urlencode(params)}" if params else ""
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if not path.startswith("/api/"):
                raise
            body = error.read()  # a bad query: the JSON body says why
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector."""
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"] if a["state"] == state]

    def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float, what: str, daemon: DaemonProcess
    ) -> Any:
        """Poll until ``predicate`` returns something truthy
        (returned); fail with both logs on timeout."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
            try:
                if found := predicate():
                    return found
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            time.sleep(0.5)
        pytest.fail(
            f"timed out after {timeout_s:.0f}s waiting for {what}\nprometheus "
            f"log:\n{self.log_tail()}\ndaemon log:\n{daemon.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        return (
            "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
            if self.log_path.exists()
            else "<no log>"
        )


def firing(prometheus: Prometheus, alertname: str) -> list[dict[str, Any]]:
    return [a for a in prometheus.alerts() if a["labels"]["alertname"] == alertname]


def test_prometheus_scrapes_the_daemon_and_the_dead_letter_alert_fires(broker, tmp_path):
    binary = require_binary("prometheus")
    topic = unique("prom")
    daemon = DaemonProcess(broker.bootstrap, tmp_path / "daemon", topic).start()
    target = f"127.0.0.1:{daemon.web_port}"
    # starts while the daemon does
    prometheus = Prometheus(binary, tmp_path / "prometheus", target).start()
    try:
        daemon.wait_ready()
        prometheus.wait_for(lambda: prometheus.get("/-/ready"), 30, "prometheus ready", daemon)

        # (a) The daemon's own metrics, through Prometheus's query API.
        good = [json.dumps(valid_event(i, run=topic)).encode() for i in range(40)]
        asyncio.run(produce(broker.bootstrap, topic, good))
        stored = 'driftd_events_total{job="driftd", type="utterance"}'
        (sample,) = prometheus.wait_for(
            lambda: [s for s in prometheus.query(stored) if float(s["value"][1]) >= len(good)],
            30,
            "driftd_events_total in Prometheus",
            daemon,
        )
        assert sample["metric"]["instance"] == target
        assert float(sample["value"][1]) == len(good)
        assert prometheus.query('up{job="driftd"}')[0]["value"][1] == "1"
        # evaluation errors (e.g. vector matching) show only on real data
        for expr in dashboard_exprs():
            prometheus.query(grafana_to_promql(expr, rate_interval=WINDOW))
        # A healthy daemon raises nothing (DriftdDown may be
        # resolving from scrapes before the daemon listened).
        prometheus.wait_for(
            lambda: not prometheus.alerts(), 15, "no alert on a healthy daemon", daemon
        )

        # (b) Malformed records: DriftdDeadLetterRateHigh goes firing, and nothing else does.
        asyncio.run(
            produce(broker.bootstrap, topic, [b'{"event_id": "bad-%d", ' % i for i in range(200)])
        )
        (alert,) = prometheus.wait_for(
            lambda: firing(prometheus, "DriftdDeadLetterRateHigh"),
            60,
            "DriftdDeadLetterRateHigh firing",
            daemon,
        )
        assert alert["labels"]["instance"] == target and alert["labels"]["severity"] == "warning"
        assert "dead-letters" in alert["annotations"]["summary"]
        assert {a["labels"]["alertname"] for a in prometheus.alerts()} == {
            "DriftdDeadLetterRateHigh"
        }
        assert daemon.metric("driftd_dlq_total") == 200

        # A stopped daemon: DriftdDown.
        code, _ = daemon.terminate()
        assert code == 0
        (down,) = prometheus.wait_for(
            lambda: firing(prometheus, "DriftdDown"), 30, "DriftdDown firing", daemon
        )
        assert down["labels"]["instance"] == target
    finally:
        prometheus.stop()
        daemon.stop_quietly()
