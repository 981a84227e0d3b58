"""`driftd labels export | import`: labelling requests
to Label Studio, and its annotations back as labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..label_studio import LabelsError, export_requests, import_labels
from .common import ConfigOption, fail, group, load

__all__ = ["labels_cli"]

labels_cli = group(
    "Take labelling requests to Label Studio and its annotations back as label events."
)
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        help="Kafka bootstrap servers (default: the configured ones; the embedded broker's "
        "port when embedded)."
    ),
]


def _echo_skipped(skipped: list[str], what: str) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} {what}:")
        for reason in skipped:
            typer.echo(f"  {reason}")


@labels_cli.command("export")
def export_command(
    output: Annotated[
        Path,
        typer.Argument(
            help="Label Studio tasks JSON to write (Import in the Label Studio project).",
            dir_okay=False,
        ),
    ],
    config: ConfigOption = None,
    config_xml: Annotated[
        Path | None,
        typer.Option(
            "--config-xml",
            help="Also write the labelling config (XML) with the live model's intents.",
            dir_okay=False,
        ),
    ] = None,
    bootstrap: BootstrapOption = None,
    topic: Annotated[
        str | None, typer.Option(help="Requests topic (default: topics.labeling_requests).")
    ] = None,
    timeout_s: Annotated[
        float,
        typer.Option(help="Give up when the end of the topic is not reached within this long."),
    ] = 60.0,
) -> None:
    """Write every labelling request on the requests topic as a Label Studio
    task, pre-annotated with the model's intent, most uncertain first."""
    settings = load(config)
    try:
        result = export_requests(
            settings,
            output,
            config_xml=config_xml,
            bootstrap=bootstrap,
            topic=topic,
            timeout_s=timeout_s,
        )
    except LabelsError as exc:
        fail("labels", exc, exc.exit_code)
    typer.echo(f"wrote {len(result.tasks)} tasks to {output}")
    if config_xml is not None:
        typer.echo(
            f"wrote the labelling config with {len(result.choices)} intents "
            f"({result.choices_from}) to {config_xml}"
        )
    _echo_skipped(result.skipped, "records that are not labelling requests")


@labels_cli.command("import")
def import_command(
    export: Annotated[
        Path,
        typer.Argument(
            help="Label Studio JSON export of the project (Export > JSON).", dir_okay=False
        ),
    ],
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    dry_run: Annotated[
        bool, typer.Option(help="Check the export and count what would be sent; send nothing.")
    ] = False,
) -> None:
    """Send the last annotation of each task as a label event
    to the input topic (same export, same event ids)."""
    settings = load(config)
    try:
        result = import_labels(settings, export, bootstrap=bootstrap, dry_run=dry_run)
    except LabelsError as exc:
        fail("labels", exc, exc.exit_code)
    typer.echo(
        f"{'would send' if dry_run else 'sent'} {len(result.events)} label events to {result.topic}"
    )
    _echo_skipped(result.skipped, "tasks")
