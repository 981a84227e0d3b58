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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .architectures import DEFAULT_ARCHITECTURE, get_architecture
from .base import IntentClassifier
from .embedding_cache import EmbeddingCache
from .featurize import Featurizer

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
    distributed = world > 1
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    label_list = list(labels or [])
    label_list += sorted(set(intents) - set(label_list))
    index = {label: i for i, label in enumerate(label_list)}
    arch = get_architecture(init.architecture if init is not None else architecture)
    if init is not None:
        model = init
        model.grow(len(label_list))
    else:
        model = arch.new_model(config, len(label_list))
    featurizer = featurizer or arch.new_featurizer(model.config)
    if model.config.buckets != featurizer.buckets:
        raise ValueError(
            f"featurizer has {featurizer.buckets} buckets, the model {model.config.buckets}"
        )

    device = torch.device(
        "cuda"
        if settings.device == "auto" and torch.cuda.is_available()
        else ("cpu" if settings.device == "auto" else settings.device)
    )
    if distributed and device.type == "cuda" and device.index is None:
        # this rank's GPU (the entry point set it from LOCAL_RANK)
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(settings.precision, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else nullcontext
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pin = device.type == "cuda"
    # on CPU a read-back costs nothing
    check_every = settings.loss_check_every or (
        CUDA_LOSS_CHECK_EVERY if device.type == "cuda" else 1
    )
    model.to(device)
    model.freeze(
        settings.trainable_layers
        if settings.trainable_layers is not None
        else (-1 if device.type == "cuda" else 0)
    )
    # A frozen encoder: every text's sentence embedding is computed once (or
    # read from the cache) and the head alone trains on them, so an epoch
    # costs a few matrix products instead of a pass through the encoder.
    head_only = model.encoder_frozen()
    trained: nn.Module = model.head_module() if head_only else model
    net: nn.Module = trained
    if distributed:
        # DDP averages gradients over the ranks in backward;
        # constructing it broadcasts rank 0's weights.
        net = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
        # independent dropout noise per rank (the batch order stays on the shared ``rng``)
        torch.manual_seed(settings.seed + rank)

    targets = torch.tensor([index[i] for i in intents], dtype=torch.long)
    val_table = None
    if head_only:
        embed = _embedder(model, featurizer, settings.cache_dir)
        table = torch.from_numpy(embed(list(texts))).to(device)
        widths = None
        val_table = None if val is None else torch.from_numpy(embed(list(val[0]))).to(device)
    else:
        features = [featurizer.features(t) for t in texts]
        # Padded once, not per batch: a batch is its rows cut to its longest text (the
        # same ids a per-batch pad gives), taken by one index op. On CUDA the table lives
        # on the GPU, so a step copies only its row indices. int32 halves the table (the
        # default model keeps up to 256 ids per text); a batch is widened to int64.
        widths = np.fromiter(
            (max(1, len(f)) for f in features), dtype=np.int64, count=len(features)
        )
        table = torch.from_numpy(featurizer.pad(features).astype(np.int32)).to(device)
    targets_on_device = targets.to(device)

    def inputs(rows: torch.Tensor, batch: np.ndarray) -> torch.Tensor:
        return table[rows] if widths is None else table[rows, : int(widths[batch].max())].long()

    def score_validation(texts: Sequence[str], intents: Sequence[str]) -> tuple[float, float]:
        if val_table is None:
            return validation_scores(model, featurizer, label_list, texts, intents)
        return validation_scores(
            model, featurizer, label_list, texts, intents, logits=_head_logits(trained, val_table)
        )

    if weights is not None and len(weights) != len(texts):
        raise ValueError(f"{len(weights)} weights for {len(texts)} examples")
    example_weights = (
        None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    )
    epochs = (
        (settings.head_epochs or settings.epochs or arch.head_epochs or arch.epochs)
        if head_only
        else (settings.epochs or arch.epochs)
    )
    batch_size = settings.batch_size or arch.batch_size
    base_lr = arch.head_lr if head_only and arch.head_lr else arch.lr
    lr = settings.lr or base_lr * math.sqrt(batch_size * settings.accumulation_steps * world / 64)
    optimizer = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad],
        lr=lr,
        weight_decay=settings.weight_decay,
    )
    # per rank: the schedule counts global steps
    micro_batches = math.ceil(math.ceil(len(texts) / batch_size) / world)
    total_steps = max(1, epochs * math.ceil(micro_batches / settings.accumulation_steps))
    warmup = max(1, int(total_steps * settings.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup, settings.min_lr_ratio)
    )

    # Scored before the first step, so by the incumbent (every rank alike: same weights, same data).
    first_epoch_order = None
    if settings.curriculum and init is not None:
        first_epoch_order = (
            _easy_to_hard(_head_logits(trained, table), targets)
            if head_only
            else curriculum_order(model, featurizer, features, targets)
        )
    best_state, best_loss, best_acc, stale, epochs_run, samples, train_seconds, stopped = (
        None,
        math.inf,
        None,
        0,
        0,
        0,
        0.0,
        False,
    )
    for epoch in range(epochs):
        model.train()
        epoch_started = time.perf_counter()
        order = rng.permutation(len(texts))
        if epoch == 0 and first_epoch_order is not None:
            # drawn anyway, so later epochs shuffle as they would without a curriculum
            rng.permutation(len(texts))
            order = first_epoch_order
        if (
            arch.bucket_by_length
            and widths is not None
            and not (epoch == 0 and first_epoch_order is not None)
        ):
            batches = _length_bucketed(order, widths, batch_size, rng)
        else:
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if distributed:
            # The same order on every rank (same seed); rank r takes batches r, r +
            # world, ..., wrapped round so that every rank runs the same number of
            # steps: one short of a step would leave the others waiting in a collective.
            batches = [batches[(rank + k * world) % len(batches)] for k in range(micro_batches)]
        loss_sum, pending, pending_from = 0.0, None, 1

        for i, batch in enumerate(batches):
            rows = torch.from_numpy(batch)
            if pin:  # page-locked, so the copy runs asynchronously instead of waiting on the GPU
                rows = rows.pin_memory().to(device, non_blocking=True)
            batch_inputs, batch_targets = inputs(rows, batch), targets_on_device[rows]
            step_now = (i + 1) % settings.accumulation_steps == 0 or i + 1 == len(batches)
            # accumulate locally, all-reduce once per optimiser step
            with autocast(), net.no_sync() if distributed and not step_now else nullcontext():
                logits = net(batch_inputs).float()
                if example_weights is None:
                    loss = nn.functional.cross_entropy(
                        logits, batch_targets, label_smoothing=settings.label_smoothing
                    )
                else:
                    weight = example_weights[rows]
                    per_example = nn.functional.cross_entropy(
                        logits,
                        batch_targets,
                        label_smoothing=settings.label_smoothing,
                        reduction="none",
                    )
                    loss = (per_example * weight).sum() / weight.sum().clamp_min(1e-12)
            if distributed:
                # One small all-reduce per step keeps the ranks in lockstep: a NaN loss on any
                # rank, or the deadline passing on any, stops every rank at the same step.
                late = settings.deadline is not None and time.monotonic() > settings.deadline
                agreed = torch.stack(
                    [
                        loss.detach().float(),
                        torch.tensor(float(late), device=device),
                        torch.tensor(float(len(batch)), device=device),
                    ]
                )
                dist.all_reduce(agreed)
                mean_loss, late, step_samples = (
                    agreed[0].item() / world,
                    agreed[1].item() > 0,
                    int(agreed[2].item()),
                )
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss is {mean_loss} at epoch {epoch + 1}, batch {i + 1} "
                        f"(mean over {world} ranks)"
                    )
                loss_sum += mean_loss
            else:
                pending = (
                    loss.detach().float() if pending is None else pending + loss.detach().float()
                )
                if (i + 1) % check_every == 0 or i + 1 == len(batches):
                    loss_sum += _summed_losses(pending, pending_from, i + 1, epoch)
                    pending, pending_from = None, i + 2
            scaled = loss / settings.accumulation_steps
            (scaler.scale(scaled) if scaler else scaled).backward()
            if step_now:
                if scaler:
                    scaler.unscale_(optimizer)
                if settings.clip_norm > 0:
                    nn.utils.clip_grad_norm_(trained.parameters(), settings.clip_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            if distributed:
                samples += step_samples  # every rank's: samples_per_s is the global rate
            else:
                samples += len(batch)
                late = settings.deadline is not None and time.monotonic() > settings.deadline
            if late:
                stopped = True
                if pending is not None:
                    loss_sum += _summed_losses(pending, pending_from, i + 1, epoch)
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - epoch_started
        epochs_run = epoch + 1
        report: dict[str, Any] = {
            "epoch": epochs_run,
            "epochs": epochs,
            "loss": loss_sum / max(1, len(batches)),
            "samples_per_s": samples / max(train_seconds, 1e-9),
            "lr": scheduler.get_last_lr()[0],
        }
        if val is not None:
            if distributed:
                # Rank 0 scores and every rank takes its numbers,
                # so the keep/stop decisions below match.
                scores = torch.tensor(
                    score_validation(*val) if rank == 0 else (0.0, 0.0),
                    dtype=torch.float64,
                    device=device,
                )
                dist.broadcast(scores, 0)
                val_loss, acc = scores.tolist()
            else:
                val_loss, acc = score_validation(*val)
            report.update(val_loss=val_loss, val_accuracy=acc)
            # Judged on the loss, not the accuracy: on a validation split of a few
            # hundred examples the accuracy moves in steps and ties, so it stopped
            # fine-tunes mid-schedule and kept checkpoints that scored a point or
            # two lower on fresh data. A tie keeps the later epoch but is no gain.
            stale = 0 if val_loss < best_loss else stale + 1
            if val_loss <= best_loss:
                best_loss, best_acc = val_loss, acc
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.info(
            "epoch %d/%d: %s",
            epochs_run,
            epochs,
            ", ".join(f"{k} {v:.4g}" for k, v in report.items() if k not in ("epoch", "epochs")),
        )
        if progress is not None:
            progress(report)
        if stopped or (val is not None and stale >= settings.patience):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    # the returned model is whole again (a later fine-tune chooses its own frozen layers)
    model.freeze(-1)
    model.to("cpu").eval()
    return TrainResult(
        model,
        label_list,
        featurizer,
        epochs_run,
        time.perf_counter() - started,
        best_acc,
        samples_per_s=samples / max(train_seconds, 1e-9),
        precision=precision,
        device=str(device),
        peak_memory_bytes=peak,
        stopped_by_deadline=stopped,
        world_size=world,
        backend=dist.get_backend() if distributed else None,
        val_loss=None if best_state is None else best_loss,
    )


def batched_logits(
    model: IntentClassifier, featurizer: Featurizer, texts: Sequence[str], batch_size: int = 512
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start index, float32 logits) of ``texts`` in batches, in
    eval mode and without gradients, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        with torch.no_grad():  # closed before the yield, so the caller's grad mode is never changed
            logits = model(
                torch.from_numpy(featurizer.batch(texts[start : start + batch_size])).to(device)
            ).float()
        yield start, logits


def predict_indices(
    model: IntentClassifier, featurizer: Featurizer, texts: Sequence[str], batch_size: int = 512
) -> np.ndarray:
    out = [
        logits.argmax(1).cpu().numpy()
        for _, logits in batched_logits(model, featurizer, texts, batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def curriculum_order(
    model: IntentClassifier,
    featurizer: Featurizer,
    features: Sequence[Any],
    targets: torch.Tensor,
    batch_size: int = 512,
) -> np.ndarray:
    """Example indices from the lowest loss under ``model`` to the highest
    (easy to hard); ties keep their order. An intent the model has just
    grown an output for scores with that output's fresh weights: hard."""
    model.eval()
    device = next(model.parameters()).device

    def logits() -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(features), batch_size):
            yield (
                start,
                model(
                    torch.from_numpy(featurizer.pad(list(features[start : start + batch_size]))).to(
                        device
                    )
                ).float(),
            )

    return _easy_to_hard(logits(), targets)


@torch.no_grad()
def _easy_to_hard(logits: Iterable[tuple[int, torch.Tensor]], targets: torch.Tensor) -> np.ndarray:
    losses = [
        nn.functional.cross_entropy(
            batch, targets[start : start + len(batch)].to(batch.device), reduction="none"
        ).cpu()
        for start, batch in logits
    ]
    return (
        np.argsort(torch.cat(losses).numpy(), kind="stable")
        if losses
        else np.zeros(0, dtype=np.int64)
    )


def _head_logits(
    head: nn.Module, embeddings: torch.Tensor, batch_size: int = 4096
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, float32 logits) of a head on precomputed
    sentence embeddings, in eval mode, without gradients."""
    head.eval()
    for start in range(0, len(embeddings), batch_size):
        with torch.no_grad():
            logits = head(embeddings[start : start + batch_size]).float()
        yield start, logits


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


def validation_scores(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    texts: Sequence[str],
    intents: Sequence[str],
    batch_size: int = 512,
    logits: Iterable[tuple[int, torch.Tensor]] | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a validation split. An intent the model has no
    output for counts as wrong in the accuracy and is left out of the loss (it has
    no logit to score); with none known the loss is infinite, so such a split never
    looks like progress. ``logits``: (start, logits) batches of the texts already
    computed (a head on cached embeddings); by default the model runs on them."""
    index = {label: i for i, label in enumerate(labels)}
    loss_sum, scored, correct = 0.0, 0, 0
    for start, batch_logits in (
        logits if logits is not None else batched_logits(model, featurizer, texts, batch_size)
    ):
        truth = [index.get(intent, -1) for intent in intents[start : start + len(batch_logits)]]
        target = torch.tensor(truth, dtype=torch.long, device=batch_logits.device)
        correct += int((batch_logits.argmax(1) == target).sum())
        known = target >= 0
        if bool(known.any()):
            loss_sum += float(
                nn.functional.cross_entropy(batch_logits[known], target[known], reduction="sum")
            )
            scored += int(known.sum())
    return (loss_sum / scored if scored else math.inf), correct / max(1, len(texts))


def accuracy(
    model: IntentClassifier,
    featurizer: Featurizer,
    labels: Sequence[str],
    texts: Sequence[str],
    intents: Sequence[str],
) -> float:
    if not texts:
        return float("nan")
    predicted = predict_indices(model, featurizer, texts)
    return float(np.mean([labels[p] == truth for p, truth in zip(predicted, intents, strict=True)]))
