"""Keeps a model serving: loads the registry's current version at start, or trains the first one.

Runs beside ingest, never in front of it: loading and bootstrap training run in a worker thread, and
the daemon reports ready only once a model serves. A current version that fails verification is
skipped for the newest older version that passes, so a corrupt file never takes serving down.
"""

from __future__ import annotations

import asyncio
import logging
import time

import mode

from models.export import build_version_files
from models.registry import CorruptVersion, Registry
from models.serving import ModelRejected, ModelServer
from models.train import TrainSettings, train_classifier
from streams.datasets import groups, load_examples

from .config import Settings

__all__ = ["ModelService", "bootstrap_model"]

log = logging.getLogger("driftd.models")


def bootstrap_model(settings: Settings, registry: Registry) -> str:
    """Train the first model from the configured seed dataset and make it current."""
    m = settings.models
    examples = load_examples(m.bootstrap_dataset, "train", settings.replay.data_dir)
    wanted = set(m.bootstrap_groups)
    by_group = groups(m.bootstrap_dataset, settings.replay.data_dir)
    allowed = {intent for g in wanted for intent in by_group.get(g, [g])} if wanted else None
    chosen = [e for e in examples if allowed is None or e.intent in allowed]
    if not chosen:
        raise ValueError(f"models.bootstrap_groups {sorted(wanted)} match nothing in {m.bootstrap_dataset}")
    log.info("no model yet: training the first one on %d %s examples (%s)", len(chosen), m.bootstrap_dataset, ", ".join(sorted(wanted)) or "all")
    started = time.time()
    # 256 per step: a few times faster on CPU than 64 for a fraction of a point (the first model is soon fine-tuned anyway).
    result = train_classifier([e.text for e in chosen], [e.intent for e in chosen], architecture=m.architecture, settings=TrainSettings(batch_size=256))
    probe = [e.text for e in chosen[:: max(1, len(chosen) // 64)]][:64]
    files, report = build_version_files(result.model, result.featurizer, result.labels, probe, calibration_texts=[e.text for e in chosen[:1024]])
    manifest = registry.publish(
        files,
        parent=None,
        info={"source": "bootstrap", "dataset": m.bootstrap_dataset, "groups": sorted(wanted), "examples": len(chosen), "labels": len(result.labels), "architecture": m.architecture, "train_seconds": round(time.time() - started, 1), "export": report},
    )
    registry.set_current(manifest.version)
    log.info("bootstrap model %s: %d intents, trained in %.1fs", manifest.version, len(result.labels), time.time() - started)
    return manifest.version


class ModelService(mode.Service):
    def __init__(self, settings: Settings, server: ModelServer, registry: Registry, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.server = server
        self.registry = registry

    async def on_start(self) -> None:
        self.add_future(self._serve_something())

    async def _serve_something(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._load_initial)
        except Exception:  # noqa: BLE001 - ingest goes on without a model; /readyz says not ready
            log.exception("no model could be loaded or trained; predictions are off until one is activated")

    def _load_initial(self) -> None:
        self.registry.remove_stale_temp()
        if self.registry.current() is None:
            if not self.settings.models.bootstrap:
                log.info("the registry is empty and models.bootstrap is off: no model serves until one is activated")
                return
            bootstrap_model(self.settings, self.registry)
        current = self.registry.current()
        candidates = [current] + [v for v in reversed(self.registry.versions()) if v != current]
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
            return
        raise RuntimeError("no registry version passed verification")
