"""Your own data, through the real CLI: `driftd train --from` on CSV, JSON
Lines and Parquet files written from the shipped datasets (each version
loaded as the daemon serves it), the bad files it refuses with exit code
2 and one line, and `driftd replay --file` into the real embedded broker."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.broker import TopicSpec, ensure_topics_sync
from daemon.cli import main
from models.registry import Registry
from models.serving import LoadedModel
from streams.datasets import Example, load_examples
from tests.integration.harness import REPO, DaemonProcess, read_topic, unique

DRIFTD = str(REPO / ".venv" / "bin" / "driftd")
# of each intent in a written file: a usable model,
# and under 256 training examples (one step an epoch)
PER_INTENT = 50


def pick(
    dataset: str, split: str, intents: list[str], per_intent: int | None = None
) -> list[Example]:
    seen: Counter[str] = Counter()
    chosen = []
    for example in load_examples(dataset, split):
        if example.intent in intents and (per_intent is None or seen[example.intent] < per_intent):
            seen[example.intent] += 1
            chosen.append(example)
    return chosen


def driftd(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [DRIFTD, *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def served_accuracy(registry: Registry, version: str, test: list[Example]) -> float:
    model = LoadedModel.load(registry, version)
    try:
        predicted = [p.intent for p in model.predict([e.text for e in test], top_k=1)]
    finally:
        model.close()
    return sum(p == e.intent for p, e in zip(predicted, test, strict=False)) / len(test)


def served_version(daemon: DaemonProcess) -> str | None:
    request = urllib.request.Request(
        daemon.url + "/v1/predict", data=b'{"text": "hello"}', method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)["model_version"]
    except urllib.error.HTTPError:  # 503: no model
        return None


def test_train_from_csv_jsonl_and_parquet_registers_versions_that_serve(
    tmp_path: Path, broker
) -> None:
    banking = [
        "card_arrival",
        "lost_or_stolen_card",
        "top_up_failed",
        "exchange_rate",
        "pin_blocked",
    ]
    clinc = ["weather", "alarm", "play_music", "translate", "timer"]
    snips = ["GetWeather", "PlayMusic", "BookRestaurant", "RateBook"]
    csv_file, jsonl_file, parquet_file = (
        tmp_path / "banking.csv",
        tmp_path / "clinc.jsonl",
        tmp_path / "snips.parquet",
    )
    with open(csv_file, "w", encoding="utf-8", newline="") as fh:  # the operator's column names
        pairs = ((e.text, e.intent) for e in pick("banking77", "train", banking, PER_INTENT))
        csv.writer(fh).writerows([("utterance", "label"), *pairs, ("", "pin_blocked")])
    lines = (
        json.dumps({"text": e.text, "intent": e.intent}) + "\n"
        for e in pick("clinc150", "train", clinc, PER_INTENT)
    )
    jsonl_file.write_text("".join(lines))
    rows = pick("snips", "train", snips, PER_INTENT)
    pq.write_table(
        pa.table({"text": [e.text for e in rows], "intent": [e.intent for e in rows]}), parquet_file
    )
    data_dir = tmp_path / "var"
    config = tmp_path / "driftd.toml"
    config.write_text(f'[daemon]\ndata_dir = "{data_dir}"\n')
    registry = Registry(data_dir / "registry")

    # A daemon on this registry and a broker that is not its embedded one, bootstrap on by default:
    # no demo model, one log line saying so, and it serves whatever `driftd train` makes CURRENT.
    daemon = DaemonProcess(
        broker.bootstrap,
        tmp_path / "daemon",
        unique("own-data"),
        extra_env={
            "DRIFTD_MODELS__BOOTSTRAP": "true",
            "DRIFTD_MODELS__REGISTRY_DIR": str(registry.root),
            "DRIFTD_MODELS__SYNC_INTERVAL_S": "1",
        },
    )
    try:
        daemon.start()
        _train_three_files(
            tmp_path,
            daemon,
            registry,
            config,
            csv_file,
            jsonl_file,
            parquet_file,
            banking,
            clinc,
            snips,
        )
    finally:
        daemon.stop_quietly()
    log = daemon.log_path.read_text()
    assert (
        log.count(
            "kafka.bootstrap is not the embedded broker, so the demo dataset clinc150 "
            "is not trained on"
        )
        == 1
    ), log
    assert "training the first one" not in log


def _train_three_files(
    tmp_path: Path,
    daemon: DaemonProcess,
    registry: Registry,
    config: Path,
    csv_file: Path,
    jsonl_file: Path,
    parquet_file: Path,
    banking: list[str],
    clinc: list[str],
    snips: list[str],
) -> None:
    daemon.wait_until(
        lambda: "no model serves" in daemon.log_path.read_text(), 60, "the no-model log line"
    )
    assert not daemon.readiness()["model_loaded"] and served_version(daemon) is None

    # An empty registry: the first version becomes CURRENT without --activate.
    columns = ("--text-column", "utterance", "--intent-column", "label")
    code, out, err = finish(driftd("train", "--from", str(csv_file), "-c", str(config), *columns))
    assert code == 0, err
    assert (
        f"read {5 * PER_INTENT} examples of 5 intents from {csv_file}; skipped 1 "
        "rows with an empty text or intent"
    ) in out
    holdout = re.search(r"holdout accuracy (\d\.\d{4}) on (\d+) examples \(10% of each intent", out)
    held = round(PER_INTENT * 0.1)
    assert holdout and int(holdout.group(2)) == 5 * held, out
    assert "train: 100%" in err  # the progress bar, epoch by epoch
    assert "v000001" in out and "it is CURRENT now" in out and registry.current() == "v000001"
    manifest = registry.verify("v000001")
    assert manifest.info["holdout_accuracy"] == pytest.approx(float(holdout.group(1)), abs=1e-4)
    assert manifest.info["examples"] == 5 * (PER_INTENT - held)
    assert served_accuracy(registry, "v000001", pick("banking77", "test", banking)) > 0.75
    daemon.wait_until(
        lambda: served_version(daemon) == "v000001", 30, "the daemon to serve v000001"
    )
    assert daemon.readiness()["model_loaded"]

    # Two more at once (a registry takes concurrent publishers), the registry
    # location from the environment this time: the JSON Lines one without
    # --activate leaves CURRENT alone, the Parquet one with it moves CURRENT.
    env = {"DRIFTD_MODELS__REGISTRY_DIR": str(registry.root)}
    jsonl_run = driftd("train", "--from", str(jsonl_file), "--no-progress", env=env, cwd=tmp_path)
    parquet_run = driftd(
        "train", "--from", str(parquet_file), "--activate", "--no-progress", env=env, cwd=tmp_path
    )
    (jsonl_code, jsonl_out, jsonl_err), (parquet_code, parquet_out, parquet_err) = (
        finish(jsonl_run),
        finish(parquet_run),
    )
    assert jsonl_code == 0 and parquet_code == 0, jsonl_err + parquet_err
    registered = [re.search(r"registered (v\d{6})", out) for out in (jsonl_out, parquet_out)]
    jsonl_version, parquet_version = (found.group(1) for found in registered if found)
    assert {jsonl_version, parquet_version} == {"v000002", "v000003"}
    stayed = re.search(
        r"CURRENT stays (v\d{6}) \(to serve it: driftd models rollback --registry ", jsonl_out
    )
    # whichever was CURRENT when it finished
    assert stayed and stayed.group(1) in ("v000001", parquet_version), jsonl_out
    assert "it is CURRENT now" in parquet_out and registry.current() == parquet_version
    assert served_accuracy(registry, jsonl_version, pick("clinc150", "test", clinc)) > 0.8
    assert served_accuracy(registry, parquet_version, pick("snips", "test", snips)) > 0.8
    assert registry.verify(parquet_version).info["file"] == str(parquet_file)
    daemon.wait_until(
        lambda: served_version(daemon) == parquet_version,
        30,
        f"the daemon to follow CURRENT to {parquet_version}",
    )


def test_bad_files_exit_2_with_one_line_that_says_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "missing_column.csv": b"utterance,intent\nhello,greet\nbye,bye\n",
        "empty.jsonl": b"",
        "latin1.csv": "text,intent\nhello,greet\ncafé,order\n".encode("latin-1"),
        "single.parquet": None,
        "notes.txt": b"text,intent\nhello,greet\n",
    }
    for name, body in files.items():
        if body is not None:
            (tmp_path / name).write_bytes(body)
    pq.write_table(
        pa.table({"text": ["hi", "hello"], "intent": ["greet", "greet"]}),
        tmp_path / "single.parquet",
    )
    expected = {
        "missing_column.csv": "missing_column.csv has no text column 'text'; its columns: "
        "'utterance', 'intent'",
        "empty.jsonl": "empty.jsonl is empty",
        "latin1.csv": "latin1.csv is not UTF-8 text: byte 0xe9 on line 3 cannot be decoded; "
        "save the file as UTF-8",
        "single.parquet": "single.parquet has a single intent ('greet'); a classifier needs at "
        "least 2",
        "notes.txt": "notes.txt: unknown file type (.txt); expected .csv, .jsonl (JSON "
        "Lines; .ndjson) or .parquet "
        "(.csv and .jsonl may be .gz-compressed)",
        "absent.csv": "absent.csv does not exist",
    }
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIFTD_DAEMON__DATA_DIR", str(tmp_path / "var"))
    # main() configures the root logger (level ERROR for
    # `train`): give it back as it was to the tests after this.
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    # Two through the installed command (a process of its own: exit status,
    # nothing but the line on stderr); all of them through the same entry
    # point in this process, which saves an interpreter start each.
    running = {
        name: driftd("train", "--from", name, cwd=tmp_path) for name in ("latin1.csv", "absent.csv")
    }
    for name, message in expected.items():
        monkeypatch.setattr(sys, "argv", ["driftd", "train", "--from", name])
        with pytest.raises(SystemExit) as exited:
            main()
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err == f"driftd train: {message}\n", err
    for name, proc in running.items():
        code, out, err = finish(proc)
        assert code == 2 and out == "" and err == f"driftd train: {expected[name]}\n", (
            name,
            out,
            err,
        )
    assert (
        not (tmp_path / "var" / "registry").exists()
        or not Registry(tmp_path / "var" / "registry").versions()
    )


def test_replay_file_streams_its_rows_on_the_schedule_into_the_broker(
    tmp_path: Path, broker
) -> None:
    intents = ["card_arrival", "exchange_rate", "pin_blocked"]
    rows = pick("banking77", "train", intents, 20)
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps({"q": e.text, "label": e.intent}) + "\n" for e in rows))
    topic = unique("own-replay")
    ensure_topics_sync(broker.bootstrap, [TopicSpec(topic, 1)])
    env = {"DRIFTD_TOPICS__INPUT": topic, "DRIFTD_DAEMON__DATA_DIR": str(tmp_path / "var")}
    args = [
        "replay",
        "--file",
        str(source),
        "--text-column",
        "q",
        "--intent-column",
        "label",
        "--bootstrap",
        broker.bootstrap,
        "--rate",
        "0",
        "--label-fraction",
        "1",
        "--label-delay",
        "0",
        "--schedule",
        "0=card_arrival;20=*",
        "--no-progress",
    ]

    code, out, err = finish(driftd(*args, env=env, cwd=tmp_path))
    assert code == 0, err
    assert f"replayed 60 utterances and 60 labels of {source} to {topic}" in out
    records = [
        json.loads(r.value)
        for r in asyncio.run(read_topic(broker.bootstrap, topic, 120, timeout_s=30))
    ]
    utterances = [e for e in records if e["type"] == "utterance"]
    labels = {e["ref_event_id"]: e["intent"] for e in records if e["type"] == "label"}
    # every row once
    assert len(records) == 120 and sorted(e["text"] for e in utterances) == sorted(
        e.text for e in rows
    )
    # the schedule, over the file's intents
    assert {labels[e["event_id"]] for e in utterances[:20]} == {"card_arrival"}
    assert Counter(labels.values()) == Counter(e.intent for e in rows)

    bad = [*args[:-3], "--schedule", "0=card_arival", "--no-progress"]
    code, out, err = finish(driftd(*bad, env=env, cwd=tmp_path))
    assert code == 2 and "Traceback" not in err
    assert err.startswith(
        "driftd replay: unknown domain or intent 'card_arival' in drift schedule "
        "(did you mean 'card_arrival'?)"
    ), err
