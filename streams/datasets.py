"""Intent datasets: CLINC150, BANKING77 and SNIPS (the demo replays them),
MASSIVE ru-RU and CrossWOZ user-turn intents (Russian and Chinese, for
the multilingual tests and bench), read into one :class:`Example` shape.

The repository ships gzip copies under ``data/``; every loader reads ``<file>.gz`` when it exists
and the plain file otherwise, so a directory of uncompressed originals works as ``data_dir`` too.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["DATASETS", "Example", "default_data_dir", "groups", "load_examples"]

DATASETS = ("clinc150", "banking77", "snips", "massive_ru", "crosswoz_intents")

DATA_DIR_ENV = "DRIFTD_DATA_DIR"

# Valid splits per dataset. CLINC150's out-of-scope queries are separate splits so that "test" keeps
# its usual meaning (in-scope only) and OOS traffic is something a caller asks for explicitly.
_SPLITS: dict[str, tuple[str, ...]] = {
    "clinc150": ("train", "val", "test", "oos_train", "oos_val", "oos_test"),
    "banking77": ("train", "test"),
    "snips": ("train", "test"),
    "massive_ru": ("train", "dev", "test"),
    "crosswoz_intents": ("train", "dev", "test"),
}
# One ``<split>.csv`` per split with the columns ``text,intent``.
_TEXT_INTENT_CSV = ("massive_ru", "crosswoz_intents")

# SNIPS keeps all rows in one CSV. "train" is the full training set (train_small is a subset of it);
# "test" is the 700 held-out rows from the benchmark's validate_*.json files, which the CSV labels
# split="test" (older exports call them "validate", so both are accepted).
_SNIPS_SPLITS = {"train": ("train_full",), "test": ("test", "validate")}

OOS = "oos"


@dataclass(frozen=True)
class Example:
    """One labelled utterance. ``domain`` is the intent's
    group (CLINC150 only), ``"oos"`` for out-of-scope."""

    text: str
    intent: str
    domain: str | None


def default_data_dir() -> Path:
    """``$DRIFTD_DATA_DIR`` if set, else the ``data/`` folder of this repository."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1] / "data"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")


def _open_text(data_dir: Path, dataset: str, filename: str) -> TextIO:
    """Open ``<data_dir>/<dataset>/<filename>`` as UTF-8 text, preferring the ``.gz`` copy."""
    plain = data_dir / dataset / filename
    packed = plain.with_name(plain.name + ".gz")
    if packed.is_file():
        return io.TextIOWrapper(gzip.open(packed, "rb"), encoding="utf-8", newline="")
    if plain.is_file():
        return open(plain, encoding="utf-8", newline="")
    raise FileNotFoundError(
        f"dataset file not found: {packed} (nor {plain}). Point DRIFTD_DATA_DIR or replay.data_dir "
        f"at a folder holding {dataset}/{filename}[.gz], e.g. the repository's data/ folder."
    )


def _read_json(data_dir: Path, dataset: str, filename: str) -> Any:
    with _open_text(data_dir, dataset, filename) as fh:
        return json.load(fh)


def _read_csv(data_dir: Path, dataset: str, filename: str) -> list[dict[str, str]]:
    with _open_text(data_dir, dataset, filename) as fh:
        return list(csv.DictReader(fh))


def groups(name: str, data_dir: Path | None = None) -> dict[str, list[str]]:
    """Domain -> intents for datasets that have domains (CLINC150); ``{}`` for the others."""
    _check_name(name)
    if name != "clinc150":
        return {}
    domains = _read_json(data_dir or default_data_dir(), "clinc150", "domains.json")
    return {str(domain): [str(intent) for intent in intents] for domain, intents in domains.items()}


def load_examples(name: str, split: str, data_dir: Path | None = None) -> list[Example]:
    """All examples of one split, in file order.

    Raises ValueError for an unknown dataset or split, FileNotFoundError when the files are missing.
    """
    _check_name(name)
    if split not in _SPLITS[name]:
        raise ValueError(
            f"unknown split {split!r} for {name}; valid choices: {', '.join(_SPLITS[name])}"
        )
    root = Path(data_dir) if data_dir is not None else default_data_dir()

    if name == "clinc150":
        rows = _read_json(root, "clinc150", "data_full.json")[split]
        if split.startswith("oos_"):
            return [Example(text, OOS, OOS) for text, _ in rows]
        domain_of = {
            intent: domain for domain, intents in groups(name, root).items() for intent in intents
        }
        return [Example(text, intent, domain_of.get(intent)) for text, intent in rows]

    if name == "banking77":
        return [
            Example(row["text"], row["category"], None)
            for row in _read_csv(root, "banking77", f"{split}.csv")
        ]

    if name in _TEXT_INTENT_CSV:
        return [
            Example(row["text"], row["intent"], None)
            for row in _read_csv(root, name, f"{split}.csv")
        ]

    wanted = _SNIPS_SPLITS[split]
    return [
        Example(row["text"], row["intent"], None)
        for row in _read_csv(root, "snips", "snips_all.csv")
        if row["split"] in wanted
    ]
