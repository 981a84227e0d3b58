"""Warm tier: a crash-safe local store (SQLite in WAL mode).

Rows are keyed by (topic, partition, offset) and inserted with INSERT OR IGNORE, so a redelivered
record is stored once; the keys of rows demoted to cold are remembered (for the redelivery horizon)
so that a record redelivered after its demotion is not stored a second time. A batch is one transaction; when ``write`` returns, the batch is durable and
its offsets may be committed. The cold tier's file index lives here too, so a demotion (delete rows +
record the Parquet file) is one atomic transaction.

Not thread-safe: the TieredStore runs every call on its single writer thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from .record import COLUMNS, StoredEvent

__all__ = ["WarmStore"]

_COLUMN_LIST = ", ".join(f'"{c}"' for c in COLUMNS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    {_COLUMN_LIST},
    demote_after REAL NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_demote_after ON events (demote_after);
CREATE INDEX IF NOT EXISTS events_event_id ON events (event_id);
CREATE INDEX IF NOT EXISTS events_labels ON events (type, ts) WHERE intent IS NOT NULL;
-- Keys of rows demoted to cold, so a redelivery after demotion is still recognised as one.
CREATE TABLE IF NOT EXISTS demoted (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    demoted_at REAL NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS demoted_demoted_at ON demoted (demoted_at);
CREATE TABLE IF NOT EXISTS cold_files (
    path TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    max_ingested_at REAL NOT NULL,
    created_at REAL NOT NULL
);
"""
_INSERT = (
    f"INSERT OR IGNORE INTO events ({_COLUMN_LIST}, demote_after) SELECT {', '.join('?' * (len(COLUMNS) + 1))} "
    "WHERE NOT EXISTS (SELECT 1 FROM demoted WHERE topic = ? AND partition = ? AND offset = ?)"
)
_SELECT = _COLUMN_LIST


class WarmStore:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        # Kept in memory so metrics never touch the database from another thread.
        self.count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        self.cold_files_count, self.cold_rows = self._db.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM cold_files").fetchone()

    def close(self) -> None:
        self._db.close()

    def write(self, events: Sequence[StoredEvent], demote_after: Sequence[float]) -> int:
        """Store a batch durably; returns how many rows were new (the rest were redeliveries)."""
        before = self._db.total_changes
        with self._db:  # one transaction; commits (and syncs) on exit
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_INSERT, (e.row() + (d, e.topic, e.partition, e.offset) for e, d in zip(events, demote_after)))
        inserted = self._db.total_changes - before
        self.count += inserted
        return inserted

    def utterance_texts(self, event_ids: Iterable[str]) -> dict[str, str]:
        ids = list(set(event_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._db.execute(
                f"SELECT event_id, text FROM events WHERE type = 'utterance' AND event_id IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update(rows)
        return found

    def due_for_demotion(self, now: float, limit: int) -> list[StoredEvent]:
        rows = self._db.execute(f"SELECT {_SELECT} FROM events WHERE demote_after <= ? ORDER BY demote_after LIMIT ?", (now, limit))
        return [StoredEvent(*row) for row in rows]

    def commit_demotion(self, events: Sequence[StoredEvent], cold_path: str, created_at: float) -> None:
        """Atomically forget demoted rows and record the cold file that now holds them."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM events WHERE topic = ? AND partition = ? AND offset = ?", (tuple(e.key) for e in events))
            self._db.executemany("INSERT OR IGNORE INTO demoted VALUES (?, ?, ?, ?)", (tuple(e.key) + (created_at,) for e in events))
            self._db.execute(
                "INSERT INTO cold_files (path, rows, max_ingested_at, created_at) VALUES (?, ?, ?, ?)",
                (cold_path, len(events), max(e.ingested_at for e in events), created_at),
            )
        self.count -= len(events)
        self.cold_files_count += 1
        self.cold_rows += len(events)

    def demoted_among(self, events: Sequence[StoredEvent]) -> set[tuple[str, int, int]]:
        """Keys of ``events`` that were already demoted to cold (they were redelivered)."""
        found = set()
        for event in events:
            if self._db.execute("SELECT 1 FROM demoted WHERE topic = ? AND partition = ? AND offset = ?", tuple(event.key)).fetchone():
                found.add(tuple(event.key))
        return found

    def forget_demoted_before(self, cutoff: float) -> int:
        """Drop demotion records older than the redelivery horizon; returns how many."""
        with self._db:
            return self._db.execute("DELETE FROM demoted WHERE demoted_at < ?", (cutoff,)).rowcount

    def labelled(self, start_ts: float, end_ts: float) -> list[StoredEvent]:
        """Label and feedback events with an intent whose event time is in [start_ts, end_ts)."""
        rows = self._db.execute(
            f"SELECT {_SELECT} FROM events WHERE type IN ('label', 'feedback') AND intent IS NOT NULL AND ts >= ? AND ts < ?",
            (start_ts, end_ts),
        )
        return [StoredEvent(*row) for row in rows]

    def all_keys(self) -> list[tuple[str, int, int]]:
        return self._db.execute("SELECT topic, partition, offset FROM events").fetchall()

    def event_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT event_id FROM events")]

    # -- cold file index -------------------------------------------------------------------------

    def cold_files(self) -> list[tuple[str, int, float]]:
        return self._db.execute("SELECT path, rows, max_ingested_at FROM cold_files ORDER BY path").fetchall()

    def forget_cold_file(self, path: str, rows: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM cold_files WHERE path = ?", (path,))
        self.cold_files_count -= 1
        self.cold_rows -= rows
