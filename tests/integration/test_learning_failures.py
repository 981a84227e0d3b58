"""A fine-tune forced to fail leaves the incumbent serving and raises
the failure metric: a killed child (reported as crashed) and a
diverging loss (NaN), each on a real daemon with a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streams.datasets import groups, load_examples
from tests.integration.harness import DaemonProcess, produce, unique
from tests.integration.test_learning_loop import events_of, publish_seed_model

TOKEN = "learning-failure-test-token"


def call(
    daemon: DaemonProcess,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, dict[str, Any]]:
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {token}"} if token else {}),
    }
    request = urllib.request.Request(
        daemon.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_killed_child_and_nan_loss_leave_the_incumbent_serving(broker: Any, tmp_path: Path) -> None:
    domains = groups("clinc150")
    seed = {i for d in ("banking", "travel") for i in domains[d]}
    train = [e for e in load_examples("clinc150", "train") if e.intent in seed]
    seed_version, _ = publish_seed_model(tmp_path / "registry", train)
    topic = unique("learn-fail")
    env = {
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry"),
        "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
        "DRIFTD_LEARNING__EPOCHS": "200",
        "DRIFTD_LEARNING__PATIENCE": "200",
    }

    daemon = DaemonProcess(broker.bootstrap, tmp_path / "daemon", topic, extra_env=env).start()
    try:
        daemon.wait_ready(timeout_s=90, model=True)
        stream = events_of(train, seed, seed, before=1, total=800, seed=3, run=topic)
        asyncio.run(produce(broker.bootstrap, topic, [json.dumps(e).encode() for e in stream]))
        daemon.wait_stored(len(stream))

        assert call(daemon, "POST", "/admin/v1/retrain", token=None)[0] == 401
        status, body = call(daemon, "POST", "/admin/v1/retrain")
        assert status == 202 and body["started"], body
        daemon.wait_until(
            lambda: call(daemon, "GET", "/admin/v1/learning")[1]["pid"],
            60,
            "the fine-tune child to start",
        )
        assert call(daemon, "POST", "/admin/v1/retrain")[0] == 409  # one at a time
        pid = call(daemon, "GET", "/admin/v1/learning")[1]["pid"]
        os.kill(pid, signal.SIGKILL)
        daemon.wait_until(
            lambda: daemon.metric("driftd_finetune_failures_total") >= 1,
            30,
            "the failure to be counted",
        )
        metrics = daemon.metrics()
        assert metrics["driftd_finetune_failures_total{reason=crashed}"] == 1
        assert metrics["driftd_finetune_running"] == 0
        status, answer = call(daemon, "POST", "/v1/predict", {"text": "what is my bank balance"})
        assert status == 200 and answer["model_version"] == seed_version
        assert call(daemon, "GET", "/admin/v1/learning")[1]["last_run"]["result"] == "failed"
        code, _ = daemon.terminate(timeout_s=30)
        assert code == 0
    finally:
        daemon.stop_quietly()

    # The same daemon again (same data dir), now with a
    # learning rate that makes the loss overflow to NaN.
    diverging = DaemonProcess(
        broker.bootstrap,
        tmp_path / "daemon",
        topic,
        extra_env={
            **env,
            "DRIFTD_LEARNING__LR": "1e30",
            "DRIFTD_LEARNING__CLIP_NORM": "0",
            "DRIFTD_LEARNING__EPOCHS": "3",
        },
    ).start()
    try:
        diverging.wait_ready(timeout_s=90, model=True)
        assert call(diverging, "POST", "/admin/v1/retrain")[0] == 202
        diverging.wait_until(
            lambda: diverging.metric("driftd_finetune_failures_total") >= 1,
            90,
            "the diverged fine-tune to be counted",
        )
        metrics = diverging.metrics()
        assert metrics["driftd_finetune_failures_total{reason=diverged}"] == 1
        assert metrics["driftd_finetune_results_total{result=swapped}"] == 0
        status, answer = call(
            diverging,
            "POST",
            "/v1/predict",
            {"texts": ["book a flight to paris", "what is my balance"]},
        )
        assert status == 200 and answer["model_version"] == seed_version
        run = call(diverging, "GET", "/admin/v1/learning")[1]["last_run"]
        assert (
            run["result"] == "failed" and run["reason"] == "diverged" and "loss is" in run["detail"]
        )
    finally:
        diverging.stop_quietly()
