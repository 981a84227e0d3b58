"""The cold tier on s3:// through fsspec/s3fs, against a local S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from streams.tiers import ColdStore
from tests.unit.test_tiers import HOUR, Clock, event, make_store


@pytest.fixture(autouse=True)
def cold_bucket(s3):
    ColdStore("s3://driftd-cold/events", s3)  # creates the bucket


def test_demotion_writes_parquet_objects_to_s3_exactly_once_and_cleans_orphans(tmp_path, s3):
    clock = Clock()
    store = make_store(
        tmp_path,
        clock,
        warm_age=HOUR,
        cold_url="s3://driftd-cold/events",
        cold_storage_options=s3,
        demotion_batch=120,
    )
    asyncio.run(store.write([event(i) for i in range(300)]))
    orphan = store.cold.write(
        [event(i) for i in range(1000, 1010)]
    )  # a crash between upload and commit
    store.close_now()

    clock.now += 2 * HOUR
    store = make_store(
        tmp_path,
        clock,
        warm_age=HOUR,
        cold_url="s3://driftd-cold/events",
        cold_storage_options=s3,
        demotion_batch=120,
    )
    remote = ColdStore("s3://driftd-cold/events", s3)
    assert orphan not in remote.files()  # removed at open: it was never committed
    assert asyncio.run(store.maintain())["warm_to_cold"] == 300
    assert store.sizes() == {"hot": 0, "warm": 0, "cold": 300}

    files = remote.files()
    assert len(files) == 3 and all(f.startswith("driftd-cold/events/date=") for f in files)
    offsets = []
    for path in files:
        with remote.fs.open(path, "rb") as src:
            offsets += pq.read_table(src, columns=["offset"])["offset"].to_pylist()
    assert sorted(offsets) == list(range(300))
