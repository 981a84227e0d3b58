"""`driftd config check`: validate a configuration and show what it amounts to."""

from __future__ import annotations

import typer

from .common import ConfigOption, group, load

__all__ = ["config_cli"]

config_cli = group("Inspect the configuration.")


@config_cli.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration and print the effective settings (secrets masked)."""
    typer.echo(load(config).model_dump_json(indent=2))
