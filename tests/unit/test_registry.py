"""What only the local registry does, against real files: racing publisher threads on one
directory, the CLI, and publishers SIGKILLed mid-write. What every backend does (round trips,
corruption, CURRENT, rollback) is in tests/integration/test_registry_contract.py, run on the local
and the s3 backend."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli.models import models_cli
from models.registry import Manifest, Registry

REPO = Path(__file__).resolve().parents[2]
FILES = {
    "model.onnx": b"\x08\x01onnx-bytes" * 100,
    "labels.json": b'["greet", "bye"]',
    "featurizer.json": b'{"ngrams": 2}',
}


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def publish(reg: Registry, parent: str | None = None, **info) -> str:
    return reg.publish(FILES, parent=parent, info=info or {"acc": 0.9}).version


# --- racing publishers ---------------------------------------------------------------------------


def test_racing_publishers_get_distinct_versions(reg: Registry) -> None:
    n, barrier, results = 8, threading.Barrier(8), []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(
            reg.publish({"model.onnx": bytes([i]) * 1000}, parent=None, info={"i": i}).version
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [f"v{i:06d}" for i in range(1, n + 1)]
    seen = {reg.verify(v).info["i"] for v in reg.versions()}
    assert seen == set(range(n))  # each manifest names its final number and its own files


# --- CLI ----------------------------------------------------------------------------------------


def test_cli(reg: Registry) -> None:
    runner = CliRunner()
    root = str(reg.root)
    publish(reg)
    publish(reg, parent="v000001")
    publish(reg, parent="v000002")
    reg.set_current("v000002")
    reg.path("v000003", "labels.json").write_bytes(b"oops")

    listed = runner.invoke(models_cli, ["list", "--registry", root])
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    lines = {(row[1] if row[0] == "*" else row[0]): " ".join(row) for row in rows}
    assert "ok" in lines["v000001"] and lines["v000002"].startswith("*")
    assert (
        "CORRUPT" in lines["v000003"]
        and "labels.json" in lines["v000003"]
        and "v000002" in lines["v000003"]
    )

    shown = runner.invoke(models_cli, ["show", "v000002", "--registry", root])
    assert shown.exit_code == 0, shown.output
    assert Manifest.from_json(shown.stdout) == reg.verify("v000002")

    back = runner.invoke(models_cli, ["rollback", "--registry", root])
    assert back.exit_code == 0 and back.stdout.strip() == "v000001" and reg.current() == "v000001"
    explicit = runner.invoke(models_cli, ["rollback", "v000002", "--registry", root])
    assert (
        explicit.exit_code == 0
        and explicit.stdout.strip() == "v000002"
        and reg.current() == "v000002"
    )

    bad = runner.invoke(models_cli, ["rollback", "v000003", "--registry", root])
    assert bad.exit_code == 1 and "v000003 is corrupt" in bad.stderr and "labels.json" in bad.stderr
    assert reg.current() == "v000002"
    bad_show = runner.invoke(models_cli, ["show", "v000003", "--registry", root])
    assert bad_show.exit_code == 1 and "v000003 is corrupt" in bad_show.stderr
    missing = runner.invoke(models_cli, ["show", "v000042", "--registry", root])
    assert missing.exit_code == 1 and "no version v000042" in missing.stderr

    (reg.root / "v000001" / "manifest.json").unlink()
    still = runner.invoke(models_cli, ["list", "--registry", root])
    assert still.exit_code == 0 and "missing manifest.json" in still.stdout


# --- crash safety -------------------------------------------------------------------------------

CHILD = """
import os, sys
from pathlib import Path
from models.registry import Registry

reg = Registry(Path(sys.argv[1]))
blob = bytearray(os.urandom(50 << 20))
small = Path(sys.argv[1]).parent / "labels.src"
print("ready", flush=True)
i = 0
while True:
    i += 1
    blob[:8] = i.to_bytes(8, "big")
    reg.publish({"model.onnx": bytes(blob), "labels.json": small}, parent=None, info={"i": i})
"""


def test_sigkilled_publisher_never_leaves_a_partial_version(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    (tmp_path / "labels.src").write_bytes(b'["a", "b"]' * 1000)
    reg, rng, leftovers, delays = Registry(root), random.Random(), 0, []
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root)], cwd=REPO, stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            delays.append(round(rng.uniform(0.0, 0.4), 3))
            time.sleep(delays[-1])
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        leftovers += (
            sum(1 for p in root.iterdir() if p.name.startswith(".tmp-")) if root.exists() else 0
        )
        for v in reg.versions():
            assert reg.verify(v).files["model.onnx"]["bytes"] == 50 << 20, f"delays {delays}"
    assert leftovers > 0, f"no kill landed mid-write (delays {delays}): the test proved nothing"
    reg.remove_stale_temp(older_than_s=0)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    versions = reg.versions()
    assert versions == [f"v{i:06d}" for i in range(1, len(versions) + 1)]
