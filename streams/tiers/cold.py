"""Cold tier: Parquet files on a filesystem path or any fsspec URL (s3://, gs://, memory://).

A file's name is derived from the keys it holds, and it only counts once the warm store's
``cold_files`` index lists it (recorded in the same transaction that deletes the rows from warm).
A file written before a crash but never indexed is an orphan:
``remove_orphans`` deletes it at start, and the rows, still in warm,
are demoted again. So every event is in exactly one of warm or cold.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .record import COLUMNS, StoredEvent

__all__ = ["ARROW_SCHEMA", "ColdStore"]

ARROW_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("ts", pa.float64()),
        ("conversation_id", pa.string()),
        ("turn", pa.int32()),
        ("priority", pa.string()),
        ("channel", pa.string()),
        ("user_ref", pa.string()),
        ("text", pa.string()),
        ("ref_event_id", pa.string()),
        ("intent", pa.string()),
        ("correct", pa.bool_()),
        ("ref_text", pa.string()),
        ("payload", pa.binary()),
        ("kafka_ts", pa.float64()),
        ("ingested_at", pa.float64()),
    ]
)
assert tuple(ARROW_SCHEMA.names) == COLUMNS, "cold schema must follow StoredEvent"


class ColdStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.fs.makedirs(self.root, exist_ok=True)
        self._local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def path_for(self, events: Sequence[StoredEvent]) -> str:
        digest = hashlib.sha256()
        for event in events:
            digest.update(f"{event.topic}\0{event.partition}\0{event.offset}\n".encode())
        day = time.strftime("%Y-%m-%d", time.gmtime(min(e.ingested_at for e in events)))
        return f"{self.root}/date={day}/{digest.hexdigest()[:32]}.parquet"

    def write(self, events: Sequence[StoredEvent]) -> str:
        """Write events to one Parquet file, atomically
        where the filesystem allows; returns its path."""
        path = self.path_for(events)
        columns = list(zip(*(e.row() for e in events), strict=True))
        table = pa.Table.from_arrays(
            [pa.array(col, type=f.type) for col, f in zip(columns, ARROW_SCHEMA, strict=True)],
            schema=ARROW_SCHEMA,
        )
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self._local:
            tmp = path + ".tmp"
            with self.fs.open(tmp, "wb") as out:
                pq.write_table(table, out, compression="zstd")
                out.flush()
                os.fsync(out.fileno())
            self.fs.mv(tmp, path)
        else:  # object stores publish a whole object or nothing
            with self.fs.open(path, "wb") as out:
                pq.write_table(table, out, compression="zstd")
        return path

    def files(self) -> list[str]:
        return sorted(
            p
            for p in self.fs.find(self.root)
            if p.endswith(".parquet") or p.endswith(".parquet.tmp")
        )

    def remove_orphans(self, indexed: set[str]) -> list[str]:
        orphans = [p for p in self.files() if p not in indexed]
        for path in orphans:
            self.fs.rm(path)
        return orphans

    def delete(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)

    def read(
        self,
        paths: Sequence[str],
        columns: Sequence[str] | None = None,
        where: pc.Expression | None = None,
    ) -> pa.Table:
        """The rows of ``paths`` (only ``columns``; only those matching ``where``), file
        by file, so a filtered read never holds more than one whole file's columns."""
        if not paths:
            return (
                ARROW_SCHEMA.empty_table()
                if columns is None
                else ARROW_SCHEMA.empty_table().select(list(columns))
            )
        tables = []
        for path in paths:
            with self.fs.open(path, "rb") as src:
                table = pq.read_table(src, columns=list(columns) if columns else None)
            tables.append(table if where is None else table.filter(where))
        return pa.concat_tables(tables)
