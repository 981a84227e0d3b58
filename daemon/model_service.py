"""Keeps a model serving: loads the registry's current version at start, or trains the first one.

Runs beside ingest, never in front of it: loading and bootstrap training run in a worker thread, and
the daemon reports ready only once a model serves. A current version that fails verification is
skipped for the newest older version that passes, so a corrupt file never takes serving down.

The first model trains on ``models.bootstrap_source``: a shipped dataset or the operator's
labelled file. Left empty, the shipped demo dataset is used only with the embedded broker;
against a real cluster the daemon starts with no model and waits for a version to become
CURRENT (``driftd train --from FILE``, an admin activation), checking every
``models.sync_interval_s``. :func:`train_version` is also what ``driftd train`` runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mode

from models.architectures import EncoderSource, new_model_config
from models.export import build_version_files
from models.registry import CorruptVersion, Manifest, Registry
from models.serving import LoadedModel, ModelRejected, ModelServer
from models.train import Progress, TrainSettings, train_classifier
from streams.datasets import DATASETS, groups, load_examples
from streams.labelled_files import LabelledFileError, read_labelled

from .config import Settings

__all__ = [
    "ModelService",
    "TrainedVersion",
    "bootstrap_model",
    "bootstrap_source",
    "stratified_holdout",
    "train_version",
]

log = logging.getLogger("driftd.models")

# how often an empty registry is checked for a CURRENT when models.sync_interval_s is 0
NO_SOURCE_WAIT_S = 10.0


@dataclass(frozen=True)
class TrainedVersion:
    """A published (not yet current) version and how
    its served model did on the held-out examples."""

    manifest: Manifest
    train_examples: int
    holdout_examples: int
    holdout_accuracy: float | None  # None: too few examples to hold any out


def bootstrap_source(settings: Settings) -> str | None:
    """What the first model trains on: the configured source; unset, the
    demo dataset with the embedded broker only (a real cluster carries
    real traffic, which a demo model would mislabel). None: nothing."""
    m = settings.models
    if not m.bootstrap:
        return None
    if m.bootstrap_source:
        return m.bootstrap_source
    return m.bootstrap_dataset if settings.kafka.embedded else None


def stratified_holdout(
    intents: Sequence[str], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(train, holdout) indices: about ``fraction`` of each
    intent held out, at least one of each kept for training."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction!r}")
    by_intent: dict[str, list[int]] = defaultdict(list)
    for i, intent in enumerate(intents):
        by_intent[intent].append(i)
    rng = random.Random(seed)
    train: list[int] = []
    holdout: list[int] = []
    for intent in sorted(by_intent):
        members = by_intent[intent]
        rng.shuffle(members)
        cut = min(len(members) - 1, int(len(members) * fraction + 0.5))
        holdout.extend(members[:cut])
        train.extend(members[cut:])
    return sorted(train), sorted(holdout)


def train_version(
    texts: Sequence[str],
    intents: Sequence[str],
    registry: Registry,
    *,
    architecture: str,
    info: dict[str, Any],
    holdout_fraction: float = 0.0,
    seed: int = 0,
    progress: Progress | None = None,
    encoder: EncoderSource | None = None,
    trainable_layers: int | None = None,
    cache_dir: str | None = None,
) -> TrainedVersion:
    """Train a model from scratch on (texts, intents) less a stratified holdout,
    score it on the holdout loaded as it will serve (INT8 ONNX), then publish
    it (CURRENT does not move). ``encoder``: the checkpoint of an "encoder"
    model; ``trainable_layers`` and ``cache_dir`` as in ``TrainSettings``."""
    started = time.time()
    train_idx, hold_idx = stratified_holdout(intents, holdout_fraction, seed)
    train_texts, train_intents = [texts[i] for i in train_idx], [intents[i] for i in train_idx]
    # 256 per step: a few times faster on CPU than 64 for a fraction of a
    # point (the first model is soon fine-tuned anyway). On 225 Banking77
    # examples of 5 intents: 0.935 test accuracy at 256, 0.96 at 64.
    settings = TrainSettings(
        batch_size=256, seed=seed, trainable_layers=trainable_layers, cache_dir=cache_dir
    )
    result = train_classifier(
        train_texts,
        train_intents,
        architecture=architecture,
        settings=settings,
        config=new_model_config(architecture, encoder),
        progress=progress,
    )
    probe = train_texts[:: max(1, len(train_texts) // 64)][:64]
    files, report = build_version_files(
        result.model, result.featurizer, result.labels, probe, calibration_texts=train_texts[:1024]
    )
    accuracy = None
    if hold_idx:
        accuracy = _served_accuracy(
            registry, files, [texts[i] for i in hold_idx], [intents[i] for i in hold_idx]
        )
    counts = {
        "examples": len(train_idx),
        "holdout_examples": len(hold_idx),
        "holdout_accuracy": accuracy,
        "labels": len(result.labels),
    }
    train_seconds = round(time.time() - started, 1)
    info = {
        **info,
        **counts,
        "architecture": architecture,
        "train_seconds": train_seconds,
        "export": report,
    }
    manifest = registry.publish(files, parent=None, info=info)
    return TrainedVersion(manifest, len(train_idx), len(hold_idx), accuracy)


def _served_accuracy(
    registry: Registry, files: dict[str, bytes], texts: list[str], intents: list[str]
) -> float:
    """Accuracy of ``files`` loaded as the daemon loads a version (checksums,
    parity probe, INT8 session), from a scratch registry in the staging
    area, so that a version that cannot serve is never published."""
    scratch = Registry(registry.staging_dir())
    try:
        version = scratch.publish(files, parent=None, info={}).version
        model = LoadedModel.load(scratch, version)
        try:
            # the daemon's call size
            batches = (texts[start : start + 64] for start in range(0, len(texts), 64))
            predicted = [p.intent for batch in batches for p in model.predict(batch, top_k=1)]
        finally:
            model.close()
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)
    return sum(p == t for p, t in zip(predicted, intents, strict=True)) / len(intents)


def encoder_source(settings: Settings) -> EncoderSource | None:
    m = settings.models
    return EncoderSource(m.encoder, m.encoder_sha256, m.encoder_max_len) if m.encoder else None


def new_model_options(settings: Settings) -> dict[str, Any]:
    """``train_version``'s keywords for a model trained from scratch as the settings ask."""
    return {
        "encoder": encoder_source(settings),
        "trainable_layers": settings.learning.encoder_trainable_layers,
        "cache_dir": str(settings.embedding_cache_dir),
    }


