"""Label Studio both ways (`driftd labels export | import`):
labelling requests to tasks, annotations back as labels.

The daemon publishes the predictions most worth a human label on ``topics.labeling_requests``.
``export`` reads that topic from its start to its end (a group-less consumer: it moves no committed
offset, so it can run any number of times) and writes Label Studio import tasks; ``import`` turns a
Label Studio JSON export into ``label`` events on the input topic, where they join their
predictions like any other label. The conversion itself is pure logic in :mod:`streams.labeling`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

# Kafka clients, faust (daemon.kafka) and datasketch (streams.labeling) are imported where
# used: every `driftd` command loads this module, and most of them need none of those.

__all__ = [
    "ExportResult",
    "ImportResult",
    "LabelsError",
    "bootstrap_of",
    "export_requests",
    "import_labels",
    "most_uncertain_first",
    "read_requests",
]


class LabelsError(Exception):
    """What went wrong, for the operator; ``exit_code``
    2 for bad input files, 1 for Kafka and the rest."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ExportResult:
    tasks: list[dict[str, Any]]
    skipped: list[str]  # records of the requests topic that are not requests, with the reason
    choices: list[str]
    choices_from: str  # "registry <version>" or "requests"


@dataclass
class ImportResult:
    events: list[dict[str, Any]]  # sent (or, dry run, that would be sent)
    skipped: list[str] = field(default_factory=list)
    topic: str = ""


def bootstrap_of(settings: Settings) -> str:
    """The brokers as the daemon reaches them (daemon/app.py):
    the embedded one on loopback, else the list."""
    return (
        f"127.0.0.1:{settings.kafka.embedded_port}"
        if settings.kafka.embedded
        else settings.kafka.bootstrap
    )


async def read_requests(
    bootstrap: str, topic: str, client_options: dict[str, Any], timeout_s: float = 60.0
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every labelling request on ``topic`` from its start to its end now (first of
    each event_id kept), and a reason per record that is not one. Raises LabelsError
    when the topic does not exist or the end is not reached within ``timeout_s``."""
    return parse_requests(await _read_topic(bootstrap, topic, client_options, timeout_s))


async def _read_topic(
    bootstrap: str, topic: str, client_options: dict[str, Any], timeout_s: float
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from its start to its end as of now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_options
    )
    try:
        await consumer.start()
        if topic not in await consumer.topics():  # listing all topics does not auto-create this one
            raise LabelsError(
                f"topic {topic} does not exist on {bootstrap} (labeling.enabled "
                "off, or nothing requested yet?)"
            )
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # Each partition's end is the high watermark of the first fetch response for it, not
        # ListOffsets: Tansu (the embedded broker) answers that with the start of the last batch.
        ends: dict[TopicPartition, int] = {}
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(ends) < len(partitions) or [
            tp for tp in partitions if await consumer.position(tp) < ends[tp]
        ]:
            if time.monotonic() > deadline:
                raise LabelsError(
                    f"read {len(records)} records of {topic} but did not reach its "
                    f"end within {timeout_s:.0f}s"
                )
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp in partitions:
                if tp not in ends and (highwater := consumer.highwater(tp)) is not None:
                    ends[tp] = highwater
            records.extend(
                r
                for tp, part in batch.items()
                for r in part
                if r.offset < ends.get(tp, r.offset + 1)
            )
    finally:
        await consumer.stop()
    return records


def parse_requests(
    records: list[ConsumerRecord[bytes, bytes]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The labelling requests among ``records`` in time order (first of each event_id kept),
    and a reason per record that is not one."""
    requests: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for record in sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset)):
        where = f"{record.topic}/{record.partition}/{record.offset}"
        try:
            value = json.loads(record.value) if record.value is not None else None
        except ValueError:
            skipped.append(f"{where}: not JSON")
            continue
        if not (
            isinstance(value, dict)
            and all(
                isinstance(value.get(k), str) and value[k]
                for k in ("event_id", "conversation_id", "text")
            )
        ):
            skipped.append(
                f"{where}: not a labelling request (event_id, conversation_id and "
                "text are required)"
            )
            continue
        # a redelivered prediction requests the same event again
        requests.setdefault(value["event_id"], value)
    return list(requests.values()), skipped


