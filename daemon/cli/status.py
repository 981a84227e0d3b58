"""`driftd status` and `driftd learning retrain | status`:
a running daemon's state, through its admin API."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .admin_client import admin_call
from .common import ConfigOption, fail, group, load

__all__ = ["learning_cli", "status"]

learning_cli = group("Talk to a running daemon's learning loop (admin API; needs web.admin_token).")


def status(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw JSON instead of text.")
    ] = False,
) -> None:
    """A running daemon at a glance: model version, accuracy
    EWMA and detectors, tiers, lag, last training."""
    from ..status_view import render_status

    settings = load(config)
    code, body = admin_call(settings, "GET", "/admin/v1/status")
    if code != 200:
        fail("status", body.get("error", body))
    typer.echo(
        json.dumps(body, indent=2, sort_keys=True)
        if as_json
        else render_status(body, f"{settings.web.host}:{settings.web.port}")
    )


@learning_cli.command("retrain")
def learning_retrain(config: ConfigOption = None) -> None:
    """Start a fine-tune now (refused while one runs). Exit code 0 when it started."""
    code, body = admin_call(load(config), "POST", "/admin/v1/retrain")
    typer.echo(body.get("message") or body.get("error"))
    raise typer.Exit(0 if code == 202 else 1)


@learning_cli.command("status")
def learning_status(config: ConfigOption = None) -> None:
    """The loop's state: serving version, monitor evidence, running or last fine-tune, canary."""
    code, body = admin_call(load(config), "GET", "/admin/v1/learning")
    typer.echo(json.dumps(body, indent=2, sort_keys=True))
    raise typer.Exit(0 if code == 200 else 1)
