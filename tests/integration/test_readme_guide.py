"""README's "Your own intents": its commands, run as written in a fresh directory,
against the embedded test broker (for "your cluster") and a free port (for
8780). Then what the guide says happens must happen: the Russian traffic's new
intents start a fine-tune, a swap, and the served model answers Russian texts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon.broker import free_port
from daemon.metrics_scrape import scrape
from streams.datasets import load_examples
from tests.integration.harness import unique

REPO = Path(__file__).resolve().parents[2]


def guide_commands() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Your own intents\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the guide has no sh block"
    return block.group(1)


def predict(url: str, texts: list[str]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for start in range(0, len(texts), 256):  # models.max_batch
        request = urllib.request.Request(
            url + "/v1/predict", data=json.dumps({"texts": texts[start : start + 256]}).encode()
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answers += json.load(response)["predictions"]
    return answers


@pytest.mark.timeout(900)
def test_the_guide_runs_as_written_and_the_daemon_learns_the_new_language(
    broker: Any, tmp_path: Path
) -> None:
    commands = guide_commands()
    assert "localhost:9092" in commands and "localhost:8780" in commands
    port = free_port()
    script = commands.replace("localhost:9092", broker.bootstrap).replace(
        "localhost:8780", f"127.0.0.1:{port}"
    )
    # what a clone has
    for name in (".venv", "data", "scripts", "pyproject.toml", "requirements-broker.txt"):
        (tmp_path / name).symlink_to(REPO / name)
    topic = unique("guide")
    env = {
        **os.environ,
        "DRIFTD_WEB__PORT": str(port),
        # Isolation from the other tests on the shared broker; not part of the guide.
        "DRIFTD_TOPICS__INPUT": topic,
        "DRIFTD_TOPICS__DLQ": f"{topic}.dlq",
        "DRIFTD_TOPICS__PREDICTIONS": f"{topic}.predictions",
        "DRIFTD_TOPICS__MODEL_UPDATES": f"{topic}.model-updates",
        "DRIFTD_TOPICS__QUALITY": f"{topic}.quality",
        "DRIFTD_TOPICS__LABELING_REQUESTS": f"{topic}.labeling-requests",
        "DRIFTD_KAFKA__GROUP_ID": f"{topic}-group",
        "DRIFTD_KAFKA__SESSION_TIMEOUT_S": "6",
        "DRIFTD_KAFKA__REBALANCE_TIMEOUT_S": "6",
    }
    session = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        out, _ = session.communicate(timeout=600)
        log = (tmp_path / "driftd.log").read_text() if (tmp_path / "driftd.log").exists() else ""
        assert session.returncode == 0, out[-3000:] + "\n--- daemon log ---\n" + log[-3000:]
        assert re.search(r"holdout accuracy 0\.\d+ on \d+ examples", out), out[-2000:]
        answer = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
        banking = {e.intent for e in load_examples("banking77", "train")}
        assert answer["intent"] in banking and len(answer["prediction_id"]) == 32, answer
        assert "model      v000001" in out, "driftd status shows the served version"

        # What the guide promises next: the new intents decide a
        # fine-tune, which swaps in a model that reads Russian.
        deadline_s = 420
        for _ in range(deadline_s):
            metrics = scrape(url + "/metrics")
            if metrics.get("driftd_finetune_results_total{result=swapped}", 0) >= 1:
                break
            time.sleep(1)
        else:
            raise AssertionError(
                f"no swap within {deadline_s} s; daemon "
                f"log:\n{(tmp_path / 'driftd.log').read_text()[-4000:]}"
            )
        assert metrics["driftd_decay_decision_signals_total{signal=unknown_intent}"] >= 1
        test = load_examples("massive_ru", "dev")[::5]  # the guide streams the test split
        answers = predict(url, [e.text for e in test])
        accuracy = sum(a["intent"] == e.intent for a, e in zip(answers, test, strict=False)) / len(
            test
        )
        print(
            f"\n  guide: after the first swap ({answers[0]['model_version']}) the "
            f"served model scores {accuracy:.3f} on {len(test)} massive_ru dev texts"
        )
        # The first swap comes as soon as the skipped run's 500 labels are in
        # (about 8 per intent; 0.31 to 0.33 measured, 1/59 by chance); the
        # follow-ups take it past 0.6, but the last waits for a quiet minute.
        assert accuracy >= 0.2
    finally:
        with contextlib.suppress(ProcessLookupError):
            # the guide's daemon runs in the background of its shell
            os.killpg(session.pid, signal.SIGTERM)
        session.wait(timeout=30)
