"""Names of the models package's registries as Literal types: light (no torch), so the
daemon's settings offer exactly these choices. tests/unit/test_config.py checks each against
its registry.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ArchitectureName", "ConflictPolicy", "DistributedBackend", "Precision"]

ArchitectureName = Literal["bag_of_ngrams", "transformer", "encoder"]  # architectures.ARCHITECTURES
ConflictPolicy = Literal["majority", "drop"]  # hygiene.CONFLICT_POLICIES
DistributedBackend = Literal["auto", "gloo", "nccl"]  # distributed.BACKENDS
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # train.PRECISIONS
