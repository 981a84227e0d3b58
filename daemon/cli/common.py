"""What every command shares: the --config option, the
settings it names, command groups, one-line failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..config import ConfigError, Settings, load_settings

__all__ = ["ConfigOption", "config_path", "fail", "group", "load"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="config.toml to read (default: $DRIFTD_CONFIG, else ./config.toml if present).",
    ),
]


def group(help_text: str) -> typer.Typer:
    """A command group: its help when called without a command; help texts
    printed as written (rich markup would swallow a `[monitor]`)."""
    return typer.Typer(
        add_completion=False, no_args_is_help=True, rich_markup_mode=None, help=help_text
    )


def config_path(config: Path | None) -> Path | None:
    if config is None:
        env = os.environ.get("DRIFTD_CONFIG")
        config = (
            Path(env) if env else (Path("config.toml") if Path("config.toml").is_file() else None)
        )
    return config


def load(config: Path | None, **overrides: object) -> Settings:
    """The settings of ``config`` (see ``config_path``); a
    bad configuration says what is wrong and exits 2."""
    try:
        return load_settings(config_path(config), **overrides)
    except ConfigError as exc:
        fail("", exc, 2)


def fail(command: str, message: object, code: int = 1) -> NoReturn:
    """``driftd COMMAND: message`` on stderr, then exit
    with ``code`` (2: bad input, 1: anything else)."""
    typer.echo(f"driftd{' ' + command if command else ''}: {message}", err=True)
    raise typer.Exit(code)
