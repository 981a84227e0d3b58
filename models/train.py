"""Training an intent model from labelled texts: from
scratch (bootstrap) or warm-started (fine-tune).

Plain data in, a trained model out: the orchestrator hands (text, intent) pairs, nothing here reads
Kafka or the tiers. One loop serves every architecture: AdamW, linear warm-up then cosine decay,
gradient accumulation, gradient clipping, early stopping on a validation split's loss, and mixed
precision on CUDA (bf16 where the GPU has it, else fp16 with a GradScaler). A non-finite loss
stops training with ``TrainingDiverged``: a diverged model must never reach the export step.

Under an initialised ``torch.distributed`` process group (``models/distributed.py``,
run by torchrun) the same loop trains data-parallel: the model is wrapped in
``DistributedDataParallel``, every rank draws the same shuffled batch order and
takes its own share of it, and the ranks agree once per step (loss, deadline) and
once per epoch (rank 0's validation score), so they stop together.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .architectures import DEFAULT_ARCHITECTURE, Architecture, get_architecture
from .base import IntentClassifier
from .embedding_cache import EmbeddingCache
from .featurize import Featurizer
from .scoring import (
    accuracy,
    batched_logits,
    curriculum_order,
    easy_to_hard,
    head_logits,
    predict_indices,
    validation_scores,
)

__all__ = [
    "TrainResult",
    "TrainSettings",
    "TrainingDiverged",
    "accuracy",
    "batched_logits",
    "curriculum_order",
    "predict_indices",
    "resolve_precision",
    "train_classifier",
    "validation_scores",
]

log = logging.getLogger(__name__)
# On CUDA one process reads the loss back every this many micro-batches, not after
# each: every read waits for the GPU, and a wait per step leaves a small model's
# GPU idle while Python queues the next step. A NaN or inf loss survives the sum,
# so it is still caught; the steps taken after it are thrown away with the model.
CUDA_LOSS_CHECK_EVERY = 32
Progress = Callable[[dict[str, Any]], None]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model is unusable."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int | None = None  # None: the architecture's default
    # epochs when only a frozen encoder's head trains; None: as ``epochs`` says
    head_epochs: int | None = None
    batch_size: int | None = None  # None: the architecture's default
    # None: the architecture's default (tuned at 64 examples per
    # step), x sqrt(examples per optimiser step over all ranks / 64)
    lr: float | None = None
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    seed: int = 0
    # Epochs without a lower validation loss before stopping (when a
    # validation set is given). 3 stopped from-scratch runs of the default
    # model at epoch 10 of 20 on some seeds, 1.2 points short on CLINC150.
    patience: int = 5
    warmup_ratio: float = 0.06  # share of optimiser steps with a linear learning-rate ramp
    min_lr_ratio: float = 0.05  # the cosine decays to lr * this
    accumulation_steps: int = 1  # micro-batches per optimiser step
    clip_norm: float = 1.0  # max gradient norm; 0 turns clipping off
    device: str = "auto"  # "auto": CUDA when present, else CPU
    # "auto": bf16/fp16 AMP on CUDA, fp32 on CPU; or force "fp32", "bf16", "fp16"
    precision: str = "auto"
    deadline: float | None = None  # time.monotonic() after which training stops at the next step
    # a warm start's first epoch goes easy to hard, by the incumbent's loss on each example
    curriculum: bool = False
    # micro-batches per loss read-back and NaN check; None: CUDA_LOSS_CHECK_EVERY on CUDA, 1 on CPU
    loss_check_every: int | None = None
    # A pretrained encoder's top layers that train (the rest and its embeddings are
    # frozen); 0: the head alone, on sentence embeddings computed once; negative:
    # every layer. None: every layer on CUDA, 0 on CPU. Others ignore it.
    trainable_layers: int | None = None
    # where a frozen encoder's sentence embeddings are kept between runs (models/embedding_cache.py)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if (
            self.accumulation_steps < 1
            or (self.batch_size is not None and self.batch_size < 1)
            or (self.loss_check_every is not None and self.loss_check_every < 1)
        ):
            raise ValueError(
                "batch_size, accumulation_steps and loss_check_every must be at least 1"
            )


@dataclass
class TrainResult:
    model: IntentClassifier
    labels: list[str]
    featurizer: Featurizer
    epochs_run: int
    seconds: float
    val_accuracy: float | None  # of the kept checkpoint
    samples_per_s: float = 0.0
    precision: str = "fp32"
    device: str = "cpu"
    peak_memory_bytes: int | None = None  # CUDA only
    stopped_by_deadline: bool = False
    # of the kept checkpoint (the one with the lowest validation loss)
    val_loss: float | None = None
    world_size: int = 1  # processes that trained it (torch.distributed)
    # their process group's backend ("gloo", "nccl"); None in one process
    backend: str | None = None


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _summed_losses(pending: torch.Tensor, first: int, upto: int, epoch: int) -> float:
    """The summed losses of batches ``first``..``upto``, read back (a GPU wait); raises on NaN or
    inf."""
    value = pending.item()
    if not math.isfinite(value):
        where = f"batch {upto}" if first == upto else f"batches {first}-{upto}"
        raise TrainingDiverged(f"loss is {value} at epoch {epoch + 1}, {where}")
    return value


def train_classifier(
    texts: Sequence[str],
    intents: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    featurizer: Featurizer | None = None,
    config: Any = None,
    settings: TrainSettings = TrainSettings(),
    init: IntentClassifier | None = None,
    val: tuple[Sequence[str], Sequence[str]] | None = None,
    architecture: str = DEFAULT_ARCHITECTURE,
    progress: Progress | None = None,
    weights: Sequence[float] | None = None,
) -> TrainResult:
    """Fit on (texts, intents). ``labels`` fixes the label order (new intents are appended to it);
    ``init`` warm-starts from an existing model (its architecture wins), grown to the new label set;
    ``weights`` scales each example's loss (a batch's
    loss is their weighted mean), 1 for all when None."""
    started = time.perf_counter()
    rank, world = _world()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)  # the batch order: the same on every rank
    label_list = list(labels or [])
    label_list += sorted(set(intents) - set(label_list))
    arch = get_architecture(init.architecture if init is not None else architecture)
    model = _starting_model(arch, config, init, len(label_list))
    featurizer = featurizer or arch.new_featurizer(model.config)
    if model.config.buckets != featurizer.buckets:
        raise ValueError(
            f"featurizer has {featurizer.buckets} buckets, the model {model.config.buckets}"
        )
    placement = _placement(settings, distributed=world > 1)
    trainee = _trainee(model, settings, placement.device, rank, world)
    examples = _examples(
        texts, intents, label_list, trainee, featurizer, settings.cache_dir, val, weights, placement
    )
    schedule = _schedule(arch, settings, trainee, len(texts), world)
    run = _Run(
        settings, arch, trainee, featurizer, label_list, examples, schedule, placement, rank, world
    )
    # Scored before the first step, so by the incumbent (every rank alike: same weights, same data).
    first_order = run.curriculum_order() if settings.curriculum and init is not None else None
    epochs = _train_epochs(run, rng, first_order, val, progress)
    return _result(run, epochs, started)


def _starting_model(
    arch: Architecture, config: Any, init: IntentClassifier | None, num_labels: int
) -> IntentClassifier:
    """``init`` grown to ``num_labels`` outputs, else a new model of ``arch``."""
    if init is None:
        return arch.new_model(config, num_labels)
    init.grow(num_labels)
    return init


@dataclass(frozen=True)
class _Placement:
    """Where the steps run and in what precision."""

    device: torch.device
    precision: str  # resolved: "fp32", "bf16" or "fp16"
    scaler: torch.amp.GradScaler | None  # fp16's loss scaling
    loss_check_every: int  # micro-batches per loss read-back (one process)

    def autocast(self) -> AbstractContextManager[object]:
        amp_dtype = AMP_DTYPES.get(self.precision)
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=amp_dtype)


def _placement(settings: TrainSettings, distributed: bool) -> _Placement:
    device = torch.device(
        "cuda"
        if settings.device == "auto" and torch.cuda.is_available()
        else ("cpu" if settings.device == "auto" else settings.device)
    )
    if distributed and device.type == "cuda" and device.index is None:
        # this rank's GPU (the entry point set it from LOCAL_RANK)
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(settings.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # on CPU a read-back costs nothing
    check_every = settings.loss_check_every or (
        CUDA_LOSS_CHECK_EVERY if device.type == "cuda" else 1
    )
    return _Placement(device, precision, scaler, check_every)


@dataclass(frozen=True)
class _Trainee:
    """The model on its device, and the part of it that trains."""

    model: IntentClassifier
    # what the optimiser updates: the head alone on a frozen encoder, else the model
    trained: nn.Module
    ddp: nn.parallel.DistributedDataParallel | None  # ``trained`` wrapped, when distributed

    @property
    def head_only(self) -> bool:
        return self.trained is not self.model

    @property
    def net(self) -> nn.Module:
        """What a step runs: the DDP wrapper when there is one."""
        return self.trained if self.ddp is None else self.ddp


def _trainee(
    model: IntentClassifier, settings: TrainSettings, device: torch.device, rank: int, world: int
) -> _Trainee:
    model.to(device)
    model.freeze(
        settings.trainable_layers
        if settings.trainable_layers is not None
        else (-1 if device.type == "cuda" else 0)
    )
    # A frozen encoder: every text's sentence embedding is computed once (or
    # read from the cache) and the head alone trains on them, so an epoch
    # costs a few matrix products instead of a pass through the encoder.
    trained: nn.Module = model.head_module() if model.encoder_frozen() else model
    if world == 1:
        return _Trainee(model, trained, None)
    # DDP averages gradients over the ranks in backward;
    # constructing it broadcasts rank 0's weights.
    ddp = nn.parallel.DistributedDataParallel(
        trained, device_ids=[device.index] if device.type == "cuda" else None
    )
    # independent dropout noise per rank (the batch order stays on the shared ``rng``)
    torch.manual_seed(settings.seed + rank)
    return _Trainee(model, trained, ddp)


@dataclass(frozen=True)
class _Examples:
    """The training examples on the training device, a row each."""

    table: torch.Tensor  # sentence embeddings (head only), else padded int32 ids
    widths: np.ndarray | None  # ids per example; None for embeddings
    features: list[list[int]]  # each example's ids (empty for embeddings)
    targets: torch.Tensor  # label indices, on the CPU
    targets_on_device: torch.Tensor
    weights: torch.Tensor | None  # per-example loss weights; None: all 1
    val_table: torch.Tensor | None  # the validation texts' embeddings (head only)

    def inputs(self, rows: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
        if self.widths is None:
            return self.table[rows]
        return self.table[rows, : int(self.widths[batch].max())].long()


def _examples(
    texts: Sequence[str],
    intents: Sequence[str],
    labels: list[str],
    trainee: _Trainee,
    featurizer: Featurizer,
    cache_dir: str | None,
    val: tuple[Sequence[str], Sequence[str]] | None,
    weights: Sequence[float] | None,
    placement: _Placement,
) -> _Examples:
    device = placement.device
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor([index[i] for i in intents], dtype=torch.long)
    features: list[list[int]] = []
    widths, val_table = None, None
    if trainee.head_only:
        embed = _embedder(trainee.model, featurizer, cache_dir)
        table = torch.from_numpy(embed(list(texts))).to(device)
        val_table = None if val is None else torch.from_numpy(embed(list(val[0]))).to(device)
    else:
        features = [featurizer.features(t) for t in texts]
        table, widths = _id_table(featurizer, features, device)
    targets_on_device = targets.to(device)
    if weights is not None and len(weights) != len(texts):
        raise ValueError(f"{len(weights)} weights for {len(texts)} examples")
    example_weights = (
        None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    )
    return _Examples(
        table, widths, features, targets, targets_on_device, example_weights, val_table
    )


def _id_table(
    featurizer: Featurizer, features: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """(the padded id table on ``device``, each row's width). Padded once, not per batch: a
    batch is its rows cut to its longest text (the same ids a per-batch pad gives), taken by
    one index op. On CUDA the table lives on the GPU, so a step copies only its row indices.
    int32 halves the table (the default model keeps up to 256 ids per text); a batch is
    widened to int64."""
    widths = np.fromiter((max(1, len(f)) for f in features), dtype=np.int64, count=len(features))
    return torch.from_numpy(featurizer.pad(features).astype(np.int32)).to(device), widths


@dataclass(frozen=True)
class _Schedule:
    epochs: int
    batch_size: int  # per micro-batch
    micro_batches: int  # per rank and epoch
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR


def _schedule(
    arch: Architecture, settings: TrainSettings, trainee: _Trainee, examples: int, world: int
) -> _Schedule:
    """AdamW with a linear warm-up then cosine decay, over the run's optimiser steps."""
    head_only = trainee.head_only
    epochs = (
        (settings.head_epochs or settings.epochs or arch.head_epochs or arch.epochs)
        if head_only
        else (settings.epochs or arch.epochs)
    )
    batch_size = settings.batch_size or arch.batch_size
    base_lr = arch.head_lr if head_only and arch.head_lr else arch.lr
    lr = settings.lr or base_lr * math.sqrt(batch_size * settings.accumulation_steps * world / 64)
    optimizer = torch.optim.AdamW(
        [p for p in trainee.trained.parameters() if p.requires_grad],
        lr=lr,
        weight_decay=settings.weight_decay,
    )
    # per rank: the schedule counts global steps
    micro_batches = math.ceil(math.ceil(examples / batch_size) / world)
    total_steps = max(1, epochs * math.ceil(micro_batches / settings.accumulation_steps))
    warmup = max(1, int(total_steps * settings.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup, settings.min_lr_ratio)
    )
    return _Schedule(epochs, batch_size, micro_batches, optimizer, scheduler)


@dataclass(frozen=True)
class _Run:
    """A prepared run: what every epoch's steps need."""

    settings: TrainSettings
    arch: Architecture
    trainee: _Trainee
    featurizer: Featurizer
    labels: list[str]
    examples: _Examples
    schedule: _Schedule
    placement: _Placement
    rank: int
    world: int

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def late(self) -> bool:
        deadline = self.settings.deadline
        return deadline is not None and time.monotonic() > deadline

    def curriculum_order(self) -> np.ndarray:
        """The examples easy to hard by the model's loss on them (before any step)."""
        examples = self.examples
        if self.trainee.head_only:
            return easy_to_hard(head_logits(self.trainee.trained, examples.table), examples.targets)
        model = self.trainee.model
        return curriculum_order(model, self.featurizer, examples.features, examples.targets)

    def epoch_batches(
        self, epoch: int, rng: np.random.Generator, first_order: np.ndarray | None
    ) -> list[np.ndarray]:
        """This rank's micro-batches of the epoch, as example indices."""
        count = len(self.examples.targets)
        order: np.ndarray = rng.permutation(count)
        curriculum = epoch == 0 and first_order is not None
        if epoch == 0 and first_order is not None:
            # drawn anyway, so later epochs shuffle as they would without a curriculum
            rng.permutation(count)
            order = first_order
        widths, size = self.examples.widths, self.schedule.batch_size
        if self.arch.bucket_by_length and widths is not None and not curriculum:
            batches = _length_bucketed(order, widths, size, rng)
        else:
            batches = [order[s : s + size] for s in range(0, len(order), size)]
        if self.distributed:
            # The same order on every rank (same seed); rank r takes batches r, r +
            # world, ..., wrapped round so that every rank runs the same number of
            # steps: one short of a step would leave the others waiting in a collective.
            world, rank = self.world, self.rank
            batches = [
                batches[(rank + k * world) % len(batches)]
                for k in range(self.schedule.micro_batches)
            ]
        return batches

    def rows(self, batch: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(batch)
        if self.placement.device.type == "cuda":
            # page-locked, so the copy runs asynchronously instead of waiting on the GPU
            rows = rows.pin_memory().to(self.placement.device, non_blocking=True)
        return rows

    def batch_loss(self, rows: torch.Tensor, batch: np.ndarray, sync: bool) -> torch.Tensor:
        """The micro-batch's (weighted) mean loss; ``sync``: DDP all-reduces its gradients
        in backward (once per optimiser step), else they accumulate locally."""
        examples = self.examples
        inputs, targets = examples.inputs(rows, batch), examples.targets_on_device[rows]
        ddp = self.trainee.ddp
        with self.placement.autocast(), nullcontext() if ddp is None or sync else ddp.no_sync():
            logits = self.trainee.net(inputs).float()
            smoothing = self.settings.label_smoothing
            if examples.weights is None:
                return nn.functional.cross_entropy(logits, targets, label_smoothing=smoothing)
            weight = examples.weights[rows]
            per_example = nn.functional.cross_entropy(
                logits, targets, label_smoothing=smoothing, reduction="none"
            )
            return (per_example * weight).sum() / weight.sum().clamp_min(1e-12)

    def agree(
        self, loss: torch.Tensor, samples: int, epoch: int, batch: int
    ) -> tuple[float, bool, int]:
        """(mean loss over the ranks, whether any is late, their samples) of a step. One small
        all-reduce per step keeps the ranks in lockstep: a NaN loss on any rank, or the
        deadline passing on any, stops every rank at the same step."""
        device = self.placement.device
        agreed = torch.stack(
            [
                loss.detach().float(),
                torch.tensor(float(self.late()), device=device),
                torch.tensor(float(samples), device=device),
            ]
        )
        dist.all_reduce(agreed)
        mean_loss = agreed[0].item() / self.world
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"loss is {mean_loss} at epoch {epoch + 1}, batch {batch} "
                f"(mean over {self.world} ranks)"
            )
        return mean_loss, agreed[1].item() > 0, int(agreed[2].item())

    def backward(self, loss: torch.Tensor, step_now: bool) -> None:
        """Accumulates the micro-batch's gradients; ``step_now``: then takes an optimiser step."""
        scaler = self.placement.scaler
        scaled = loss / self.settings.accumulation_steps
        torch.autograd.backward(scaler.scale(scaled) if scaler else scaled)
        if not step_now:
            return
        optimizer = self.schedule.optimizer
        if scaler:
            scaler.unscale_(optimizer)
        if self.settings.clip_norm > 0:
            nn.utils.clip_grad_norm_(self.trainee.trained.parameters(), self.settings.clip_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.schedule.scheduler.step()

    def validation_scores(self, val: tuple[Sequence[str], Sequence[str]]) -> tuple[float, float]:
        """(loss, accuracy) on the validation split; under DDP rank 0 scores and every rank
        takes its numbers, so the keep/stop decisions match."""
        if not self.distributed:
            return self._score(*val)
        scores = torch.tensor(
            self._score(*val) if self.rank == 0 else (0.0, 0.0),
            dtype=torch.float64,
            device=self.placement.device,
        )
        dist.broadcast(scores, 0)
        val_loss, acc = scores.tolist()
        return val_loss, acc

    def _score(self, texts: Sequence[str], intents: Sequence[str]) -> tuple[float, float]:
        model, val_table = self.trainee.model, self.examples.val_table
        logits = None if val_table is None else head_logits(self.trainee.trained, val_table)
        return validation_scores(model, self.featurizer, self.labels, texts, intents, logits=logits)


class _LossTally:
    """An epoch's summed batch losses. In one process the losses wait on the device and are
    read back (a GPU wait) every ``loss_check_every`` batches and at the end, where a NaN or
    inf raises; under DDP each step adds the agreed mean over the ranks."""

    def __init__(self, epoch: int) -> None:
        self.total = 0.0
        self._epoch = epoch
        self._pending: torch.Tensor | None = None
        self._pending_from = 1  # the first batch (from 1) in ``_pending``

    def add_agreed(self, mean_loss: float) -> None:
        self.total += mean_loss

    def add_pending(self, loss: torch.Tensor) -> None:
        pending = self._pending
        self._pending = (
            loss.detach().float() if pending is None else pending + loss.detach().float()
        )

    def read_back(self, upto: int) -> None:
        """Adds the pending losses of batches up to ``upto`` (from 1), if any."""
        if self._pending is None:
            return
        self.total += _summed_losses(self._pending, self._pending_from, upto, self._epoch)
        self._pending, self._pending_from = None, upto + 1


@dataclass(frozen=True)
class _EpochSteps:
    loss_sum: float
    samples: int  # over all ranks
    late: bool  # the deadline passed: training stops


def _train_epoch(run: _Run, batches: list[np.ndarray], epoch: int) -> _EpochSteps:
    """One epoch's steps over ``batches``, or up to the deadline."""
    tally, samples = _LossTally(epoch), 0
    accumulation = run.settings.accumulation_steps
    for i, batch in enumerate(batches):
        last = i + 1 == len(batches)
        step_now = (i + 1) % accumulation == 0 or last
        rows = run.rows(batch)
        loss = run.batch_loss(rows, batch, sync=step_now)
        if run.distributed:
            mean_loss, late, step_samples = run.agree(loss, len(batch), epoch, i + 1)
            tally.add_agreed(mean_loss)
        else:
            tally.add_pending(loss)
            if (i + 1) % run.placement.loss_check_every == 0 or last:
                tally.read_back(i + 1)
        run.backward(loss, step_now)
        if run.distributed:
            samples += step_samples  # every rank's: samples_per_s is the global rate
        else:
            samples += len(batch)
            late = run.late()
        if late:
            tally.read_back(i + 1)
            return _EpochSteps(tally.total, samples, late=True)
    return _EpochSteps(tally.total, samples, late=False)


class _BestCheckpoint:
    """Early stopping's bookkeeping: the epoch with the lowest validation loss so far (its
    weights, loss and accuracy) and the epochs since the loss last fell."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.loss = math.inf
        self.accuracy: float | None = None
        self.stale = 0

    def observe(self, val_loss: float, acc: float, model: nn.Module) -> None:
        # Judged on the loss, not the accuracy: on a validation split of a few
        # hundred examples the accuracy moves in steps and ties, so it stopped
        # fine-tunes mid-schedule and kept checkpoints that scored a point or
        # two lower on fresh data. A tie keeps the later epoch but is no gain.
        self.stale = 0 if val_loss < self.loss else self.stale + 1
        if val_loss <= self.loss:
            self.loss, self.accuracy = val_loss, acc
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Epochs:
    """What the epochs did, for the result."""

    best: _BestCheckpoint
    epochs_run: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    stopped_by_deadline: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.train_seconds, 1e-9)


def _train_epochs(
    run: _Run,
    rng: np.random.Generator,
    first_order: np.ndarray | None,
    val: tuple[Sequence[str], Sequence[str]] | None,
    progress: Progress | None,
) -> _Epochs:
    """Epochs until the schedule ends, the validation loss stops falling or the deadline."""
    done = _Epochs(_BestCheckpoint())
    epochs = run.schedule.epochs
    for epoch in range(epochs):
        run.trainee.model.train()
        epoch_started = time.perf_counter()
        batches = run.epoch_batches(epoch, rng, first_order)
        steps = _train_epoch(run, batches, epoch)
        done.samples += steps.samples
        done.stopped_by_deadline = steps.late
        if run.placement.device.type == "cuda":
            torch.cuda.synchronize(run.placement.device)
        done.train_seconds += time.perf_counter() - epoch_started
        done.epochs_run = epoch + 1
        report: dict[str, Any] = {
            "epoch": done.epochs_run,
            "epochs": epochs,
            "loss": steps.loss_sum / max(1, len(batches)),
            "samples_per_s": done.samples_per_s,
            "lr": run.schedule.scheduler.get_last_lr()[0],
        }
        if val is not None:
            val_loss, acc = run.validation_scores(val)
            report.update(val_loss=val_loss, val_accuracy=acc)
            done.best.observe(val_loss, acc, run.trainee.model)
        _report(report, progress)
        if steps.late or (val is not None and done.best.stale >= run.settings.patience):
            break
    return done


def _report(report: dict[str, Any], progress: Progress | None) -> None:
    log.info(
        "epoch %d/%d: %s",
        report["epoch"],
        report["epochs"],
        ", ".join(f"{k} {v:.4g}" for k, v in report.items() if k not in ("epoch", "epochs")),
    )
    if progress is not None:
        progress(report)


def _result(run: _Run, done: _Epochs, started: float) -> TrainResult:
    """The kept checkpoint, whole again (a later fine-tune chooses its own frozen layers), on
    the CPU in eval mode."""
    model, device, best = run.trainee.model, run.placement.device, done.best
    if best.state is not None:
        model.load_state_dict(best.state)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    model.freeze(-1)
    model.to("cpu").eval()
    return TrainResult(
        model,
        run.labels,
        run.featurizer,
        done.epochs_run,
        time.perf_counter() - started,
        best.accuracy,
        samples_per_s=done.samples_per_s,
        precision=run.placement.precision,
        device=str(device),
        peak_memory_bytes=peak,
        stopped_by_deadline=done.stopped_by_deadline,
        world_size=run.world,
        backend=dist.get_backend() if run.distributed else None,
        val_loss=None if best.state is None else best.loss,
    )


def _embedder(
    model: IntentClassifier, featurizer: Featurizer, cache_dir: str | None
) -> Callable[[list[str]], np.ndarray]:
    """texts -> the frozen encoder's sentence embeddings,
    through the cache of ``cache_dir`` when one is set."""

    def compute(texts: list[str]) -> np.ndarray:
        return model.embed_texts(featurizer, texts)

    if cache_dir is None:
        return compute
    cache = EmbeddingCache(Path(cache_dir), model.encoder_digest(), model.config.hidden)
    return lambda texts: cache.embeddings(texts, compute)


def _length_bucketed(
    order: np.ndarray, widths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """``order`` cut into batches of similar lengths, in random order. Each
    run of ``pool`` batches is sorted by length before it is cut, so a
    batch pads to little more than its own texts' lengths (attention's cost
    grows with the padded length) while the mix of batches stays random."""
    batches: list[np.ndarray] = []
    for start in range(0, len(order), batch_size * pool):
        run = order[start : start + batch_size * pool]
        run = run[np.argsort(widths[run], kind="stable")]
        batches += [run[s : s + batch_size] for s in range(0, len(run), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
