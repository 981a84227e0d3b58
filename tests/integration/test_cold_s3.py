"""What only the cold tier on s3:// does, against a local S3-compatible server (moto) on loopback.
What it does on every backend (demotion, orphans, retention, reads) is in
test_cold_store_contract.py."""

from __future__ import annotations

import pyarrow.parquet as pq
import s3fs

from streams.tiers import ColdStore
from tests.unit.test_tiers import event


def test_a_missing_bucket_is_created_and_each_file_is_one_whole_object(s3: dict) -> None:
    plain = s3fs.S3FileSystem(skip_instance_cache=True, **s3)  # no listing shared with the store's
    assert not plain.exists("driftd-new-bucket")
    cold = ColdStore("s3://driftd-new-bucket/cold/events", s3)
    assert plain.exists("driftd-new-bucket")
    path = cold.write([event(i) for i in range(10)])
    # An object store publishes a whole object or nothing: no temp object beside it, none to rename.
    assert plain.find("driftd-new-bucket") == [path]
    with plain.open(path, "rb") as src:
        assert pq.read_table(src, columns=["offset"])["offset"].to_pylist() == list(range(10))
