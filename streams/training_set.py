"""The training-set query: labelled examples of a time window (hot + warm) plus a replay sample (cold).

A labelled example is an utterance's text with the intent a ``label`` (or a ``feedback`` naming the
intent) gave it. When an utterance was labelled more than once, the latest label wins. The replay
sample is stratified by intent (as even as the data allows) and deterministic under its seed, so a
fine-tune can be reproduced from (window, replay_size, seed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from .tiers import StoredEvent, TieredStore

__all__ = ["LabelledExample", "TrainingSet", "query_training_set", "stratified_sample"]


@dataclass(frozen=True, slots=True)
class LabelledExample:
    text: str
    intent: str
    ts: float  # event time of the label
    utterance_id: str
    source: str  # "hot", "warm" or "cold"


@dataclass(frozen=True)
class TrainingSet:
    recent: list[LabelledExample]
    replay: list[LabelledExample]

    @property
    def all(self) -> list[LabelledExample]:
        return self.recent + self.replay


_LABEL_RANK = {"feedback": 0, "label": 1}  # on a tie in time, a label beats feedback


def _latest_per_utterance(candidates: Iterable[tuple[float, str, str, str, str | None, str]]) -> dict[str, tuple]:
    """(ts, type, ref_event_id, intent, text, source) -> the latest per ref_event_id."""
    best: dict[str, tuple] = {}
    for item in candidates:
        ts, kind, ref, *_ = item
        current = best.get(ref)
        if current is None or (ts, _LABEL_RANK[kind]) > (current[0], _LABEL_RANK[current[1]]):
            best[ref] = item
    return best


def _to_examples(best: dict[str, tuple]) -> list[LabelledExample]:
    examples = [LabelledExample(text, intent, ts, ref, source) for ts, _, ref, intent, text, source in best.values() if text]
    return sorted(examples, key=lambda e: (e.ts, e.utterance_id))


def stratified_sample(examples: list[LabelledExample], size: int, seed: int) -> list[LabelledExample]:
    """Up to ``size`` examples spread as evenly as possible over intents; same seed, same sample."""
    if size <= 0 or not examples:
        return []
    by_intent: dict[str, list[LabelledExample]] = defaultdict(list)
    for example in sorted(examples, key=lambda e: (e.intent, e.utterance_id)):
        by_intent[example.intent].append(example)
    rng = np.random.default_rng(seed)
    pools = {intent: [items[i] for i in rng.permutation(len(items))] for intent, items in sorted(by_intent.items())}
    picked: list[LabelledExample] = []
    # Round-robin over intents: each round takes one from every intent that still has some.
    while len(picked) < size and pools:
        for intent in list(pools):
            if len(picked) == size:
                break
            picked.append(pools[intent].pop())
            if not pools[intent]:
                del pools[intent]
    return picked


async def query_training_set(store: TieredStore, start_ts: float, end_ts: float, replay_size: int = 0, seed: int = 0) -> TrainingSet:
    """Labelled examples with label time in [start_ts, end_ts) from hot + warm, plus a cold replay sample."""
    hot = [(e.ts, e.type, e.ref_event_id, e.intent, e.ref_text, "hot") for e in store.hot if _labelled(e) and start_ts <= e.ts < end_ts]
    return await store.run(_query_disk, store, hot, start_ts, end_ts, replay_size, seed)


def _labelled(event: StoredEvent) -> bool:
    return event.type in _LABEL_RANK and event.intent is not None and event.ref_event_id is not None


def _query_disk(store: TieredStore, hot: list[tuple], start_ts: float, end_ts: float, replay_size: int, seed: int) -> TrainingSet:
    warm = [(e.ts, e.type, e.ref_event_id, e.intent, e.ref_text, "warm") for e in store.warm.labelled(start_ts, end_ts)]
    # Hot entries come last so that, for the same label event, the hot copy is the one kept.
    best = _latest_per_utterance(warm + hot)
    missing = [ref for ref, item in best.items() if item[4] is None]
    if missing:  # the label arrived before its utterance was stored: join now
        texts = store.warm.utterance_texts(missing)
        for ref in missing:
            if ref in texts:
                best[ref] = best[ref][:4] + (texts[ref],) + best[ref][5:]
    recent = _to_examples(best)
    replay: list[LabelledExample] = []
    if replay_size > 0:
        seen = {e.utterance_id for e in recent}
        cold = [e for e in _cold_labelled(store) if e.utterance_id not in seen]
        replay = stratified_sample(cold, replay_size, seed)
    return TrainingSet(recent, replay)


def _cold_labelled(store: TieredStore) -> list[LabelledExample]:
    paths = [path for path, _, _ in store.warm.cold_files()]
    table = store.cold.read(paths, ["type", "ts", "event_id", "ref_event_id", "intent", "text", "ref_text"])
    if table.num_rows == 0:
        return []
    utterances = table.filter(pc.equal(table["type"], "utterance"))
    texts = dict(zip(utterances["event_id"].to_pylist(), utterances["text"].to_pylist()))
    labels = table.filter(pc.and_(pc.not_equal(table["type"], "utterance"), pc.is_valid(table["intent"])))
    rows = zip(*(labels[c].to_pylist() for c in ("ts", "type", "ref_event_id", "intent", "ref_text")))
    best = _latest_per_utterance((ts, kind, ref, intent, ref_text or texts.get(ref), "cold") for ts, kind, ref, intent, ref_text in rows if ref)
    return _to_examples(best)
