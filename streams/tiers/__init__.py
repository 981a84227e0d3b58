"""Hot (memory), warm (SQLite) and cold (Parquet)
tiers, idempotent by (topic, partition, offset)."""

from .cold import ColdStore
from .hot import HotTier
from .policy import PRIORITIES, TierPolicy, TierRule
from .record import COLUMNS, EventKey, StoredEvent
from .store import TieredStore
from .warm import WarmStore

__all__ = [
    "COLUMNS",
    "PRIORITIES",
    "ColdStore",
    "EventKey",
    "HotTier",
    "StoredEvent",
    "TierPolicy",
    "TierRule",
    "TieredStore",
    "WarmStore",
]