def most_uncertain_first(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests by uncertainty score, highest first (a labeller
    works the queue from the top); ties and requests without a
    numeric score keep their topic order, the latter at the end."""

    def key(request: dict[str, Any]) -> float:
        value = request.get("score")
        return (
            -float(value)
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            else math.inf
        )

    return sorted(requests, key=key)


def _registry_intents(settings: Settings) -> tuple[list[str], str] | None:
    """The intents of the registry's CURRENT version
    (its labels.json), when there is one to read."""
    from models.registry import Registry

    registry = Registry(settings.registry_dir)
    try:
        version = registry.current()
        if version is None:
            return None
        labels = json.loads(registry.path(version, "labels.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels):
        return list(labels), f"registry {version}"
    return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LabelsError(f"cannot write {path}: {exc}") from None


def export_requests(
    settings: Settings,
    output: Path,
    *,
    config_xml: Path | None = None,
    bootstrap: str | None = None,
    topic: str | None = None,
    timeout_s: float = 60.0,
) -> ExportResult:
    """Read the requests topic and write Label Studio tasks to
    ``output`` (and the labelling config to ``config_xml``)."""
    from aiokafka.errors import KafkaError

    from streams.labeling import label_studio_config, to_label_studio_tasks

    from .kafka import aiokafka_options

    target, topic = bootstrap or bootstrap_of(settings), topic or settings.topics.labeling_requests
    try:
        requests, skipped = asyncio.run(
            read_requests(target, topic, aiokafka_options(settings.kafka), timeout_s)
        )
    except (KafkaError, OSError) as exc:
        raise LabelsError(f"cannot read {topic} on {target}: {exc!r}") from None
    known = _registry_intents(settings)
    if known is not None:
        choices, choices_from = known
    else:
        seen = {
            item["intent"]
            for r in requests
            for item in r.get("topk") or []
            if isinstance(item, dict) and isinstance(item.get("intent"), str)
        }
        choices, choices_from = sorted(seen), "requests"
    tasks = to_label_studio_tasks(most_uncertain_first(requests), choices)
    if config_xml is not None:
        if not choices:
            raise LabelsError(
                f"no intents for {config_xml}: the registry has no current version "
                "with labels.json and no request names one"
            )
        _write_atomically(config_xml, label_studio_config(choices))
    _write_atomically(output, json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")
    return ExportResult(tasks, skipped, choices, choices_from)


async def _send(
    bootstrap: str, topic: str, events: list[dict[str, Any]], client_options: dict[str, Any]
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **client_options
    )
    try:
        await producer.start()
        futures = [
            await producer.send(topic, json.dumps(e).encode(), key=e["conversation_id"].encode())
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def import_labels(
    settings: Settings,
    export_path: Path,
    *,
    bootstrap: str | None = None,
    now: float | None = None,
    dry_run: bool = False,
) -> ImportResult:
    """Produce the label events of a Label Studio JSON
    export to the input topic, keyed by conversation_id."""
    from aiokafka.errors import KafkaError

    from streams.labeling import label_events_from_label_studio

    from .kafka import aiokafka_options

    try:
        export = json.loads(Path(export_path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabelsError(f"cannot read {export_path}: {exc.strerror or exc}", 2) from None
    except ValueError as exc:
        raise LabelsError(f"{export_path} is not JSON: {exc}", 2) from None
    try:
        events, skipped = label_events_from_label_studio(
            export,
            now=time.time() if now is None else now,
            max_event_bytes=settings.ingest.max_event_bytes,
        )
    except ValueError as exc:
        raise LabelsError(
            f"{export_path}: {exc} (export the project as JSON, not JSON_MIN or CSV)", 2
        ) from None
    topic = settings.topics.input
    if events and not dry_run:
        target = bootstrap or bootstrap_of(settings)
        try:
            asyncio.run(_send(target, topic, events, aiokafka_options(settings.kafka)))
        except (KafkaError, OSError) as exc:
            raise LabelsError(f"cannot send to {topic} on {target}: {exc!r}") from None
    return ImportResult(events, skipped, topic)
