"""Active labelling: pick the predictions most worth a human label, and the Label Studio round trip.

Labels are the scarce input of the loop (decay detection and fine-tunes both wait for them), so a
labelling budget is best spent where the model is least sure. :class:`LabelingSampler` turns each
prediction into a labelling request or nothing: its score, by one of the strategies in
``SCORERS``, must clear a floor and a running percentile of recent scores (the 80th by default), a
token bucket caps the requests per hour, and a MinHash guard keeps near-duplicate texts from eating
the budget. The rest converts requests into Label Studio import tasks and a Label Studio export back
into ``label`` events (docs/events.md).

Pure logic: nothing here reads or writes Kafka.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from datasketch import MinHash

from streams.schema import Rejection, decode_event

__all__ = [
    "SCORERS",
    "SKIP_REASONS",
    "STRATEGIES",
    "UNCERTAINTY_STRATEGIES",
    "LabelingSampler",
    "Scorer",
    "get_scorer",
    "label_events_from_label_studio",
    "label_studio_config",
    "score",
    "to_label_studio_tasks",
]

SKIP_REASONS = ("below_min_score", "below_percentile", "budget", "near_duplicate")
WARMUP_SCORES = 50  # until this many scores were seen, the percentile of a handful means nothing
FROM_NAME, TO_NAME = (
    "intent",
    "text",
)  # the names label_studio_config gives the choices and the text

_NUM_PERM = 64
_MINHASH_SEED = 1
_WORD = re.compile(r"\w+")
_REQUEST_NS = uuid.UUID("8f1c7f0e-52a4-4c1e-9d2b-6a7c0e3b9d41")


def _probabilities(prediction_topk: Sequence[tuple[str, float]]) -> list[float]:
    """The top-k's probabilities, highest first; ValueError when empty or not all finite numbers in
    [0, 1]."""
    if not prediction_topk:
        raise ValueError("prediction_topk is empty")
    probs = sorted((float(p) for _, p in prediction_topk), reverse=True)
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 + 1e-6 for p in probs):
        raise ValueError(f"probabilities must be finite and in [0, 1], got {probs}")
    return probs


def _least_confidence(probs: list[float], event_id: str) -> float:
    return 1.0 - probs[0]


def _margin(probs: list[float], event_id: str) -> float:
    return 1.0 - (probs[0] - (probs[1] if len(probs) > 1 else 0.0))


def _entropy(probs: list[float], event_id: str) -> float:
    total = sum(probs)
    if len(probs) < 2:
        return 0.0
    if total <= 0.0:
        return 1.0  # nothing known about any of them: as uncertain as it gets
    entropy = -sum(p / total * math.log(p / total) for p in probs if p > 0.0)
    return entropy / math.log(len(probs))


def _random(probs: list[float], event_id: str) -> float:
    """Uniform in [0, 1), the same for the same event (a redelivered prediction scores alike)."""
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Scorer:
    """A labelling strategy: how it scores a prediction in [0, 1], higher: more worth a label.

    ``of`` gets the prediction's probabilities (highest first) and its event id. An uncertainty
    strategy scores the probabilities, checked first; a baseline (``uncertainty=False``) ignores the
    prediction and gets none, so any top-k, even an empty one, scores alike.
    """

    name: str
    of: Callable[[list[float], str], float]
    uncertainty: bool = True

    def score(self, prediction_topk: Sequence[tuple[str, float]], event_id: str) -> float:
        if not self.uncertainty:
            return self.of([], event_id)
        return min(1.0, max(0.0, self.of(_probabilities(prediction_topk), event_id)))


SCORERS: dict[str, Scorer] = {
    "least_confidence": Scorer("least_confidence", _least_confidence),  # 1 - p1
    "margin": Scorer("margin", _margin),  # 1 - (p1 - p2), p2 = 0 with one entry
    # Entropy of the top-k renormalised to sum 1, divided by log(k).
    "entropy": Scorer("entropy", _entropy),
    # A hash of the event id: the baseline uncertainty sampling is measured against
    # (bench/labeling.py), through the same percentile, budget and diversity guard.
    "random": Scorer("random", _random, uncertainty=False),
}
STRATEGIES = tuple(SCORERS)
UNCERTAINTY_STRATEGIES = tuple(name for name, scorer in SCORERS.items() if scorer.uncertainty)


def get_scorer(strategy: str) -> Scorer:
    if strategy not in SCORERS:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return SCORERS[strategy]


def score(prediction_topk: Sequence[tuple[str, float]], strategy: str) -> float:
    """Uncertainty of a prediction in [0, 1] by an uncertainty strategy; higher: more worth a label.

    least_confidence: 1 - p1. margin: 1 - (p1 - p2) (p2 = 0 with one entry). entropy: entropy of the
    top-k probabilities renormalised to sum 1, divided by log(k). Raises ValueError on an unknown
    strategy (a baseline such as "random" scores no prediction), an empty top-k or a probability
    that is not a finite number in [0, 1].
    """
    if strategy not in UNCERTAINTY_STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(UNCERTAINTY_STRATEGIES)}"
        )
    return SCORERS[strategy].score(prediction_topk, "")


def _shingles(text: str) -> list[bytes]:
    """Case-folded word 3-shingles; shorter texts use their words and the whole sequence, so they
    still hash."""
    words = _WORD.findall(text.casefold())
    if len(words) >= 3:
        grams = {" ".join(words[k : k + 3]) for k in range(len(words) - 2)}
    else:
        grams = {*words, " ".join(words) or text}
    return [gram.encode("utf-8") for gram in grams]


def _sketch(text: str) -> np.ndarray:
    minhash = MinHash(num_perm=_NUM_PERM, seed=_MINHASH_SEED)
    minhash.update_batch(_shingles(text))
    return np.asarray(minhash.hashvalues, dtype=np.uint64)  # datasketch is untyped


class LabelingSampler:
    """Decides, prediction by prediction, which ones become labelling requests.

    Not thread-safe: one caller (the daemon's loop) offers predictions in order. ``clock`` is
    injected for tests; ``requested_at`` and the token bucket use it.
    """

    def __init__(
        self,
        strategy: str,
        budget_per_hour: int,
        min_score: float,
        diversity_threshold: float,
        window: int,
        clock: Callable[[], float] = time.time,
        *,
        percentile: float = 80.0,
    ) -> None:
        self._scorer = get_scorer(strategy)
        if budget_per_hour < 0:
            raise ValueError(f"budget_per_hour must be >= 0, got {budget_per_hour!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        if not 0.0 <= diversity_threshold <= 1.0:
            raise ValueError(
                "diversity_threshold must be in [0, 1] (0 turns the guard off), "
                f"got {diversity_threshold!r}"
            )
        if not 0.0 <= percentile < 100.0:
            raise ValueError(
                "percentile must be in [0, 100) (0 lets every score past the percentile gate), "
                f"got {percentile!r}"
            )
        self.strategy = strategy
        self.budget_per_hour = int(budget_per_hour)
        self.min_score = float(min_score)
        self.diversity_threshold = float(diversity_threshold)
        self.window = int(window)
        self.at_percentile = float(percentile)
        self._clock = clock
        # Token bucket: refills budget_per_hour an hour, holds a sixth of it so the hour cannot go
        # at once.
        self.capacity = max(1, self.budget_per_hour // 6) if self.budget_per_hour else 0
        self._tokens = float(self.capacity)
        self._refilled_at = clock()
        # Recent scores in arrival order (for eviction) and sorted (for the percentile).
        self._scores: deque[float] = deque()
        self._sorted: list[float] = []
        self._seen = 0
        # Sketches of the last `window` picked texts, a ring buffer of MinHash hash values.
        self._picked = np.zeros((self.window, _NUM_PERM), dtype=np.uint64)
        self._picked_n = 0
        self._counts = {"offered": 0, "picked": 0, **{reason: 0 for reason in SKIP_REASONS}}

    @property
    def counts(self) -> dict[str, int]:
        """offered, picked and one count per SKIP_REASONS entry (offered = picked + the skips)."""
        return dict(self._counts)

    @property
    def tokens(self) -> float:
        """Requests the budget allows right now (fractional while refilling)."""
        self._refill()
        return self._tokens

    def percentile(self) -> float | None:
        """The running ``percentile`` of the recent scores; None while warming up."""
        if self._seen < WARMUP_SCORES or not self._sorted:
            return None
        pos = self.at_percentile / 100.0 * (len(self._sorted) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(self._sorted) - 1)
        return self._sorted[low] + (self._sorted[high] - self._sorted[low]) * (pos - low)

    def offer(
        self,
        event_id: str,
        conversation_id: str,
        text: str,
        model_version: str,
        topk: Sequence[tuple[str, float]],
        *,
        turn: int = 0,
    ) -> dict[str, Any] | None:
        """A labelling request for this prediction, or None (the reason is counted in ``counts``).

        ``topk`` is the prediction's (intent, probability) list; ``turn`` the utterance's turn,
        carried through to the label event. Raises ValueError on a top-k that an uncertainty
        strategy refuses (``score``).
        """
        value = self._scorer.score(topk, event_id)
        self._counts["offered"] += 1
        threshold = self.percentile()
        n_recent = len(self._scores)
        self._remember(value)
        gate = self._gate(value, threshold)
        if gate is not None:
            self._counts[gate] += 1
            return None
        sketch = _sketch(text)
        if self._near_duplicate(sketch):
            self._counts["near_duplicate"] += 1
            return None
        self._pick(sketch)
        ranked = sorted(topk, key=lambda item: -float(item[1]))
        return {
            "request_id": uuid.uuid5(
                _REQUEST_NS, f"{event_id}\x00{model_version}"
            ).hex,  # a redelivered prediction repeats it
            "event_id": event_id,
            "conversation_id": conversation_id,
            "turn": int(turn),
            "text": text,
            "model_version": model_version,
            "topk": [{"intent": intent, "score": float(p)} for intent, p in ranked],
            "score": value,
            "strategy": self.strategy,
            "reason": self._pick_reason(value, threshold, n_recent),
            "requested_at": self._clock(),
        }

    def _gate(self, value: float, threshold: float | None) -> str | None:
        """The skip reason of a score that the floor, the percentile or the budget stops, else None.

        The budget refills only once the score gates passed, as a pick would then spend it.
        """
        if value < self.min_score:
            return "below_min_score"
        if threshold is not None and value < threshold:
            return "below_percentile"
        self._refill()
        if self._tokens < 1.0:
            return "budget"
        return None

    def _pick(self, sketch: np.ndarray) -> None:
        """Spend a token and remember the picked text's sketch for the near-duplicate guard."""
        self._tokens -= 1.0
        self._picked[self._picked_n % self.window] = sketch
        self._picked_n += 1
        self._counts["picked"] += 1

    def _pick_reason(self, value: float, threshold: float | None, n_recent: int) -> str:
        if threshold is None:
            return (
                f"{self.strategy} {value:.2f} >= min_score {self.min_score:.2f} "
                f"(warming up: {n_recent} scores seen)"
            )
        return (
            f"{self.strategy} {value:.2f} >= p{self.at_percentile:g} {threshold:.2f} "
            f"of the last {n_recent}"
        )

    def _remember(self, value: float) -> None:
        self._seen += 1
        self._scores.append(value)
        bisect.insort(self._sorted, value)
        if len(self._scores) > self.window:
            old = self._scores.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._refilled_at)  # a clock stepping back refills nothing
        self._refilled_at = now
        self._tokens = min(
            float(self.capacity), self._tokens + elapsed * self.budget_per_hour / 3600.0
        )

    def _near_duplicate(self, sketch: np.ndarray) -> bool:
        if self.diversity_threshold <= 0.0 or self._picked_n == 0:
            return False
        picked = self._picked[: min(self._picked_n, self.window)]
        similarity = (picked == sketch).mean(
            axis=1
        )  # estimated Jaccard of each picked text with this one
        return bool(similarity.max() >= self.diversity_threshold)