def bootstrap_model(settings: Settings, registry: Registry, source: str) -> str:
    """Train the first model from ``source`` (a shipped
    dataset or a labelled file) and make it current."""
    m = settings.models
    started = time.time()
    if source in DATASETS:
        texts, intents, info = _dataset_examples(settings, source)
    else:
        options = m.bootstrap_storage_options
        data = read_labelled(
            source, m.bootstrap_text_column, m.bootstrap_intent_column, storage_options=options
        )
        if data.skipped:
            log.warning(
                "models.bootstrap_source %s: skipped %d rows with an empty text or intent",
                source,
                data.skipped,
            )
        texts, intents, info = data.texts, data.intents, {"source": "bootstrap", "file": source}
        log.info(
            "no model yet: training the first one on %d examples of %d intents from %s",
            len(texts),
            len(set(intents)),
            source,
        )
    trained = train_version(
        texts,
        intents,
        registry,
        architecture=m.architecture,
        info=info,
        **new_model_options(settings),
    )
    version = trained.manifest.version
    registry.set_current(version)
    log.info(
        "bootstrap model %s: %d intents, trained in %.1fs",
        version,
        trained.manifest.info["labels"],
        time.time() - started,
    )
    return version


def _dataset_examples(settings: Settings, name: str) -> tuple[list[str], list[str], dict[str, Any]]:
    data_dir = settings.replay.data_dir
    wanted = set(settings.models.bootstrap_groups)
    by_group = groups(name, data_dir)
    allowed = {intent for g in wanted for intent in by_group.get(g, [g])} if wanted else None
    chosen = [
        e for e in load_examples(name, "train", data_dir) if allowed is None or e.intent in allowed
    ]
    if not chosen:
        raise ValueError(f"models.bootstrap_groups {sorted(wanted)} match nothing in {name}")
    log.info(
        "no model yet: training the first one on %d %s examples (%s)",
        len(chosen),
        name,
        ", ".join(sorted(wanted)) or "all",
    )
    info = {"source": "bootstrap", "dataset": name, "groups": sorted(wanted)}
    return [e.text for e in chosen], [e.intent for e in chosen], info


