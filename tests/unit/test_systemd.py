"""sd_notify over a real AF_UNIX datagram socket, as
systemd provides it, and the watchdog interval."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from daemon import systemd


@pytest.fixture
def manager(tmp_path, monkeypatch):
    """A socket standing in for systemd's notify socket; returns a function reading one datagram."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield lambda: sock.recv(4096).decode()
    sock.close()


def test_messages_arrive_as_one_datagram_per_call(manager):
    assert systemd.notify("READY=1", "STATUS=consuming")
    assert manager() == "READY=1\nSTATUS=consuming"
    assert systemd.notify("WATCHDOG=1")
    assert manager() == "WATCHDOG=1"


def test_reloading_carries_the_monotonic_timestamp(manager):
    assert systemd.reloading()
    lines = manager().split("\n")
    assert (
        lines[0] == "RELOADING=1"
        and lines[1].startswith("MONOTONIC_USEC=")
        and int(lines[1].split("=")[1]) > 0
    )


def test_abstract_namespace_socket(monkeypatch):
    name = f"driftd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(64) == b"READY=1"


def test_outside_systemd_nothing_is_sent_and_a_dead_socket_is_not_fatal(
    monkeypatch, tmp_path, caplog
):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("1000000", "self", 0.5),
        ("1000000", "1", None),
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process_only(
    monkeypatch, usec, pid, expected
):
    for name, value in (
        ("WATCHDOG_USEC", usec),
        ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert systemd.watchdog_interval_s() == expected
