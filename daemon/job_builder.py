"""The training set of one fine-tune: recent labelled events (and the other
replicas'), a holdout of the newest, a capped replay sample from cold and,
with pseudo-labels on, unlabelled candidates; packed as a ``FineTuneJob``."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models.finetune import FineTuneJob
from models.gate import GateSettings
from models.hygiene import HygieneSettings, cap_per_class
from models.pseudo import PseudoLabelSettings
from models.registry import Registry
from models.train import TrainSettings
from models.withhold import newest_spread
from streams.tiers import TieredStore
from streams.training_set import (
    LabelledExample,
    merge_recent,
    query_recent,
    query_replay,
    query_unlabelled,
)

from .config import Settings
from .model_service import encoder_source

__all__ = ["GATE_MIN_HOLDOUT", "JobBuilder", "cap_replay"]

GATE_MIN_HOLDOUT = GateSettings().min_holdout
# event times up to a year ahead still count as recent (clock skew of producers)
_FUTURE_S = 366 * 86400


@dataclass
class _Split:
    """The labelled examples of one fine-tune, before they become a job."""

    train: list[LabelledExample]
    holdout: list[LabelledExample]
    replay_eval: list[LabelledExample]
    unlabelled: list[str]


class JobBuilder:
    """Queries the store for a fine-tune's data and builds
    its job; keeps the examples other replicas sent."""

    def __init__(
        self, settings: Settings, store: TieredStore, registry: Registry, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.clock = clock
        self.peer_examples: deque[LabelledExample] = deque(maxlen=settings.learning.max_examples)

    def add_peer_examples(self, examples: Sequence[LabelledExample]) -> None:
        self.peer_examples.extend(examples)

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        if self.peer_examples.maxlen != settings.learning.max_examples:
            self.peer_examples = deque(self.peer_examples, maxlen=settings.learning.max_examples)

    def min_examples(self, incumbent: str | None) -> int:
        """Labelled examples a fine-tune starts with: learning.min_labelled,
        and against an incumbent enough for a holdout the gate accepts (a
        run that cannot pass the gate is not worth its CPU)."""
        cfg = self.settings.learning
        if incumbent is None:
            return cfg.min_labelled
        return max(cfg.min_labelled, math.ceil(GATE_MIN_HOLDOUT / cfg.holdout_fraction))

    def min_examples_reason(self, incumbent: str | None) -> str:
        cfg = self.settings.learning
        if self.min_examples(incumbent) == cfg.min_labelled:
            return "learning.min_labelled"
        return (
            f"a holdout of {GATE_MIN_HOLDOUT} at learning.holdout_fraction = {cfg.holdout_fraction}"
        )

    async def build(
        self, incumbent: str | None, trigger: str
    ) -> tuple[FineTuneJob | None, dict[str, int]]:
        """The job, or None when there are fewer labelled
        examples than ``min_examples``; and the data counts."""
        cfg = self.settings.learning
        now = self.clock()
        recent = await query_recent(
            self.store, now - cfg.window_s, now + _FUTURE_S, cfg.max_examples
        )
        if self.peer_examples:  # the other replicas' partitions
            recent = merge_recent(
                recent, self.peer_examples, now - cfg.window_s, now + _FUTURE_S, cfg.max_examples
            )
        counts = {
            "recent": len(recent),
            "from_replicas": sum(1 for e in recent if e.source == "replica"),
        }
        if len(recent) < self.min_examples(incumbent):
            return None, counts
        split = await self._split(recent, now, counts)
        return self._job(split, incumbent, trigger, now), counts

    async def _split(
        self, recent: list[LabelledExample], now: float, counts: dict[str, int]
    ) -> _Split:
        """Holdout, training examples (replay first), replay
        check, pseudo-label candidates; sizes into ``counts``."""
        cfg = self.settings.learning
        ids = {e.utterance_id for e in recent}
        held = newest_spread(  # ascending
            [e.utterance_id for e in recent],
            cfg.holdout_fraction,
            cfg.holdout_span,
            salt="holdout",
        )
        holdout = [recent[i] for i in held]
        kept_out = set(held)
        train_recent = [e for i, e in enumerate(recent) if i not in kept_out]
        replay: list[LabelledExample] = []
        if cfg.replay_ratio > 0:
            wanted = int(len(train_recent) * cfg.replay_ratio)
            replay = await query_replay(self.store, wanted, int(now), ids, cfg.replay_scan_rows)
        n_eval = int(len(replay) * cfg.replay_eval_fraction)
        replay_eval, replay_train = replay[:n_eval], replay[n_eval:]
        replay_train, counts["replay_capped"] = cap_replay(replay_train, cfg.replay_class_cap)
        train = replay_train + train_recent  # oldest first: the fine-tune validates on the newest
        unlabelled: list[str] = []
        # candidates only: the child keeps those its calibrated threshold allows
        if cfg.pseudo_labels:
            candidates = int(len(train_recent) * cfg.pseudo_label_ratio)
            unlabelled = await query_unlabelled(
                self.store, now - cfg.window_s, now + _FUTURE_S, candidates, ids
            )
        counts.update(
            train=len(train),
            train_recent=len(train_recent),
            train_replay=len(replay_train),
            holdout=len(holdout),
            replay_eval=len(replay_eval),
            unlabelled=len(unlabelled),
        )
        return _Split(train, holdout, replay_eval, unlabelled)

    def _job(self, split: _Split, incumbent: str | None, trigger: str, now: float) -> FineTuneJob:
        cfg, models = self.settings.learning, self.settings.models
        settings = TrainSettings(
            epochs=cfg.epochs,
            head_epochs=cfg.encoder_head_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=int(now) % 10_000,
            patience=cfg.patience,
            warmup_ratio=cfg.warmup_ratio,
            accumulation_steps=cfg.accumulation_steps,
            clip_norm=cfg.clip_norm,
            device=cfg.device,
            precision=cfg.precision,
            curriculum=cfg.curriculum,
            trainable_layers=cfg.encoder_trainable_layers,
            cache_dir=str(self.settings.embedding_cache_dir),
        )
        # A follow-up's incumbent is the previous candidate of the same episode,
        # trained on a subset of this one's data: the candidate need only not be
        # worse beyond holdout noise (a tie or a few examples' deficit on a few
        # hundred labels would otherwise leave the episode's last labels unlearned).
        margin = cfg.followup_gate_margin if trigger == "followup" else cfg.gate_margin
        # With no incumbent any model beats none: the holdout is reported, not required to be large.
        min_holdout = GATE_MIN_HOLDOUT if incumbent else 1
        gate = GateSettings(
            margin, cfg.forgetting_epsilon, cfg.latency_ratio, cfg.latency_budget_ms, min_holdout
        )
        return FineTuneJob(
            train=_columns(split.train),
            holdout=_columns(split.holdout),
            replay_eval=_columns(split.replay_eval),
            incumbent_dir=str(self.registry.root / incumbent) if incumbent else None,
            settings=settings,
            gate=gate,
            architecture=models.architecture,
            encoder=encoder_source(self.settings),
            seed=int(now) % 10_000,
            val_fraction=cfg.validation_fraction,
            withhold_span=cfg.holdout_span,
            hygiene=HygieneSettings(
                max_chars=models.max_text_chars,
                near_duplicate_threshold=cfg.near_duplicate_threshold,
                conflicts=cfg.label_conflicts,
            )
            if cfg.hygiene
            else None,
            unlabelled=split.unlabelled,
            pseudo=PseudoLabelSettings(
                cfg.pseudo_label_weight,
                cfg.pseudo_label_precision,
                cfg.pseudo_label_ratio,
            )
            if cfg.pseudo_labels
            else None,
        )


def _columns(examples: list[LabelledExample]) -> tuple[list[str], list[str]]:
    return [e.text for e in examples], [e.intent for e in examples]


def cap_replay(replay: list[LabelledExample], cap: float) -> tuple[list[LabelledExample], int]:
    """At most ``cap`` times the fair share per intent
    in the replay sample (oldest-first order kept)."""
    intents = {e.intent for e in replay}
    if not replay or len(intents) < 2:
        return replay, 0
    kept = cap_per_class([e.intent for e in replay], min(1.0, cap / len(intents)))
    return [replay[i] for i in kept], len(replay) - len(kept)
