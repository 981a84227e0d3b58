"""Data hygiene that runs before every fine-tune: normalise, then drop junk and contradictions.

Labelled conversation events arrive with copy-paste repeats, control characters, labellers who
disagree, and now and then a text that is also in the holdout set. Training on them as they are
inflates some phrasings, teaches the model contradictions, and lets the gate score a model on
examples it was trained on. This module turns the raw ``(text, intent)`` lists into a clean
training set plus a :class:`HygieneReport` for the run's manifest.

It is pure data (no torch, nothing from ``daemon/`` or ``streams/``) because it runs inside the
spawned training child. The steps, in order:

1. normalise (NFC, control characters out, whitespace
   collapsed), cut to ``max_chars``, drop empties;
2. drop examples whose text is also a holdout text;
3. resolve texts labelled with more than one intent (majority wins, or drop them all);
4. drop exact duplicates (same text and intent), keeping the newest copy;
5. drop near duplicates (MinHash LSH over word 3-shingles) with the same intent, keeping the newest.

Inputs are ordered oldest first; the output keeps that order. The result is deterministic.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from datasketch import MinHash, MinHashLSH

__all__ = [
    "CONFLICT_POLICIES",
    "REASONS",
    "HygieneReport",
    "HygieneSettings",
    "cap_per_class",
    "clean_training_examples",
]

REASONS = ("empty", "exact_duplicate", "near_duplicate", "conflict", "holdout_leak")
CONFLICT_POLICIES = ("majority", "drop")

_SAMPLES_PER_REASON = 5
_SAMPLE_CHARS = 100
_MINHASH_SEED = 1  # fixed, so the same input always gives the same output
# Every LSH candidate is confirmed with MinHash.jaccard, so false positives cost only a comparison;
# weight the band/row choice towards recall (datasketch's default 50/50 misses ~70% of pairs that
# sit right at a 0.9 threshold with 64 permutations).
_LSH_WEIGHTS = (0.05, 0.95)
_WORD = re.compile(r"\w+")


@dataclass
class HygieneSettings:
    max_chars: int = 2000  # longer texts are cut to this (after normalisation)
    min_chars: int = 1  # shorter (after normalisation) are dropped as "empty"
    # Estimated Jaccard of word 3-shingles (MinHash
    # LSH); 0 or >= 1 turns near-duplicate removal off.
    near_duplicate_threshold: float = 0.9
    num_perm: int = 64
    # "majority": a text's majority intent wins and its other labels are dropped; a tie
    # drops the text. "drop": every example of a text with conflicting intents is dropped.
    conflicts: str = "majority"


@dataclass
class HygieneReport:
    kept: int
    removed: dict[str, int]  # reason -> count, every reason in REASONS present
    truncated: int  # texts cut to max_chars
    samples: dict[str, list[str]]  # reason -> up to 5 removed texts, first 100 chars each

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy for the run manifest."""
        return asdict(self)


@dataclass
class _Tally:
    """Collects removals while the steps run; becomes the report at the end."""

    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    samples: dict[str, list[str]] = field(
        default_factory=lambda: {reason: [] for reason in REASONS}
    )

    def drop(self, reason: str, text: str) -> None:
        self.removed[reason] += 1
        if len(self.samples[reason]) < _SAMPLES_PER_REASON:
            self.samples[reason].append(text[:_SAMPLE_CHARS])


