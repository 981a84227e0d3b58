"""`driftd replay`: a shipped dataset or your own labelled
file, as conversation events with drift and labels."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import ReplaySettings, Settings
from ..label_studio import bootstrap_of
from ..logs import setup_logging
from ..replaying import ReplayPlan, replay_plan, send_events
from .common import ConfigOption, fail, load

__all__ = ["replay"]

DatasetOption = Annotated[
    str | None,
    typer.Option(
        help="Shipped dataset: clinc150, banking77, snips, massive_ru, ... (default: "
        "replay.dataset)."
    ),
]
FileOption = Annotated[
    str | None,
    typer.Option(
        "--file",
        help="Your own labelled .csv, .jsonl or .parquet file (path or s3:// URL) "
        "instead of a dataset.",
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option(
        help="Utterances to send (0: the whole split; with --file the default: each row once)."
    ),
]
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        help='Drift schedule, e.g. "0=banking,travel;8000=*" (with --file: over its '
        'intents; default "0=*").'
    ),
]


def replay(
    config: ConfigOption = None,
    dataset: DatasetOption = None,
    file: FileOption = None,
    text_column: Annotated[
        str, typer.Option(help="With --file: the column of the texts.")
    ] = "text",
    intent_column: Annotated[
        str, typer.Option(help="With --file: the column of the intents.")
    ] = "intent",
    split: Annotated[str, typer.Option(help="Dataset split to replay.")] = "train",
    rate: Annotated[float | None, typer.Option(help="Events per second (0: unlimited).")] = None,
    limit: LimitOption = None,
    label_fraction: Annotated[
        float | None, typer.Option(help="Share of utterances that get a label.")
    ] = None,
    label_delay: Annotated[
        int | None, typer.Option(help="Utterances between an utterance and its label.")
    ] = None,
    schedule: ScheduleOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the replay order.")] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="Broker to send to (default: the configured one).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Produce conversation events from a dataset or your own
    file, with a drift schedule, labels and a rate limit."""
    if file is not None and dataset is not None:
        fail("replay", "give --dataset or --file, not both", 2)
    settings = load(config)
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    if file is not None:  # the configured schedule and limit are the demo dataset's
        schedule, limit = schedule or "0=*", 0 if limit is None else limit
    r = _with_options(
        settings.replay,
        dataset=dataset,
        rate=rate,
        limit=limit,
        label_fraction=label_fraction,
        label_delay=label_delay,
        schedule=schedule,
        seed=seed,
    )
    target = bootstrap or bootstrap_of(settings)
    plan = _plan(settings, r, split, file, text_column, intent_column)
    stats = send_events(settings, plan, r.rate, target, progress)
    what = file if file is not None else f"{r.dataset}/{split}"
    typer.echo(
        f"replayed {stats.utterances} utterances and {stats.labels} labels of {what} "
        f"to {settings.topics.input} on {target} in {stats.seconds:.1f}s"
    )


def _with_options(replay: ReplaySettings, **options: object) -> ReplaySettings:
    """[replay] with the options given on the command line (those not None) in its place."""
    return replay.model_copy(update={k: v for k, v in options.items() if v is not None})


def _plan(
    settings: Settings,
    r: ReplaySettings,
    split: str,
    file: str | None,
    text_column: str,
    intent_column: str,
) -> ReplayPlan:
    """What will be sent; exits 2 on a bad file, dataset, split or schedule (nothing sent)."""
    try:
        plan = replay_plan(
            settings, r, split, file=file, text_column=text_column, intent_column=intent_column
        )
    # a bad file, dataset, split or schedule: nothing is sent
    except (ValueError, FileNotFoundError) as exc:
        fail("replay", exc, 2)
    if plan.skipped:
        typer.echo(
            f"driftd replay: skipped {plan.skipped} rows of {file} with an empty text or intent",
            err=True,
        )
    return plan
