"""Ingest throughput: the full driftd path against a bare faust agent and a bare aiokafka consumer.

One run, one embedded broker (Tansu), one topic pre-filled once with N realistic CLINC150 events
(utterances and their late labels, from :func:`streams.replay.plan_events`). Three contestants then
read the whole topic from the beginning, one after the other, each in its own process and with its
own consumer group:

  (a) driftd      the real daemon (``python -m daemon run``): decode + validate + DLQ + SQLite warm
                  write (synchronous=FULL) + hot tier + metrics; progress read from /metrics
  (b) faust       a bare faust agent: ``async for value in stream: json.loads(value)``
  (c) aiokafka    a bare AIOKafkaConsumer: ``getmany`` + ``json.loads`` per value

Each is timed from its first consumed (for driftd: stored) record to its last, so process start and
the group join are excluded: rate = (N - done at
first sight) / (time of last - time of first sight).

    .venv/bin/python bench/ingest.py [--events N]
    [--partitions P] [--batch-size B] [--port PORT] [--keep]

The goals (full path >= 0.8x bare faust, >= 10,000 events/s) are printed as PASS/FAIL;
the exit code is 0 either way (non-zero only when the benchmark itself fails). On a small
shared VM the figures move by 10-20% from run to run. DRIFTD_BENCH_PROFILE=/path/out.prof
runs the daemon under cProfile (slow; for where-the-time-goes only). --keep leaves the
temp dir (daemon/broker logs, warm store) behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, cpu_seconds, exit_on_sigterm, positive_int
from daemon.broker import die_with_parent, free_port
from daemon.metrics_scrape import family_total, scrape

TOPIC = "bench-conversations"
GOAL_RATIO = 0.8  # full path >= 0.8x bare faust
GOAL_RATE = 10_000.0  # full path >= 10,000 events/s
SESSION_S, REBALANCE_S, HEARTBEAT_S = 6, 6, 1
CONTESTANT_TIMEOUT_S = 150.0


# -- helpers ---------------------------------------------------------------------------------------


def _leader_topic(group: str) -> str:
    return f"{group}-__assignor-__leader"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- filling the topic -----------------------------------------------------------------------------


def fill_topic(bootstrap: str, topic: str, n: int) -> tuple[int, int, float]:
    """Produce n CLINC150 events (as the replay does: JSON, keyed
    by conversation); returns (utterances, labels, seconds)."""
    from daemon.config import ReplaySettings
    from streams.datasets import groups, load_examples
    from streams.replay import DriftSchedule, plan_events, replay

    r = ReplaySettings()
    examples = load_examples(r.dataset, "train", r.data_dir)
    schedule = DriftSchedule.parse(
        r.schedule, groups(r.dataset, r.data_dir), {e.intent for e in examples}
    )
    # labels follow about half of the utterances; cut at n below
    utterances = int(n / (1 + r.label_fraction)) + 1000
    events = itertools.islice(
        plan_events(
            examples,
            schedule,
            limit=utterances,
            label_fraction=r.label_fraction,
            label_delay=r.label_delay,
            seed=r.seed,
        ),
        n,
    )
    stats = asyncio.run(
        replay(
            bootstrap,
            topic,
            events,
            rate=0,
            total=n,
            client_options={"linger_ms": 20, "max_batch_size": 256 * 1024},
            progress=False,
        )
    )
    if stats.sent != n:
        raise RuntimeError(f"filled {stats.sent} events, wanted {n}")
    return stats.utterances, stats.labels, stats.seconds


# -- (a) the full daemon ---------------------------------------------------------------------------


def publish_model(registry_dir: Path) -> str:
    """A small real model (5 CLINC150 domains, 3 epochs)
    made current, so (a) predicts every utterance."""
    from models.export import build_version_files
    from models.registry import Registry
    from models.train import TrainSettings, train_classifier
    from streams.datasets import groups, load_examples

    domains = groups("clinc150")
    intents = {
        i
        for d in ("banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute")
        for i in domains[d]
    }
    chosen = [e for e in load_examples("clinc150", "train") if e.intent in intents]
    result = train_classifier(
        [e.text for e in chosen], [e.intent for e in chosen], settings=TrainSettings(epochs=3)
    )
    files, _ = build_version_files(
        result.model, result.featurizer, result.labels, [e.text for e in chosen[:32]]
    )
    registry = Registry(registry_dir)
    version = registry.publish(files, parent=None, info={"source": "bench"}).version
    registry.set_current(version)
    return version


def run_daemon(
    bootstrap: str,
    broker_pid: int | None,
    topic: str,
    n: int,
    partitions: int,
    batch_size: int,
    work: Path,
    procs: list[subprocess.Popen[bytes]],
    registry_dir: Path,
    name: str = "daemon",
) -> dict[str, Any]:
    data_dir = work / name
    data_dir.mkdir()
    web_port = free_port()
    group = f"bench-driftd-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DRIFTD_KAFKA__BOOTSTRAP": bootstrap,
        "DRIFTD_KAFKA__GROUP_ID": group,
        "DRIFTD_KAFKA__SESSION_TIMEOUT_S": str(SESSION_S),
        "DRIFTD_KAFKA__REBALANCE_TIMEOUT_S": str(REBALANCE_S),
        "DRIFTD_KAFKA__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "DRIFTD_TOPICS__INPUT": topic,
        "DRIFTD_TOPICS__DLQ": f"{topic}.dlq",
        "DRIFTD_TOPICS__PARTITIONS": str(partitions),
        "DRIFTD_DAEMON__DATA_DIR": str(data_dir),
        "DRIFTD_DAEMON__STATS_INTERVAL_S": "1",
        "DRIFTD_WEB__HOST": "127.0.0.1",
        "DRIFTD_WEB__PORT": str(web_port),
        "DRIFTD_INGEST__BATCH_SIZE": str(batch_size),
        "DRIFTD_TIERS__WARM_SYNCHRONOUS": "FULL",
        "DRIFTD_MODELS__BOOTSTRAP": "false",
        "DRIFTD_MODELS__REGISTRY_DIR": str(registry_dir),
    }
    env.pop("DRIFTD_CONFIG", None)
    cmd = [sys.executable, "-m", "daemon", "run"]
    # cProfile the daemon: DRIFTD_BENCH_PROFILE=/path/out.prof
    if os.environ.get("DRIFTD_BENCH_PROFILE"):
        cmd = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            os.environ["DRIFTD_BENCH_PROFILE"],
            "-m",
            "daemon",
            "run",
        ]
    log_path = work / f"{name}.log"
    url = f"http://127.0.0.1:{web_port}/metrics"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    procs.append(proc)
    t_first = c_first = None
    deadline = started + CONTESTANT_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited with code {proc.returncode}; its log "
                    f"ends:\n{_tail(log_path)}"
                )
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"the daemon did not store {n} events within "
                    f"{CONTESTANT_TIMEOUT_S:.0f}s; its log ends:\n{_tail(log_path)}"
                )
            try:
                count = family_total(scrape(url), "driftd_events_total")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                count = 0.0
            now = time.perf_counter()
            if count > 0 and t_first is None:
                t_first, c_first = now, count
                cpu_first = (cpu_seconds(proc.pid), cpu_seconds(broker_pid))
            if count >= n:
                t_last = now
                cpu_last = (cpu_seconds(proc.pid), cpu_seconds(broker_pid))
                predicted = scrape(url).get("driftd_predictions_total", 0.0)
                break
            # a scrape costs the daemon ~1-2 ms of its event loop: keep the probe light
            time.sleep(0.1)
    finally:
        _stop(proc)
    assert t_first is not None and c_first is not None
    result: dict[str, Any] = {
        "rate": (n - c_first) / (t_last - t_first) if t_last > t_first else float("nan"),
        "seconds": t_last - t_first,
        "startup": t_first - started,
        "cpu": cpu_last[0] - cpu_first[0],
        "broker_cpu": cpu_last[1] - cpu_first[1],
        "exit": proc.returncode,
        "predicted": predicted,
    }
    # Cross-check from the warm store itself: every row
    # carries the time its batch began to be handled.
    with sqlite3.connect(data_dir / "warm.sqlite3") as db:
        rows, lo, hi = db.execute(
            "SELECT COUNT(*), MIN(ingested_at), MAX(ingested_at) FROM events"
        ).fetchone()
        last_batch = db.execute(
            "SELECT COUNT(*) FROM events WHERE ingested_at = ?", (hi,)
        ).fetchone()[0]
        batches = db.execute("SELECT COUNT(DISTINCT ingested_at) FROM events").fetchone()[0]
    result.update(
        warm_rows=rows,
        warm_batches=batches,
        warm_rate=(rows - last_batch) / (hi - lo) if hi and hi > lo else float("nan"),
    )
    return result


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- (b) and (c): the bare contestants, each in a child process running this file ------------------


def run_child(
    role: str,
    group: str,
    bootstrap: str,
    broker_pid: int | None,
    topic: str,
    n: int,
    partitions: int,
    work: Path,
    procs: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    out = work / f"{role}.json"
    log_path = work / f"{role}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        role,
        "--group",
        group,
        "--bootstrap",
        bootstrap,
        "--broker-pid",
        str(broker_pid or 0),
        "--topic",
        topic,
        "--events",
        str(n),
        "--partitions",
        str(partitions),
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    procs.append(proc)
    try:
        proc.wait(CONTESTANT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise TimeoutError(
            f"{role} did not consume {n} events within {CONTESTANT_TIMEOUT_S:.0f}s; "
            f"its log ends:\n{_tail(log_path)}"
        ) from None
    if not out.is_file():
        raise RuntimeError(
            f"{role} exited with code {proc.returncode} without a result; its log "
            f"ends:\n{_tail(log_path)}"
        )
    result = json.loads(out.read_text())
    # perf_counter is CLOCK_MONOTONIC: comparable across processes on Linux
    result["startup"] = result["t_first"] - started
    result["rate"] = (n - result["n_first"]) / (result["t_last"] - result["t_first"])
    result["seconds"] = result["t_last"] - result["t_first"]
    result["cpu"] = result["cpu_last"] - result["cpu_first"]
    result["broker_cpu"] = result["broker_cpu_last"] - result["broker_cpu_first"]
    result["exit"] = proc.returncode
    return result


def _child_faust(args: argparse.Namespace) -> None:
    import faust

    app_id = args.group
    app = faust.App(
        app_id,
        broker=f"kafka://{args.bootstrap}",
        datadir=str(Path(args.work) / f"faust-{app_id}"),
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_S,
        broker_rebalance_timeout=REBALANCE_S,
        broker_heartbeat_interval=HEARTBEAT_S,
    )
    topic = app.topic(
        args.topic, value_serializer="raw", key_serializer="raw", partitions=args.partitions
    )
    n = args.events
    state: dict[str, Any] = {"count": 0}

    @app.agent(topic, name="bench.bare")
    async def bare(stream: Any) -> None:
        count = 0
        async for value in stream:
            json.loads(value)
            count += 1
            if count == 1:
                state["first"] = _mark(args.broker_pid)
            elif count == n:
                _write_result(args.out, state["first"], 1, _mark(args.broker_pid), count)
                os.kill(os.getpid(), signal.SIGTERM)  # the worker stops gracefully

    worker = faust.Worker(
        app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False
    )
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()


def _child_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer

    async def consume() -> None:
        consumer = AIOKafkaConsumer(
            args.topic,
            bootstrap_servers=args.bootstrap,
            group_id=args.group,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_S * 1000,
            rebalance_timeout_ms=REBALANCE_S * 1000,
            heartbeat_interval_ms=HEARTBEAT_S * 1000,
        )
        await consumer.start()
        try:
            count, first, n_first, loads = 0, None, 0, json.loads
            while count < args.events:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for records in batches.values():
                    for record in records:
                        loads(record.value)
                    count += len(records)
                if first is None and count:
                    first, n_first = _mark(args.broker_pid), count
            last = _mark(args.broker_pid)
        finally:
            await consumer.stop()
        _write_result(args.out, first, n_first, last, count)

    asyncio.run(consume())


def _mark(broker_pid: int) -> tuple[float, float, float]:
    """(monotonic time, own CPU seconds, broker CPU seconds)."""
    return time.perf_counter(), time.process_time(), cpu_seconds(broker_pid)


def _write_result(
    path: str,
    first: tuple[float, float, float],
    n_first: int,
    last: tuple[float, float, float],
    count: int,
) -> None:
    result = {"n_first": n_first, "count": count}
    for name, mark in (("first", first), ("last", last)):
        result.update({f"t_{name}": mark[0], f"cpu_{name}": mark[1], f"broker_cpu_{name}": mark[2]})
    Path(path).write_text(json.dumps(result))


def _report(name: str, r: dict[str, Any], verb: str) -> None:
    secs = r["seconds"]
    print(
        f"{name:<21}: {r['rate']:>9,.0f} events/s  ({verb} in {secs:.2f}s after "
        f"the first; startup+join {r['startup']:.1f}s excluded; "
        f"CPU in the window: itself {r['cpu'] / secs:.2f} cores, broker "
        f"{r['broker_cpu'] / secs:.2f} cores)"
    )


# -- the run ---------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    from daemon.broker import EmbeddedBroker, TopicSpec, ensure_topics_sync

    n, partitions = args.events, args.partitions
    print(
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{cpu_model()}, Python {platform.python_version()}"
    )
    print(f"N = {n:,} events, {partitions} partitions, driftd batch size {args.batch_size}")
    work = Path(tempfile.mkdtemp(prefix="driftd-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    broker = None
    try:
        port = args.port or free_port()
        broker = EmbeddedBroker(port, log_path=work / "broker.log").start()
        bootstrap = broker.bootstrap
        broker_pid = broker.pid
        tag = uuid.uuid4().hex[:8]
        faust_group, kafka_group = f"bench-faust-{tag}", f"bench-aiokafka-{tag}"
        ensure_topics_sync(
            bootstrap, [TopicSpec(TOPIC, partitions), TopicSpec(_leader_topic(faust_group), 1)]
        )

        utterances, labels, secs = fill_topic(bootstrap, TOPIC, n)
        print(
            f"filled {TOPIC} on {bootstrap} once: {utterances:,} utterances + "
            f"{labels:,} labels = {n:,} events in {secs:.1f}s"
        )

        version = publish_model(work / "registry")
        print(
            f"published model {version} (5 CLINC150 domains): the full path "
            "predicts every utterance and publishes it on predictions"
        )
        a = run_daemon(
            bootstrap,
            broker_pid,
            TOPIC,
            n,
            partitions,
            args.batch_size,
            work,
            procs,
            work / "registry",
        )
        _report("(a) driftd full path", a, "stored")
        print(f"    utterances predicted and published on predictions: {a['predicted']:,.0f}")
        print(
            f"    warm-store cross-check: {a['warm_rows']:,} rows in "
            f"{a['warm_batches']} batches, {a['warm_rate']:,.0f} events/s between "
            "the first and last batch"
        )
        a0 = run_daemon(
            bootstrap,
            broker_pid,
            TOPIC,
            n,
            partitions,
            args.batch_size,
            work,
            procs,
            work / "empty-registry",
            name="daemon-no-model",
        )
        _report("(a0) no model loaded", a0, "stored")
        print(
            "    (a0) is ingest + tiers alone: the same daemon with an empty "
            f"registry ({a0['predicted']:,.0f} predictions); (a)/(a0) = "
            f"{a['rate'] / a0['rate']:.2f}x is the cost of stream prediction"
        )
        b = run_child(
            "faust", faust_group, bootstrap, broker_pid, TOPIC, n, partitions, work, procs
        )
        _report("(b) bare faust", b, "json-decoded")
        c = run_child(
            "aiokafka", kafka_group, bootstrap, broker_pid, TOPIC, n, partitions, work, procs
        )
        _report("(c) bare aiokafka", c, "json-decoded")

        ab, ac = a["rate"] / b["rate"], a["rate"] / c["rate"]
        print(
            f"ratio (a)/(b) = {ab:.2f}x   ratio (a)/(c) = {ac:.2f}x   ratio "
            f"(a0)/(b) = {a0['rate'] / b['rate']:.2f}x"
        )
        print(
            f"{'PASS' if ab >= GOAL_RATIO else 'FAIL'}: full path >= {GOAL_RATIO}x "
            f"bare faust ({ab:.2f}x)"
        )
        print(
            f"{'PASS' if a['rate'] >= GOAL_RATE else 'FAIL'}: full path >= "
            f"{GOAL_RATE:,.0f} events/s ({a['rate']:,.0f})"
        )
        return 0
    finally:
        for proc in procs:
            _stop(proc, 5.0)
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events",
        type=positive_int,
        default=200_000,
        help="N, events pre-filled and consumed by each contestant (default 200000)",
    )
    parser.add_argument(
        "--partitions", type=positive_int, default=4, help="partitions of the topic (default 4)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1000,
        help="the daemon's ingest.batch_size (DRIFTD_INGEST__BATCH_SIZE; default 1000)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="embedded broker port (default: a free one)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, warm store) for inspection"
    )
    # internal: a contestant child process
    parser.add_argument("--role", choices=("faust", "aiokafka"), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--broker-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        args.group = args.group or f"bench-{args.role}-{uuid.uuid4().hex[:8]}"
        (_child_faust if args.role == "faust" else _child_aiokafka)(args)
        return 0

    exit_on_sigterm()
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