def clean_training_examples(
    texts: Sequence[str],
    intents: Sequence[str],
    *,
    settings: HygieneSettings | None = None,
    holdout_texts: Sequence[str] = (),
) -> tuple[list[str], list[str], HygieneReport]:
    """Normalise and de-junk parallel ``texts``/``intents``
    (oldest first); returns kept texts, intents, report.

    Kept texts are the normalised ones, in input order. See the module docstring for the steps.
    """
    if len(texts) != len(intents):
        raise ValueError(f"texts and intents differ in length: {len(texts)} != {len(intents)}")
    if settings is None:
        settings = HygieneSettings()
    _check_settings(settings)
    tally = _Tally()

    normalised, truncated = _normalise_all(texts, settings, tally)
    # From here on, work on indexes into the inputs: ``normalised`` maps every non-empty one to its
    # text, ``keys`` to its casefolded text, and each step narrows ``alive``.
    alive = list(normalised)
    keys = {i: normalised[i].casefold() for i in alive}
    alive = _drop_holdout_leaks(alive, keys, holdout_texts, settings, normalised, tally)
    alive = _resolve_conflicts(alive, keys, intents, settings.conflicts, normalised, tally)
    alive = _drop_exact_duplicates(alive, keys, intents, normalised, tally)
    if 0.0 < settings.near_duplicate_threshold < 1.0:
        alive = _drop_near_duplicates(alive, keys, intents, settings, normalised, tally)

    kept_texts = [normalised[i] for i in alive]
    kept_intents = [intents[i] for i in alive]
    report = HygieneReport(
        kept=len(alive), removed=tally.removed, truncated=truncated, samples=tally.samples
    )
    return kept_texts, kept_intents, report


def cap_per_class(intents: Sequence[str], max_share: float) -> list[int]:
    """Class-balance cap for a replay sample: the positions kept when no intent keeps more than
    max(1, ceil(max_share * len)) examples (the first ones in input order)."""
    if not max_share > 0:  # also catches NaN
        raise ValueError(f"max_share must be > 0, got {max_share}")
    # The epsilon keeps float noise (0.07 * 100 == 7.000000000000001) from granting an extra slot.
    limit = max(1, math.ceil(max_share * len(intents) - 1e-9))
    seen: Counter[str] = Counter()
    kept: list[int] = []
    for position, intent in enumerate(intents):
        seen[intent] += 1
        if seen[intent] <= limit:
            kept.append(position)
    return kept


def _check_settings(settings: HygieneSettings) -> None:
    if settings.max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {settings.max_chars}")
    if settings.min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {settings.min_chars}")
    if settings.num_perm < 2:
        raise ValueError(f"num_perm must be >= 2, got {settings.num_perm}")
    if math.isnan(settings.near_duplicate_threshold):
        raise ValueError("near_duplicate_threshold must be a number, got NaN")
    if settings.conflicts not in CONFLICT_POLICIES:
        raise ValueError(
            f"conflicts must be one of {', '.join(CONFLICT_POLICIES)}, got {settings.conflicts!r}"
        )


# --- step 1: normalisation -------------------------------------------------------------------


def _normalise(text: str, max_chars: int) -> tuple[str, bool]:
    """The text as training sees it, and whether it was cut to ``max_chars``."""
    if not text.isprintable():  # fast path: printable text has no control or format characters
        text = "".join(_without_control(text))
    cleaned = unicodedata.normalize("NFC", text)
    collapsed = " ".join(cleaned.split())
    if len(collapsed) <= max_chars:
        return collapsed, False
    return collapsed[:max_chars].rstrip(), True


def _without_control(text: str) -> Iterable[str]:
    # Control/format characters go; the whitespace ones among them (\t, \n, \r, ...) become a space
    # so that "line one\nline two" does not turn into "line oneline two".
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf"):
            if char.isspace():
                yield " "
        else:
            yield char


def _normalise_all(
    texts: Sequence[str], settings: HygieneSettings, tally: _Tally
) -> tuple[dict[int, str], int]:
    """Index -> normalised text for the texts long enough to keep, and how many were truncated."""
    normalised: dict[int, str] = {}
    truncated = 0
    for index, raw in enumerate(texts):
        text, was_cut = _normalise(raw, settings.max_chars)
        truncated += was_cut
        if len(text) < settings.min_chars:
            tally.drop("empty", raw)  # the raw text: its normalised form says nothing
        else:
            normalised[index] = text
    return normalised, truncated


# --- steps 2-4: exact-text rules ---------------------------------------------------------------


def _drop_holdout_leaks(
    alive: list[int],
    keys: dict[int, str],
    holdout_texts: Sequence[str],
    settings: HygieneSettings,
    normalised: dict[int, str],
    tally: _Tally,
) -> list[int]:
    holdout = {_normalise(text, settings.max_chars)[0].casefold() for text in holdout_texts}
    return _keep_unless(alive, lambda i: keys[i] in holdout, "holdout_leak", normalised, tally)


