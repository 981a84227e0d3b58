"""The ``driftd`` command line: run the daemon, train a first model from a file, replay datasets or files, run the demo, print the schema."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from models.checkpoints import CheckpointError
from models.registry_cli import models_cli

from .config import ConfigError, ReplaySettings, Settings, WebSettings, load_settings
from .labels_cli import labels_cli
from .logs import setup_logging

if TYPE_CHECKING:
    from models.registry import Registry
    from streams.labelled_files import LabelledData
    from streams.replay import ReplayStats

    from .model_service import TrainedVersion

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
    dataset: Annotated[Optional[str], typer.Option(help="Shipped dataset: clinc150, banking77, snips, massive_ru, ... (default: replay.dataset).")] = None,
    file: Annotated[Optional[str], typer.Option("--file", help="Your own labelled .csv, .jsonl or .parquet file (path or s3:// URL) instead of a dataset.")] = None,
    text_column: Annotated[str, typer.Option(help="With --file: the column of the texts.")] = "text",
    intent_column: Annotated[str, typer.Option(help="With --file: the column of the intents.")] = "intent",
    split: Annotated[str, typer.Option(help="Dataset split to replay.")] = "train",
    rate: Annotated[Optional[float], typer.Option(help="Events per second (0: unlimited).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Utterances to send (0: the whole split; with --file the default: each row once).")] = None,
    label_fraction: Annotated[Optional[float], typer.Option(help="Share of utterances that get a label.")] = None,
    label_delay: Annotated[Optional[int], typer.Option(help="Utterances between an utterance and its label.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help='Drift schedule, e.g. "0=banking,travel;8000=*" (with --file: over its intents; default "0=*").')] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the replay order.")] = None,
    bootstrap: Annotated[Optional[str], typer.Option(help="Broker to send to (default: the configured one).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Produce conversation events from a dataset or your own file, with a drift schedule, labels and a rate limit."""
    if file is not None and dataset is not None:
        typer.echo("driftd replay: give --dataset or --file, not both", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    if file is not None:  # the configured schedule and limit are the demo dataset's
        schedule, limit = schedule or "0=*", 0 if limit is None else limit
    r = settings.replay.model_copy(
        update={k: v for k, v in dict(dataset=dataset, rate=rate, limit=limit, label_fraction=label_fraction, label_delay=label_delay, schedule=schedule, seed=seed).items() if v is not None}
    )
    target = bootstrap or (f"127.0.0.1:{settings.kafka.embedded_port}" if settings.kafka.embedded else settings.kafka.bootstrap)
    try:
        events, total = replay_plan(settings, r, split, file=file, text_column=text_column, intent_column=intent_column)
    except (ValueError, FileNotFoundError) as exc:  # a bad file, dataset, split or schedule: nothing is sent
        typer.echo(f"driftd replay: {exc}", err=True)
        raise typer.Exit(2) from None
    stats = _send_events(settings, events, total, r.rate, target, progress)
    what = file if file is not None else f"{r.dataset}/{split}"
    typer.echo(f"replayed {stats.utterances} utterances and {stats.labels} labels of {what} "
               f"to {settings.topics.input} on {target} in {stats.seconds:.1f}s")


def replay_plan(
    settings: Settings,
    r: ReplaySettings,
    split: str,
    *,
    file: str | None = None,
    text_column: str = "text",
    intent_column: str = "intent",
) -> tuple[Iterator[dict[str, Any]], int]:
    """The events of ``r.dataset`` (or of the labelled ``file``) as configured by ``r``, and how many there are.
    Raises ValueError (LabelledFileError for a file) or FileNotFoundError."""
    from streams.datasets import groups, load_examples
    from streams.labelled_files import read_labelled
    from streams.replay import DriftSchedule, plan_events

    if file is not None:
        data = read_labelled(file, text_column, intent_column, storage_options=settings.models.bootstrap_storage_options)
        if data.skipped:
            typer.echo(f"driftd replay: skipped {data.skipped} rows of {file} with an empty text or intent", err=True)
        examples, domains = data.examples(), {}
    else:
        examples, domains = load_examples(r.dataset, split, r.data_dir), groups(r.dataset, r.data_dir)
    plan = DriftSchedule.parse(r.schedule, domains, {e.intent for e in examples})
    limit = r.limit or len(examples)
    events = plan_events(examples, plan, limit=limit, label_fraction=r.label_fraction, label_delay=r.label_delay, seed=r.seed)
    return events, limit + round(limit * r.label_fraction)


def _send_events(
    settings: Settings, events: Iterator[dict[str, Any]], total: int, rate: float, target: str, progress: bool
) -> ReplayStats:
    from streams.replay import replay as send

    from .kafka import aiokafka_options

    options = aiokafka_options(settings.kafka)
    return asyncio.run(send(target, settings.topics.input, events, rate=rate, total=total, client_options=options, progress=progress))


def replay_dataset(settings: Settings, r: ReplaySettings, split: str, target: str, progress: bool) -> ReplayStats:
    """Send ``r.dataset`` to the input topic on ``target`` as configured by ``r`` (the demo's replay)."""
    events, total = replay_plan(settings, r, split)
    return _send_events(settings, events, total, r.rate, target, progress)


@cli.command()
def train(
    source: Annotated[str, typer.Option("--from", help="Labelled .csv, .jsonl (JSON Lines) or .parquet file: a path or an s3:// URL.")],
    config: ConfigOption = None,
    text_column: Annotated[str, typer.Option(help="Column of the texts.")] = "text",
    intent_column: Annotated[str, typer.Option(help="Column of the intents.")] = "intent",
    activate: Annotated[bool, typer.Option("--activate", help="Make it CURRENT even if another version is (default: only when none is).")] = False,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.5, help="Share of each intent held out to measure accuracy (0: none).")] = 0.1,
    architecture: Annotated[Optional[str], typer.Option(help="bag_of_ngrams, transformer or encoder (default: models.architecture).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the holdout draw and of training.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model from your own labelled file, register it and print its holdout accuracy.

    Rows with an empty text or intent are skipped (and counted). The new version becomes CURRENT with
    --activate, or when the registry has none; a running daemon swaps to a new CURRENT within
    models.sync_interval_s (one that serves nothing yet loads it in the same interval)."""
    from typing import get_args

    from models.registry_mirror import open_registry
    from streams.labelled_files import LabelledFileError, read_labelled

    from .config import ModelSettings

    settings = _settings(config)
    m = settings.models
    setup_logging("ERROR", settings.daemon.log_format)  # the bar tells the epochs; the quantizer's advice is noise here
    known = get_args(ModelSettings.model_fields["architecture"].annotation)
    if architecture is not None and architecture not in known:
        typer.echo(f"driftd train: --architecture {architecture!r} is not one of {', '.join(known)}", err=True)
        raise typer.Exit(2)
    if (architecture or m.architecture) == "encoder" and not m.encoder:
        typer.echo('driftd train: --architecture encoder needs models.encoder ("minilm" or a checkpoint directory)', err=True)
        raise typer.Exit(2)
    try:
        data = read_labelled(source, text_column, intent_column, storage_options=m.bootstrap_storage_options)
    except LabelledFileError as exc:
        typer.echo(f"driftd train: {exc}", err=True)
        raise typer.Exit(2) from None
    skipped = f"; skipped {data.skipped} rows with an empty text or intent" if data.skipped else ""
    typer.echo(f"read {len(data)} examples of {len(data.intent_counts())} intents from {source}{skipped}")
    registry = open_registry(settings.registry_dir, m.registry_url, m.registry_storage_options)
    try:
        trained = _train_with_bar(data, registry, architecture or m.architecture, holdout, seed, progress, settings)
    except CheckpointError as exc:
        typer.echo(f"driftd train: {exc}", err=True)
        raise typer.Exit(2) from None
    if trained.holdout_accuracy is None:
        typer.echo(f"holdout accuracy: not measured (--holdout {holdout:g} leaves no example out); "
                   f"trained on {trained.train_examples}")
    else:
        typer.echo(f"holdout accuracy {trained.holdout_accuracy:.4f} on {trained.holdout_examples} examples "
                   f"({holdout:.0%} of each intent; the INT8 model as it serves), trained on {trained.train_examples}")
    version, current, where = trained.manifest.version, registry.current(), settings.registry_dir
    if activate or current is None:
        registry.set_current(version)
        typer.echo(f"registered {version} in {where}; it is CURRENT now "
                   f"(a running daemon on this registry swaps to it within models.sync_interval_s = {m.sync_interval_s:g}s)")
    else:
        typer.echo(f"registered {version} in {where}; CURRENT stays {current} "
                   f"(to serve it: driftd models rollback --registry {where} {version}, or train with --activate)")


def _train_with_bar(
    data: LabelledData, registry: Registry, architecture: str, holdout: float, seed: int, progress: bool, settings: Settings
) -> TrainedVersion:
    from tqdm import tqdm

    from .model_service import new_model_options, train_version  # torch: imported only once the file is known to be usable

    with tqdm(desc="train", unit="epoch", disable=not progress) as bar:
        def on_epoch(report: dict[str, Any]) -> None:
            bar.total = report["epochs"]
            bar.set_postfix(loss=f"{report['loss']:.4f}", refresh=False)
            bar.update(1)

        info = {"source": "driftd train", "file": data.source}
        return train_version(data.texts, data.intents, registry, architecture=architecture, info=info,
                             holdout_fraction=holdout, seed=seed, progress=on_epoch, **new_model_options(settings))


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
