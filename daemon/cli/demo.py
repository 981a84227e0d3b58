"""`driftd demo` (the README's main command) and `driftd schema` (the events' JSON Schema)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..logs import setup_logging
from .common import ConfigOption, load

__all__ = ["demo", "schema"]


def demo(
    config: ConfigOption = None,
    malformed: Annotated[
        int, typer.Option(help="Malformed payloads mixed in, to show the dead-letter path.")
    ] = 25,
    keep: Annotated[bool, typer.Option(help="Keep the demo's data directory afterwards.")] = True,
) -> None:
    """The main demo: embedded broker + daemon, fed by a replay of the shipped CLINC150 copy."""
    from ..demo import run_demo

    settings = load(config)
    setup_logging("INFO", settings.daemon.log_format)
    raise typer.Exit(run_demo(settings, malformed=malformed, keep=keep))


def schema(
    write: Annotated[
        bool, typer.Option(help="Rewrite streams/event.schema.json instead of printing.")
    ] = False,
) -> None:
    """Print (or rewrite) the JSON Schema of conversation events."""
    from streams.schema import EVENT_SCHEMA_PATH, event_json_schema, write_event_json_schema

    if write:
        write_event_json_schema()
        typer.echo(f"wrote {EVENT_SCHEMA_PATH}")
    else:
        typer.echo(json.dumps(event_json_schema(), indent=2, sort_keys=True))