def _resolve_conflicts(
    alive: list[int],
    keys: dict[int, str],
    intents: Sequence[str],
    policy: str,
    normalised: dict[int, str],
    tally: _Tally,
) -> list[int]:
    labels_by_text: dict[str, Counter[str]] = defaultdict(Counter)
    for i in alive:
        labels_by_text[keys[i]][intents[i]] += 1
    winners = {
        key: _winning_intent(counts, policy)
        for key, counts in labels_by_text.items()
        if len(counts) > 1
    }
    # A conflicted text keeps only its winning intent's examples; no winner drops them all.
    return _keep_unless(
        alive,
        lambda i: keys[i] in winners and intents[i] != winners[keys[i]],
        "conflict",
        normalised,
        tally,
    )


def _winning_intent(counts: Counter[str], policy: str) -> str | None:
    """The intent a conflicted text keeps under ``policy``, or None when all its examples go."""
    if policy == "drop":
        return None
    (top, top_count), (_, runner_up_count) = counts.most_common(2)
    return top if top_count > runner_up_count else None


def _drop_exact_duplicates(
    alive: list[int],
    keys: dict[int, str],
    intents: Sequence[str],
    normalised: dict[int, str],
    tally: _Tally,
) -> list[int]:
    newest = {(keys[i], intents[i]): i for i in alive}  # later indexes overwrite: the newest wins
    return _keep_unless(
        alive, lambda i: newest[(keys[i], intents[i])] != i, "exact_duplicate", normalised, tally
    )


def _keep_unless(
    alive: list[int],
    should_drop: Callable[[int], bool],
    reason: str,
    normalised: dict[int, str],
    tally: _Tally,
) -> list[int]:
    kept = []
    for i in alive:
        if should_drop(i):
            tally.drop(reason, normalised[i])
        else:
            kept.append(i)
    return kept


# --- step 5: near duplicates -------------------------------------------------------------------


def _drop_near_duplicates(
    alive: list[int],
    keys: dict[int, str],
    intents: Sequence[str],
    settings: HygieneSettings,
    normalised: dict[int, str],
    tally: _Tally,
) -> list[int]:
    """Newest first: drop an example when a kept near-duplicate has the same intent.

    A near-duplicate with a different intent does not count: different labels on similar texts are
    signal, not junk (true contradictions on identical texts were settled by the conflict step).
    """
    threshold = settings.near_duplicate_threshold
    newest_first = alive[::-1]
    sketches = MinHash.bulk(
        (_shingles(keys[i]) for i in newest_first), num_perm=settings.num_perm, seed=_MINHASH_SEED
    )
    index = _lsh_index(threshold, settings.num_perm)
    kept_sketches: dict[int, MinHash] = {}
    dropped: set[int] = set()
    for i, sketch in zip(newest_first, sketches, strict=True):
        if any(
            intents[other] == intents[i] and sketch.jaccard(kept_sketches[other]) >= threshold
            for other in index.query(sketch)
        ):
            dropped.add(i)
            continue
        index.insert(i, sketch, check_duplication=False)
        kept_sketches[i] = sketch
    # Report in input order, like the other steps.
    return _keep_unless(alive, lambda i: i in dropped, "near_duplicate", normalised, tally)


def _shingles(folded_text: str) -> list[bytes]:
    """Word 3-shingles; shorter texts use their words
    plus the whole word sequence, so they still hash."""
    words = _WORD.findall(folded_text)
    if len(words) >= 3:
        grams = {" ".join(words[k : k + 3]) for k in range(len(words) - 2)}
    else:
        # Punctuation-only texts have no words: fall back to the text itself.
        grams = {*words, " ".join(words) or folded_text}
    return [gram.encode("utf-8") for gram in grams]  # order is irrelevant to a MinHash


def _lsh_index(threshold: float, num_perm: int) -> MinHashLSH:
    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    except ValueError:
        # Very high thresholds with few permutations make datasketch pick a single band, which it
        # refuses; two wide bands still catch near-identical
        # pairs (candidates are confirmed anyway).
        return MinHashLSH(threshold=threshold, num_perm=num_perm, params=(2, num_perm // 2))