# --- Label Studio ---------------------------------------------------------------------------------


def label_studio_config(choices: Sequence[str]) -> str:
    """The labelling interface: the text and one single-choice list of intents (names match the
    tasks)."""
    unique = list(dict.fromkeys(choices))
    if not unique:
        raise ValueError("no intents to choose from")
    lines = [f"    <Choice value={quoteattr(choice)}/>" for choice in unique]
    return "\n".join(
        [
            "<View>",
            f'  <Text name="{TO_NAME}" value="$text"/>',
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="false">',
            *lines,
            "  </Choices>",
            "</View>",
            "",
        ]
    )


def to_label_studio_tasks(
    requests: Sequence[dict[str, Any]], choices: Sequence[str]
) -> list[dict[str, Any]]:
    """Label Studio JSON import tasks, one per request, pre-annotated with the model's top intent.

    ``data`` keeps what the way back needs (event_id, conversation_id, turn) and what helps the
    labeller; the prediction's score is the model's confidence in its top intent, so Label Studio
    can sort by it. A top intent missing from non-empty ``choices`` gets no pre-annotation (Label
    Studio could not show it).
    """
    allowed = set(choices)
    tasks = []
    for request in requests:
        topk = request.get("topk") or []
        data = {
            "text": request["text"],
            "event_id": request["event_id"],
            "conversation_id": request["conversation_id"],
            "turn": request.get("turn", 0),
            "model_version": request.get("model_version"),
            "request_id": request.get("request_id"),
            "uncertainty": request.get("score"),
            "strategy": request.get("strategy"),
        }
        task: dict[str, Any] = {"data": data, "predictions": []}
        if topk and (not allowed or topk[0]["intent"] in allowed):
            task["predictions"].append(
                {
                    "model_version": request.get("model_version"),
                    "score": topk[0]["score"],
                    "result": [
                        {
                            "from_name": FROM_NAME,
                            "to_name": TO_NAME,
                            "type": "choices",
                            "value": {"choices": [topk[0]["intent"]]},
                        }
                    ],
                }
            )
        tasks.append(task)
    return tasks


