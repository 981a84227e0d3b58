"""Training throughput and peak memory: FP32 against AMP (mixed precision), for the
transformer option, with the default bag-of-n-grams model as a reference row.

Each architecture is trained with ``train_classifier`` on the CLINC150 train split twice, once
per precision: FP32, then AMP (on CUDA bf16 autocast where ``torch.cuda.is_bf16_supported()``,
else fp16 with a GradScaler; on CPU bf16 autocast). Before each measured run, a warm-up run (1
epoch on a few batches, same architecture, size, device and precision) takes CUDA context
creation, cuBLAS handles and first-call kernel set-up out of the figures. Per run:

  samples/s   ``TrainResult.samples_per_s``: training
  samples / seconds of the training loop (batch padding,
              host-to-device copy, forward, backward, optimiser step; CUDA synchronised at each
              epoch's end); featurisation, model construction and evaluation are outside it
  peak mem    CUDA: ``torch.cuda.max_memory_allocated``
  over the run (weights, AdamW state, gradients,
              activations). CPU: the rise of the process's resident set over the
              run (RSS sampled every 5 ms from /proc/self/statm, minus the RSS at
              its start; includes the featurised inputs); where /proc is missing,
              the process's max RSS so far (``getrusage``), which only ever grows
  train s     seconds of the training loop; wall s: the whole ``train_classifier`` call
  test acc    accuracy on the CLINC150 test split (texts
  whose intent the model knows), FP32 inference on
              CPU: shows that AMP does not cost quality

and the AMP/FP32 ratios per architecture and batch size. Sizes: ``--size full`` (the
default on CUDA) trains a larger transformer (dim 256, 8 heads, 4 layers, FFN 1024) for
each architecture's default epochs, on the train split repeated 4 times per epoch
(``--repeat``) so that each timed run is long enough to be steady, at batch 256 (the
daemon's fine-tune default), 1024 and 4096; ``--size small`` (the default on CPU) trains
the default ``TransformerConfig`` at batch 64 for 2 epochs on the split once, about 1.5 min
on 2 idle cores. ``--quick``: 512 training examples, 1 epoch, 600 test texts (a smoke run).

Why several batch sizes: AMP speeds up the GPU's arithmetic, not Python. A step
of this small model is a few hundred kernel launches; where the GPU finishes them
faster than Python queues them (small batches), FP32 and AMP run at the speed of
the launches and the ratio says little about precision. Larger batches give each
launch more work, and the ratio shows what AMP does to the training arithmetic.

    .venv/bin/python bench/train.py [--quick] [--size
    full|small] [--device auto|cpu|cuda] [--epochs N]
                                    [--batch-size B[,B...]] [--repeat R] [--amp
                                    auto|bf16|fp16] [--architectures a,b]

The goal (on CUDA, stated for an H200: transformer AMP >= 2x FP32 samples/s) is printed
as PASS/FAIL per batch size; on CPU the figures are informational. The exit code is 0
either way (non-zero only when the benchmark itself fails). torch's thread count is
left as it is and reported; on a shared VM the CPU figures move by 10-20% or more.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, exit_on_sigterm, positive_int
from daemon.memory import trim_heap

GOAL_SPEEDUP = 2.0  # transformer: AMP >= 2x FP32 samples/s on CUDA (stated for an H200)
GOAL_ARCH = "transformer"
DEFAULT_ARCHS = ("transformer", "bag_of_ngrams")
SMALL_EPOCHS = {"transformer": 2, "bag_of_ngrams": 2}
QUICK_TRAIN, QUICK_TEST = 512, 600
WARMUP_BATCHES = 8
SEED = 0
# the daemon's fine-tune default, then two where each launch has more work
FULL_BATCH_SIZES = (256, 1024, 4096)


@dataclass
class Row:
    architecture: str
    precision: str
    epochs: int
    samples_per_s: float
    train_seconds: float
    wall_seconds: float
    peak_bytes: float
    accuracy: float
    cores: float  # process CPU seconds / wall seconds over the run


# -- memory ----------------------------------------------------------------------------------------


_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int | None:
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _max_rss() -> int:
    """The process's max resident set so far, in bytes
    (ru_maxrss is KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


class RssPeak:
    """Samples this process's RSS in a thread while in
    the block; ``rise`` = peak - RSS at entry (bytes)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss() or 0)

    def __enter__(self) -> RssPeak:
        self.start = self.peak = _rss() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss() or 0)

    @property
    def rise(self) -> int:
        return self.peak - self.start


def _release_memory(cuda: bool) -> None:
    """Free what the last run left, so each run's peak starts from the same floor."""
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    else:
        # glibc keeps freed heap pages; hand them back so the next RSS baseline is honest
        trim_heap()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n == n else "n/a"


# -- runs ------------------------------------------------------------------------------------------


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device, CUDA included


def batch_sizes(text: str) -> list[int]:
    sizes = [positive_int(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give one batch size or a comma-separated list")
    return sizes


def configs(size: str) -> dict[str, Any]:
    from models.classifier import ClassifierConfig
    from models.transformer import TransformerConfig

    transformer = (
        TransformerConfig(dim=256, heads=8, layers=4, ffn=1024)
        if size == "full"
        else TransformerConfig()
    )
    return {"transformer": transformer, "bag_of_ngrams": ClassifierConfig()}


def measure(
    architecture: str,
    config: Any,
    precision: str,
    batch_size: int,
    data: dict[str, Any],
    args: argparse.Namespace,
    cuda: bool,
) -> Row:
    from models.architectures import get_architecture
    from models.train import TrainSettings, accuracy, train_classifier

    texts, intents = data["texts"], data["intents"]
    epochs = args.epochs or (
        1
        if args.quick
        else SMALL_EPOCHS.get(architecture, 2)
        if args.size == "small"
        else get_architecture(architecture).epochs
    )
    common = {"batch_size": batch_size, "precision": precision, "device": args.device, "seed": SEED}

    # warm-up: same model, device and precision, a few batches, not measured
    n_warm = min(len(texts), WARMUP_BATCHES * batch_size)
    _release_memory(cuda)
    _seed(SEED)
    train_classifier(
        texts[:n_warm],
        intents[:n_warm],
        labels=data["labels"],
        architecture=architecture,
        config=config,
        settings=TrainSettings(epochs=1, **common),
    )

    _release_memory(cuda)
    _seed(SEED)
    base_max_rss = _max_rss()
    cpu0 = _cpu_seconds()
    with RssPeak() as rss:
        result = train_classifier(
            texts,
            intents,
            labels=data["labels"],
            architecture=architecture,
            config=config,
            settings=TrainSettings(epochs=epochs, **common),
        )
    cores = (_cpu_seconds() - cpu0) / max(result.seconds, 1e-9)
    if result.precision != precision:
        raise RuntimeError(f"asked for {precision}, train_classifier used {result.precision}")
    if cuda:
        peak = float(result.peak_memory_bytes or 0)
    elif rss.peak:
        peak = float(rss.rise)
    else:  # no /proc: the process's max RSS (only grows), as a rise over the one before the run
        peak = float(_max_rss() - base_max_rss)
    samples = result.epochs_run * len(texts)
    label_set = set(result.labels)
    known = [
        (t, i)
        for t, i in zip(data["test_texts"], data["test_intents"], strict=False)
        if i in label_set
    ]
    acc = accuracy(
        result.model, result.featurizer, result.labels, [t for t, _ in known], [i for _, i in known]
    )
    row = Row(
        architecture,
        result.precision,
        result.epochs_run,
        result.samples_per_s,
        samples / max(result.samples_per_s, 1e-9),
        result.seconds,
        peak,
        acc,
        cores,
    )
    del result
    return row


# -- the run ---------------------------------------------------------------------------------------


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    from streams.datasets import load_examples

    train = load_examples("clinc150", "train")
    test = load_examples("clinc150", "test")
    if args.quick:
        rng = random.Random(SEED)
        train = rng.sample(train, min(QUICK_TRAIN, len(train)))
        test = rng.sample(test, min(QUICK_TEST, len(test)))
    train = train * args.repeat
    return {
        "texts": [e.text for e in train],
        "intents": [e.intent for e in train],
        "labels": sorted({e.intent for e in train}),
        "test_texts": [e.text for e in test],
        "test_intents": [e.intent for e in test],
        "n_split": len(train) // args.repeat,
    }


def bench(args: argparse.Namespace) -> int:
    import torch

    from models.architectures import get_architecture

    started = time.perf_counter()
    cuda = args.device == "cuda"
    if cuda:
        amp = (
            args.amp
            if args.amp != "auto"
            else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        )
        device_name = torch.cuda.get_device_name()
        amp_note = (
            f"{amp} autocast"
            + (" + GradScaler" if amp == "fp16" else "")
            + (f" (bf16 supported: {torch.cuda.is_bf16_supported()})")
        )
    else:
        amp = args.amp if args.amp != "auto" else "bf16"
        device_name = cpu_model()
        amp_note = f"{amp} autocast on CPU" + (" + GradScaler" if amp == "fp16" else "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: nproc {cores} ({os.cpu_count()} CPUs), {cpu_model()}, Python "
        f"{platform.python_version()}, "
        f"{'--quick' if args.quick else args.size} run; 1-min load average {_load()} at start"
    )
    cuda_note = f", CUDA {torch.version.cuda}" if cuda else ""
    print(
        f"torch {torch.__version__}{cuda_note}; device {args.device} "
        f"({device_name}); {torch.get_num_threads()} intra-op threads (left as "
        "is); "
        "FP32 = plain float32 (float32 matmul precision "
        f"{torch.get_float32_matmul_precision()!r}), AMP = {amp_note}"
    )

    data = load_data(args)
    print(
        f"data: CLINC150 train {data['n_split']:,} examples"
        + (f" x{args.repeat} = {len(data['texts']):,} per epoch" if args.repeat > 1 else "")
        + f", {len(data['labels'])} labels; test {len(data['test_texts']):,} "
        f"texts; batch sizes {', '.join(map(str, args.batch_sizes))}; seed "
        f"{SEED}"
    )
    sizes = configs(args.size)
    mem_label = "peak alloc" if cuda else "RSS rise" if _rss() is not None else "max RSS rise"
    mem_note = (
        "peak alloc = torch.cuda.max_memory_allocated over the run (weights, "
        "AdamW state, gradients, activations)"
        if cuda
        else "RSS rise = peak process RSS during the run (sampled every 5 ms) minus "
        "RSS at its start"
        if _rss() is not None
        else "max RSS rise = process max RSS (getrusage) after the run minus before "
        "it; 0 when an earlier run already peaked higher"
    )

    results: dict[tuple[str, int], dict[str, Row]] = {}
    for name in args.architectures:
        arch = get_architecture(name)
        config = sizes.get(name) or arch.config()
        n_params = sum(p.numel() for p in arch.model(config, len(data["labels"])).parameters())
        print(f"\n{name}: {arch.model.__name__} {config.to_dict()}, {n_params:,} parameters")
        print(
            f"    {'batch':>6}  {'precision':<10}{'epochs':>6}  {'samples/s':>10}  "
            f"{mem_label:>12}  {'train s':>8}  {'wall s':>7}  {'cores':>5}  "
            f"{'test acc':>8}"
        )
        for batch_size in args.batch_sizes:
            rows: dict[str, Row] = {}
            for precision in ("fp32", amp):
                row = measure(name, config, precision, batch_size, data, args, cuda)
                rows[precision] = row
                print(
                    f"    {batch_size:>6}  {precision:<10}{row.epochs:>6}  "
                    f"{row.samples_per_s:>10,.0f}  {_mb(row.peak_bytes):>12}  "
                    f"{row.train_seconds:>8.1f}  "
                    f"{row.wall_seconds:>7.1f}  {row.cores:>5.2f}  {row.accuracy:>8.3f}",
                    flush=True,
                )
            fp32, mixed = rows["fp32"], rows[amp]
            mem_ratio = (
                f"{mixed.peak_bytes / fp32.peak_bytes:.2f}x" if fp32.peak_bytes > 0 else "n/a"
            )
            print(
                f"    {batch_size:>6}  AMP ({amp}) / FP32: samples/s "
                f"{mixed.samples_per_s / fp32.samples_per_s:.2f}x, {mem_label} "
                f"{mem_ratio}, "
                f"test accuracy {mixed.accuracy - fp32.accuracy:+.3f}"
            )
            results[name, batch_size] = rows

    print(f"\n{mem_note}")
    cores_note = (
        "about 1 on CUDA: the Python thread feeding the GPU"
        if cuda
        else f"well below the {torch.get_num_threads()} intra-op threads means other "
        "processes took CPU time and the figures are low"
    )
    print(
        "cores = this process's CPU seconds / wall seconds over the run "
        f"({cores_note}); 1-min load average {_load()} at the end"
    )
    for batch_size in args.batch_sizes:
        rows = results.get((GOAL_ARCH, batch_size))
        if rows is None:
            continue
        speedup = rows[amp].samples_per_s / rows["fp32"].samples_per_s
        if cuda:
            where = (
                ""
                if "H200" in device_name
                else f"; measured on {device_name}, the goal is stated for an H200"
            )
            print(
                f"{'PASS' if speedup >= GOAL_SPEEDUP else 'FAIL'}: {GOAL_ARCH} at "
                f"batch {batch_size}: AMP ({amp}) >= {GOAL_SPEEDUP:g}x FP32 "
                f"samples/s ({speedup:.2f}x{where})"
            )
        else:
            print(
                f"goal applies on CUDA (H200): {GOAL_ARCH} AMP >= {GOAL_SPEEDUP:g}x "
                f"FP32; CPU figures are informational ({speedup:.2f}x here at batch "
                f"{batch_size})"
            )
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


def main() -> int:
    import torch

    from models.architectures import ARCHITECTURES

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_TRAIN} training examples, 1 epoch, {QUICK_TEST} test texts",
    )
    parser.add_argument(
        "--size",
        choices=("full", "small"),
        help="full: transformer dim 256/4 layers, default epochs (default on CUDA); "
        "small: default config, few epochs (default on CPU)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when available, else CPU",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help="epochs for every architecture (default: full = each architecture's "
        "default; small = 2; --quick 1)",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_sizes,
        help="examples per step, or a comma-separated list to measure each (default "
        "256,1024,4096 for --size full, else 64)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        help="train on the train split repeated R times per epoch, for longer timed "
        "runs (default 4 for --size full, else 1)",
    )
    parser.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16"),
        default="auto",
        help="the AMP precision (auto: bf16 where the GPU has it, else fp16; bf16 on CPU)",
    )
    parser.add_argument(
        "--architectures",
        default=",".join(DEFAULT_ARCHS),
        help=f"comma-separated (default {','.join(DEFAULT_ARCHS)}; known: "
        f"{', '.join(ARCHITECTURES)})",
    )
    args = parser.parse_args()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    cuda = args.device == "cuda"
    args.size = args.size or ("full" if cuda else "small")
    args.batch_sizes = args.batch_size or (
        list(FULL_BATCH_SIZES) if args.size == "full" and not args.quick else [64]
    )
    args.repeat = args.repeat or (4 if args.size == "full" and not args.quick else 1)
    args.architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = [a for a in args.architectures if a not in ARCHITECTURES]
    if unknown or not args.architectures:
        parser.error(
            f"--architectures: unknown {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(ARCHITECTURES)}"
        )
    if cuda and args.amp == "bf16" and not torch.cuda.is_bf16_supported():
        parser.error("--amp bf16: this GPU does not support bf16")

    exit_on_sigterm()
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
