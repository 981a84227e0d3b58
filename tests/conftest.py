"""Shared fixtures, and each test's marker, set from
its folder (unit, integration, quality, stress).

Integration tests talk to one real embedded broker per session, on a free port;
each test uses its own topics and consumer group (the broker cannot really
delete topics). ``s3`` is a local S3-compatible server (moto) on loopback; it
yields the fsspec storage options that reach it. ``shared_across_workers``
computes an expensive value once per run, whichever xdist worker asks first."""

from __future__ import annotations

import os
import pickle
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from filelock import FileLock

from daemon.broker import EmbeddedBroker
from tests.integration.harness import free_port

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = (
    "unit",
    "integration",
    "quality",
    "stress",
)  # tests/<folder>/: the kind of every test in it
T = TypeVar("T")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per worker: two workers of two threads each on 2
    # cores made an in-process training run 2x slower than one thread each
    # (measured beside two CPU hogs), and 4x+ slower on a loaded CI machine.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in "
                f"tests/{{{','.join(FOLDER_MARKERS)}}}/, which sets their marker"
            )
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
    for key, value in {
        "AWS_ACCESS_KEY_ID": "driftd-test",
        "AWS_SECRET_ACCESS_KEY": "driftd-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    yield {"endpoint_url": f"http://127.0.0.1:{port}"}
    urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"), timeout=10
    ).close()  # moto keeps buckets per process
    server.stop()


@pytest.fixture(scope="session")
def shared_across_workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, Callable[[], T]], T]:
    """``get(name, compute)``: ``compute()``'s value, computed by the first
    worker that asks and pickled for the others (a module's tests are spread
    over workers, so a module-scoped fixture would run once per worker)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's temp root, shared by every worker
    cache: dict[str, Any] = {}

    def get(name: str, compute: Callable[[], T]) -> T:
        if name not in cache:
            path = root / f"shared-{name}.pickle"
            with FileLock(str(path) + ".lock"):
                if not path.exists():
                    path.write_bytes(pickle.dumps(compute()))
                cache[name] = pickle.loads(path.read_bytes())
        return cache[name]

    return get