def _chosen_intent(annotation: Any) -> str | None:
    """The single intent an annotation chose, or None (cancelled, empty, several choices, other
    controls)."""
    if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
        return None
    for result in annotation.get("result") or []:
        if (
            not isinstance(result, dict)
            or result.get("from_name") != FROM_NAME
            or result.get("type") != "choices"
        ):
            continue
        picked = (
            (result.get("value") or {}).get("choices")
            if isinstance(result.get("value"), dict)
            else None
        )
        if isinstance(picked, list) and len(picked) == 1 and isinstance(picked[0], str):
            return picked[0]
    return None


def _why_unusable(annotations: list[Any]) -> str:
    if not annotations:
        return "no annotations"
    if all(isinstance(a, dict) and a.get("was_cancelled") for a in annotations):
        return "every annotation was cancelled (skipped by the labeller)"
    return f'no annotation chose exactly one "{FROM_NAME}"'


def label_events_from_label_studio(
    export: Any, *, now: float, max_event_bytes: int = 65536
) -> tuple[list[dict[str, Any]], list[str]]:
    """``label`` events from a Label Studio JSON export, and one reason per task skipped.

    Per task, the last non-cancelled annotation that chose an intent wins. The event id is
    ``ls-<task id>-<annotation id>``, so importing the same export twice produces the same events.
    Every event is checked with ``decode_event`` (``max_event_bytes``: the ingest limit).
    Raises ValueError when ``export`` is not a list.
    """
    if not isinstance(export, list):
        raise ValueError(
            f"a Label Studio JSON export is a list of tasks, got {type(export).__name__}"
        )
    events: list[dict[str, Any]] = []
    skipped: list[str] = []
    for index, task in enumerate(export):
        try:
            events.append(_label_event(task, index, now, max_event_bytes))
        except _UnusableTask as unusable:
            skipped.append(str(unusable))
    return events, skipped


