"""What the cold tier promises on every backend, one suite run on each: ``path`` (Parquet files in a
local directory) and ``s3`` (objects on a local S3-compatible server, moto, through fsspec/s3fs).
``ColdStore`` itself (write, list, read by column and filter, delete, orphans), and the tiered store
on top of it (demotion exactly once, an uncommitted file discarded at open, retention).

What only one backend does stays beside it: the memory:// URL and the training-set queries in
tests/unit/test_tiers.py, bucket creation in test_cold_s3.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from streams.tiers import ColdStore, TieredStore
from streams.tiers.cold import ARROW_SCHEMA
from tests.unit.test_tiers import HOUR, Clock, event, label, make_store

S3_URL = "s3://driftd-cold/events"


@dataclass
class Backend:
    url: str
    options: dict[str, Any] | None

    def open(self) -> ColdStore:
        """A new handle on the same files (another process, another host)."""
        return ColdStore(self.url, self.options)

    def tiered(self, tmp_path: Path, clock: Clock, **kw: Any) -> TieredStore:
        return make_store(
            tmp_path, clock, cold_url=self.url, cold_storage_options=self.options, **kw
        )


@pytest.fixture(params=["path", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "s3":
        return Backend(S3_URL, request.getfixturevalue("s3"))
    return Backend(str(tmp_path / "cold"), None)


@pytest.fixture
def cold(backend: Backend) -> ColdStore:
    return backend.open()


def run(coro):
    return asyncio.run(coro)


def offsets_in(cold: ColdStore, path: str) -> list[int]:
    """Read with pyarrow straight from the filesystem, not through ``ColdStore.read``."""
    with cold.fs.open(path, "rb") as src:
        return pq.read_table(src, columns=["offset"])["offset"].to_pylist()


def varied_events() -> list:
    return [
        event(1, text="freeze my card", priority="high", channel="web", user_ref="u1"),
        event(2, text="ünïcödé ✓", turn=3, at=1_000_100.0),
        label(3, "e0-1", "freeze_account", correct=True, ref_text="freeze my card"),
        event(4, kind="feedback", correct=False, payload=b"\x00\xff raw bytes"),
        event(5, partition=2, text=None, kafka_ts=None),
    ]


# --- ColdStore ----------------------------------------------------------------------------------


def test_write_then_read_returns_every_column_of_every_event(
    cold: ColdStore, backend: Backend
) -> None:
    events = varied_events()
    path = cold.write(events)
    day = time.strftime("%Y-%m-%d", time.gmtime(min(e.ingested_at for e in events)))
    assert path == cold.path_for(events)
    assert path.startswith(f"{cold.root}/date={day}/") and path.endswith(".parquet")
    assert cold.files() == [path]
    table = cold.read([path])
    assert table.schema == ARROW_SCHEMA
    assert [tuple(row.values()) for row in table.to_pylist()] == [e.row() for e in events]
    other = backend.open()  # what one handle wrote, another lists and reads
    assert other.files() == [path] and other.read([path]).equals(table)


def test_a_file_is_named_by_the_keys_it_holds(cold: ColdStore) -> None:
    events = [event(i) for i in range(10)]
    path = cold.write(events)
    same_keys = [event(i, text=f"other {i}") for i in range(10)]
    assert cold.path_for(same_keys) == path  # a retried demotion rewrites the same file
    assert cold.write(same_keys) == path and cold.files() == [path]
    assert cold.read([path], columns=["text"])["text"].to_pylist() == [
        f"other {i}" for i in range(10)
    ]
    assert cold.path_for([event(i) for i in range(1, 11)]) != path
    assert cold.path_for([event(i, partition=1) for i in range(10)]) != path
    later = cold.write([event(i, at=1_000_000.0 + 86400) for i in range(20, 30)])
    assert "/date=1970-01-12/" in path and "/date=1970-01-13/" in later
    assert cold.files() == sorted([path, later])


def test_read_selects_columns_and_filters_each_file(cold: ColdStore) -> None:
    first = cold.write([event(i) for i in range(5)] + [label(5, "e0-1", "a")])
    second = cold.write([label(10 + i, f"e0-{i}", "b") for i in range(3)])
    table = cold.read([second, first], columns=["offset", "intent"])
    assert table.column_names == ["offset", "intent"]
    assert table["offset"].to_pylist() == [10, 11, 12, 0, 1, 2, 3, 4, 5]  # in the order asked
    # ``where`` sees the columns read, no others.
    labels = cold.read(
        [first, second], columns=["offset", "type"], where=pc.field("type") == "label"
    )
    assert labels.to_pydict() == {"offset": [5, 10, 11, 12], "type": ["label"] * 4}
    with pytest.raises(pa.ArrowInvalid, match="type"):
        cold.read([first], columns=["offset"], where=pc.field("type") == "label")
    assert cold.read([first], where=pc.field("offset") > 100).num_rows == 0


def test_reading_no_files_gives_an_empty_table_of_the_schema(cold: ColdStore) -> None:
    empty = cold.read([])
    assert empty.num_rows == 0 and empty.schema == ARROW_SCHEMA
    assert cold.read([], columns=["offset", "text"]).column_names == ["offset", "text"]


def test_orphans_are_the_unindexed_files_and_delete_is_idempotent(
    cold: ColdStore, backend: Backend
) -> None:
    kept, *orphans = (cold.write([event(i) for i in range(n, n + 5)]) for n in (0, 10, 20))
    assert cold.remove_orphans({kept}) == sorted(orphans)
    assert cold.files() == [kept] and backend.open().files() == [kept]
    assert cold.remove_orphans({kept}) == []
    cold.delete(kept)
    assert cold.files() == [] and not cold.fs.exists(kept)
    cold.delete(kept)  # already gone: a retried retention pass
    with pytest.raises(FileNotFoundError):
        cold.read([kept])


# --- the tiered store on it ---------------------------------------------------------------------


def test_demotion_moves_aged_events_to_parquet_exactly_once(
    tmp_path: Path, backend: Backend
) -> None:
    clock = Clock()
    store = backend.tiered(tmp_path, clock, warm_age=HOUR, demotion_batch=300)
    run(store.write([event(i) for i in range(1000)]))
    clock.now += HOUR - 1
    assert run(store.maintain())["warm_to_cold"] == 0
    clock.now += 2
    assert run(store.maintain())["warm_to_cold"] == 1000
    assert store.sizes() == {"hot": 0, "warm": 0, "cold": 1000}
    files = store.warm.cold_files()
    assert len(files) == 4  # 300 + 300 + 300 + 100
    offsets = Counter()
    for path, rows, _ in files:
        found = offsets_in(store.cold, path)
        assert len(found) == rows
        offsets.update(found)
    assert sorted(offsets) == list(range(1000)) and set(offsets.values()) == {1}
    remote = backend.open()
    assert remote.files() == sorted(path for path, _, _ in files)
    assert all(f.startswith(f"{remote.root}/date=") for f in remote.files())


def test_a_cold_file_written_before_a_crash_is_discarded_and_redone(
    tmp_path: Path, backend: Backend
) -> None:
    clock = Clock()
    store = backend.tiered(tmp_path, clock, warm_age=HOUR)
    events = [event(i) for i in range(20)]
    run(store.write(events))
    orphan = store.cold.write(events)  # the crash: file written, demotion never committed
    # Another batch's upload, cut off by the crash before its commit.
    stray = store.cold.write([event(i) for i in range(1000, 1010)])
    store.close_now()
    clock.now += 2 * HOUR
    reopened = backend.tiered(tmp_path, clock, warm_age=HOUR)
    # Removed at open, rows still warm.
    assert not reopened.cold.fs.exists(orphan) and reopened.warm.cold_files() == []
    assert orphan not in backend.open().files() and stray not in backend.open().files()
    assert reopened.warm.count == 20
    run(reopened.maintain())
    redone = [path for path, _, _ in reopened.warm.cold_files()]
    table = reopened.cold.read(redone, columns=["partition", "offset"])
    keys = list(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))
    assert sorted(keys) == [(0, i) for i in range(20)]
    assert reopened.sizes() == {"hot": 0, "warm": 0, "cold": 20}


def test_cold_retention_deletes_expired_files(tmp_path: Path, backend: Backend) -> None:
    clock = Clock()
    store = backend.tiered(tmp_path, clock, warm_age=HOUR, cold_retention_s=24 * HOUR)
    run(store.write([event(i) for i in range(10)]))
    clock.now += 2 * HOUR
    run(store.maintain())
    ((path, _, _),) = store.warm.cold_files()
    assert backend.open().files() == [path]
    clock.now += 24 * HOUR
    assert run(store.maintain())["cold_deleted"] == 10
    assert store.sizes()["cold"] == 0 and not store.cold.fs.exists(path)
    assert backend.open().files() == []
