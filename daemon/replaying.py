"""What `driftd replay` and the demo send: a shipped dataset's or a
labelled file's events, planned as configured (drift schedule, label
share and delay, seed), produced at a rate to the input topic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import ReplaySettings, Settings

if TYPE_CHECKING:
    from streams.replay import ReplayStats

__all__ = ["ReplayPlan", "replay_dataset", "replay_plan", "send_events"]


@dataclass
class ReplayPlan:
    events: Iterator[dict[str, Any]]
    total: int  # events the plan yields: utterances and their labels
    skipped: int = 0  # rows of a labelled file left out for an empty text or intent


def replay_plan(
    settings: Settings,
    r: ReplaySettings,
    split: str,
    *,
    file: str | None = None,
    text_column: str = "text",
    intent_column: str = "intent",
) -> ReplayPlan:
    """The events of ``r.dataset`` (or of the labelled ``file``) as configured by ``r``.
    Raises ValueError (LabelledFileError for a file) or FileNotFoundError."""
    from streams.datasets import groups, load_examples
    from streams.labelled_files import read_labelled
    from streams.replay import DriftSchedule, plan_events

    skipped = 0
    if file is not None:
        data = read_labelled(
            file,
            text_column,
            intent_column,
            storage_options=settings.models.bootstrap_storage_options,
        )
        examples, domains, skipped = data.examples(), {}, data.skipped
    else:
        examples, domains = (
            load_examples(r.dataset, split, r.data_dir),
            groups(r.dataset, r.data_dir),
        )
    plan = DriftSchedule.parse(r.schedule, domains, {e.intent for e in examples})
    limit = r.limit or len(examples)
    events = plan_events(
        examples,
        plan,
        limit=limit,
        label_fraction=r.label_fraction,
        label_delay=r.label_delay,
        seed=r.seed,
    )
    return ReplayPlan(events, limit + round(limit * r.label_fraction), skipped)


def send_events(
    settings: Settings, plan: ReplayPlan, rate: float, target: str, progress: bool
) -> ReplayStats:
    """Produce ``plan`` to the input topic on ``target`` with the configured client options."""
    from streams.replay import replay as send

    from .kafka import aiokafka_options

    options = aiokafka_options(settings.kafka)
    return asyncio.run(
        send(
            target,
            settings.topics.input,
            plan.events,
            rate=rate,
            total=plan.total,
            client_options=options,
            progress=progress,
        )
    )


def replay_dataset(
    settings: Settings, r: ReplaySettings, split: str, target: str, progress: bool
) -> ReplayStats:
    """Send ``r.dataset`` to the input topic on ``target``
    as configured by ``r`` (the demo's replay)."""
    return send_events(settings, replay_plan(settings, r, split), r.rate, target, progress)
