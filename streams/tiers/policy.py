"""Tier routing rules: how long an event stays hot and warm, by priority."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PRIORITIES", "TierPolicy", "TierRule"]

PRIORITIES = ("low", "normal", "high")


@dataclass(frozen=True)
class TierRule:
    hot: bool  # kept in the hot tier at all
    hot_max_age_s: float
    warm_retention_s: float


class TierPolicy:
    """Resolves per-priority rules over the tier defaults."""

    def __init__(
        self,
        hot_max_age_s: float,
        warm_retention_s: float,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.default = TierRule(True, hot_max_age_s, warm_retention_s)
        self._rules = {p: self.default for p in PRIORITIES}
        for priority, fields in (overrides or {}).items():
            if priority not in self._rules:
                raise ValueError(f"unknown priority {priority!r}; expected one of {PRIORITIES}")
            self._rules[priority] = TierRule(
                hot=fields.get("hot", True),
                hot_max_age_s=fields.get("hot_max_age_s") or hot_max_age_s,
                warm_retention_s=fields.get("warm_retention_s") or warm_retention_s,
            )

    def rule(self, priority: str) -> TierRule:
        return self._rules.get(priority, self.default)
