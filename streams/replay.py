"""Replay an intent dataset onto Kafka as conversation events, with scheduled drift and late labels.

The examples come from a shipped dataset (:mod:`streams.datasets`) or an operator's labelled file
(:mod:`streams.labelled_files`; ``driftd replay --file``), whose intents the schedule then names.

:func:`plan_events` turns examples into a deterministic stream of utterance and label event dicts
(the :mod:`streams.schema` contract); a :class:`DriftSchedule` decides which intents may appear
when, so the daemon sees the traffic mix change. :func:`replay` produces any such stream to a topic.
"""

from __future__ import annotations

import asyncio
import bisect
import difflib
import itertools
import json
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from streams.datasets import Example

__all__ = ["DriftSchedule", "Phase", "ReplayStats", "plan_events", "replay"]

ALL = "*"
PRIORITIES = ("low", "normal", "high")
_START = re.compile(r"\d+", re.ASCII)


@dataclass(frozen=True)
class Phase:
    """From utterance ``start`` on, only ``intents`` may
    appear (``None``: any). ``names`` is what was written."""

    start: int
    names: tuple[str, ...]
    intents: frozenset[str] | None


@dataclass(frozen=True)
class DriftSchedule:
    """Phases ordered by start; the first starts at utterance 0. Parse one with :meth:`parse`."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        starts = [p.start for p in self.phases]
        if not starts or starts[0] != 0 or any(a >= b for a, b in itertools.pairwise(starts)):
            raise ValueError(f"phase starts must begin at 0 and strictly increase, got {starts}")

    @classmethod
    def unrestricted(cls) -> DriftSchedule:
        """No drift: every intent from the first utterance on."""
        return cls((Phase(0, (ALL,), None),))

    @classmethod
    def parse(
        cls,
        text: str,
        known_domains: Mapping[str, Sequence[str]],
        known_intents: set[str] | frozenset[str],
    ) -> DriftSchedule:
        """Parse ``"<start>=<name>,<name>;<start>=..."``;
        a name is a domain, an intent or ``*`` (all).

        Example: ``"0=banking,credit_cards;8000=*"``. Raises ValueError naming what is wrong.
        """
        hint = (
            "expected '<utterance index>=<domains or intents, comma separated, * "
            "for all>;...', e.g. '0=banking,credit_cards;8000=*'"
        )
        body = text.strip().rstrip(";")
        if not body:
            raise ValueError(f"empty drift schedule; {hint}")
        phases: list[Phase] = []
        for number, part in enumerate(body.split(";"), start=1):
            start_text, sep, names_text = part.partition("=")
            start_text = start_text.strip()
            if not sep or not _START.fullmatch(start_text):
                raise ValueError(
                    f"phase {number} {part.strip()!r} of drift schedule {text!r} is "
                    f"malformed; {hint}"
                )
            start = int(start_text)
            if not phases and start != 0:
                raise ValueError(
                    f"drift schedule {text!r} must start at utterance 0, its first "
                    f"phase starts at {start}"
                )
            if phases and start <= phases[-1].start:
                raise ValueError(
                    f"drift schedule {text!r}: phase starts must strictly increase, "
                    f"but {start} follows {phases[-1].start}"
                )
            names = tuple(name.strip() for name in names_text.split(","))
            if not all(names):
                raise ValueError(
                    f"phase {number} {part.strip()!r} of drift schedule {text!r} "
                    f"has an empty name; {hint}"
                )
            phases.append(Phase(start, names, _resolve(names, known_domains, known_intents)))
        return cls(tuple(phases))

    def phase_at(self, index: int) -> int:
        """Number (0-based) of the phase that utterance ``index`` falls in."""
        if index < 0:
            raise ValueError(f"utterance index must be >= 0, got {index}")
        return bisect.bisect_right([p.start for p in self.phases], index) - 1

    def intents_at(self, index: int) -> frozenset[str] | None:
        """Intents allowed at utterance ``index``; ``None`` means all."""
        return self.phases[self.phase_at(index)].intents

    def __str__(self) -> str:
        return ";".join(f"{p.start}={','.join(p.names)}" for p in self.phases)


def _resolve(
    names: tuple[str, ...],
    known_domains: Mapping[str, Sequence[str]],
    known_intents: set[str] | frozenset[str],
) -> frozenset[str] | None:
    if ALL in names:
        return None
    intents: set[str] = set()
    for name in names:
        if name in known_domains:
            intents.update(known_domains[name])
        elif name in known_intents:
            intents.add(name)
        else:
            raise ValueError(_unknown_name_message(name, known_domains, known_intents))
    return frozenset(intents)


def _unknown_name_message(
    name: str, known_domains: Mapping[str, Sequence[str]], known_intents: set[str] | frozenset[str]
) -> str:
    choices = sorted(known_domains) + sorted(known_intents)
    close = difflib.get_close_matches(name, choices, n=3)
    message = f"unknown domain or intent {name!r} in drift schedule"
    if close:
        message += f" (did you mean {', '.join(map(repr, close))}?)"
    if known_domains:
        message += f"; domains: {', '.join(sorted(known_domains))}"
    sample = sorted(known_intents)[:8]
    more = f", ... ({len(known_intents)} in all)" if len(known_intents) > len(sample) else ""
    return message + f"; intents: {', '.join(sample)}{more}; or * for all"


class _Pools:
    """Draws examples in one shuffled order, restricted to the intents the current phase allows.

    A single "used" set spans the phases, so when a phase widens (say to ``*``) the stream goes
    on with examples not sent yet instead of starting the shuffled order over. A phase takes up
    the shuffled order where the stream is, not at its start: starting at the top would send
    every example the previous phase skipped first (every new-domain one, after a widening to
    ``*``), so the traffic after a drift would be all new intents for a while instead of the mix
    the phase names. A phase that has used up its allowed examples starts a new cycle over them.
    """

    def __init__(self, examples: list[Example], order: list[int]) -> None:
        self._examples = examples
        self._order = order
        # example -> its place in the shuffled order
        self._place = {j: p for p, j in enumerate(order)}
        self._pools: dict[int, list[int]] = {}
        self._places: dict[int, list[int]] = {}
        self._cursor: dict[int, int] = {}
        self._used: set[int] = set()
        self._active: int | None = None
        self._last_place = -1  # the shuffled-order place of the last example sent

    def add(self, phase: int, intents: frozenset[str] | None) -> int:
        pool = [j for j in self._order if intents is None or self._examples[j].intent in intents]
        self._pools[phase], self._places[phase], self._cursor[phase] = (
            pool,
            [self._place[j] for j in pool],
            0,
        )
        return len(pool)

    def draw(self, phase: int) -> Example:
        pool = self._pools[phase]
        if phase != self._active:  # the phase begins: on from the last example sent, wrapping round
            self._active = phase
            self._cursor[phase] = bisect.bisect_right(self._places[phase], self._last_place) % len(
                pool
            )
        cursor = self._cursor[phase]
        for _ in range(len(pool)):
            if pool[cursor] not in self._used:
                break
            cursor = (cursor + 1) % len(pool)
        else:  # every allowed example was sent: cycle
            self._used.difference_update(pool)
        chosen = pool[cursor]
        self._used.add(chosen)
        self._cursor[phase] = (cursor + 1) % len(pool)
        self._last_place = self._place[chosen]
        return self._examples[chosen]


def plan_events(
    examples: Iterable[Example],
    schedule: DriftSchedule,
    *,
    limit: int,
    label_fraction: float,
    label_delay: int,
    seed: int,
    start_ts: float | None = None,
    priority_of: Callable[[Example], str] | None = None,
    dataset: str | None = None,
    ts_step: float = 0.001,
) -> Iterator[dict[str, Any]]:
    """The events of one replay, in send order; the same arguments always give the same events.

    Utterance ``i`` (0 <= i < limit; ``limit`` 0 means one per example) is the next
    example, in an order shuffled once under ``seed``, whose intent the schedule allows
    at ``i``. With probability ``label_fraction`` it gets a label event, sent right after
    utterance ``i + label_delay`` (or at the end, for labels still pending then). ``ts``
    is ``start_ts + i * ts_step`` (labels take the ts of the utterance they follow);
    ``start_ts`` defaults to now. Arguments are checked here, before the first event.
    """
    pool_source = [ex for ex in examples if ex.text]  # the schema refuses an empty utterance
    if not pool_source:
        raise ValueError("no examples to replay")
    _check_plan_arguments(limit, label_fraction, label_delay, start_ts, ts_step)
    count = limit or len(pool_source)
    rng = random.Random(seed)
    pools = _phase_pools(pool_source, schedule, rng, count)
    t0 = time.time() if start_ts is None else float(start_ts)
    return _generate(
        pools,
        schedule,
        rng,
        count,
        label_fraction,
        label_delay,
        seed,
        t0,
        ts_step,
        priority_of,
        dataset,
    )


def _check_plan_arguments(
    limit: int, label_fraction: float, label_delay: int, start_ts: float | None, ts_step: float
) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = one utterance per example), got {limit}")
    if not 0.0 <= label_fraction <= 1.0:
        raise ValueError(f"label_fraction must be within [0, 1], got {label_fraction}")
    if label_delay < 0:
        raise ValueError(f"label_delay must be >= 0, got {label_delay}")
    if (start_ts is not None and start_ts < 0) or ts_step < 0:
        raise ValueError(
            "start_ts and ts_step must be >= 0 (event times are epoch seconds), "
            f"got {start_ts} and {ts_step}"
        )


def _phase_pools(
    examples: list[Example], schedule: DriftSchedule, rng: random.Random, count: int
) -> _Pools:
    """Shuffle ``examples`` once with ``rng`` and give each phase reached before ``count`` its pool.

    Raises ValueError for a reached phase that allows no example.
    """
    order = list(range(len(examples)))
    rng.shuffle(order)
    pools = _Pools(examples, order)
    for k, phase in enumerate(schedule.phases):
        if phase.start >= count:
            break  # never reached: an empty pool there is no error
        if not pools.add(k, phase.intents):
            raise ValueError(
                f"drift phase {k} ({phase.start}={','.join(phase.names)}) matches "
                "no example of this split"
            )
    return pools


def _generate(
    pools: _Pools,
    schedule: DriftSchedule,
    rng: random.Random,
    count: int,
    label_fraction: float,
    label_delay: int,
    seed: int,
    t0: float,
    ts_step: float,
    priority_of: Callable[[Example], str] | None,
    dataset: str | None,
) -> Iterator[dict[str, Any]]:
    # (index of the utterance it follows, label); due order
    pending: deque[tuple[int, dict[str, Any]]] = deque()
    ts = t0
    for i in range(count):
        k = schedule.phase_at(i)
        example = pools.draw(k)
        priority = priority_of(example) if priority_of else "normal"
        if priority not in PRIORITIES:
            raise ValueError(
                f"priority_of returned {priority!r}; valid priorities: {', '.join(PRIORITIES)}"
            )
        ts = t0 + i * ts_step
        utterance_id = f"{seed}-u{i}"
        meta = {"dataset": dataset, "phase": k}
        yield {
            "event_id": utterance_id,
            "type": "utterance",
            "conversation_id": f"c{i}",
            "turn": 0,
            "ts": ts,
            "priority": priority,
            "meta": meta,
            "text": example.text,
        }
        if rng.random() < label_fraction:
            label = {
                "event_id": f"{seed}-l{i}",
                "type": "label",
                "conversation_id": f"c{i}",
                "turn": 1,
                "priority": priority,
                "meta": dict(meta),
                "ref_event_id": utterance_id,
                "intent": example.intent,
            }
            pending.append((i + label_delay, label))
        while pending and pending[0][0] <= i:
            yield {**pending.popleft()[1], "ts": ts}
    while pending:  # labels whose delay reaches past the last utterance
        yield {**pending.popleft()[1], "ts": ts}


@dataclass
class ReplayStats:
    """What one :func:`replay` delivered; ``seconds`` runs
    from the first send to the last acknowledgement."""

    utterances: int
    labels: int
    seconds: float
    other: int = 0  # feedback or any other event type passed through

    @property
    def sent(self) -> int:
        return self.utterances + self.labels + self.other


# With a rate limit, events go out in chunks of about this many seconds' worth, then the loop sleeps
# until the chunk's due time: one sleep per event would
# cost more than the sends at thousands per second.
_CHUNK_SECONDS = 0.05
_UNLIMITED_CHUNK = 500


def _chunk_size(rate: float) -> int:
    return max(1, int(rate * _CHUNK_SECONDS)) if rate > 0 else _UNLIMITED_CHUNK


def _pace_delay(started: float, sent: int, rate: float, now: float) -> float:
    """Seconds to sleep so ``sent`` events took at least ``sent / rate`` seconds since ``started``.

    Measured against the start, not the previous chunk,
    so oversleeping or slow sends never add up to drift.
    """
    if rate <= 0:
        return 0.0
    return max(0.0, started + sent / rate - now)


def _reap(pending: list[asyncio.Future[Any]]) -> list[asyncio.Future[Any]]:
    """Drop acknowledged deliveries; raise the first failed one so a broken replay stops early."""
    still = []
    for fut in pending:
        if not fut.done():
            still.append(fut)
        elif (error := fut.exception()) is not None:
            raise error
    return still


async def replay(
    bootstrap: str,
    topic: str,
    events: Iterable[dict[str, Any]],
    *,
    rate: float = 0,
    total: int | None = None,
    client_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> ReplayStats:
    """Produce ``events`` to ``topic``, keyed by conversation,
    at most ``rate`` events/s (0: unlimited).

    Returns once every event is acknowledged by the broker (acks=all); a failed delivery raises.
    ``total`` only sizes the progress bar. ``client_options`` are extra AIOKafkaProducer arguments
    (security settings) and win over the defaults here.
    """
    if rate < 0:
        raise ValueError(f"rate must be >= 0 events/s (0 = unlimited), got {rate}")
    # No idempotence: the embedded broker rejects InitProducerId. Ordering per key still holds with
    # acks=all since aiokafka keeps one in-flight batch per partition.
    options: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "enable_idempotence": False,
        **(client_options or {}),
    }
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
    await producer.start()
    try:
        with tqdm(total=total, unit="ev", desc=f"replay -> {topic}", disable=not progress) as bar:
            return await _send_paced(producer, topic, events, rate, bar)
    finally:
        await producer.stop()


async def _send_paced(
    producer: AIOKafkaProducer,
    topic: str,
    events: Iterable[dict[str, Any]],
    rate: float,
    bar: tqdm[Any],
) -> ReplayStats:
    """Send ``events`` in chunks paced to ``rate``; return once the broker acknowledged them all."""
    chunk = _chunk_size(rate)
    counts = {"utterance": 0, "label": 0}
    other = 0
    started = time.perf_counter()
    pending: list[asyncio.Future[Any]] = []
    in_chunk = 0
    for sent, event in enumerate(events, start=1):
        value = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        key = str(event["conversation_id"]).encode("utf-8")
        pending.append(await producer.send(topic, value=value, key=key))
        kind = event.get("type")
        if kind in counts:
            counts[kind] += 1
        else:
            other += 1
        in_chunk += 1
        if in_chunk == chunk:
            bar.update(in_chunk)
            in_chunk = 0
            pending = _reap(pending)
            # sleep(0) still yields when unlimited, so
            # the sender task ships batches as we go.
            await asyncio.sleep(_pace_delay(started, sent, rate, time.perf_counter()))
    bar.update(in_chunk)
    await asyncio.gather(*pending)
    seconds = time.perf_counter() - started
    return ReplayStats(
        utterances=counts["utterance"], labels=counts["label"], seconds=seconds, other=other
    )
