"""``driftd models list | show | rollback``: look at the registry and move CURRENT by hand.

A typer sub-app on its own so the models room stays free of daemon imports; the daemon's CLI mounts it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from .registry import CorruptVersion, Manifest, Registry

__all__ = ["models_cli"]

models_cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect the model registry and roll back the live version.")

# The daemon keeps its registry in <daemon.data_dir>/registry unless models.registry_dir says otherwise;
# the same environment variable that configures the daemon points this command at it.
RegistryOption = Annotated[
    Path,
    typer.Option("--registry", envvar="DRIFTD_MODELS__REGISTRY_DIR", help="Registry root directory (holds v000001/, ..., CURRENT)."),
]


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"driftd models: {exc}", err=True)
    raise typer.Exit(1)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@models_cli.command("list")
def list_versions(registry: RegistryOption = Path("var/registry")) -> None:
    """One line per version, oldest first; `*` marks the current one. Re-hashes every file."""
    reg = Registry(registry)
    current = reg.current()
    rows = [("", "VERSION", "CREATED", "PARENT", "STATUS")]
    for version, entry in reg.entries():
        manifest: Manifest | None = entry.manifest if isinstance(entry, CorruptVersion) else entry
        status = f"CORRUPT: {'; '.join(entry.problems)}" if isinstance(entry, CorruptVersion) else "ok"
        created = _iso(manifest.created_at) if manifest else "-"
        parent = (manifest.parent or "-") if manifest else "-"
        rows.append(("*" if version == current else "", version, created, parent, status))
    if len(rows) == 1:
        typer.echo(f"no versions in {registry}")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    if current is not None and current not in {row[1] for row in rows[1:]}:
        typer.echo(f"warning: CURRENT names {current}, which is not in the registry", err=True)


@models_cli.command()
def show(version: str, registry: RegistryOption = Path("var/registry")) -> None:
    """Print a version's manifest as JSON (verified; a corrupt one's manifest is printed if readable, exit 1)."""
    try:
        manifest = Registry(registry).verify(version)
    except CorruptVersion as exc:
        if exc.manifest is not None:
            typer.echo(exc.manifest.to_json(), nl=False)
        _fail(exc)
    except ValueError as exc:
        _fail(exc)
    typer.echo(manifest.to_json(), nl=False)


@models_cli.command()
def rollback(
    registry: RegistryOption = Path("var/registry"),
    version: Annotated[Optional[str], typer.Argument(help="Version to make live (default: the current one's parent).")] = None,
) -> None:
    """Make VERSION (or the current version's parent) live, after verifying it; prints the new current."""
    try:
        typer.echo(Registry(registry).rollback(version))
    except (CorruptVersion, ValueError) as exc:
        _fail(exc)
