"""What only the registry shared through s3:// (``MirroredRegistry``) does, against a local
S3-compatible server (moto): a host serves a model another host published (fetched into its
working copy), a partial upload is invisible, a corrupted object never lands in the working copy,
and a second publisher of one number fails. What every backend does is in
test_registry_contract.py."""

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
    return run_fine_tune(job).files


def test_a_host_serves_what_another_published_and_never_takes_in_a_partial_or_damaged_one(
    tmp_path: Path, s3: dict
) -> None:
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("driftd-registry")
    host_a, host_b = (
        MirroredRegistry(tmp_path / "a", URL, s3),
        MirroredRegistry(tmp_path / "b", URL, s3),
    )
    v1 = host_a.publish(version_files(0), parent=None, info={"by": "a"}).version
    host_a.set_current(v1)
    assert host_b.current() == v1 and not (tmp_path / "b" / v1).exists()
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

    # An upload cut off before its manifest: invisible to every host, and its number is free.
    fs.pipe_file("driftd-registry/models/v000002/model.onnx", b"half a model")
    assert host_a.versions() == [v1] and host_b.versions() == [v1]
    with pytest.raises(ValueError, match="no version v000002"):
        host_b.verify("v000002")

    # A remote object damaged after publishing: refused, and nothing lands in the working copy.
    host_c = MirroredRegistry(tmp_path / "c", URL, s3)
    v2 = host_c.publish(version_files(4), parent=v1, info={}).version
    assert v2 == "v000002"
    fs.pipe_file(f"driftd-registry/models/{v2}/model.int8.onnx", b"not the model")
    with pytest.raises(CorruptVersion, match=r"remote model\.int8\.onnx"):
        host_a.verify(v2)
    assert not (tmp_path / "a" / v2).exists() and not list((tmp_path / "a").glob(".tmp-*"))
    with pytest.raises(CorruptVersion):
        host_a.set_current(v2)
    assert host_a.current() == v1 and (tmp_path / "a" / "CURRENT").read_text() == f"{v1}\n"


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
