"""Memory and time of the training-set queries a fine-tune runs in the daemon's own process, bounded
against unbounded, side by side on the same stores.

Two real stores are built first (SQLite warm, Parquet cold), with N labelled utterances each (2N
events): one where everything is still warm (the default 7-day retention: a busy day's labels), one
where everything was demoted to cold (Parquet files of 50,000 rows, the default demotion batch).
Then each query runs in a fresh child process, three times in a row, and the child reports:

  s          seconds per query (the median of the three)
  peak +MB   the child's peak resident set (VmHWM) minus its resident set after opening the store
  after +MB  the resident set after the third query and
  ``gc.collect()``, minus the same baseline: what the
             daemon keeps after its fine-tunes

Rows: *recent, whole window* (every label of the window into Python: the query's shape before it was
bounded) against *recent, newest 30,000* (``learning.max_examples``:
warm read newest first, lazily); *replay, all cold* against *replay,
scan budget* (``learning.replay_scan_rows``, here N/2 rows).

    .venv/bin/python bench/training_query.py [--utterances N]      # default 500,000 (1M events)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, positive_int
from streams.tiers import StoredEvent, TieredStore, TierPolicy
from streams.training_set import query_recent, query_replay

WORDS = [
    "book",
    "flight",
    "cancel",
    "card",
    "balance",
    "weather",
    "alarm",
    "song",
    "play",
    "transfer",
    "freeze",
    "pay",
    "bill",
    "rate",
]
REPLAY_SIZE = 9000  # 30,000 recent examples x replay_ratio 0.3


def open_store(root: Path, warm_retention_s: float) -> TieredStore:
    store = TieredStore(
        root / "warm.sqlite3",
        str(root / "cold"),
        TierPolicy(900.0, warm_retention_s),
        1000,
        warm_synchronous="NORMAL",
    )
    return asyncio.run(store.open())


def build(root: Path, utterances: int, cold: bool) -> None:
    async def fill() -> None:
        store = await TieredStore(
            root / "warm.sqlite3",
            str(root / "cold"),
            TierPolicy(900.0, 1.0 if cold else 7 * 86400.0),
            1000,
            warm_synchronous="NORMAL",
        ).open()
        rng, now, batch = random.Random(1), time.time(), []
        for i in range(utterances):
            ts, ref = now - 3600 + i * 3600 / utterances, f"utt-{i:09d}"
            text = " ".join(rng.choice(WORDS) for _ in range(9))
            batch.append(
                StoredEvent(
                    "bench",
                    0,
                    2 * i,
                    ref,
                    "utterance",
                    ts,
                    f"c{i}",
                    0,
                    "normal",
                    None,
                    None,
                    text,
                    None,
                    None,
                    None,
                    None,
                    b"{}" * 150,
                    ts,
                    ts,
                )
            )
            batch.append(
                StoredEvent(
                    "bench",
                    0,
                    2 * i + 1,
                    f"lbl-{i:09d}",
                    "label",
                    ts + 1,
                    f"c{i}",
                    1,
                    "normal",
                    None,
                    None,
                    None,
                    ref,
                    f"intent_{rng.randrange(150)}",
                    None,
                    text,
                    b"{}" * 100,
                    ts,
                    ts,
                )
            )
            if len(batch) >= 20_000:
                await store.write(batch)
                batch = []
        await store.write(batch)
        if cold:
            await asyncio.sleep(1.1)
            while store.sizes()["warm"]:
                await store.maintain()

    asyncio.run(fill())


def rss_mb(field: str = "VmRSS") -> float:
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":")
    )
    return int(line.split()[1]) / 1024


def child(root: str, query: str, scan_rows: int) -> None:
    """Runs in a fresh process: three queries, then prints one JSON line."""
    import gc

    cold = query.startswith("replay")
    store = open_store(Path(root), 1.0 if cold else 7 * 86400.0)
    gc.collect()
    base, seconds, n = rss_mb(), [], 0
    for _ in range(3):
        started = time.perf_counter()
        if query == "recent-all":
            n = len(asyncio.run(query_recent(store, 0, 1e12, None)))
        elif query == "recent-newest":
            n = len(asyncio.run(query_recent(store, 0, 1e12, 30_000)))
        else:
            n = len(
                asyncio.run(
                    query_replay(
                        store, REPLAY_SIZE, 7, (), scan_rows if query == "replay-budget" else None
                    )
                )
            )
        seconds.append(time.perf_counter() - started)
        gc.collect()
    print(
        json.dumps(
            {
                "examples": n,
                "s": statistics.median(seconds),
                "peak": rss_mb("VmHWM") - base,
                "after": rss_mb() - base,
            }
        )
    )


def measure(root: Path, query: str, scan_rows: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), query, str(scan_rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=positive_int, default=500_000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    print(
        f"training-set queries: {args.utterances:,} labelled utterances "
        f"({2 * args.utterances:,} events) per store; {cpu_model()}"
    )
    with tempfile.TemporaryDirectory(prefix="driftd-bench-query-") as tmp:
        warm, cold = Path(tmp, "warm"), Path(tmp, "cold")
        started = time.perf_counter()
        build(warm, args.utterances, cold=False)
        build(cold, args.utterances, cold=True)
        print(f"stores built in {time.perf_counter() - started:.0f} s\n")
        print(f"{'query':28} {'examples':>9} {'s':>7} {'peak +MB':>9} {'after +MB':>10}")
        rows = {}
        for query, label in (
            ("recent-all", "recent, whole window"),
            ("recent-newest", "recent, newest 30,000"),
            ("replay-all", "replay, all cold"),
            ("replay-budget", f"replay, scan budget {args.utterances:,}"),
        ):
            rows[query] = r = measure(
                cold if query.startswith("replay") else warm, query, args.utterances
            )
            print(
                f"{label:28} {r['examples']:9,} {r['s']:7.2f} {r['peak']:9.0f} {r['after']:10.0f}",
                flush=True,
            )
    for bounded, unbounded, what in (
        ("recent-newest", "recent-all", "recent"),
        ("replay-budget", "replay-all", "replay"),
    ):
        b, u = rows[bounded], rows[unbounded]
        print(
            f"\n{what}: bounded/unbounded peak memory "
            f"{b['peak'] / max(u['peak'], 1e-9):.2f}x, time {b['s'] / u['s']:.2f}x",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
