"""What every model registry backend promises, one suite run on each: ``local`` (``Registry`` on a
directory) and ``s3`` (``MirroredRegistry`` from ``open_registry`` on a local S3-compatible server,
moto). Round trips, numbering, CURRENT and rollback, every kind of corruption of a working copy, and
two handles on one store (two processes on one disk, two hosts on one bucket) seeing each other's
versions and refusing one damaged where the store keeps it.

What only one backend does stays beside it: crash safety, racing threads and the CLI in
tests/unit/test_registry.py, fetching, pushing and serving across hosts in test_registry_s3.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import s3fs

from models.registry import CorruptVersion, Manifest, Registry
from models.registry_mirror import MirroredRegistry, open_registry

BUCKET = "driftd-registry"
URL = f"s3://{BUCKET}/models"
FILES = {
    "model.onnx": b"\x08\x01onnx-bytes" * 100,
    "labels.json": b'["greet", "bye"]',
    "featurizer.json": b'{"ngrams": 2}',
}


@dataclass
class Backend:
    """One store of versions. ``open(host)`` is a handle on it as ``host`` sees it (a working copy
    of its own where the backend has one); ``stored``/``store``/``unstore`` read and change a
    version's file where the store keeps it, behind every handle's back."""

    open: Callable[[str], Registry]
    stored: Callable[[str, str], bytes]
    store: Callable[[str, str, bytes], None]
    unstore: Callable[[str, str], None]


def local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "registry"  # one directory: every host on the same disk
    return Backend(
        open=lambda host: open_registry(root),
        stored=lambda version, name: (root / version / name).read_bytes(),
        store=lambda version, name, data: (root / version / name).write_bytes(data),
        unstore=lambda version, name: (root / version / name).unlink(),
    )


def s3_backend(tmp_path: Path, options: dict) -> Backend:
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    key = f"{BUCKET}/models/{{}}/{{}}".format
    return Backend(
        open=lambda host: open_registry(tmp_path / host, URL, options),
        stored=lambda version, name: fs.cat_file(key(version, name)),
        store=lambda version, name, data: fs.pipe_file(key(version, name), data),
        unstore=lambda version, name: fs.rm_file(key(version, name)),
    )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "s3":
        return s3_backend(tmp_path, request.getfixturevalue("s3"))
    return local_backend(tmp_path)


@pytest.fixture
def reg(backend: Backend) -> Registry:
    return backend.open("a")


def publish(reg: Registry, parent: str | None = None, **info) -> str:
    return reg.publish(FILES, parent=parent, info=info or {"acc": 0.9}).version


def corruption(reg: Registry, version: str) -> str:
    with pytest.raises(CorruptVersion) as caught:
        reg.verify(version)
    assert caught.value.version == version
    message = str(caught.value)
    assert version in message
    return message


def test_open_registry_gives_each_backend(backend: Backend, request: pytest.FixtureRequest) -> None:
    opened = backend.open("a")
    mirrored = request.node.callspec.params["backend"] == "s3"
    assert isinstance(opened, Registry) and isinstance(opened, MirroredRegistry) == mirrored


# --- publish / verify ---------------------------------------------------------------------------


def test_publish_then_verify(reg: Registry, tmp_path: Path) -> None:
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


def test_the_manifest_records_every_file_and_where_the_version_came_from(
    reg: Registry, backend: Backend
) -> None:
    before = time.time()
    first = reg.publish(FILES, parent=None, info={"acc": 0.9}, code_version="1.2.3")
    m = reg.publish({"model.onnx": b"other"}, parent=first.version, info={"gate": {"pass": True}})
    stored = Manifest.from_json(backend.stored(m.version, "manifest.json"))
    assert stored == m == reg.verify(m.version)
    assert (m.version, m.parent, m.info) == ("v000002", "v000001", {"gate": {"pass": True}})
    assert before <= first.created_at <= m.created_at <= time.time()
    assert first.code_version == "1.2.3" and reg.verify(first.version).code_version == "1.2.3"
    assert m.files == {
        "model.onnx": {
            "sha256": "d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa",
            "bytes": 5,
        }
    }
    assert set(first.files) == set(FILES)
    assert json.loads(backend.stored(first.version, "manifest.json"))["info"] == {"acc": 0.9}


def test_info_that_cannot_be_stored_is_refused_before_anything_is_written(reg: Registry) -> None:
    with pytest.raises(TypeError):
        reg.publish(FILES, parent=None, info={"when": object()})
    assert reg.versions() == [] and not reg.root.exists()


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
    for bad in ("v1", "latest", "v0000001"):
        with pytest.raises(ValueError, match="is not a version name"):
            reg.path(bad, "model.onnx")
    with pytest.raises(ValueError, match="cannot be a file name"):
        reg.path("v000001", "../model.onnx")


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


def test_a_staging_dir_publishes_by_path_and_is_swept_when_left_behind(reg: Registry) -> None:
    staging = reg.staging_dir()
    assert staging.is_dir() and staging.parent == reg.root and not list(staging.iterdir())
    (staging / "model.onnx").write_bytes(FILES["model.onnx"])
    m = reg.publish({"model.onnx": staging / "model.onnx"}, parent=None, info={})
    assert reg.path(m.version, "model.onnx").read_bytes() == FILES["model.onnx"]
    assert reg.versions() == ["v000001"]  # the staging dir is never a version
    assert [p.name for p in reg.root.iterdir() if p.name.startswith(".tmp-")] == [staging.name]
    assert reg.remove_stale_temp(older_than_s=0) == [staging.name]


# --- corruption of a working copy ---------------------------------------------------------------


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
    with pytest.raises(CorruptVersion) as caught:
        reg.verify(v)
    exc = caught.value
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
    with pytest.raises(CorruptVersion, match=r"v000002.*model.onnx"):
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
    # Same size, other bytes: only a hash sees it.
    reg.path("v000001", "model.onnx").write_bytes(data[::-1])
    reg.set_current("v000001", hash_only=())  # a hot swap: its load hashed the files it serves
    assert reg.current() == "v000001"
    with pytest.raises(CorruptVersion, match=r"model.onnx has sha256"):
        reg.set_current("v000001", hash_only=("model.onnx",))
    with pytest.raises(CorruptVersion, match=r"model.onnx has sha256"):
        reg.set_current("v000001")  # the default hashes every file
    reg.path("v000001", "model.onnx").write_bytes(data[:-1])
    with pytest.raises(CorruptVersion, match=r"model.onnx is .* bytes"):
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


# --- two handles on one store -------------------------------------------------------------------


def test_two_handles_share_versions_and_current(backend: Backend) -> None:
    host_a, host_b = backend.open("a"), backend.open("b")
    assert host_b.current() is None and host_b.versions() == []

    v1 = host_a.publish(FILES, parent=None, info={"by": "a"}).version
    host_a.set_current(v1)
    assert host_b.current() == v1 and host_b.versions() == [v1]
    assert host_b.verify(v1).info == {"by": "a"}
    assert host_b.path(v1, "model.onnx").read_bytes() == FILES["model.onnx"]

    # After a failover b publishes: the next number, never one a already used; a follows CURRENT.
    v2 = host_b.publish({"model.onnx": b"b's model"}, parent=v1, info={"by": "b"}).version
    assert v2 == "v000002"
    host_b.set_current(v2)
    assert (
        host_a.current() == v2
        and host_a.verify(v2).info == {"by": "b"}
        and host_a.verify(v2).parent == v1
    )
    assert host_a.rollback() == v1 and host_b.current() == v1


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("truncate", ("model.onnx", "bytes")),
        ("flip", ("model.onnx", "sha256")),
        ("delete", ("model.onnx", "missing")),
    ],
    ids=["truncate", "flip", "delete"],
)
def test_a_version_damaged_in_the_store_is_refused_by_a_reader(
    backend: Backend, damage: str, words: tuple[str, ...]
) -> None:
    publisher = backend.open("a")
    v1 = publish(publisher)
    v2 = publish(publisher, parent=v1)
    publisher.set_current(v1)
    data = backend.stored(v2, "model.onnx")
    if damage == "truncate":
        backend.store(v2, "model.onnx", data[:-10])
    elif damage == "flip":
        backend.store(v2, "model.onnx", data[:3] + bytes([data[3] ^ 1]) + data[4:])
    else:
        backend.unstore(v2, "model.onnx")
    reader = backend.open("c")  # a host that has not read v2 yet
    message = corruption(reader, v2)
    assert all(word in message for word in words), message
    with pytest.raises(CorruptVersion):
        reader.set_current(v2)
    assert reader.current() == v1  # CURRENT untouched by the refused version
    assert reader.verify(v1).version == v1  # the other versions still serve
    assert [v for v, e in reader.entries() if isinstance(e, CorruptVersion)] == [v2]
