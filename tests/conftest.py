"""Shared fixtures, and each test's marker, set from its folder (unit, integration, quality, stress).

Integration tests talk to one real embedded broker per session, on a free port; each test uses its own topics
and consumer group (the broker cannot really delete topics). ``s3`` is a local S3-compatible server (moto) on
loopback; it yields the fsspec storage options that reach it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from daemon.broker import EmbeddedBroker
from tests.integration.harness import free_port


TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = ("unit", "integration", "quality", "stress")  # tests/<folder>/: the kind of every test in it


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(FOLDER_MARKERS)}}}/, which sets their marker")
        item.add_marker(folder)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(free_port(), log_path=log) as running:
        yield running


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "driftd-test", "AWS_SECRET_ACCESS_KEY": "driftd-test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield {"endpoint_url": f"http://127.0.0.1:{port}"}
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"), timeout=10).close()  # moto keeps buckets per process
    server.stop()
