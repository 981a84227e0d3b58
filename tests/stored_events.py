"""``StoredEvent``s for tests of the parts that read them (learning loop, outcome feed, cluster)."""

from __future__ import annotations

from typing import Any

from streams.tiers import StoredEvent


def stored_event(i: int, kind: str, **fields: Any) -> StoredEvent:
    """Event ``i`` of ``kind`` on partition 0 of topic "t" (offset i, ts i, id f"{kind}{i}"),
    with ``fields`` set on top."""
    base: dict[str, Any] = dict(
        topic="t",
        partition=0,
        offset=i,
        event_id=f"{kind}{i}",
        type=kind,
        ts=float(i),
        conversation_id=f"c{i}",
        turn=0,
        priority="normal",
        channel=None,
        user_ref=None,
        text=None,
        ref_event_id=None,
        intent=None,
        correct=None,
        ref_text=None,
        payload=b"{}",
        kafka_ts=0.0,
        ingested_at=0.0,
    )
    return StoredEvent(**{**base, **fields})
