"""Serving latency and throughput: the INT8 ONNX model in process against FP32 ONNX and torch
eager, then the real daemon's POST /v1/predict, steady and while versions are hot-swapped.

One run. Each architecture (the default bag of n-grams, then the transformer option)
is trained once on the CLINC150 train split (``train_classifier`` with its defaults,
~1.5 and ~3 min on 2 cores; ``--quick``: 5 domains, 3 epochs) and exported with
``build_version_files`` (FP32 ONNX, INT8 ONNX = the served model). Then:

  (a) in process, for each architecture, on the CLINC150 test texts,
      one thread everywhere: featurisation (``HashingFeaturizer.batch``)
      timed once on its own; the model call alone, on pre-featurised ids, for INT8 ONNX
      (``cpu_session``, 1 thread), FP32 ONNX and torch eager FP32 (``set_num_threads(1)``,
      ``no_grad``, ``eval``) at batch 1 and 64; and end to end (featurise + INT8) at batch
      1. Per-call p50/p99, and texts/s = texts / summed call time.
  (b) over HTTP against a real daemon (embedded broker
      + ``python -m daemon run``, a registry of 3 versions,
      admin token set, no bootstrap training): one sequential keep-alive client; then C
      keep-alive client threads for S seconds, steady; then the same load while the main
      thread activates the versions round-robin every --swap-every seconds through POST
      /admin/v1/models/{version}/activate, one phase per value: 0.2 s, the stress case, and 1
      s, still well above the learning loop's rate (its fine-tunes are at least
      learning.cooldown_s apart, 30 s by default, and each takes seconds). A swap streams the
      new version's weights (4 MB) through the cores' shared cache while the clients saturate
      the daemon; what that costs the p99 grows with the swap rate (docs/architecture.md).

    .venv/bin/python bench/serve.py [--quick] [--requests N]
    [--clients C] [--seconds S] [--swap-every T [T ...]] [--keep]

The goals (INT8 ONNX >= 2x torch eager at batch 1; endpoint p99 < 5 ms; p99 during swaps <= 1.5x
steady) are printed as PASS/FAIL; the exit code is 0 either way (non-zero only when the benchmark
itself fails). The HTTP clients run in this process and share the machine's cores with the daemon
(and the broker), so on a small VM the endpoint figures include client CPU contention and move by
10-20% from run to run. --keep leaves the temp dir (daemon and broker logs, registry) behind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, cpu_seconds, exit_on_sigterm, positive_int
from bench.processes import BenchDaemon
from bench.wrk import wrk_available, wrk_load
from daemon.broker import EmbeddedBroker
from daemon.metrics_scrape import scrape
from tests.integration.harness import free_port, unique

GOAL_SPEEDUP = 2.0  # INT8 ONNX >= 2x torch eager texts/s at batch 1
GOAL_P99_MS = 5.0  # endpoint p99 < 5 ms, one sequential client
GOAL_SWAP_RATIO = 1.5  # p99 during swaps <= 1.5x steady p99
# the daemon's bootstrap_groups
QUICK_DOMAINS = ("banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute")
TOKEN = "bench-serve-admin-token-0123456789"
BATCHES = (1, 64)


# -- helpers ---------------------------------------------------------------------------------------


def _pcts(seconds: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if len(seconds) == 0:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(seconds, dtype=np.float64), [50, 99])
    return float(p50) * 1e3, float(p99) * 1e3


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


# -- training and export ---------------------------------------------------------------------------


def train_models(quick: bool) -> dict[str, Any]:
    """The benchmarked model (and its version files), a second,
    different model for the registry, and the test texts."""
    import torch

    from models.export import build_version_files
    from models.train import TrainSettings, train_classifier
    from streams.datasets import groups, load_examples

    train = load_examples("clinc150", "train")
    test = load_examples("clinc150", "test")
    domains = groups("clinc150")
    small_intents = {i for d in QUICK_DOMAINS for i in domains[d]}
    small = [e for e in train if e.intent in small_intents]

    def fit(
        examples: list[Any], settings: TrainSettings | None, architecture: str = "bag_of_ngrams"
    ) -> Any:
        kwargs = {} if settings is None else {"settings": settings}
        return train_classifier(
            [e.text for e in examples],
            [e.intent for e in examples],
            architecture=architecture,
            **kwargs,
        )

    def files_of(
        result: Any, examples: list[Any], calibrate: bool
    ) -> tuple[dict[str, bytes], dict[str, Any]]:
        # as the daemon's bootstrap does
        probe = [e.text for e in examples[:: max(1, len(examples) // 64)]][:64]
        calibration = (
            [e.text for e in examples[:: max(1, len(examples) // 512)]][:512] if calibrate else ()
        )
        return build_version_files(
            result.model, result.featurizer, result.labels, probe, calibration_texts=calibration
        )

    threads = torch.get_num_threads()
    main_examples = small if quick else train
    main = fit(main_examples, TrainSettings(epochs=3) if quick else None)
    files, report = files_of(main, main_examples, calibrate=False)
    other = fit(small, TrainSettings(epochs=3, seed=1))
    variants = [
        (files, {"bench": "main model, dynamic INT8"}),
        (
            files_of(main, main_examples, calibrate=True)[0],
            {"bench": "main model, calibrated INT8 (static kept only if it agrees better)"},
        ),
        (files_of(other, small, calibrate=False)[0], {"bench": "5-domain model, 3 epochs, seed 1"}),
    ]
    transformer = fit(main_examples, TrainSettings(epochs=3) if quick else None, "transformer")
    t_files, t_report = files_of(transformer, main_examples, calibrate=False)
    models = [
        {"result": main, "files": files, "report": report},
        {"result": transformer, "files": t_files, "report": t_report},
    ]
    return {
        "main": main,
        "models": models,
        "examples": main_examples,
        "files": files,
        "report": report,
        "variants": variants,
        "test": test,
        "torch_threads": threads,
    }


# -- (a) in process --------------------------------------------------------------------------------


def time_calls(
    call: Callable[[Any], Any], inputs: Sequence[Any], passes: int, warmup: int = 200
) -> np.ndarray:
    """Seconds of each call of ``call`` over ``inputs``,
    ``passes`` times (after a short warm-up)."""
    for x in inputs[:warmup]:
        call(x)
    out = np.empty(len(inputs) * passes)
    k = 0
    clock = time.perf_counter
    for _ in range(passes):
        for x in inputs:
            t0 = clock()
            call(x)
            out[k] = clock() - t0
            k += 1
    return out


def in_process(trained: dict[str, Any], quick: bool) -> None:
    """Section (a) for each architecture: the default model first, then the transformer option."""
    for entry in trained["models"]:
        measure_in_process(entry, trained, quick)


def measure_in_process(entry: dict[str, Any], trained: dict[str, Any], quick: bool) -> None:
    import onnxruntime as ort
    import torch

    from models.export import SERVED_MODEL, SERVED_WEIGHTS, cpu_session

    main, files, export_report = entry["result"], entry["files"], entry["report"]
    model, featurizer, labels = main.model, main.featurizer, main.labels
    texts = [e.text for e in trained["test"]]
    n_params = sum(p.numel() for p in model.parameters())
    served_bytes = len(files[SERVED_MODEL]) + len(files[SERVED_WEIGHTS])
    print(
        f"\nmodel: {type(model).__name__} ({model.architecture}) "
        f"{model.config.to_dict()}, {len(labels)} labels, {n_params:,} "
        "parameters; "
        f"trained on {len(trained['examples']):,} CLINC150 train examples, "
        f"{main.epochs_run} epochs in {main.seconds:.1f}s "
        f"(torch {torch.__version__}, {trained['torch_threads']} threads for training)"
    )
    print(
        f"files: model.onnx (FP32) {_mb(len(files['model.onnx']))}, "
        f"{SERVED_MODEL} + {SERVED_WEIGHTS} {_mb(served_bytes)} "
        f"({len(files['model.onnx']) / served_bytes:.1f}x smaller; quantisation "
        f"{export_report['quantization']['method']}, "
        f"FP32 parity {export_report['fp32_parity_max_abs']:.1e}); onnxruntime "
        f"{ort.__version__}, opset {export_report['opset']}"
    )

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    int8 = cpu_session(files[SERVED_MODEL], threads=1, weights=files[SERVED_WEIGHTS])
    fp32 = cpu_session(files["model.onnx"], threads=1)
    name = int8.get_inputs()[0].name

    def run_torch(ids: torch.Tensor) -> Any:
        with torch.no_grad():
            return model(ids)

    runtimes: dict[str, Callable[[Any], Any]] = {
        "INT8 ONNX (served)": lambda ids: int8.run(None, {name: ids}),
        "FP32 ONNX": lambda ids: fp32.run(None, {name: ids}),
        "torch eager FP32": run_torch,
    }
    # full batches only
    chunks = {b: [texts[i : i + b] for i in range(0, len(texts) - b + 1, b)] for b in BATCHES}
    ids = {b: [featurizer.batch(c) for c in chunks[b]] for b in BATCHES}
    tensors = {b: [torch.from_numpy(x) for x in ids[b]] for b in BATCHES}
    passes = {1: 1, 64: 2 if quick else 5}

    print(
        f"(a) in process, {len(texts):,} CLINC150 test texts, 1 thread; per call "
        "p50/p99 in ms, texts/s = texts / summed call time"
    )
    print(f"    {'':<38}{'batch':>5}  {'p50 ms':>8}  {'p99 ms':>8}  {'texts/s':>10}")
    rates: dict[tuple[str, int], float] = {}

    def row(label: str, batch: int, seconds: np.ndarray) -> float:
        p50, p99 = _pcts(seconds)
        rate = batch * len(seconds) / float(seconds.sum())
        print(f"    {label:<38}{batch:>5}  {p50:>8.3f}  {p99:>8.3f}  {rate:>10,.0f}")
        return rate

    for b in BATCHES:
        rates[("featurize", b)] = row(
            f"featurize ({type(featurizer).__name__}.batch)",
            b,
            time_calls(featurizer.batch, chunks[b], passes[b]),
        )
    for b in BATCHES:
        for label, call in runtimes.items():
            inputs = tensors[b] if label.startswith("torch") else ids[b]
            rates[(label, b)] = row(
                f"{label}, model call only", b, time_calls(call, inputs, passes[b])
            )
    rates[("e2e", 1)] = row(
        "end to end: featurize + INT8 ONNX",
        1,
        time_calls(lambda c: int8.run(None, {name: featurizer.batch(c)}), chunks[1], 1),
    )

    # Accuracy of each runtime on the test texts the
    # model has labels for (all of them unless --quick).
    known = [(e.text, e.intent) for e in trained["test"] if e.intent in set(labels)]
    acc_ids = [
        featurizer.batch([t for t, _ in known[i : i + 256]]) for i in range(0, len(known), 256)
    ]
    truth = np.array([labels.index(i) for _, i in known])
    with torch.no_grad():
        top = {
            "torch": np.concatenate(
                [model(torch.from_numpy(x)).argmax(1).numpy() for x in acc_ids]
            ),
            "FP32 ONNX": np.concatenate([fp32.run(None, {name: x})[0].argmax(1) for x in acc_ids]),
            "INT8 ONNX": np.concatenate([int8.run(None, {name: x})[0].argmax(1) for x in acc_ids]),
        }
    print(
        f"    test accuracy ({len(known):,} texts): "
        + ", ".join(f"{k} {np.mean(v == truth):.4f}" for k, v in top.items())
        + f"; INT8/torch top-1 agreement {np.mean(top['INT8 ONNX'] == top['torch']):.4f}"
    )

    t = "torch eager FP32"
    r1 = rates[("INT8 ONNX (served)", 1)] / rates[(t, 1)]
    print(
        f"ratio INT8/torch texts/s: batch 1 {r1:.2f}x, batch 64 "
        f"{rates[('INT8 ONNX (served)', 64)] / rates[(t, 64)]:.2f}x   "
        "FP32 ONNX/torch: batch 1 "
        f"{rates[('FP32 ONNX', 1)] / rates[(t, 1)]:.2f}x, batch 64 "
        f"{rates[('FP32 ONNX', 64)] / rates[(t, 64)]:.2f}x   "
        "featurize share of end to end at batch 1: "
        f"{rates[('e2e', 1)] / rates[('featurize', 1)]:.0%}"
    )
    print(
        f"{'PASS' if r1 >= GOAL_SPEEDUP else 'FAIL'}: {model.architecture}: INT8 "
        f"ONNX >= {GOAL_SPEEDUP:g}x torch eager at batch 1 ({r1:.2f}x)"
    )
    torch.set_num_threads(threads_before)


# -- (b) over HTTP ---------------------------------------------------------------------------------


_HEADERS = {"Content-Type": "application/json"}


def _post(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str] = _HEADERS
) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def sequential(port: int, bodies: list[bytes], n: int) -> tuple[np.ndarray, int]:
    """One keep-alive client, n requests one after the other: (latencies of the 200s, failures)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for body in bodies[:200]:  # warm-up
        _post(conn, "/v1/predict", body)
    out, failed = [], 0
    clock = time.perf_counter
    try:
        for i in range(n):
            t0 = clock()
            try:
                status, _ = _post(conn, "/v1/predict", bodies[i % len(bodies)])
            except (OSError, http.client.HTTPException):
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            if status == 200:
                out.append(clock() - t0)
            else:
                failed += 1
    finally:
        conn.close()
    return np.array(out), failed


