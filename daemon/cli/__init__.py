"""The ``driftd`` command line: one module per command or group, assembled here.

``main`` runs it so that every usage error is one line on stderr with exit code
2 (a bad option, a missing argument, a bad configuration), never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

# typer 0.29 vendors its own click: its usage errors are these
# classes, not click's (typer is pinned in pyproject.toml).
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from ..config import ConfigError
from .common import group
from .config import config_cli
from .demo import demo, schema
from .labels import labels_cli
from .models import models_cli
from .replay import replay
from .run import healthcheck, run
from .status import learning_cli, status
from .train import train

__all__ = ["cli", "main"]

cli = group("driftd keeps a conversational intent model good while the world changes under it.")
for command in (run, replay, train, demo, schema, healthcheck, status):
    cli.command()(command)
cli.add_typer(config_cli, name="config")
cli.add_typer(models_cli, name="models")
cli.add_typer(learning_cli, name="learning")
cli.add_typer(labels_cli, name="labels")


def _version() -> str:
    try:
        return package_version("driftd")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"driftd {_version()}")
        raise typer.Exit(0)


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """driftd keeps a conversational intent model good while the world changes under it."""


def main(argv: Sequence[str] | None = None) -> None:
    command = typer.main.get_command(cli)
    try:
        code = command.main(
            args=list(argv) if argv is not None else None, prog_name="driftd", standalone_mode=False
        )
    except ConfigError as exc:
        print(f"driftd: {exc}", file=sys.stderr)
        sys.exit(2)
    except NoArgsIsHelpError as exc:  # a group called without a command: its help
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "driftd"
        print(f"{where}: {exc.format_message().rstrip('.')} (see {where} --help)", file=sys.stderr)
        sys.exit(2)
    except typer.TyperException as exc:  # the rest of click's errors (a file it cannot open, ...)
        print(f"driftd: {exc.format_message()}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
    except typer.Abort:
        print("driftd: aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
