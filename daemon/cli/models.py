"""``driftd models list | show | rollback``: look at
the configured registry and move CURRENT by hand.

The registry is the daemon's (``-c``: ``daemon.data_dir``, ``models.registry_dir``,
``models.registry_url`` with s3:// mirroring), or the directory ``--registry`` names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from models.registry import CorruptVersion, Manifest, Registry

from .common import ConfigOption, fail, group, load

__all__ = ["models_cli"]

models_cli = group("Inspect the model registry and roll back the live version.")

RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="A registry directory (holds v000001/, ..., CURRENT) instead of the "
        "configured registry.",
    ),
]


def _open(config: Path | None, registry: Path | None) -> tuple[Registry, str]:
    """The registry to look at, and how to name it."""
    if registry is not None:
        return Registry(registry), str(registry)
    from models.registry_mirror import open_registry

    settings = load(config)
    m = settings.models
    where = f"{settings.registry_dir}" + (
        f" (mirroring {m.registry_url})" if m.registry_url else ""
    )
    return open_registry(settings.registry_dir, m.registry_url, m.registry_storage_options), where


def _fail(exc: Exception) -> NoReturn:
    fail("models", exc)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@models_cli.command("list")
def list_versions(config: ConfigOption = None, registry: RegistryOption = None) -> None:
    """One line per version, oldest first; `*` marks the current one. Re-hashes every file."""
    reg, where = _open(config, registry)
    current = reg.current()
    rows = [("", "VERSION", "CREATED", "PARENT", "STATUS")]
    for version, entry in reg.entries():
        manifest: Manifest | None = entry.manifest if isinstance(entry, CorruptVersion) else entry
        status = (
            f"CORRUPT: {'; '.join(entry.problems)}" if isinstance(entry, CorruptVersion) else "ok"
        )
        created = _iso(manifest.created_at) if manifest else "-"
        parent = (manifest.parent or "-") if manifest else "-"
        rows.append(("*" if version == current else "", version, created, parent, status))
    if len(rows) == 1:
        typer.echo(f"no versions in {where}")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=False))
            + "  "
            + row[4]
        )
    if current is not None and current not in {row[1] for row in rows[1:]}:
        typer.echo(f"warning: CURRENT names {current}, which is not in the registry", err=True)


@models_cli.command()
def show(version: str, config: ConfigOption = None, registry: RegistryOption = None) -> None:
    """Print a version's manifest as JSON (verified; a corrupt
    one's manifest is printed if readable, exit 1)."""
    try:
        manifest = _open(config, registry)[0].verify(version)
    except CorruptVersion as exc:
        if exc.manifest is not None:
            typer.echo(exc.manifest.to_json(), nl=False)
        _fail(exc)
    except ValueError as exc:
        _fail(exc)
    typer.echo(manifest.to_json(), nl=False)


@models_cli.command()
def rollback(
    version: Annotated[
        str | None,
        typer.Argument(help="Version to make live (default: the current one's parent)."),
    ] = None,
    config: ConfigOption = None,
    registry: RegistryOption = None,
) -> None:
    """Make VERSION (or the current version's parent)
    live, after verifying it; prints the new current."""
    try:
        typer.echo(_open(config, registry)[0].rollback(version))
    except (CorruptVersion, ValueError) as exc:
        _fail(exc)