class _UnusableTask(Exception):
    """A task of an export that gives no label event; the message names the task and why."""


def _label_event(task: Any, index: int, now: float, max_event_bytes: int) -> dict[str, Any]:
    """The checked ``label`` event of one exported task; raises _UnusableTask when it gives none."""
    if not isinstance(task, dict) or task.get("id") is None:
        raise _UnusableTask(f"task #{index}: not a task with an id")
    name = f"task {task['id']}"
    raw_data = task.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    if not data.get("event_id") or not data.get("conversation_id"):
        raise _UnusableTask(
            f"{name}: data has no event_id or conversation_id (not exported by driftd?)"
        )
    raw_annotations = task.get("annotations")
    annotations: list[Any] = raw_annotations if isinstance(raw_annotations, list) else []
    annotation_id, intent = _last_choice(name, annotations)
    event = {
        "type": "label",
        "event_id": f"ls-{task['id']}-{annotation_id}",
        "conversation_id": data["conversation_id"],
        "turn": data.get("turn", 0),
        "ts": float(now),
        "ref_event_id": data["event_id"],
        "intent": intent,
        "meta": {
            "source": "label-studio",
            "task_id": task["id"],
            "annotation_id": annotation_id,
            "request_id": data.get("request_id"),
        },
    }
    decoded = decode_event(json.dumps(event).encode(), max_event_bytes)
    if isinstance(decoded, Rejection):
        raise _UnusableTask(
            f"{name}: the label event is invalid: {decoded.reason} ({decoded.detail})"
        )
    return event


def _last_choice(name: str, annotations: list[Any]) -> tuple[Any, str]:
    """(annotation id, intent) of the last annotation choosing one intent, else _UnusableTask."""
    chosen = [
        (k, a, intent)
        for k, a in enumerate(annotations)
        if (intent := _chosen_intent(a)) is not None
    ]
    if not chosen:
        raise _UnusableTask(f"{name}: {_why_unusable(annotations)}")
    position, annotation, intent = chosen[-1]
    # exports carry ids; the position is as stable for one file
    return annotation.get("id", f"n{position}"), intent