class ModelService(mode.Service):
    def __init__(self, settings: Settings, server: ModelServer, registry: Registry) -> None:
        super().__init__()
        self.settings = settings
        self.server = server
        self.registry = registry

    async def on_start(self) -> None:
        self.add_future(self._serve_something())

    async def _serve_something(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            served = await loop.run_in_executor(None, self._load_initial)
            # Nothing to load or train: wait for a first version made CURRENT by
            # `driftd train` or another replica. Once one serves, daemon/cluster.py
            # follows CURRENT (it leaves the first load to this service).
            while not served and not self.should_stop:
                await self.sleep(self.settings.models.sync_interval_s or NO_SOURCE_WAIT_S)
                # activated through the admin API (or the learning loop) meanwhile
                if self.server.version is not None:
                    return
                try:
                    if await loop.run_in_executor(None, self.registry.current) is not None:
                        served = await loop.run_in_executor(None, self._load_from_registry)
                except Exception:
                    log.exception("could not load the registry's CURRENT; trying again")
        except Exception:
            log.exception(
                "no model could be loaded or trained; predictions are off until one is activated"
            )

    def _load_initial(self) -> bool:
        """Serve the registry's CURRENT, or train the first
        model; False when there is nothing to serve yet."""
        self.registry.remove_stale_temp()
        if self.registry.current() is None:
            source = bootstrap_source(self.settings)
            if source is None:
                log.warning(self._no_source_reason())
                return False
            try:
                bootstrap_model(self.settings, self.registry, source)
            except LabelledFileError as exc:
                log.error(
                    "models.bootstrap_source: %s; no model serves until a version "
                    "becomes CURRENT "
                    "(driftd train --from FILE)",
                    exc,
                )
                return False
        return self._load_from_registry()

    def _no_source_reason(self) -> str:
        m = self.settings.models
        if not m.bootstrap:
            why = "the registry is empty and models.bootstrap is off"
        else:
            why = (
                f"the registry is empty and kafka.bootstrap is not the embedded broker, "
                f"so the demo dataset {m.bootstrap_dataset} is not trained on"
            )
        every = m.sync_interval_s or NO_SOURCE_WAIT_S
        return (
            f"{why}: no model serves (/readyz not ready) until a version becomes CURRENT; "
            f"run `driftd train --from FILE`, "
            "or set models.bootstrap_source to a labelled file or a dataset "
            f"name; checking every {every:g}s"
        )

    def _load_from_registry(self) -> bool:
        current = self.registry.current()
        others = [v for v in reversed(self.registry.versions()) if v != current]
        candidates = others if current is None else [current, *others]
        for version in candidates:
            try:
                self.server.load_and_swap(self.registry, version)
            except (ModelRejected, CorruptVersion) as exc:
                log.error("refusing model %s: %s", version, exc)
                continue
            if version != current:
                log.warning("current model %s is unusable; serving %s instead", current, version)
                self.registry.set_current(version)
            log.info("serving model %s", version)
            return True
        raise RuntimeError("no registry version passed verification")
