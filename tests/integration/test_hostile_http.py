"""Hostile HTTP against a real daemon's /v1/predict and admin routes (the fast variant; the stress
harness in tests/stress/test_hostile_input.py sends more, larger and concurrent requests).

Every answer must be a 4xx with a JSON ``error`` message (or 200 where the request is
valid), never a 5xx, and must come within its timeout. aiohttp's own answers to
broken HTTP (bad framing, unknown routes, wrong methods) are 4xx with a text message.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import hostile

TOKEN = "hostile-admin-token-0123456789"


@pytest.fixture(scope="module")
def served(broker, tmp_path_factory):
    with hostile.serving_daemon(
        broker.bootstrap, tmp_path_factory.mktemp("hostile-http"), token=TOKEN
    ) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def report():
    return hostile.HttpReport()


def test_hand_written_hostile_requests(served, report):
    hostile.run_http_cases(
        served.web_port, hostile.http_cases(TOKEN, large=False, give_up_s=1.0), report
    )
    print("\n" + report.table("hostile HTTP (hand-written)"))
    assert not report.failures, "\n".join(report.failures)


def test_random_request_bodies(served, report):
    for name, body in hostile.random_predict_bodies(200, seed=31):
        hostile.post_body(served.web_port, body, report, f"random bodies ({name})", name)
    assert not report.failures, "\n".join(report.failures)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    body=hostile.predict_json_bodies(max_text=30, max_list=5, max_dict=4, max_leaves=20),
    ascii_only=st.booleans(),
)
def test_generated_json_bodies(served, report, body, ascii_only):
    answer = hostile.post_json(served.web_port, body, ascii_only, report)
    assert answer.status in (200, 400, 413, 422) and not report.failures, "\n".join(report.failures)


def test_slow_clients_do_not_stall_the_endpoint(served, report):
    slowest = hostile.slowloris(served.web_port, report, connections=6, duration_s=3.0, probes=6)
    print("\n" + report.table("hostile HTTP (all of this module)"))
    assert slowest < 2.0, f"a normal request took {slowest:.2f} s while slow clients were connected"
    assert not report.failures, "\n".join(report.failures)
    assert not hostile.server_errors_logged(served.log_path), hostile.server_errors_logged(
        served.log_path
    )
