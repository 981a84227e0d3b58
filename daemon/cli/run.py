"""`driftd run` (the daemon itself) and `driftd healthcheck` (the container's probe of it)."""

from __future__ import annotations

import urllib.error
import urllib.request

import typer

from ..logs import setup_logging
from .admin_client import endpoint
from .common import ConfigOption, config_path, fail, load

__all__ = ["healthcheck", "run"]


def run(config: ConfigOption = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (starts the
    embedded broker when kafka.bootstrap = "embedded").

    SIGHUP re-reads the configuration and applies [monitor], [learning] and the log settings."""
    path = config_path(config)
    settings = load(path)
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    from ..app import Daemon

    raise typer.Exit(Daemon(settings, config_path=path).run())


def healthcheck(config: ConfigOption = None) -> None:
    """GET /healthz of the daemon this configuration describes (port, TLS): exit
    0 when it answers 200. The container's HEALTHCHECK; needs no admin token."""
    base, context = endpoint(load(config).web)
    url = base + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as error:
        fail("healthcheck", f"{url}: {getattr(error, 'reason', error)}")
    raise typer.Exit(0 if ok else 1)
