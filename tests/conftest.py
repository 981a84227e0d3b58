"""Shared fixtures. Integration tests talk to one real embedded broker per session, on a free port;
each test uses its own topics and consumer group (the broker cannot really delete topics)."""

from __future__ import annotations

import pytest

from daemon.broker import EmbeddedBroker
from tests.integration.harness import free_port


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(free_port(), log_path=log) as running:
        yield running
