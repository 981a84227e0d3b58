"""The model registry against real files: round trips, every kind of corruption, CURRENT moves, the CLI,
racing publishers and publishers SIGKILLed mid-write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli.models import models_cli
from models.registry import CorruptVersion, Manifest, Registry

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


def corruption(reg: Registry, version: str) -> str:
    with pytest.raises(CorruptVersion) as caught:
        reg.verify(version)
    assert caught.value.version == version
    message = str(caught.value)
    assert version in message
    return message


# --- publish / verify ---------------------------------------------------------------------------


def test_publish_verify_round_trip(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(3 << 20))  # streamed from a path, more than one chunk
    info = {"window": [1.0, 2.0], "counts": {"greet": 3}, "gate": "pass"}
    m = reg.publish({**FILES, "model.pt": src}, parent=None, info=info)
    assert m.version == "v000001" and m.parent is None and m.info == info
    assert m.code_version == metadata.version("driftd")
    assert reg.verify("v000001") == m
    assert Manifest.from_json(m.to_json()) == m
    assert reg.path("v000001", "model.pt").read_bytes() == src.read_bytes()
    for name, data in FILES.items():
        assert reg.path("v000001", name).read_bytes() == data
        assert m.files[name]["bytes"] == len(data)
    assert sorted(os.listdir(reg.root / "v000001")) == sorted([*FILES, "model.pt", "manifest.json"])
    assert reg.current() is None  # publishing does not make a version live


def test_versions_increment_and_are_never_reused(reg: Registry) -> None:
    assert reg.versions() == [] and reg.entries() == []
    assert [publish(reg) for _ in range(3)] == ["v000001", "v000002", "v000003"]
    (reg.root / "v000003" / "manifest.json").unlink()  # a corrupt version still holds its number
    assert publish(reg, parent="v000002", code="x") == "v000004"
    assert reg.versions() == ["v000001", "v000002", "v000003", "v000004"]
    assert reg.verify("v000004").parent == "v000002"


def test_publish_rejects_bad_names_and_unknown_parent(reg: Registry) -> None:
    for name in ("manifest.json", "../evil", "a/b", "", ".."):
        with pytest.raises(ValueError):
            reg.publish({name: b"x"}, parent=None, info={})
    with pytest.raises(ValueError, match="v000009"):
        reg.publish(FILES, parent="v000009", info={})
    with pytest.raises(ValueError):
        reg.verify("../v000001")
    with pytest.raises(ValueError, match="no version v000001"):
        reg.verify("v000001")
    assert not reg.root.exists()  # checked before anything is written


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


def test_leftover_temp_dir_is_invisible_and_removed(reg: Registry) -> None:
    publish(reg)
    reg.set_current("v000001")
    crashed = reg.root / ".tmp-deadbeef"
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"half a mod")
    (reg.root / ".tmp-cafe.CURRENT").write_text("v000099\n")
    assert reg.versions() == ["v000001"] and reg.current() == "v000001"
    assert publish(reg) == "v000002"
    assert reg.remove_stale_temp() == []  # fresh: could be a live publisher
    old = time.time() - 7200
    for p in (crashed / "model.onnx", crashed, reg.root / ".tmp-cafe.CURRENT"):
        os.utime(p, (old, old))
    assert sorted(reg.remove_stale_temp()) == [".tmp-cafe.CURRENT", ".tmp-deadbeef"]
    assert sorted(os.listdir(reg.root)) == ["CURRENT", "v000001", "v000002"]


# --- corruption ---------------------------------------------------------------------------------


def test_truncated_file(reg: Registry) -> None:
    v = publish(reg)
    path = reg.path(v, "model.onnx")
    path.write_bytes(path.read_bytes()[:-10])
    message = corruption(reg, v)
    assert "model.onnx" in message and "bytes" in message


def test_flipped_byte(reg: Registry) -> None:
    v = publish(reg)
    path = reg.path(v, "labels.json")
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    message = corruption(reg, v)
    assert "labels.json" in message and "sha256" in message


def test_deleted_file(reg: Registry) -> None:
    v = publish(reg)
    reg.path(v, "featurizer.json").unlink()
    message = corruption(reg, v)
    assert "featurizer.json" in message and "missing" in message


def test_extra_unlisted_file(reg: Registry) -> None:
    v = publish(reg)
    (reg.root / v / "notes.txt").write_text("hi")
    message = corruption(reg, v)
    assert "notes.txt" in message and "not listed" in message


def test_garbage_manifest(reg: Registry) -> None:
    v = publish(reg)
    (reg.root / v / "manifest.json").write_bytes(b"\x00{not json")
    assert "manifest.json is not valid JSON" in corruption(reg, v)


def test_manifest_of_wrong_shape(reg: Registry) -> None:
    v = publish(reg)
    raw = json.loads((reg.root / v / "manifest.json").read_text())
    for broken in (
        [1, 2],
        {**raw, "files": {"model.onnx": {"sha256": "x", "bytes": 1}}},
        {k: raw[k] for k in raw if k != "parent"},
    ):
        (reg.root / v / "manifest.json").write_text(json.dumps(broken))
        assert "manifest.json has the wrong shape" in corruption(reg, v)
    (reg.root / v / "manifest.json").write_text(json.dumps({**raw, "version": "v000007"}))
    assert "says it is v000007" in corruption(reg, v)


def test_missing_manifest(reg: Registry) -> None:
    v = publish(reg)
    (reg.root / v / "manifest.json").unlink()
    assert "missing manifest.json" in corruption(reg, v)


def test_several_problems_are_all_reported(reg: Registry) -> None:
    v = publish(reg)
    reg.path(v, "featurizer.json").unlink()
    (reg.root / v / "stray.bin").write_bytes(b"1")
    exc = pytest.raises(CorruptVersion, reg.verify, v).value
    assert len(exc.problems) == 2 and exc.manifest is not None and exc.manifest.version == v


def test_entries_list_a_corrupt_version_without_raising(reg: Registry) -> None:
    publish(reg)
    publish(reg, parent="v000001")
    (reg.root / "v000001" / "manifest.json").write_text("{")
    (v1, e1), (v2, e2) = reg.entries()
    assert (v1, v2) == ("v000001", "v000002")
    assert isinstance(e1, CorruptVersion) and "not valid JSON" in str(e1)
    assert isinstance(e2, Manifest) and e2.parent == "v000001"


# --- CURRENT and rollback -----------------------------------------------------------------------


def test_set_current_refuses_a_corrupt_version(reg: Registry) -> None:
    publish(reg)
    publish(reg, parent="v000001")
    reg.set_current("v000001")
    reg.path("v000002", "model.onnx").write_bytes(b"tampered")
    with pytest.raises(CorruptVersion, match="v000002.*model.onnx"):
        reg.set_current("v000002")
    assert reg.current() == "v000001"
    assert (reg.root / "CURRENT").read_text() == "v000001\n"
    with pytest.raises(ValueError):
        reg.set_current("v000003")
    assert reg.current() == "v000001"
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]


def test_set_current_after_a_load_checks_sizes_and_hashes_only_what_it_is_told(
    reg: Registry,
) -> None:
    publish(reg)
    data = reg.path("v000001", "model.onnx").read_bytes()
    reg.path("v000001", "model.onnx").write_bytes(
        data[::-1]
    )  # same size, other bytes: only a hash sees it
    reg.set_current("v000001", hash_only=())  # a hot swap: its load hashed the files it serves
    assert reg.current() == "v000001"
    with pytest.raises(CorruptVersion, match="model.onnx has sha256"):
        reg.set_current("v000001", hash_only=("model.onnx",))
    with pytest.raises(CorruptVersion, match="model.onnx has sha256"):
        reg.set_current("v000001")  # the default hashes every file
    reg.path("v000001", "model.onnx").write_bytes(data[:-1])
    with pytest.raises(CorruptVersion, match="model.onnx is .* bytes"):
        reg.set_current("v000001", hash_only=())  # sizes are always checked


def test_rollback_to_parent_and_explicit(reg: Registry) -> None:
    publish(reg)
    publish(reg, parent="v000001")
    publish(reg, parent="v000002")
    reg.set_current("v000003")
    assert reg.rollback() == "v000002" and reg.current() == "v000002"
    assert reg.rollback() == "v000001" and reg.current() == "v000001"
    assert reg.rollback("v000003") == "v000003" and reg.current() == "v000003"


def test_rollback_away_from_a_corrupt_current(reg: Registry) -> None:
    publish(reg)
    publish(reg, parent="v000001")
    reg.set_current("v000002")
    reg.path("v000002", "model.onnx").unlink()  # the live model broke: the parent is still readable
    assert reg.rollback() == "v000001"


def test_rollback_errors(reg: Registry) -> None:
    with pytest.raises(ValueError, match="no current version"):
        reg.rollback()
    publish(reg)
    reg.set_current("v000001")
    with pytest.raises(ValueError, match="v000001 has no parent"):
        reg.rollback()
    publish(reg, parent="v000001")
    reg.set_current("v000002")
    reg.path("v000001", "labels.json").write_bytes(b"[]")
    with pytest.raises(CorruptVersion, match="v000001"):
        reg.rollback()
    with pytest.raises(ValueError, match="no version v000005"):
        reg.rollback("v000005")
    assert reg.current() == "v000002"


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