def under_load(
    port: int,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    driver: Callable[[float], Any] | None = None,
) -> dict[str, Any]:
    """``clients`` keep-alive threads POSTing single texts for ``seconds``;
    ``driver(deadline)`` (if given) runs in this thread meanwhile (the swapper).
    Latencies of 200s, failures (non-200 or exceptions), served versions."""
    stop = threading.Event()
    gate = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    finished: list[list[float]] = [[] for _ in range(clients)]
    failures: list[list[str]] = [[] for _ in range(clients)]
    versions: list[Counter[str]] = [Counter() for _ in range(clients)]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        lat, fin, bad, seen = latencies[i], finished[i], failures[i], versions[i]
        clock, j = time.perf_counter, i
        gate.wait()
        try:
            while not stop.is_set():
                body = bodies[j % len(bodies)]
                j += clients
                t0 = clock()
                try:
                    status, data = _post(conn, "/v1/predict", body)
                except (OSError, http.client.HTTPException) as exc:
                    bad.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    continue
                t1 = clock()
                if status != 200:
                    bad.append(f"HTTP {status}: {data[:200]!r}")
                    continue
                lat.append(t1 - t0)
                fin.append(t1)
                seen[json.loads(data)["model_version"]] += 1
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    try:
        driven = driver(started + seconds) if driver is not None else time.sleep(seconds)
    finally:
        ended = time.perf_counter()
        stop.set()
        for thread in threads:
            thread.join(15)
    all_fin = np.concatenate([np.array(f) for f in finished]) if any(finished) else np.zeros(0)
    return {
        "latencies": np.concatenate([np.array(x) for x in latencies])
        if any(latencies)
        else np.zeros(0),
        "rps": float(np.count_nonzero((all_fin >= started) & (all_fin <= ended)))
        / (ended - started),
        "seconds": ended - started,
        "failed": sum(len(f) for f in failures),
        "failures": [m for f in failures for m in f][:3],
        "versions": sum(versions, Counter()),
        "driven": driven,
    }


