"""One fine-tune job, start to verdict: warm-start, train,
export, quantise, and judge against the incumbent.

``run_fine_tune`` is what the daemon's child process runs (``daemon/trainer.py``); it takes plain
data (``FineTuneJob``: texts, intents, a path to the incumbent's registry directory) and returns
the candidate's version files and a report with the gate verdict. It never touches the registry or
the live server: promotion is the parent's decision, so a crash here can only lose the candidate.

It is two stages, ``train_candidate`` then ``judge_candidate`` (export, quantise, gate):
under torchrun (``models/distributed.py``) every rank trains and only rank 0 judges.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import (
    DEFAULT_ARCHITECTURE,
    EncoderSource,
    get_architecture,
    load_weights,
    new_model_config,
)
from .export import SERVED_MODEL, SERVED_WEIGHTS, build_version_files, cpu_session
from .featurize import featurizer_from_json
from .gate import GateSettings, GateVerdict, decide, p99_latency_ms
from .hygiene import HygieneSettings, clean_training_examples
from .pseudo import PseudoLabelSettings, pseudo_label
from .train import TrainResult, TrainSettings, train_classifier
from .withhold import newest_spread

__all__ = [
    "FineTuneJob",
    "FineTuneResult",
    "TrainedCandidate",
    "judge_candidate",
    "run_fine_tune",
    "train_candidate",
]

Progress = Callable[[dict[str, Any]], None]


@dataclass
class FineTuneJob:
    # replay sample, then recent labelled oldest first: (texts, intents)
    train: tuple[list[str], list[str]]
    holdout: tuple[list[str], list[str]]  # recent labelled events kept out of training
    # replay examples kept out of training (forgetting check)
    replay_eval: tuple[list[str], list[str]]
    incumbent_dir: str | None  # registry directory of the serving version; None trains from scratch
    settings: TrainSettings = field(default_factory=TrainSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    architecture: str = DEFAULT_ARCHITECTURE  # used only without an incumbent
    # the checkpoint of a new "encoder" model (without an incumbent)
    encoder: EncoderSource | None = None
    # of the training examples (the newest on a warm start), for early stopping
    # (small: every example withheld is one the candidate never learns)
    val_fraction: float = 0.03
    # the warm-start validation split is spread over the newest
    # val_fraction x this (models/withhold.py); 1: the newest block
    withhold_span: int = 1
    seed: int = 0
    # Cleaning before training (models/hygiene.py; the daemon sets
    # it from [learning]); None trains on the examples as given.
    hygiene: HygieneSettings | None = None
    # Set by the daemon: the candidate's files are written here and the
    # result carries their paths, so tens of MB of model bytes never
    # cross the pipe into the long-lived parent (whose heap keeps them).
    output_dir: str | None = None
    # Recent utterances nobody labelled, and how to pseudo-label
    # them (models/pseudo.py); None: human labels only.
    unlabelled: list[str] = field(default_factory=list)
    pseudo: PseudoLabelSettings | None = None


@dataclass
class FineTuneResult:
    files: dict[str, bytes | Path]  # bytes, or paths under the job's output_dir
    verdict: GateVerdict
    report: dict[str, Any]


@dataclass
class TrainedCandidate:
    """What ``train_candidate`` hands to ``judge_candidate``."""

    result: TrainResult
    texts: list[str]  # the training texts (export probes and INT8 calibration come from them)
    validation_examples: int
    incumbent_labels: list[str] | None
    started: float  # time.time() when the job started
    # what the cleaning removed and why (HygieneReport.to_dict)
    hygiene: dict[str, Any] | None = None
    # how many were found, at which threshold, and whether they were kept
    pseudo_labels: dict[str, Any] | None = None


class _Served:
    """A version's served INT8 model, as the endpoint
    runs it (featuriser + one-thread ONNX session)."""

    def __init__(
        self, model: bytes | Path, labels: list[str], featurizer: Any, weights: bytes | None = None
    ) -> None:
        # a path finds its weights file beside it
        self.session = cpu_session(model, weights=weights)
        self.input = self.session.get_inputs()[0].name
        self.labels = labels
        self.featurizer = featurizer

    def predict(self, texts: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(texts), 256):
            logits = self.session.run(
                None, {self.input: self.featurizer.batch(texts[i : i + 256])}
            )[0]
            out += [self.labels[j] for j in logits.argmax(1)]
        return out

    def one(self, text: str) -> Any:
        return self.session.run(None, {self.input: self.featurizer.batch([text])})


def _split_validation(
    texts: list[str], intents: list[str], fraction: float, seed: int, *, newest: bool, span: int = 1
) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]] | None]:
    """Keep ``fraction`` of the training examples out for early stopping.

    A warm start validates on the newest examples (``newest``; the list is oldest first),
    spread over the newest ``fraction x span`` (models/withhold.py): most of the older ones
    trained the incumbent already, so a random split scores near its ceiling from the first
    epoch and early stopping would keep a checkpoint that has hardly learnt what is new.
    """
    if fraction <= 0 or len(texts) < 50:
        return (texts, intents), None
    if newest:
        val = newest_spread(texts, fraction, span, salt="validation")  # ascending
    else:
        val = sorted(
            np.random.default_rng(seed)
            .permutation(len(texts))[: int(len(texts) * fraction)]
            .tolist()
        )
    kept_out = set(val)
    train = [i for i in range(len(texts)) if i not in kept_out]
    return ([texts[i] for i in train], [intents[i] for i in train]), (
        [texts[i] for i in val],
        [intents[i] for i in val],
    )


def _reporter(progress: Progress | None) -> Callable[..., None]:
    return lambda stage, **kw: progress({"stage": stage, **kw}) if progress else None


def train_candidate(job: FineTuneJob, progress: Progress | None = None) -> TrainedCandidate:
    """Warm-start (or start) and train; distributed when a process group is initialised."""
    started = time.time()
    report = _reporter(progress)
    labels, featurizer, init = _incumbent(job)
    train_texts, train_intents = job.train
    hygiene = None
    if job.hygiene is not None:
        # Every rank cleans the same list the same way (deterministic), so DDP shards stay aligned.
        train_texts, train_intents, cleaned = clean_training_examples(
            train_texts, train_intents, settings=job.hygiene, holdout_texts=job.holdout[0]
        )
        hygiene = cleaned.to_dict()
        report("hygiene", **hygiene)
    (texts, intents), val = _split_validation(
        train_texts,
        train_intents,
        job.val_fraction,
        job.seed,
        newest=job.incumbent_dir is not None,
        span=job.withhold_span,
    )
    report("training", examples=len(texts), validation=0 if val is None else len(val[0]))
    result = train_classifier(
        texts,
        intents,
        labels=labels,
        featurizer=featurizer,
        init=init,
        settings=job.settings,
        val=val,
        architecture=job.architecture,
        config=_new_model_config(job, init),
        progress=lambda r: report("epoch", **r),
    )
    pseudo = None
    if job.pseudo is not None and job.unlabelled:
        result, pseudo = _retrain_with_pseudo_labels(job, result, texts, intents, val, report)
    return TrainedCandidate(
        result, texts, 0 if val is None else len(val[0]), labels, started, hygiene, pseudo
    )


def _new_model_config(job: FineTuneJob, init: Any) -> Any:
    """The config of a model trained from scratch (None: the
    architecture's default); a warm start has its own."""
    return None if init is not None else new_model_config(job.architecture, job.encoder)


def _incumbent(job: FineTuneJob) -> tuple[list[str] | None, Any, Any]:
    """(labels, featuriser, weights) of the job's incumbent, freshly loaded (training
    changes the weights in place); all None when the job trains from scratch."""
    if job.incumbent_dir is None:
        return None, None, None
    root = Path(job.incumbent_dir)
    return (
        json.loads((root / "labels.json").read_text()),
        featurizer_from_json((root / "featurizer.json").read_text()),
        load_weights((root / "model.pt").read_bytes()),
    )


def _retrain_with_pseudo_labels(
    job: FineTuneJob,
    first: TrainResult,
    texts: list[str],
    intents: list[str],
    val: tuple[list[str], list[str]] | None,
    report: Callable[..., None],
) -> tuple[TrainResult, dict[str, Any]]:
    """Label the recent unlabelled utterances with the candidate just trained, at the confidence its
    validation split (human labels it did not train on) vouches for, and train again from
    the same start with them at a lower weight. The second candidate replaces the first only
    if its validation loss is no higher, so pseudo-labels can add to a candidate but not
    cost it. The validation split, the holdout and the replay check stay human-labelled."""
    if val is None:
        return first, {
            "used": 0,
            "kept": False,
            "skipped": "no validation split to calibrate the threshold on",
        }
    pseudo_texts, pseudo_intents, info = _pseudo_labelled(job, first, texts, val)
    report("pseudo_labels", **info)
    if not pseudo_texts:
        return first, info
    second = _train_with_pseudo_labels(
        job, first, (texts, intents), (pseudo_texts, pseudo_intents), val, report
    )
    info.update(
        kept=second.val_loss is not None
        and first.val_loss is not None
        and second.val_loss <= first.val_loss,
        val_loss_without=_finite(first.val_loss),
        val_loss_with=_finite(second.val_loss),
    )
    return (second if info["kept"] else first), info


def _pseudo_labelled(
    job: FineTuneJob, first: TrainResult, texts: list[str], val: tuple[list[str], list[str]]
) -> tuple[list[str], list[str], dict[str, Any]]:
    """(texts, intents, report) of the unlabelled utterances ``first`` labels confidently,
    cleaned like the human labels."""
    settings = job.pseudo
    assert settings is not None
    found = pseudo_label(
        first.model,
        first.featurizer,
        first.labels,
        val,
        job.unlabelled,
        settings,
        limit=int(len(texts) * settings.max_ratio),
    )
    info = found.report
    # Cleaned like the human labels; a text that is labelled
    # anywhere in the job is not pseudo-labelled too.
    pseudo_texts, pseudo_intents, cleaned = clean_training_examples(
        found.texts,
        found.intents,
        settings=job.hygiene or HygieneSettings(),
        holdout_texts=[*job.holdout[0], *val[0], *texts],
    )
    info.update(
        used=len(pseudo_texts), hygiene=cleaned.to_dict(), weight=settings.weight, kept=False
    )
    return pseudo_texts, pseudo_intents, info


def _train_with_pseudo_labels(
    job: FineTuneJob,
    first: TrainResult,
    human: tuple[list[str], list[str]],
    pseudo: tuple[list[str], list[str]],
    val: tuple[list[str], list[str]],
    report: Callable[..., None],
) -> TrainResult:
    """A second candidate from the same start as ``first``, on the human-labelled
    examples and the pseudo-labelled ones at their lower weight."""
    assert job.pseudo is not None
    _, _, init = _incumbent(job)
    return train_classifier(
        human[0] + pseudo[0],
        human[1] + pseudo[1],
        labels=first.labels,
        featurizer=first.featurizer,
        init=init,
        settings=job.settings,
        val=val,
        architecture=job.architecture,
        config=_new_model_config(job, init),
        progress=lambda r: report("epoch", **r, with_pseudo_labels=True),
        weights=[1.0] * len(human[0]) + [job.pseudo.weight] * len(pseudo[0]),
    )


def judge_candidate(
    job: FineTuneJob, trained: TrainedCandidate, progress: Progress | None = None
) -> FineTuneResult:
    """Export and quantise the trained candidate, and run the gate against the incumbent."""
    report = _reporter(progress)
    result, texts = trained.result, trained.texts
    # A warm start keeps the incumbent's featuriser, so the candidate's is the incumbent's too.
    incumbent = (
        None
        if job.incumbent_dir is None
        else _Served(
            Path(job.incumbent_dir) / SERVED_MODEL,
            trained.incumbent_labels or [],
            result.featurizer,
        )
    )
    report("exporting")
    probe = texts[:: max(1, len(texts) // 64)][:64]
    calibration = texts[:: max(1, len(texts) // 512)][:512]
    files, export_report = build_version_files(
        result.model, result.featurizer, result.labels, probe, calibration_texts=calibration
    )
    report("gating")
    candidate = _Served(
        files[SERVED_MODEL], result.labels, result.featurizer, weights=files[SERVED_WEIGHTS]
    )
    verdict = _gate(job, result, candidate, incumbent, latency_texts=job.holdout[0][:200] or probe)
    summary = _summary(job, trained, export_report)
    report("verdict", passed=verdict.passed, describe=verdict.describe())
    return FineTuneResult(_delivered(files, job.output_dir), verdict, summary)


def _gate(
    job: FineTuneJob,
    result: TrainResult,
    candidate: _Served,
    incumbent: _Served | None,
    latency_texts: list[str],
) -> GateVerdict:
    """The gate's verdict on the candidate's served model against the incumbent's."""
    gate = job.gate
    if gate.latency_budget_ms is None:
        gate = replace(
            gate, latency_budget_ms=get_architecture(result.model.architecture).latency_budget_ms
        )
    p99s = p99_latency_ms([candidate.one] + ([incumbent.one] if incumbent else []), latency_texts)
    return decide(
        gate,
        job.holdout[1],
        candidate.predict(job.holdout[0]),
        incumbent.predict(job.holdout[0]) if incumbent else None,
        job.replay_eval[1],
        candidate.predict(job.replay_eval[0]),
        incumbent.predict(job.replay_eval[0]) if incumbent else None,
        p99s[0],
        p99s[1] if incumbent else None,
    )


def _summary(
    job: FineTuneJob, trained: TrainedCandidate, export_report: dict[str, Any]
) -> dict[str, Any]:
    """The fine-tune's report for the manifest: data, training and export."""
    result = trained.result
    return {
        "architecture": result.model.architecture,
        "labels": len(result.labels),
        "new_labels": sorted(set(result.labels) - set(trained.incumbent_labels or [])),
        "train_examples": len(trained.texts),
        "hygiene": trained.hygiene,
        "pseudo_labels": trained.pseudo_labels,
        "validation_examples": trained.validation_examples,
        "holdout_examples": len(job.holdout[0]),
        "replay_eval_examples": len(job.replay_eval[0]),
        "epochs_run": result.epochs_run,
        "val_accuracy": result.val_accuracy,
        "val_loss": _finite(result.val_loss),
        "samples_per_s": round(result.samples_per_s, 1),
        "precision": result.precision,
        "device": result.device,
        "world_size": result.world_size,
        "backend": result.backend,
        "train_seconds": round(result.seconds, 2),
        "total_seconds": round(time.time() - trained.started, 2),
        "export": export_report,
    }


def _finite(value: float | None) -> float | None:
    """A score for the manifest (JSON): rounded, and None where it is missing or
    infinite (a validation split of intents the model has no output for has no loss)."""
    return None if value is None or not math.isfinite(value) else round(value, 4)


def _delivered(files: dict[str, bytes], output_dir: str | None) -> dict[str, bytes | Path]:
    """The version's files as bytes, or written under ``output_dir`` and given as paths."""
    if output_dir is None:
        return dict(files)
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, bytes | Path] = {}
    for name, data in files.items():
        # the registry checksums and fsyncs its own copy on publish
        (directory / name).write_bytes(data)
        paths[name] = directory / name
    return paths


def run_fine_tune(job: FineTuneJob, progress: Progress | None = None) -> FineTuneResult:
    """Train a candidate and judge it. Raises on failure
    (``TrainingDiverged``, ``ExportError``...)."""
    return judge_candidate(job, train_candidate(job, progress), progress)
