"""The training-set query: labelled examples of a time
window (hot + warm) plus a replay sample (cold).

A labelled example is an utterance's text with the intent a ``label`` (or a ``feedback`` naming the
intent) gave it. When an utterance was labelled more than once, the latest label wins. The replay
sample is stratified by intent (as even as the data allows) and deterministic under its seed, so a
fine-tune can be reproduced from (window, replay_size, seed).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, groupby

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .tiers import StoredEvent, TieredStore

__all__ = [
    "LabelledExample",
    "TrainingSet",
    "labelled_examples",
    "merge_recent",
    "query_recent",
    "query_replay",
    "query_training_set",
    "query_unlabelled",
    "stratified_sample",
]


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
_LABEL_COLUMNS = ["ts", "type", "ref_event_id", "intent", "ref_text"]
_WARM_CHUNK = 5000  # warm label rows read at a time, newest first

# (ts, type, ref_event_id, intent, text, source): one
# label of an utterance, before the latest is chosen.
Candidate = tuple[float, str, str, str, "str | None", str]


def _keep_latest(best: dict[str, Candidate], item: Candidate) -> None:
    """Fold ``item`` into ``best`` (latest label per utterance). The text belongs to the
    utterance, not to the label, so a winner that lacks it takes it from the label it beat."""
    ref = item[2]
    current = best.get(ref)
    if current is None:
        best[ref] = item
    elif (item[0], _LABEL_RANK[item[1]]) > (current[0], _LABEL_RANK[current[1]]):
        best[ref] = item if item[4] or not current[4] else (*item[:4], current[4], *item[5:])
    elif not current[4] and item[4]:
        best[ref] = (*current[:4], item[4], *current[5:])


def _to_examples(best: dict[str, Candidate]) -> list[LabelledExample]:
    examples = [
        LabelledExample(text, intent, ts, ref, source)
        for ts, _, ref, intent, text, source in best.values()
        if text
    ]
    return sorted(examples, key=lambda e: (e.ts, e.utterance_id))


def _round_robin(group_sizes: list[int], size: int, seed: int) -> list[int]:
    """Positions, in the concatenation of the groups, of up to ``size``
    items spread as evenly as possible over the groups: each round
    takes one random item from every group that still has some."""
    rng = np.random.default_rng(seed)
    offsets = list(accumulate(group_sizes[:-1], initial=0)) if group_sizes else []
    pools = [
        list(offset + rng.permutation(n))
        for offset, n in zip(offsets, group_sizes, strict=True)
        if n
    ]
    picked: list[int] = []
    while len(picked) < size and pools:
        for pool in list(pools):
            if len(picked) == size:
                break
            picked.append(int(pool.pop()))
            if not pool:
                pools.remove(pool)
    return picked


def stratified_sample(
    examples: list[LabelledExample], size: int, seed: int
) -> list[LabelledExample]:
    """Up to ``size`` examples spread as evenly as possible over intents; same seed, same sample."""
    if size <= 0 or not examples:
        return []
    ordered = sorted(examples, key=lambda e: (e.intent, e.utterance_id))
    sizes = [len(list(group)) for _, group in groupby(ordered, key=lambda e: e.intent)]
    return [ordered[i] for i in _round_robin(sizes, size, seed)]


async def query_training_set(
    store: TieredStore,
    start_ts: float,
    end_ts: float,
    replay_size: int = 0,
    seed: int = 0,
    limit: int | None = None,
) -> TrainingSet:
    """Labelled examples with label time in [start_ts, end_ts) from hot + warm (the newest
    ``limit``), plus a cold replay sample of ``replay_size`` that excludes them."""
    recent = await query_recent(store, start_ts, end_ts, limit)
    replay = (
        await query_replay(store, replay_size, seed, {e.utterance_id for e in recent})
        if replay_size > 0
        else []
    )
    return TrainingSet(recent, replay)


async def query_recent(
    store: TieredStore, start_ts: float, end_ts: float, limit: int | None = None
) -> list[LabelledExample]:
    """The newest ``limit`` (all when None) labelled examples with label time
    in [start_ts, end_ts), oldest first. Warm is read newest first and
    only as far as needed, so memory follows ``limit``, not the window."""
    hot = [
        (e.ts, e.type, e.ref_event_id, e.intent, e.ref_text, "hot")
        for e in store.hot
        if _labelled(e) and start_ts <= e.ts < end_ts
    ]
    return await store.run(_recent_from_disk, store, hot, start_ts, end_ts, limit)


async def query_replay(
    store: TieredStore,
    size: int,
    seed: int,
    exclude: Collection[str] = (),
    scan_rows: int | None = None,
) -> list[LabelledExample]:
    """A replay sample from cold: up to ``size`` labelled utterances (not in ``exclude``),
    stratified by intent and deterministic under ``seed``. Chosen in Arrow; only the
    sample becomes Python objects. With ``scan_rows``, at most that many cold rows are
    read (whole files, picked at random under ``seed``), so memory stays bounded
    however long the history; a label superseded in an unread file may then win."""
    if size <= 0:
        return []
    return await store.run(_replay_from_cold, store, size, seed, exclude, scan_rows)


async def query_unlabelled(
    store: TieredStore, start_ts: float, end_ts: float, limit: int, labelled: Collection[str]
) -> list[str]:
    """Texts of the newest ``limit`` utterances with event time in [start_ts,
    end_ts) whose id is not in ``labelled`` (the candidates for
    pseudo-labels). Every stored event is in warm until it is demoted, so
    warm alone answers; at most ``limit + len(labelled)`` rows are read."""
    if limit <= 0:
        return []
    rows = await store.run(
        store.warm.utterances_newest_first, start_ts, end_ts, limit + len(labelled)
    )
    return [text for event_id, text in rows if event_id not in labelled][:limit]


def _labelled(event: StoredEvent) -> bool:
    return event.type in _LABEL_RANK and event.intent is not None and event.ref_event_id is not None


def labelled_examples(events: Sequence[StoredEvent]) -> list[LabelledExample]:
    """The labelled examples in a batch of just-stored
    events (those whose utterance text is known)."""
    return [example for e in events if (example := _hot_example(e)) is not None]


def _hot_example(event: StoredEvent) -> LabelledExample | None:
    """The example a just-stored label or feedback makes; None without an intent or known text."""
    if event.type not in _LABEL_RANK or event.intent is None or event.ref_event_id is None:
        return None
    if not event.ref_text:
        return None
    return LabelledExample(event.ref_text, event.intent, event.ts, event.ref_event_id, "hot")


def merge_recent(
    own: Sequence[LabelledExample],
    others: Iterable[LabelledExample],
    start_ts: float,
    end_ts: float,
    limit: int | None = None,
) -> list[LabelledExample]:
    """``own`` (a ``query_recent`` answer) with examples from
    elsewhere (other replicas' partitions) in the same window: the
    latest label per utterance, oldest first, the newest ``limit``."""
    latest: dict[str, LabelledExample] = {}
    for example in (*own, *others):
        if start_ts <= example.ts < end_ts and (
            (seen := latest.get(example.utterance_id)) is None or example.ts >= seen.ts
        ):
            latest[example.utterance_id] = example
    examples = sorted(latest.values(), key=lambda e: (e.ts, e.utterance_id))
    return examples[-limit:] if limit is not None else examples


def _recent_from_disk(
    store: TieredStore, hot: list[Candidate], start_ts: float, end_ts: float, limit: int | None
) -> list[LabelledExample]:
    best: dict[str, Candidate] = {}
    for item in hot:
        _keep_latest(best, item)
    _join_warm_texts(store, best, list(best))
    for rows in store.warm.labels_newest_first(start_ts, end_ts, _WARM_CHUNK):
        refs = [row[2] for row in rows if row[2]]
        for ts, kind, ref, intent, text in rows:
            if ref:
                _keep_latest(best, (ts, kind, ref, intent, text, "warm"))
        _join_warm_texts(store, best, refs)
        oldest = rows[-1][0]  # nothing still unread is newer than this
        if (
            limit is not None
            and sum(1 for item in best.values() if item[4] and item[0] >= oldest) >= limit
        ):
            break
    examples = _to_examples(best)
    return examples[-limit:] if limit is not None else examples


def _join_warm_texts(store: TieredStore, best: dict[str, Candidate], refs: list[str]) -> None:
    """The label arrived before its utterance was stored (so it carries no text): join now."""
    missing = [ref for ref in refs if not best[ref][4]]
    if missing:
        texts = store.warm.utterance_texts(missing)
        for ref in missing:
            if ref in texts:
                best[ref] = (*best[ref][:4], texts[ref], *best[ref][5:])


def _replay_from_cold(
    store: TieredStore, size: int, seed: int, exclude: Collection[str], scan_rows: int | None
) -> list[LabelledExample]:
    try:
        return _sample_cold(
            store, _files_to_scan(store.warm.cold_files(), scan_rows, seed), size, seed, exclude
        )
    finally:
        # the scan's buffers: give them back, a daemon lives long
        pa.default_memory_pool().release_unused()


def _files_to_scan(
    files: list[tuple[str, int, float]], scan_rows: int | None, seed: int
) -> list[str]:
    if scan_rows is None or sum(rows for _, rows, _ in files) <= scan_rows:
        return [path for path, _, _ in files]
    chosen: list[str] = []
    total = 0
    for i in np.random.default_rng(seed).permutation(len(files)):
        path, rows, _ = files[i]
        if chosen and total + rows > scan_rows:
            continue
        chosen.append(path)
        total += rows
    return sorted(chosen)


def _sample_cold(
    store: TieredStore, paths: list[str], size: int, seed: int, exclude: Collection[str]
) -> list[LabelledExample]:
    is_label = (
        pc.field("type").isin(list(_LABEL_RANK))
        & pc.field("intent").is_valid()
        & pc.field("ref_event_id").is_valid()
    )
    labels = store.cold.read(paths, _LABEL_COLUMNS, where=is_label)
    if labels.num_rows == 0:
        return []
    # The latest label per utterance: sorted by utterance, newest (then
    # label over feedback) first, the first row of each utterance wins.
    labels = labels.append_column("rank", pc.equal(labels["type"], "label"))
    labels = labels.take(
        pc.sort_indices(
            labels, [("ref_event_id", "ascending"), ("ts", "descending"), ("rank", "descending")]
        )
    )
    refs = labels["ref_event_id"].combine_chunks()
    first = np.ones(len(refs), dtype=bool)
    first[1:] = pc.not_equal(refs[1:], refs[:-1]).to_numpy(zero_copy_only=False)
    latest = labels.filter(pa.array(first))
    if exclude:
        latest = latest.filter(
            pc.invert(
                pc.is_in(latest["ref_event_id"], value_set=pa.array(list(exclude), pa.string()))
            )
        )
    latest = _fill_cold_texts(store, latest, paths)
    latest = latest.filter(pc.is_valid(latest["ref_text"]))
    if latest.num_rows == 0:
        return []
    latest = latest.take(
        pc.sort_indices(latest, [("intent", "ascending"), ("ref_event_id", "ascending")])
    )
    codes = pc.dictionary_encode(latest["intent"]).combine_chunks().indices.to_numpy()
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]))
    picked = latest.take(pa.array(_round_robin(np.diff(bounds).tolist(), size, seed), pa.int64()))
    rows = zip(
        *(picked[c].to_pylist() for c in ("ref_text", "intent", "ts", "ref_event_id")), strict=True
    )
    return [LabelledExample(text, intent, ts, ref, "cold") for text, intent, ts, ref in rows]


def _fill_cold_texts(store: TieredStore, labels: pa.Table, paths: list[str]) -> pa.Table:
    """Labels stored without their utterance's text take
    it from the utterance in cold, read for them only."""
    missing = labels.filter(pc.is_null(labels["ref_text"]))["ref_event_id"]
    if len(missing) == 0:
        return labels
    wanted = pc.field("type") == "utterance"
    utterances = store.cold.read(
        paths,
        ["type", "event_id", "text"],
        where=wanted & pc.field("event_id").isin(missing.combine_chunks()),
    )
    texts = pc.take(
        utterances["text"],
        pc.index_in(labels["ref_event_id"], value_set=utterances["event_id"].combine_chunks()),
    )
    return labels.set_column(
        labels.schema.get_field_index("ref_text"),
        "ref_text",
        pc.coalesce(labels["ref_text"], texts),
    )
