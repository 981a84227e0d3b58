"""Sentence embeddings of a frozen encoder, kept between fine-tunes.

A head-only fine-tune (``learning.encoder_trainable_layers = 0``) needs each training
text's embedding from an encoder that never changes, so every text is embedded once
per encoder, not once per run: the next run embeds only the texts that arrived since.
One SQLite file per encoder (named by the digest of its weights and input length,
``EncoderClassifier.encoder_digest``), rows keyed by a hash of the text. A cache that
cannot be read or written is only slower: the embeddings are then computed.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingCache"]

log = logging.getLogger(__name__)
_CHUNK = 500  # keys per SELECT (SQLite's default limit on host parameters is 999 before 3.32)


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class EmbeddingCache:
    def __init__(self, directory: Path, encoder_digest: str, width: int) -> None:
        self.path = directory / f"embeddings-{encoder_digest[:32]}.sqlite3"
        self.width = width
        self.hits = 0
        self.misses = 0

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        db.execute(
            "CREATE TABLE IF NOT EXISTS embedding (key BLOB PRIMARY KEY, vector "
            "BLOB NOT NULL) WITHOUT ROWID"
        )
        return db

    def embeddings(
        self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """float32 [len(texts), width]: cached rows, and
        ``compute`` (then stored) for the others."""
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        keys = [_key(t) for t in texts]
        found: dict[bytes, bytes] = {}
        try:
            with self._connect() as db:
                unique = list(dict.fromkeys(keys))
                for start in range(0, len(unique), _CHUNK):
                    chunk = unique[start : start + _CHUNK]
                    found.update(
                        db.execute(
                            "SELECT key, vector FROM embedding WHERE key IN "
                            f"({','.join('?' * len(chunk))})",
                            chunk,
                        ).fetchall()
                    )
        except sqlite3.Error as error:
            log.warning(
                "embedding cache %s unreadable (%s); computing every embedding", self.path, error
            )
        missing = []
        for i, k in enumerate(keys):
            vector = found.get(k, b"")
            if len(vector) == self.width * 4:
                out[i] = np.frombuffer(vector, dtype=np.float32)
            else:
                missing.append(i)
        self.hits, self.misses = len(texts) - len(missing), len(missing)
        if missing:
            computed = np.asarray(compute([texts[i] for i in missing]), dtype=np.float32)
            out[missing] = computed
            try:
                with self._connect() as db:
                    db.executemany(
                        "INSERT OR REPLACE INTO embedding VALUES (?, ?)",
                        [(keys[i], computed[j].tobytes()) for j, i in enumerate(missing)],
                    )
            except sqlite3.Error as error:
                log.warning(
                    "embedding cache %s unwritable (%s); the next run computes these again",
                    self.path,
                    error,
                )
        return out
