"""`driftd train`: a first model from your own labelled
file, registered with its holdout accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from models.checkpoints import CheckpointError

from ..config import Settings
from ..logs import setup_logging
from .common import ConfigOption, fail, load

if TYPE_CHECKING:
    from models.registry import Registry
    from streams.labelled_files import LabelledData

    from ..model_service import TrainedVersion

__all__ = ["train"]


def train(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="Labelled .csv, .jsonl (JSON Lines) or .parquet file: a path or an s3:// URL.",
        ),
    ],
    config: ConfigOption = None,
    text_column: Annotated[str, typer.Option(help="Column of the texts.")] = "text",
    intent_column: Annotated[str, typer.Option(help="Column of the intents.")] = "intent",
    activate: Annotated[
        bool,
        typer.Option(
            "--activate",
            help="Make it CURRENT even if another version is (default: only when none is).",
        ),
    ] = False,
    holdout: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="Share of each intent held out to measure accuracy (0: none)."
        ),
    ] = 0.1,
    architecture: Annotated[
        str | None,
        typer.Option(help="bag_of_ngrams, transformer or encoder (default: models.architecture)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the holdout draw and of training.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model from your own labelled file, register it and print its holdout accuracy.

    Rows with an empty text or intent are skipped (and
    counted). The new version becomes CURRENT with
    --activate, or when the registry has none; a running daemon swaps to a new CURRENT within
    models.sync_interval_s (one that serves nothing yet loads it in the same interval)."""
    from models.registry_mirror import open_registry

    settings = load(config)
    m = settings.models
    # the bar tells the epochs; the quantizer's advice is noise here
    setup_logging("ERROR", settings.daemon.log_format)
    architecture = _checked_architecture(architecture, settings)
    data = _read(source, text_column, intent_column, settings)
    registry = open_registry(settings.registry_dir, m.registry_url, m.registry_storage_options)
    try:
        trained = _train_with_bar(data, registry, architecture, holdout, seed, progress, settings)
    except CheckpointError as exc:
        fail("train", exc, 2)
    typer.echo(_accuracy_line(trained, holdout))
    _register(trained, registry, activate, settings)


def _checked_architecture(architecture: str | None, settings: Settings) -> str:
    """--architecture, or models.architecture; exits 2 on an unknown one or a missing encoder."""
    from typing import get_args

    from models.names import ArchitectureName

    known = get_args(ArchitectureName)
    if architecture is not None and architecture not in known:
        fail("train", f"--architecture {architecture!r} is not one of {', '.join(known)}", 2)
    chosen = architecture or settings.models.architecture
    if chosen == "encoder" and not settings.models.encoder:
        fail(
            "train",
            '--architecture encoder needs models.encoder ("minilm" or a checkpoint directory)',
            2,
        )
    return chosen


def _read(source: str, text_column: str, intent_column: str, settings: Settings) -> LabelledData:
    """The labelled file, with what was read said on stdout; exits 2 on an unusable file."""
    from streams.labelled_files import LabelledFileError, read_labelled

    try:
        data = read_labelled(
            source,
            text_column,
            intent_column,
            storage_options=settings.models.bootstrap_storage_options,
        )
    except LabelledFileError as exc:
        fail("train", exc, 2)
    skipped = f"; skipped {data.skipped} rows with an empty text or intent" if data.skipped else ""
    typer.echo(
        f"read {len(data)} examples of {len(data.intent_counts())} intents from {source}{skipped}"
    )
    return data


def _accuracy_line(trained: TrainedVersion, holdout: float) -> str:
    if trained.holdout_accuracy is None:
        return (
            f"holdout accuracy: not measured (--holdout {holdout:g} leaves no example out); "
            f"trained on {trained.train_examples}"
        )
    return (
        f"holdout accuracy {trained.holdout_accuracy:.4f} on "
        f"{trained.holdout_examples} examples "
        f"({holdout:.0%} of each intent; the INT8 model as it "
        f"serves), trained on {trained.train_examples}"
    )


def _register(
    trained: TrainedVersion, registry: Registry, activate: bool, settings: Settings
) -> None:
    """Make the new version CURRENT (with --activate, or when none is) and say what happened."""
    version, current, where = trained.manifest.version, registry.current(), settings.registry_dir
    if activate or current is None:
        registry.set_current(version)
        typer.echo(
            f"registered {version} in {where}; it is CURRENT now "
            "(a running daemon on this registry swaps to it within "
            f"models.sync_interval_s = {settings.models.sync_interval_s:g}s)"
        )
    else:
        typer.echo(
            f"registered {version} in {where}; CURRENT stays {current} "
            f"(to serve it: driftd models rollback --registry {where} "
            f"{version}, or train with --activate)"
        )


def _train_with_bar(
    data: LabelledData,
    registry: Registry,
    architecture: str,
    holdout: float,
    seed: int,
    progress: bool,
    settings: Settings,
) -> TrainedVersion:
    from tqdm import tqdm

    # torch: imported only once the file is known to be usable
    from ..model_service import new_model_options, train_version

    with tqdm(desc="train", unit="epoch", disable=not progress) as bar:

        def on_epoch(report: dict[str, Any]) -> None:
            bar.total = report["epochs"]
            bar.set_postfix(loss=f"{report['loss']:.4f}", refresh=False)
            bar.update(1)

        info = {"source": "driftd train", "file": data.source}
        return train_version(
            data.texts,
            data.intents,
            registry,
            architecture=architecture,
            info=info,
            holdout_fraction=holdout,
            seed=seed,
            progress=on_epoch,
            **new_model_options(settings),
        )
