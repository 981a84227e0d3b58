"""Hostile payloads through the real broker into a real daemon (the fast
variant of the stress harness): every malformed record in the DLQ
exactly once with its reason, every valid one stored exactly once."""

from __future__ import annotations

from tests import hostile

MAX_BYTES = 4096


def test_malformed_records_are_dead_lettered_once_and_valid_ones_stored_once(
    broker, tmp_path_factory
):
    bad = hostile.malformed(525, seed=41, max_bytes=MAX_BYTES)
    good = hostile.controls(135, seed=42, max_bytes=MAX_BYTES, run="fast")
    report = hostile.broker_scenario(
        broker.bootstrap,
        tmp_path_factory.mktemp("hostile-broker"),
        bad,
        good,
        max_bytes=MAX_BYTES,
        timeout_s=120,
    )
    print("\n" + report.tally.table("hostile payloads through the broker") + "\n" + report.line())
    assert report.clean, report.line() + "\n" + "\n".join(report.problems)
