"""The registry shared through s3:// (``MirroredRegistry``) by two hosts, against a local S3-compatible server
(moto): what one publishes, the other fetches, verifies and serves; numbers are never reused across hosts; a
partial upload is invisible and a corrupted object is refused without touching the working copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import s3fs

from models.finetune import FineTuneJob, run_fine_tune
from models.registry import CorruptVersion
from models.registry_mirror import MirroredRegistry
from models.serving import ModelServer
from models.train import TrainSettings
from tests.toy_intents import examples

URL = "s3://driftd-registry/models"


def version_files(seed: int) -> dict[str, bytes]:
    job = FineTuneJob(
        train=examples(["refund", "track"], 120, seed),
        holdout=examples(["refund", "track"], 40, seed + 1),
        replay_eval=([], []),
        incumbent_dir=None,
        settings=TrainSettings(epochs=2, batch_size=32),
    )
    return run_fine_tune(job).files  # type: ignore[return-value]


def test_two_hosts_share_versions_and_current_through_s3(tmp_path: Path, s3: dict) -> None:
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("driftd-registry")
    host_a, host_b = (
        MirroredRegistry(tmp_path / "a", URL, s3),
        MirroredRegistry(tmp_path / "b", URL, s3),
    )
    assert host_b.current() is None and host_b.versions() == []

    v1 = host_a.publish(version_files(0), parent=None, info={"by": "a"}).version
    host_a.set_current(v1)
    assert host_b.current() == v1 and host_b.versions() == [v1]
    server = ModelServer()
    try:
        server.load_and_swap(host_b, v1)  # fetched into b's working copy, verified, loaded
        assert server.version == v1 and server.predict(["where is my parcel"])[0].intent in (
            "refund",
            "track",
        )
    finally:
        server.close(timeout=5)
    for name in ("model.int8.onnx", "labels.json", "manifest.json"):
        assert (tmp_path / "b" / v1 / name).read_bytes() == (
            tmp_path / "a" / v1 / name
        ).read_bytes()

    # After a failover b publishes: the next number, never one a already used; a follows CURRENT.
    v2 = host_b.publish(version_files(2), parent=v1, info={"by": "b"}).version
    assert v2 == "v000002"
    host_b.set_current(v2)
    assert (
        host_a.current() == v2
        and host_a.verify(v2).info == {"by": "b"}
        and host_a.verify(v2).parent == v1
    )

    # An upload cut off before its manifest: invisible to every host.
    fs.pipe_file("driftd-registry/models/v000003/model.onnx", b"half a model")
    assert host_a.versions() == [v1, v2]

    # A remote object damaged after publishing: refused, and nothing lands in the working copy.
    host_c = MirroredRegistry(tmp_path / "c", URL, s3)
    v3 = host_c.publish(version_files(4), parent=v2, info={}).version
    assert v3 == "v000003"
    fs.pipe_file(f"driftd-registry/models/{v3}/model.int8.onnx", b"not the model")
    with pytest.raises(CorruptVersion, match="model.int8.onnx"):
        host_a.verify(v3)
    assert not (tmp_path / "a" / v3).exists() and not list((tmp_path / "a").glob(".tmp-*"))
    with pytest.raises(CorruptVersion):
        host_a.set_current(v3)
    assert host_a.current() == v2  # CURRENT untouched by the refused version


def test_a_second_publisher_that_took_the_same_number_fails_instead_of_overwriting(
    tmp_path: Path, s3: dict
) -> None:
    s3fs.S3FileSystem(**s3).mkdir("driftd-registry")
    host_a, host_b = (
        MirroredRegistry(tmp_path / "a", URL, s3),
        MirroredRegistry(tmp_path / "b", URL, s3),
    )
    files = version_files(0)
    # b's local publish happened before a's upload was visible: both hold a v000001 of their own.
    local_b = super(MirroredRegistry, host_b).publish(files, parent=None, info={"by": "b"}).version
    v1 = host_a.publish(files, parent=None, info={"by": "a"}).version
    assert v1 == local_b == "v000001"
    with pytest.raises(FileExistsError, match="already published"):
        host_b.push(local_b)
    assert host_b.verify(v1).info == {"by": "b"}  # its own copy; the remote one stays a's
    assert MirroredRegistry(tmp_path / "c", URL, s3).verify(v1).info == {"by": "a"}
    host_a.push(v1)  # pushing the same contents again is a no-op