def swapper(
    port: int, versions: list[str], period: float
) -> Callable[[float], list[tuple[str, int, float]]]:
    """Activate ``versions`` round-robin (starting after the first,
    which is live) every ``period`` s until the deadline."""

    def drive(deadline: float) -> list[tuple[str, int, float]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {**_HEADERS, "Authorization": f"Bearer {TOKEN}"}
        done: list[tuple[str, int, float]] = []
        due = time.perf_counter()
        i = 0
        try:
            while time.perf_counter() < deadline:
                version = versions[(i + 1) % len(versions)]
                i += 1
                t0 = time.perf_counter()
                try:
                    status, _ = _post(conn, f"/admin/v1/models/{version}/activate", b"", headers)
                except (OSError, http.client.HTTPException):
                    status = -1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                done.append((version, status, time.perf_counter() - t0))
                # a slow activation does not cause a burst later
                due = max(due + period, time.perf_counter() - period)
                time.sleep(max(0.0, min(due, deadline) - time.perf_counter()))
        finally:
            conn.close()
        return done

    return drive


def _latency_sum(url: str) -> tuple[float, float]:
    samples = scrape(url)
    return samples.get("driftd_predict_latency_seconds_sum", 0.0), samples.get(
        "driftd_predict_latency_seconds_count", 0.0
    )


def over_http(
    trained: dict[str, Any], work: Path, args: argparse.Namespace, cleanup: list[Callable[[], None]]
) -> None:
    from models.registry import Registry

    registry = Registry(work / "registry")
    parent = None
    for files, info in trained["variants"]:
        parent = registry.publish(files, parent=parent, info=info).version
    versions = registry.versions()
    registry.set_current(versions[0])
    per_version = sum(len(b) for b in trained["variants"][0][0].values())

    broker = EmbeddedBroker(free_port(), log_path=work / "broker.log").start()
    cleanup.append(broker.stop)
    daemon = BenchDaemon(
        broker.bootstrap,
        work / "daemon",
        unique("bench-serve"),
        extra_env={
            "DRIFTD_MODELS__REGISTRY_DIR": str(registry.root),
            "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
            "DRIFTD_MODELS__BOOTSTRAP": "false",
            "DRIFTD_WEB__HOST": "127.0.0.1",
        },
    )
    daemon.env.pop("DRIFTD_CONFIG", None)
    started = time.perf_counter()
    daemon.start()
    cleanup.append(daemon.stop_quietly)
    cleanup.append(
        lambda: daemon.proc is not None and daemon.proc.poll() is None and daemon.terminate(10)
    )
    daemon.wait_ready(timeout_s=90, model=True)
    port, pid = daemon.web_port, daemon.proc.pid if daemon.proc else None
    print(
        f"(b) over HTTP: daemon pid {pid} ready in "
        f"{time.perf_counter() - started:.1f}s (embedded broker "
        f"{broker.bootstrap}); "
        f"registry {', '.join(versions)} (~{_mb(per_version)} of files each), "
        f"serving {versions[0]}; "
        f'client: POST /v1/predict {{"text": ...}} over keep-alive http.client, CLINC150 test texts'
    )
    print(
        "    the clients run in this process and share the "
        f"{len(os.sched_getaffinity(0))} cores with the daemon and the broker: "
        "figures include that contention"
    )
    bodies = [json.dumps({"text": e.text}).encode() for e in trained["test"]]

    metrics = daemon.url + "/metrics"
    s0, c0 = _latency_sum(metrics)
    seq, seq_failed = sequential(port, bodies, args.requests)
    s1, c1 = _latency_sum(metrics)
    p50, p99 = _pcts(seq)
    server_mean = (s1 - s0) / (c1 - c0) * 1e3 if c1 > c0 else float("nan")
    print(
        f"    sequential, 1 client, {args.requests:,} requests: p50 {p50:.3f} "
        f"ms, p99 {p99:.3f} ms, mean {seq.mean() * 1e3:.3f} ms, "
        f"{len(seq) / seq.sum():,.0f} requests/s, failed {seq_failed}  "
        f"(daemon's own mean in its handler {server_mean:.3f} ms)"
    )

    cpu0 = cpu_seconds(pid)
    steady = under_load(port, bodies, args.clients, args.seconds)
    steady_cpu = (cpu_seconds(pid) - cpu0) / steady["seconds"]
    s50, s99 = _pcts(steady["latencies"])
    print(
        f"    steady, {args.clients} clients, {steady['seconds']:.1f}s: "
        f"{steady['rps']:,.0f} requests/s, p50 {s50:.3f} ms, p99 {s99:.3f} ms, "
        f"failed {steady['failed']}, daemon CPU {steady_cpu:.2f} cores{_failure_note(steady)}"
    )

    print(
        f"{'PASS' if p99 < GOAL_P99_MS else 'FAIL'}: endpoint p99 < {GOAL_P99_MS:g} "
        f"ms (sequential client: {p99:.3f} ms)"
    )
    for period in args.swap_every:
        cpu0 = cpu_seconds(pid)
        swapped = under_load(
            port, bodies, args.clients, args.seconds, swapper(port, versions, period)
        )
        swap_cpu = (cpu_seconds(pid) - cpu0) / swapped["seconds"]
        w50, w99 = _pcts(swapped["latencies"])
        swaps = swapped["driven"]
        ok = [s for s in swaps if s[1] == 200]
        act_p50, _ = _pcts([s[2] for s in ok])
        served = ", ".join(f"{v} {n:,}" for v, n in sorted(swapped["versions"].items()))
        print(
            f"    during swaps every {period:g}s, {args.clients} clients, "
            f"{swapped['seconds']:.1f}s: {swapped['rps']:,.0f} requests/s, p50 "
            f"{w50:.3f} ms, "
            f"p99 {w99:.3f} ms, failed {swapped['failed']}, daemon CPU "
            f"{swap_cpu:.2f} cores{_failure_note(swapped)}"
        )
        print(
            f"    swaps: {len(ok)} done ({len(swaps) - len(ok)} refused or "
            f"failed), one every {swapped['seconds'] / max(1, len(swaps)):.2f}s "
            f"(asked {period:g}s); activation p50 {act_p50:.0f} ms, max "
            f"{max((s[2] for s in swaps), default=float('nan')) * 1e3:.0f} ms; "
            f"answered by: {served}"
        )
        ratio = w99 / s99
        print(
            f"ratio p99 during swaps every {period:g}s / steady = {ratio:.2f}x   "
            f"rps during swaps / steady = {swapped['rps'] / steady['rps']:.2f}x"
        )
        print(
            f"{'PASS' if ratio <= GOAL_SWAP_RATIO else 'FAIL'}: p99 during swaps "
            f"every {period:g}s <= {GOAL_SWAP_RATIO:g}x steady "
            f"({ratio:.2f}x; failed requests during swaps: {swapped['failed']})"
        )

    with_wrk(port, bodies, versions, args)
    code, secs = daemon.terminate(15)
    print(f"    daemon stopped: exit code {code} in {secs:.1f}s")


def with_wrk(port: int, bodies: list[bytes], versions: list[str], args: argparse.Namespace) -> None:
    """(c) The steady and swap phases again with wrk, a C client in its own process: the
    same goal, measured without the Python client threads' GIL queueing in the figures."""
    if not wrk_available():
        print("(c) wrk is not installed (bash scripts/debian-packages.sh wrk:wrk): skipped")
        return
    print(
        f"(c) the same load from wrk (1 thread, {args.clients} keep-alive "
        "connections, its own process), steady then during swaps"
    )
    steady = wrk_load(port, bodies, args.clients, args.seconds)
    print(
        f"    steady, {args.seconds:g}s: {steady['rps']:,.0f} requests/s, p50 "
        f"{steady['p50']:.3f} ms, p99 {steady['p99']:.3f} ms, failed "
        f"{steady['failed']}"
    )
    for period in args.swap_every:
        swapped = wrk_load(
            port, bodies, args.clients, args.seconds, swapper(port, versions, period)
        )
        ok = sum(1 for s in swapped["driven"] if s[1] == 200)
        print(
            f"    during swaps every {period:g}s, {args.seconds:g}s: "
            f"{swapped['rps']:,.0f} requests/s, p50 {swapped['p50']:.3f} ms, "
            f"p99 {swapped['p99']:.3f} ms, "
            f"failed {swapped['failed']}; {ok} swaps done "
            f"({len(swapped['driven']) - ok} refused or failed)"
        )
        ratio = swapped["p99"] / steady["p99"]
        print(
            f"ratio (wrk) p99 during swaps every {period:g}s / steady = "
            f"{ratio:.2f}x   rps during swaps / steady = "
            f"{swapped['rps'] / steady['rps']:.2f}x"
        )
        print(
            f"{'PASS' if ratio <= GOAL_SWAP_RATIO else 'FAIL'}: (wrk) p99 during "
            f"swaps every {period:g}s <= {GOAL_SWAP_RATIO:g}x steady "
            f"({ratio:.2f}x; failed requests during swaps: {swapped['failed']})"
        )


def _failure_note(result: dict[str, Any]) -> str:
    return f" (first failures: {'; '.join(result['failures'])})" if result["failures"] else ""


# -- the run ---------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    # onnxruntime.quantization's advice to pre-process, once per export
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: nproc {cores} ({os.cpu_count()} CPUs), {cpu_model()}, Python "
        f"{platform.python_version()}, {'--quick' if args.quick else 'full'} run"
    )
    work = Path(tempfile.mkdtemp(prefix="driftd-bench-serve-"))
    cleanup: list[Callable[[], None]] = []
    try:
        trained = train_models(args.quick)
        in_process(trained, args.quick)
        over_http(trained, work, args, cleanup)
        print(f"total {time.perf_counter() - started:.0f}s")
        return 0
    finally:
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                print(f"cleanup: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small model (5 domains, 3 epochs) and shorter HTTP phases",
    )
    parser.add_argument(
        "--requests", type=positive_int, help="sequential requests (default 3000; --quick 1000)"
    )
    parser.add_argument(
        "--clients", type=positive_int, default=8, help="client threads under load (default 8)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="seconds of each load phase, steady and during swaps (default 10; --quick 4)",
    )
    parser.add_argument(
        "--swap-every",
        type=float,
        nargs="+",
        default=[0.2, 1.0],
        help="seconds between activations, one swap phase per value (default 0.2 1)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, registry) for inspection"
    )
    args = parser.parse_args()
    if any(not period > 0 for period in args.swap_every):
        parser.error(f"--swap-every takes seconds > 0, got {' '.join(map(str, args.swap_every))}")
    args.requests = args.requests or (1000 if args.quick else 3000)
    args.seconds = args.seconds or (4.0 if args.quick else 10.0)

    exit_on_sigterm()
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
