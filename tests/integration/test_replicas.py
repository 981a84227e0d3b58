"""Three daemon replicas in one consumer group on the
real embedded broker (issue 7, docs/scaling.md).

The registry is shared, once as one directory (a filesystem every replica mounts) and once as an s3://
bucket (moto on loopback) with a local working copy per replica; each replica has its own data dir.
The replicas must split the input partitions; a CLINC150 drift (5 domains, then all
10, labelled) must start exactly one decay-triggered fine-tune (and that episode's
follow-ups), all on the one trainer, which also learns the examples the other two
forward; all three must end up serving the promoted version. Then the trainer is
killed (SIGKILL) while events keep coming: its partitions, and the trainer role with
partition 0, move to the two left, and every event produced is stored by some replica.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import s3fs

from models.registry import Registry
from models.registry_mirror import MirroredRegistry
from streams.datasets import groups, load_examples
from tests.integration.harness import DaemonProcess, produce, stored_event_ids, unique, valid_event
from tests.integration.test_learning_loop import CLINC_SEED_DOMAINS, events_of, publish_seed_model

TOKEN = "replica-test-token"
PARTITIONS = 6
S3_URL = "s3://driftd-registry/models"
REPLICA_ENV = {
    "DRIFTD_LEARNING__FOLLOWUP_LABELS": "1000",  # the episode's follow-ups, on the trainer too
    "DRIFTD_LEARNING__FOLLOWUP_QUIET_S": "5",
    "DRIFTD_MONITOR__COOLDOWN_S": "10",
    "DRIFTD_MODELS__SYNC_INTERVAL_S": "2",
    "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
}


def status(daemon: DaemonProcess) -> dict[str, Any]:
    request = urllib.request.Request(
        daemon.url + "/admin/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def partitions_of(replicas: list[DaemonProcess]) -> list[list[int]]:
    return [status(r)["replica"]["input_partitions"] for r in replicas]


def wait_for_split(replicas: list[DaemonProcess], timeout_s: float) -> list[list[int]]:
    """Until every replica owns some partitions and together they own each exactly once."""
    deadline = time.monotonic() + timeout_s
    while True:
        split = partitions_of(replicas)
        if all(split) and sorted(p for ps in split for p in ps) == list(range(PARTITIONS)):
            return split
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the partitions were not split among {len(replicas)} replicas: {split}"
            )
        time.sleep(1)


def shared_registry(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed_examples: list[Any]
) -> tuple[str, Callable[[int], dict[str, str]], Callable[[str], dict[str, Any]]]:
    """The seed version published to the shared registry; the env
    that points replica i at it; a reader of a version's manifest."""
    seed_version, _ = publish_seed_model(tmp_path / "registry", seed_examples)
    if kind == "shared_dir":  # one directory every replica mounts
        return (
            seed_version,
            lambda i: {"DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry")},
            lambda v: Registry(tmp_path / "registry").verify(v).info,
        )
    # replicas on separate hosts: a bucket, and a local working copy each
    options = request.getfixturevalue("s3")
    s3fs.S3FileSystem(**options).mkdir("driftd-registry")
    # uploads the seed
    MirroredRegistry(tmp_path / "registry", S3_URL, options).set_current(seed_version)
    env = lambda i: {  # noqa: E731 - a one-line helper
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / f"replica{i}" / "registry"),
        "DRIFTD_MODELS__REGISTRY_URL": S3_URL,
        "DRIFTD_MODELS__REGISTRY_STORAGE_OPTIONS": json.dumps(options),
    }
    return (
        seed_version,
        env,
        lambda v: MirroredRegistry(tmp_path / "reader", S3_URL, options).verify(v).info,
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("registry_kind", ["shared_dir", "s3"])
def test_three_replicas_split_the_partitions_train_once_serve_the_same_version_and_survive_a_kill(
    broker: Any, tmp_path: Path, request: pytest.FixtureRequest, registry_kind: str
) -> None:
    domains = groups("clinc150")
    seed_intents = {i for d in CLINC_SEED_DOMAINS for i in domains[d]}
    everything = {i for intents in domains.values() for i in intents}
    train = load_examples("clinc150", "train")
    seed_version, registry_env, version_info = shared_registry(
        registry_kind, tmp_path, request, [e for e in train if e.intent in seed_intents]
    )
    topic = unique("replicas")
    replicas = [
        DaemonProcess(
            broker.bootstrap,
            tmp_path / f"replica{i}",
            topic,
            partitions=PARTITIONS,
            group=f"{topic}-group",
            extra_env={**REPLICA_ENV, **registry_env(i)},
        )
        for i in range(3)
    ]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(timeout_s=120, model=True)
        split = wait_for_split(replicas, 90)
        trainers = [i for i, r in enumerate(replicas) if status(r)["replica"]["trainer"]]
        assert len(trainers) == 1 and 0 in split[trainers[0]], (
            f"one trainer, the owner of partition 0: {trainers}, {split}"
        )
        trainer = replicas[trainers[0]]

        # The drift, keyed by conversation: every replica sees part of it and its labels.
        stream = events_of(
            train, seed_intents, everything, before=2400, total=7000, seed=3, run=topic
        )
        asyncio.run(
            produce(
                broker.bootstrap,
                topic,
                [json.dumps(e).encode() for e in stream],
                rate=1000,
                keys=[e["conversation_id"].encode() for e in stream],
            )
        )

        def settled_on_one_new_version() -> bool:
            training = status(trainer)["training"]
            serving = {status(r)["model"]["version"] for r in replicas}
            return (
                training["state"] == "idle"
                and not training["followup_pending"]
                and len(serving) == 1
                and seed_version not in serving
            )

        trainer.wait_until(
            settled_on_one_new_version,
            420,
            "the episode to end with every replica serving the promoted version",
        )
        # late decisions (each replica's own detector) must not start another episode
        time.sleep(10)
        runs = [r.metrics() for r in replicas]
        decay_runs = [m["driftd_finetune_runs_total{trigger=decay}"] for m in runs]
        fine_tunes = [
            sum(v for k, v in m.items() if k.startswith("driftd_finetune_runs_total")) for m in runs
        ]
        # One decay episode, on the trainer alone (its
        # follow-ups learn the labels that keep coming).
        assert decay_runs[trainers[0]] == 1 and sum(decay_runs) == 1, (
            f"decay-triggered fine-tunes per replica: {decay_runs}"
        )
        assert sum(fine_tunes) == fine_tunes[trainers[0]], f"fine-tunes per replica: {fine_tunes}"
        trainer_metrics = runs[trainers[0]]
        assert trainer_metrics["driftd_finetune_results_total{result=swapped}"] >= 1
        assert sum(m["driftd_replica_trainer"] for m in runs) == 1
        received = trainer_metrics["driftd_replica_received_total{kind=examples}"]
        assert received > 0, "the trainer got no labelled examples from the other replicas"
        data = version_info(status(trainer)["model"]["version"])["data"]
        print(
            f"\n  split {split}; trainer replica {trainers[0]}; fine-tunes "
            f"{fine_tunes}; {received:.0f} examples forwarded to it; "
            f"the fine-tune's recent examples: {data['recent']}, "
            f"{data['from_replicas']} of them from the other replicas"
        )
        # The others own 2/3 of the partitions: their
        # examples are most of what the trainer learnt from.
        assert data["from_replicas"] >= 0.4 * data["recent"], data
        followers_synced = [
            runs[i].get("driftd_model_syncs_total", 0) for i in range(3) if i != trainers[0]
        ]
        assert all(n >= 1 for n in followers_synced), (
            f"followers did not swap through the registry: {followers_synced}"
        )

        # Failover: the trainer dies while events keep coming.
        survivors = [r for r in replicas if r is not trainer]
        more = [valid_event(i, run=f"{topic}-after") for i in range(4000)]
        asyncio.run(_produce_and_kill(broker.bootstrap, topic, more, trainer))
        split_after = wait_for_split(survivors, 120)
        new_trainers = [i for i, r in enumerate(survivors) if status(r)["replica"]["trainer"]]
        assert len(new_trainers) == 1 and 0 in split_after[new_trainers[0]], (
            f"the trainer role did not move with partition 0: {split_after}"
        )
        wanted = {e["event_id"] for e in stream} | {e["event_id"] for e in more}

        def all_stored() -> bool:
            held: set[str] = set()
            for replica in replicas:
                held |= set(stored_event_ids(replica.data_dir))
            return wanted <= held

        survivors[0].wait_until(all_stored, 180, f"all {len(wanted)} events stored by some replica")
        print(
            f"  after the kill: split {split_after}; the trainer is now survivor "
            f"{new_trainers[0]}; {len(wanted)} events, none lost"
        )
    finally:
        for replica in replicas:
            replica.stop_quietly()


async def _produce_and_kill(
    bootstrap: str, topic: str, events: list[dict[str, Any]], victim: DaemonProcess
) -> None:
    sending = asyncio.ensure_future(
        produce(
            bootstrap,
            topic,
            [json.dumps(e).encode() for e in events],
            rate=800,
            keys=[e["conversation_id"].encode() for e in events],
        )
    )
    await asyncio.sleep(1.5)
    victim.kill()
    await sending
