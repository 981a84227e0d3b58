"""The ``driftd`` command line: run the daemon, replay datasets, run the demo, print the schema."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from models.registry_cli import models_cli

from .config import ConfigError, ReplaySettings, Settings, WebSettings, load_settings
from .labels_cli import labels_cli
from .logs import setup_logging

if TYPE_CHECKING:
    from streams.replay import ReplayStats

__all__ = ["main"]

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="driftd keeps a conversational intent model good while the world changes under it.")
config_cli = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
cli.add_typer(config_cli, name="config")
cli.add_typer(models_cli, name="models")
learning_cli = typer.Typer(no_args_is_help=True, help="Talk to a running daemon's learning loop (admin API; needs web.admin_token).")
cli.add_typer(learning_cli, name="learning")
cli.add_typer(labels_cli, name="labels")

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="config.toml to read (default: $DRIFTD_CONFIG, else ./config.toml if present)."),
]


def _config_path(config: Path | None) -> Path | None:
    if config is None:
        env = os.environ.get("DRIFTD_CONFIG")
        config = Path(env) if env else (Path("config.toml") if Path("config.toml").is_file() else None)
    return config


def _settings(config: Path | None, **overrides: object) -> Settings:
    return load_settings(_config_path(config), **overrides)


@cli.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (starts the embedded broker when kafka.bootstrap = "embedded").

    SIGHUP re-reads the configuration and applies [monitor], [learning] and the log settings."""
    path = _config_path(config)
    settings = load_settings(path)
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    from .app import Daemon

    raise typer.Exit(Daemon(settings, config_path=path).run())


