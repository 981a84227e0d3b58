"""The labelling strategies' names as a Literal type: light (streams.labeling loads numpy), so the
daemon's settings can offer exactly the registered ones (tests/unit/test_labeling_strategies.py
checks them against streams.labeling.STRATEGIES).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["StrategyName"]

StrategyName = Literal["least_confidence", "margin", "entropy", "random"]
