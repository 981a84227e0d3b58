"""Warm tier: a crash-safe local store (SQLite in WAL mode).

Rows are keyed by (topic, partition, offset) and inserted with INSERT OR IGNORE, so a redelivered
record is stored once; the keys of rows demoted to cold are remembered (for the redelivery horizon)
so that a record redelivered after its demotion is not stored a second time.
A batch is one transaction; when ``write`` returns, the batch is durable and
its offsets may be committed. The cold tier's file index lives here too, so a
demotion (delete rows + record the Parquet file) is one atomic transaction.

Not thread-safe: the TieredStore runs every call on its single writer thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import chain
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
-- Labels newest first, read lazily: a fine-tune takes the newest N without sorting the
-- whole window.
DROP INDEX IF EXISTS events_labels;
CREATE INDEX IF NOT EXISTS events_labels_by_time ON events (ts)
    WHERE type IN ('label', 'feedback') AND intent IS NOT NULL;
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
# One multi-row INSERT per chunk rather than executemany: executemany releases and retakes the GIL
# around every row's step, which under a busy event loop costs more than the insert itself.
# A batch goes in as pieces of power-of-two sizes (1,000 rows: 512 + 256 + 128 + 64 + 32
# + 8), so only a dozen statement shapes exist. With one statement per batch size,
# sqlite3's cache of 128 prepared statements filled up with a shape per size seen, about
# 1.2 MB each at 1,000 rows: resident memory crept up by over 100 MB in a long run.
_ROW_PARAMS = "(" + ", ".join("?" * (len(COLUMNS) + 1)) + ")"
# under SQLite's bound-parameter limit
_ROWS_PER_INSERT = 1 << ((32766 // (len(COLUMNS) + 1)).bit_length() - 1)


def _pieces(rows: int) -> list[int]:
    """``rows`` as a sum of powers of two no larger than ``_ROWS_PER_INSERT``, largest first."""
    out = [_ROWS_PER_INSERT] * (rows // _ROWS_PER_INSERT)
    rest = rows % _ROWS_PER_INSERT
    out += [1 << bit for bit in range(rest.bit_length() - 1, -1, -1) if rest >> bit & 1]
    return out


@lru_cache(maxsize=64)
def _insert_rows_sql(rows: int, check_demoted: bool) -> str:
    values = ", ".join([_ROW_PARAMS] * rows)
    if not check_demoted:
        return f"INSERT OR IGNORE INTO events ({_COLUMN_LIST}, demote_after) VALUES {values}"
    # column1..3 of the VALUES rows are topic, partition, offset (COLUMNS starts with them).
    return (
        f"INSERT OR IGNORE INTO events ({_COLUMN_LIST}, demote_after) SELECT * "
        f"FROM (VALUES {values}) AS v "
        "WHERE NOT EXISTS (SELECT 1 FROM demoted d WHERE d.topic = v.column1 "
        "AND d.partition = v.column2 AND d.offset = v.column3)"
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
        self.cold_files_count, self.cold_rows = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM cold_files"
        ).fetchone()
        self._load_max_demoted()

    def _load_max_demoted(self) -> None:
        # New records arrive with offsets above everything demoted from their partition, so a batch
        # entirely above these marks cannot hold a redelivery of a demoted record: no lookup needed.
        rows = self._db.execute(
            "SELECT topic, partition, MAX(offset) FROM demoted GROUP BY topic, partition"
        )
        self._max_demoted: dict[tuple[str, int], int] = {
            (topic, partition): offset for topic, partition, offset in rows
        }

    def close(self) -> None:
        self._db.close()

    def write(self, events: Sequence[StoredEvent], demote_after: Sequence[float]) -> int:
        """Store a batch durably; returns how many rows were new (the rest were redeliveries)."""
        before = self._db.total_changes
        with self._db:  # one transaction; commits (and syncs) on exit
            self._db.execute("BEGIN IMMEDIATE")
            marks = self._max_demoted
            check = bool(marks) and any(
                e.offset <= marks.get((e.topic, e.partition), -1) for e in events
            )
            start = 0
            for rows in _pieces(len(events)):
                chunk = range(start, start + rows)
                params = list(
                    chain.from_iterable((*events[i].row(), demote_after[i]) for i in chunk)
                )
                self._db.execute(_insert_rows_sql(rows, check), params)
                start += rows
        inserted = self._db.total_changes - before
        self.count += inserted
        return inserted

    def utterance_texts(self, event_ids: Iterable[str]) -> dict[str, str]:
        ids = list(set(event_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 512):
            chunk = ids[start : start + 512]
            # padded to a power of two: ten statement shapes
            chunk += chunk[:1] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
            rows = self._db.execute(
                "SELECT event_id, text FROM events WHERE type = 'utterance' "
                f"AND event_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update(rows)
        return found

    def due_for_demotion(self, now: float, limit: int) -> list[StoredEvent]:
        rows = self._db.execute(
            f"SELECT {_SELECT} FROM events WHERE demote_after <= ? ORDER BY demote_after LIMIT ?",
            (now, limit),
        )
        return [StoredEvent(*row) for row in rows]

    def commit_demotion(
        self, events: Sequence[StoredEvent], cold_path: str, created_at: float
    ) -> None:
        """Atomically forget demoted rows and record the cold file that now holds them."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM events WHERE topic = ? AND partition = ? AND offset = ?",
                (e.key for e in events),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO demoted VALUES (?, ?, ?, ?)",
                ((*e.key, created_at) for e in events),
            )
            self._db.execute(
                "INSERT INTO cold_files (path, rows, max_ingested_at, "
                "created_at) VALUES (?, ?, ?, ?)",
                (cold_path, len(events), max(e.ingested_at for e in events), created_at),
            )
        for event in events:
            tp = (event.topic, event.partition)
            if event.offset > self._max_demoted.get(tp, -1):
                self._max_demoted[tp] = event.offset
        self.count -= len(events)
        self.cold_files_count += 1
        self.cold_rows += len(events)

    def demoted_among(self, events: Sequence[StoredEvent]) -> set[tuple[str, int, int]]:
        """Keys of ``events`` that were already demoted to cold (they were redelivered)."""
        found = set()
        for event in events:
            if self._db.execute(
                "SELECT 1 FROM demoted WHERE topic = ? AND partition = ? AND offset = ?", event.key
            ).fetchone():
                found.add(event.key)
        return found

    def forget_demoted_before(self, cutoff: float) -> int:
        """Drop demotion records older than the redelivery horizon; returns how many."""
        with self._db:
            forgotten = self._db.execute(
                "DELETE FROM demoted WHERE demoted_at < ?", (cutoff,)
            ).rowcount
        if forgotten:
            self._load_max_demoted()
        return forgotten

    def highest_offsets(self, topic: str) -> dict[int, int]:
        """Per partition of ``topic``, the highest offset
        stored in warm or remembered as demoted."""
        rows = self._db.execute(
            "SELECT partition, MAX(offset) FROM (SELECT partition, offset FROM "
            "events WHERE topic = ?1 UNION ALL "
            "SELECT partition, offset FROM demoted WHERE topic = ?1) GROUP BY partition",
            (topic,),
        )
        return dict(rows.fetchall())

    def retire_partition(self, topic: str, partition: int, retired_topic: str) -> int:
        """The broker's log of (topic, partition) was reset: its offsets will be reused
        by new records. The stored rows keep their data under ``retired_topic`` and
        the demotion keys are dropped, so that no new record is taken for a
        redelivery of an old one. Returns how many warm rows were renamed."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            renamed = self._db.execute(
                "UPDATE events SET topic = ? WHERE topic = ? AND partition = ?",
                (retired_topic, topic, partition),
            ).rowcount
            self._db.execute(
                "DELETE FROM demoted WHERE topic = ? AND partition = ?", (topic, partition)
            )
        self._max_demoted.pop((topic, partition), None)
        return renamed

    def labels_newest_first(
        self, start_ts: float, end_ts: float, chunk: int = 5000
    ) -> Iterator[list[tuple[float, str, str | None, str, str | None]]]:
        """(ts, type, ref_event_id, intent, ref_text) of the label and feedback
        events with an intent whose event time is in [start_ts, end_ts),
        newest first, in chunks: the caller stops when it has enough."""
        cursor = self._db.execute(
            "SELECT ts, type, ref_event_id, intent, ref_text FROM events "
            "INDEXED BY events_labels_by_time "
            "WHERE type IN ('label', 'feedback') AND intent IS NOT NULL AND ts "
            ">= ? AND ts < ? ORDER BY ts DESC",
            (start_ts, end_ts),
        )
        try:
            while rows := cursor.fetchmany(chunk):
                yield rows
        finally:
            cursor.close()  # ends the read transaction when the caller stops early

    def utterances_newest_first(
        self, start_ts: float, end_ts: float, limit: int
    ) -> list[tuple[str, str]]:
        """(event_id, text) of the newest ``limit`` utterances with event time in [start_ts,
        end_ts). No index serves it (one on every utterance would cost each ingest write): a
        scan with a top-``limit`` sort, run once per fine-tune that asks for pseudo-labels."""
        rows = self._db.execute(
            "SELECT event_id, text FROM events WHERE type = 'utterance' AND "
            "text IS NOT NULL AND ts >= ? AND ts < ? ORDER BY ts DESC LIMIT ?",
            (start_ts, end_ts, limit),
        )
        return rows.fetchall()

    def all_keys(self) -> list[tuple[str, int, int]]:
        return self._db.execute("SELECT topic, partition, offset FROM events").fetchall()

    def event_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT event_id FROM events")]

    # -- cold file index -------------------------------------------------------------------------

    def cold_files(self) -> list[tuple[str, int, float]]:
        return self._db.execute(
            "SELECT path, rows, max_ingested_at FROM cold_files ORDER BY path"
        ).fetchall()

    def forget_cold_file(self, path: str, rows: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM cold_files WHERE path = ?", (path,))
        self.cold_files_count -= 1
        self.cold_rows -= rows