@cli.command()
def replay(
    config: ConfigOption = None,
    dataset: Annotated[Optional[str], typer.Option(help="clinc150, banking77 or snips.")] = None,
    split: Annotated[str, typer.Option(help="Dataset split to replay.")] = "train",
    rate: Annotated[Optional[float], typer.Option(help="Events per second (0: unlimited).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Utterances to send (0: the whole split).")] = None,
    label_fraction: Annotated[Optional[float], typer.Option(help="Share of utterances that get a label.")] = None,
    label_delay: Annotated[Optional[int], typer.Option(help="Utterances between an utterance and its label.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help='Drift schedule, e.g. "0=banking,travel;8000=*".')] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the replay order.")] = None,
    bootstrap: Annotated[Optional[str], typer.Option(help="Broker to send to (default: the configured one).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Produce conversation events from a dataset, with a drift schedule, labels and a rate limit."""
    settings = _settings(config)
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    r = settings.replay.model_copy(
        update={k: v for k, v in dict(dataset=dataset, rate=rate, limit=limit, label_fraction=label_fraction, label_delay=label_delay, schedule=schedule, seed=seed).items() if v is not None}
    )
    target = bootstrap or (f"127.0.0.1:{settings.kafka.embedded_port}" if settings.kafka.embedded else settings.kafka.bootstrap)
    stats = replay_dataset(settings, r, split, target, progress)
    typer.echo(f"replayed {stats.utterances} utterances and {stats.labels} labels of {r.dataset}/{split} to {settings.topics.input} on {target} in {stats.seconds:.1f}s")


def replay_dataset(settings: Settings, r: ReplaySettings, split: str, target: str, progress: bool) -> ReplayStats:
    """Send ``r.dataset`` to the input topic on ``target`` as configured by ``r``."""
    from streams.datasets import groups, load_examples
    from streams.replay import DriftSchedule, plan_events, replay as send

    from .kafka import aiokafka_options

    examples = load_examples(r.dataset, split, r.data_dir)
    plan = DriftSchedule.parse(r.schedule, groups(r.dataset, r.data_dir), {e.intent for e in examples})
    limit = r.limit or len(examples)
    events = plan_events(examples, plan, limit=limit, label_fraction=r.label_fraction, label_delay=r.label_delay, seed=r.seed)
    total = limit + round(limit * r.label_fraction)
    return asyncio.run(send(target, settings.topics.input, events, rate=r.rate, total=total, client_options=aiokafka_options(settings.kafka), progress=progress))


@cli.command()
def demo(
    config: ConfigOption = None,
    malformed: Annotated[int, typer.Option(help="Malformed payloads mixed in, to show the dead-letter path.")] = 25,
    keep: Annotated[bool, typer.Option(help="Keep the demo's data directory afterwards.")] = True,
) -> None:
    """The main demo: embedded broker + daemon, fed by a replay of the shipped CLINC150 copy."""
    from .demo import run_demo

    settings = _settings(config)
    setup_logging("INFO", settings.daemon.log_format)
    raise typer.Exit(run_demo(settings, malformed=malformed, keep=keep))


@cli.command()
def schema(write: Annotated[bool, typer.Option(help="Rewrite streams/event.schema.json instead of printing.")] = False) -> None:
    """Print (or rewrite) the JSON Schema of conversation events."""
    from streams.schema import EVENT_SCHEMA_PATH, event_json_schema, write_event_json_schema

    if write:
        write_event_json_schema()
        typer.echo(f"wrote {EVENT_SCHEMA_PATH}")
    else:
        typer.echo(json.dumps(event_json_schema(), indent=2, sort_keys=True))


def _endpoint(web: WebSettings) -> tuple[str, ssl.SSLContext | None]:
    """The running daemon's base URL as this configuration describes it, and the TLS context to reach it."""
    from .tls import client_context

    host = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host
    context = client_context(web)  # https when the endpoint has a certificate
    return f"{'https' if context is not None else 'http'}://{host}:{web.port}", context


def _admin(settings: Settings, method: str, path: str) -> tuple[int, dict]:
    import http.client
    import urllib.error
    import urllib.request

    token = settings.web.admin_token
    if token is None:
        raise ConfigError("web.admin_token is not set (env DRIFTD_WEB__ADMIN_TOKEN): the admin API is disabled, so there is nothing to call")
    base, context = _endpoint(settings.web)
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"Bearer {token.get_secret_value()}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:  # refused, TLS refused, http to https...
        reason = getattr(error, "reason", None) or repr(error)
        typer.echo(f"driftd: no daemon answers on {base} ({reason})", err=True)
        raise typer.Exit(1) from None


@learning_cli.command("retrain")
def learning_retrain(config: ConfigOption = None) -> None:
    """Start a fine-tune now (refused while one runs). Exit code 0 when it started."""
    status, body = _admin(_settings(config), "POST", "/admin/v1/retrain")
    typer.echo(body.get("message") or body.get("error"))
    raise typer.Exit(0 if status == 202 else 1)


@learning_cli.command("status")
def learning_status(config: ConfigOption = None) -> None:
    """The loop's state: serving version, monitor evidence, running or last fine-tune, canary."""
    status, body = _admin(_settings(config), "GET", "/admin/v1/learning")
    typer.echo(json.dumps(body, indent=2, sort_keys=True))
    raise typer.Exit(0 if status == 200 else 1)


@cli.command()
def healthcheck(config: ConfigOption = None) -> None:
    """GET /healthz of the daemon this configuration describes (port, TLS): exit 0 when it answers 200.
    The container's HEALTHCHECK; needs no admin token."""
    import urllib.error
    import urllib.request

    base, context = _endpoint(_settings(config).web)
    url = base + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as error:
        typer.echo(f"driftd healthcheck: {url}: {getattr(error, 'reason', error)}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if ok else 1)


@cli.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON instead of text.")] = False,
) -> None:
    """A running daemon at a glance: model version, accuracy EWMA and detectors, tiers, lag, last training."""
    from .status_view import render_status

    settings = _settings(config)
    code, body = _admin(settings, "GET", "/admin/v1/status")
    if code != 200:
        typer.echo(f"driftd status: {body.get('error', body)}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(body, indent=2, sort_keys=True) if as_json else render_status(body, f"{settings.web.host}:{settings.web.port}"))


@config_cli.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration and print the effective settings (secrets masked)."""
    settings = _settings(config)
    typer.echo(settings.model_dump_json(indent=2))


def main() -> None:
    try:
        sys.exit(cli(standalone_mode=False) or 0)  # standalone_mode=False returns typer.Exit codes instead of exiting
    except ConfigError as exc:
        print(f"driftd: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
