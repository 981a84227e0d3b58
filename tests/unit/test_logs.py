"""Log formats: text for people, one JSON object per
line for log shippers; switchable at run time."""

from __future__ import annotations

import json
import logging

import pytest

from daemon.logs import CHATTY, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging():
    """setup_logging reconfigures the root logger; give the next test the one it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in chatty.items():
        logging.getLogger(name).setLevel(value)


def test_json_lines_carry_level_logger_and_message(capsys):
    setup_logging("INFO", "json")
    logging.getLogger("driftd.test").info("swapped %s", "v0002")
    logging.getLogger("driftd.test").debug("not shown at INFO")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert (
        record["level"] == "INFO"
        and record["logger"] == "driftd.test"
        and record["message"] == "swapped v0002"
    )
    assert "asctime" in record


def test_switching_back_to_text_and_debug_replaces_the_handler(capsys):
    setup_logging("INFO", "json")
    setup_logging("DEBUG", "text")
    logging.getLogger("driftd.test").debug("now visible")
    logging.getLogger("aiokafka").debug("chatty library at DEBUG too")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "DEBUG" in err[0] and err[0].endswith("driftd.test: now visible")
    setup_logging("INFO", "text")
    logging.getLogger("aiokafka").info("rebalance chatter")
    assert capsys.readouterr().err == ""


def test_a_flood_of_one_asyncio_message_is_logged_once_per_interval_with_its_count(capsys):
    from daemon.logs import RepeatFilter

    setup_logging("INFO", "text")
    now = [100.0]
    flood = RepeatFilter(
        "socket.accept() out of system resource", every_s=10.0, clock=lambda: now[0]
    )
    logger = logging.getLogger("asyncio.test")
    logger.addFilter(flood)
    try:
        for _ in range(500):
            logger.error("socket.accept() out of system resource")
            now[0] += 0.01  # 500 in 5 s: all inside one interval but the first
        logger.error("another asyncio error")  # other messages are untouched
        now[0] = 111.0
        logger.error("socket.accept() out of system resource")
    finally:
        logger.removeFilter(flood)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("socket.accept() out of system resource") and lines[1].endswith(
        "another asyncio error"
    )
    assert "(499 more in the last" in lines[2]


def test_kafka_client_errors_repeated_during_an_outage_are_logged_once_per_template(capsys):
    setup_logging("INFO", "text")
    # what aiokafka writes while the cluster is down: a few templates, new args each time
    for attempt in range(200):
        logging.getLogger("aiokafka.conn.unit-test").error(
            "Unable connect to node with id %s: %s", 111, f"attempt {attempt}"
        )
        logging.getLogger("aiokafka.consumer.unit-test").error(
            "Failed fetch messages from %s: %s", 111, f"attempt {attempt}"
        )
    logging.getLogger("driftd.unit-test").error("Kafka cluster %s unreachable", "127.0.0.1:9092")
    # our own lines are never limited
    logging.getLogger("driftd.unit-test").error("Kafka cluster %s unreachable", "127.0.0.1:9092")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "Unable connect to node with id 111: attempt 0",
        "Failed fetch messages from 111: attempt 0",
        "Kafka cluster 127.0.0.1:9092 unreachable",
        "Kafka cluster 127.0.0.1:9092 unreachable",
    ]
