"""The daemon as a service manager meets it: sd_notify READY/WATCHDOG/RELOADING/STOPPING, SIGHUP
reloading a threshold without a restart, `driftd status`, and JSON logs. A real daemon process
on the real embedded broker; the notify socket is one this test binds, as systemd would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.integration.harness import REPO, DaemonProcess, produce, unique, valid_event

TOKEN = "ops-test-token-0123456789"


class NotifySocket:
    """Collects (monotonic time, message) for every datagram sent to it."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), message))

    def count(self, state: str, after: float = 0.0) -> int:
        return sum(
            1 for at, message in self.messages if at >= after and state in message.split("\n")
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=daemon.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _status(daemon: DaemonProcess) -> dict:
    result = _cli(daemon, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_notify_watchdog_status_sighup_reload_and_json_logs(broker, tmp_path):
    topic = unique("ops")
    notify = NotifySocket(tmp_path / "notify.sock")
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_format = "json"\n\n[monitor]\newma_relative_drop = 0.1\n')
    env = {
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "1000000",
        "DRIFTD_CONFIG": str(config),
        "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
    }
    daemon = DaemonProcess(broker.bootstrap, tmp_path / "state", topic, extra_env=env).start()
    try:
        daemon.wait_ready()
        daemon.wait_until(lambda: notify.count("READY=1") == 1, 30, "READY=1")
        ready_at = next(at for at, m in notify.messages if "READY=1" in m.split("\n"))
        daemon.wait_until(
            lambda: notify.count("WATCHDOG=1", after=ready_at) >= 3,
            10,
            "watchdog pings every 0.5 s",
        )

        valid = [json.dumps(valid_event(i, run="ops")).encode() for i in range(300)]
        asyncio.run(produce(broker.bootstrap, topic, valid + [b"{not json"] * 20))
        daemon.wait_stored(300)
        daemon.wait_until(lambda: daemon.metric("driftd_dlq_total") >= 20, 30, "20 dead-lettered")

        status = _status(daemon)
        assert status["pid"] == daemon.proc.pid
        tiers = status["tiers"]  # hot caches what warm holds durably; cold takes over from warm
        assert (
            tiers["hot"] == 300
            and tiers["warm"] + tiers["cold"] == 300
            and status["ingest"] == {"events": 300, "dead_lettered": 20, "blocked_on": []}
        )
        assert status["broker"] == {
            "up": True,
            "down_for_s": None,
            "last_error": None,
            "outages": 0,
        }
        assert sorted(status["consumer_lag"]) == ["0", "1", "2", "3"]
        daemon.wait_until(
            lambda: sum(_status(daemon)["consumer_lag"].values()) == 0,
            30,
            "lag 0 once everything is consumed",
        )
        # no bootstrap in this test
        assert status["model"] is None and status["training"]["state"] == "idle"
        assert set(status["quality"]["detectors"]) == {"ewma", "adwin", "page_hinkley"}
        assert status["quality"]["config"]["ewma_relative_drop"] == 0.1
        text = _cli(daemon, "status")
        assert text.returncode == 0, text.stderr
        lines = {line.split()[0]: line for line in text.stdout.splitlines() if line.strip()}
        assert (
            "none loaded yet" in lines["model"]
            and "ewma" in lines["detectors"]
            and "adwin" in lines["detectors"]
        )
        assert (
            "hot" in lines["tiers"]
            and "(total 0)" in lines["lag"]
            and lines["ingest"].endswith("300 events stored, 20 dead-lettered")
            and "reachable (0 outages" in lines["broker"]
        )
        assert _cli(daemon, "status", "-c", str(config)).returncode == 0

        # SIGHUP: a new threshold and log level, applied
        # without a restart; a restart-only key is reported.
        pid = daemon.proc.pid
        config.write_text(
            '[daemon]\nlog_format = "json"\nlog_level = '
            '"DEBUG"\n\n[monitor]\newma_relative_drop = '
            "0.25\n\n[kafka]\nembedded_port = 29999\n"
        )
        hup_at = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        daemon.wait_until(
            lambda: _status(daemon)["quality"]["config"]["ewma_relative_drop"] == 0.25,
            20,
            "new threshold live",
        )
        assert daemon.proc.poll() is None and _status(daemon)["pid"] == pid
        assert (
            notify.count("RELOADING=1", after=hup_at) == 1
            and notify.count("READY=1", after=hup_at) == 1
        ), notify.messages[-8:]

        # A broken file on SIGHUP is refused; the daemon keeps its settings and keeps running.
        config.write_text("[monitor]\newma_relative_drop = 7\n")
        os.kill(pid, signal.SIGHUP)
        daemon.wait_until(
            lambda: "configuration not reloaded" in daemon.log_path.read_text(),
            20,
            "refused reload logged",
        )
        # the CLI reads the same broken file and says so
        assert _cli(daemon, "status").returncode == 2
        (tmp_path / "cli.toml").write_text("")
        after = json.loads(
            _cli(daemon, "status", "--json", "-c", str(tmp_path / "cli.toml")).stdout
        )
        assert after["quality"]["config"]["ewma_relative_drop"] == 0.25 and after["pid"] == pid

        # the image's HEALTHCHECK
        assert _cli(daemon, "healthcheck", "-c", str(tmp_path / "cli.toml")).returncode == 0
        code, seconds = daemon.terminate()
        assert code == 0 and seconds < 10
        assert notify.count("STOPPING=1") == 1
        down = _cli(daemon, "healthcheck", "-c", str(tmp_path / "cli.toml"))
        assert down.returncode == 1 and "/healthz" in down.stderr
    finally:
        daemon.stop_quietly()
        notify.close()

    records = [
        json.loads(line)
        for line in daemon.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    assert len(records) > 10
    messages = [r["message"] for r in records]
    reload_line = next(r for r in records if r["message"].startswith("SIGHUP: reloaded"))
    assert (
        reload_line["level"] == "INFO"
        and "monitor.ewma_relative_drop 0.1 -> 0.25" in reload_line["message"]
    )
    assert any("kafka.embedded_port changed" in m and "restart" in m for m in messages)
    refused = next(r for r in records if "configuration not reloaded" in r["message"])
    assert refused["level"] == "ERROR" and "monitor.ewma_relative_drop" in refused["message"]
    after_reload = records[records.index(reload_line) :]
    assert any(r["level"] == "DEBUG" for r in after_reload) and not any(
        r["level"] == "DEBUG" for r in records[: records.index(reload_line)]
    )
    assert TOKEN not in daemon.log_path.read_text()
