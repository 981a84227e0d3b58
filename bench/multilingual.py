"""Accuracy in four languages' scripts: the default model
against a TF-IDF + linear SVM baseline, side by side.

For each dataset, in one run on the same machine, both are
fitted on its train split and scored on its test split:

  driftd   the default architecture as the daemon trains
  it from scratch (``train_classifier`` with its default
           settings, featuriser and config; early stopping on the validation
           split where the dataset has one: CLINC150 val, massive_ru and
           crosswoz_intents dev; Banking77 has none and runs every epoch)
  svm      scikit-learn: sublinear TF-IDF of character
  1-4-grams and of word 1-2-grams (two vectorisers, their
           features side by side), then ``LinearSVC(C=0.5)``; fitted on the train split only

Datasets (shipped in data/, credited in the output's header): CLINC150 (in-scope test,
150 intents), Banking77 (77), MASSIVE 1.1 ru-RU (Russian, 60) and CrossWOZ user-turn
intents (Chinese, 29). The goal: driftd's accuracy at least the baseline's on each
(PASS/FAIL per dataset). ``train s`` is the wall time of each fit (featurisation
included), on the torch threads as they are (reported) and one thread for the SVM.

    .venv/bin/python bench/multilingual.py [--datasets
    clinc150,banking77,massive_ru,crosswoz_intents] [--seed S]
                                           [--quick]

``--quick``: at most 2,000 training examples per dataset and 2 epochs (a smoke run; the
goal does not apply). The exit code is 0 either way (non-zero only when the benchmark
itself fails). Needs the ``bench`` extra (scikit-learn; scripts/venv.sh installs it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, exit_on_sigterm

DATASETS = ("clinc150", "banking77", "massive_ru", "crosswoz_intents")
VALIDATION = {"clinc150": "val", "banking77": None, "massive_ru": "dev", "crosswoz_intents": "dev"}
CREDITS = (
    "CLINC150: Larson et al., EMNLP-IJCNLP 2019, CC BY 3.0",
    "Banking77: Casanueva et al., NLP4ConvAI 2020, CC BY 4.0",
    "massive_ru: Amazon MASSIVE 1.1 ru-RU, FitzGerald et al. 2022, CC BY 4.0",
    "crosswoz_intents: derived from CrossWOZ, Zhu et al., TACL 2020, Apache-2.0",
)
SVM_C = 0.5
QUICK_TRAIN, QUICK_EPOCHS = 2000, 2


@dataclass
class Score:
    accuracy: float
    seconds: float


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def load_split(name: str, split: str | None) -> tuple[list[str], list[str]]:
    from streams.datasets import load_examples

    if split is None:
        return [], []
    examples = load_examples(name, split)
    return [e.text for e in examples], [e.intent for e in examples]


def fit_driftd(
    train: tuple[list[str], list[str]],
    val: tuple[list[str], list[str]],
    test: tuple[list[str], list[str]],
    args: argparse.Namespace,
) -> tuple[Score, str]:
    from models.train import TrainSettings, accuracy, train_classifier

    settings = TrainSettings(seed=args.seed, epochs=QUICK_EPOCHS if args.quick else None)
    started = time.perf_counter()
    result = train_classifier(*train, val=val if val[0] else None, settings=settings)
    seconds = time.perf_counter() - started
    return Score(
        accuracy(result.model, result.featurizer, result.labels, *test), seconds
    ), f"{result.epochs_run} epochs"


def fit_svm(train: tuple[list[str], list[str]], test: tuple[list[str], list[str]]) -> Score:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    started = time.perf_counter()
    model = make_pipeline(
        make_union(
            TfidfVectorizer(analyzer="char", ngram_range=(1, 4), sublinear_tf=True),
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        ),
        LinearSVC(C=SVM_C),
    )
    model.fit(*train)
    seconds = time.perf_counter() - started
    predicted = model.predict(test[0])
    return Score(
        sum(p == t for p, t in zip(predicted, test[1], strict=False)) / len(test[1]), seconds
    )


def bench(args: argparse.Namespace) -> int:
    import sklearn
    import torch

    from models.architectures import DEFAULT_ARCHITECTURE, get_architecture
    from models.train import TrainSettings

    started = time.perf_counter()
    arch = get_architecture(DEFAULT_ARCHITECTURE)
    config = arch.config()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: nproc {cores} ({os.cpu_count()} CPUs), {cpu_model()}, Python "
        f"{platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op "
        f"threads), scikit-learn {sklearn.__version__}; "
        f"{'--quick' if args.quick else 'full'} run, seed {args.seed}; 1-min "
        f"load average {_load()} at start"
    )
    print(
        f"driftd: {DEFAULT_ARCHITECTURE} {config.to_dict()}, featuriser "
        f"{arch.new_featurizer(config).to_json()}, "
        f"lr {arch.lr:g}, epochs {QUICK_EPOCHS if args.quick else arch.epochs}, "
        f"batch {arch.batch_size}, "
        f"early-stopping patience {TrainSettings.patience}"
        + (f" (max {QUICK_TRAIN:,} training examples)" if args.quick else "")
    )
    print(f"svm: sublinear TF-IDF char 1-4 + word 1-2, LinearSVC(C={SVM_C:g})")
    print(
        "data: "
        + "; ".join(c for c, name in zip(CREDITS, DATASETS, strict=False) if name in args.datasets)
    )
    print(
        f"\n{'dataset':<18}{'train':>7}{'test':>6}{'intents':>8}  "
        f"{'driftd acc':>10}{'svm acc':>9}{'diff':>8}  {'driftd s':>9}{'svm s':>7}  "
        "verdict"
    )
    verdicts = []
    for name in args.datasets:
        train, test = load_split(name, "train"), load_split(name, "test")
        val = load_split(name, VALIDATION[name])
        if args.quick:
            train = (train[0][:QUICK_TRAIN], train[1][:QUICK_TRAIN])
        ours, epochs = fit_driftd(train, val, test, args)
        svm = fit_svm(train, test)
        verdict = (
            "n/a (--quick)" if args.quick else ("PASS" if ours.accuracy >= svm.accuracy else "FAIL")
        )
        verdicts.append(verdict)
        print(
            f"{name:<18}{len(train[0]):>7,}{len(test[0]):>6,}{len(set(train[1])):>8} "
            f" {ours.accuracy:>10.4f}{svm.accuracy:>9.4f}"
            f"{ours.accuracy - svm.accuracy:>+8.4f}  "
            f"{ours.seconds:>9.1f}{svm.seconds:>7.1f}  {verdict} ({epochs})",
            flush=True,
        )
    print(
        "\ngoal: driftd accuracy >= svm accuracy on every dataset's test split; "
        f"{verdicts.count('PASS')} of {len(verdicts)} PASS"
        + (" (not judged in a --quick run)" if args.quick else "")
    )
    print(f"1-min load average {_load()} at the end; total {time.perf_counter() - started:.0f}s")
    return 0


def datasets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown dataset(s) {', '.join(unknown) or '(none given)'}; known: "
            f"{', '.join(DATASETS)}"
        )
    return names


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets",
        type=datasets,
        default=list(DATASETS),
        help=f"comma-separated (default {','.join(DATASETS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="the default model's seed (default 0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: at most {QUICK_TRAIN:,} training examples, {QUICK_EPOCHS} epochs",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
